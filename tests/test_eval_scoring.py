"""The shared rule-based scorer on a table of real-looking model outputs."""

import pytest

from vldft.eval.scoring import extract_answer, is_correct, normalize, score, to_number

CH4 = ["30", "45", "60", "90"]

# (model output, target, choices, expected extraction, expected correctness)
CASES = [
    ("The figure has 5 straight sides. Answer: pentagon", "pentagon", None, "pentagon", True),
    ("d = 2r = 2 * 18 = 36. Answer: 36", "36", None, "36", True),
    ("Angles in a triangle sum to 180. 180 - 50 - 60 = 70. Answer: 70", "70", None, "70", True),
    ("**Answer:** 70 deg", "70", None, "70 deg", True),
    ("Answer: A Circle.", "circle", None, "A Circle", True),
    ("The figure has 4 equal sides. Answer: square", "triangle", None, "square", False),
    ("We have x^2 = 9 + 16 = 25, so the hypotenuse is \\boxed{5}.", "5", None, "5", True),
    ("Thus the area is $\\boxed{\\frac{3}{4}}$", "0.75", None, "\\frac{3}{4}", True),
    ("\\boxed{12\\text{ cm}}", "12", None, "12\\text{ cm}", True),
    ("<think>The angle is 180 - 120 = 60</think><answer>60</answer>", "60", None, "60", True),
    ("<think>maybe 30?</think> <answer>The answer is \\boxed{45}</answer>", "30", None, "45",
     False),
    ("The measure of angle ABC is 58 degrees.", "58", None, "58", True),
    ("So the length is 1,250 units", "1250", None, "1,250", True),
    ("The answer is 2.50.", "2.5", None, "2.50", True),
    ("x = 7.0001", "7", None, "7.0001", True),
    ("x = 7.1", "7", None, "7.1", False),
    ("It is a triangle.", "triangle", None, None, False),
    ("", "4", None, None, False),
    # multiple choice (geometry3k: choices, letter target)
    ("C", "C", CH4, "C", True),
    ("The correct option is (B).", "B", CH4, "B", True),
    ("Answer: D", "D", CH4, "D", True),
    ("Answer: (A) 30", "A", CH4, "(A) 30", True),
    ("Since the triangle is equilateral each angle measures 60. Answer: 60", "C", CH4, "60",
     True),
    ("Answer: 45", "C", CH4, "45", False),
    ("A.", "B", CH4, "A", False),
    ("Using the tangent ratio we get option C", "C", CH4, "C", True),
    ("\\boxed{B}", "B", CH4, "B", True),
    ("I am not sure.", "A", CH4, None, False),
]


@pytest.mark.parametrize(("text", "target", "choices", "extracted", "correct"), CASES)
def test_table(text, target, choices, extracted, correct):
    assert extract_answer(text, choices) == extracted
    assert score(text, target, choices) == (extracted, correct)


def test_table_is_big_and_mixed():
    assert len(CASES) >= 20
    assert 5 <= sum(not c[-1] for c in CASES) <= len(CASES) - 5


@pytest.mark.parametrize(("raw", "norm"), [
    ("**Pentagon.**", "pentagon"), ("$60^\\circ$", "60"), ("an isosceles", "isosceles"),
    ("\\text{ square}", "square"), ("c = 13", "13"), ("50%", "50")])
def test_normalize(raw, norm):
    assert normalize(raw) == norm


@pytest.mark.parametrize(("raw", "value"), [
    ("3/4", 0.75), ("\\frac{1}{2}", 0.5), ("-2.5", -2.5), ("1,000", 1000.0), ("12 cm", 12.0),
    ("3 or 4", None), ("pentagon", None), ("1/0", None)])
def test_to_number(raw, value):
    assert to_number(raw) == value


def test_choice_text_counts_only_when_unambiguous():
    assert is_correct("60", "C", CH4) and not is_correct("60", "C", ["60", "45", "60", "90"])
    assert is_correct("(c)", "C", CH4) and not is_correct("B", "C", CH4)


def test_heldout_uses_the_shared_scorer():
    """The in-training held-out accuracy and the eval tasks share one scorer."""
    import vldft.heldout as heldout

    assert heldout.score is score
