"""The shared rule-based scorer on a table of real-looking model outputs."""

import pytest

from vldft import scoring
from vldft.scoring import extract_answer, is_correct, normalize, score, to_number

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
    # a final LaTeX fraction / radical wins over "the last number" inside it
    ("\\frac{1}{2}", "0.5", None, "\\frac{1}{2}", True),
    ("So the probability is $\\frac{3}{4}$.", "3/4", None, "\\frac{3}{4}", True),
    ("2\\sqrt{3}", "2\\sqrt{3}", None, "2\\sqrt{3}", True),
    ("The side is \\sqrt{12}", "2\\sqrt{3}", None, "\\sqrt{12}", True),
    ("4\\sqrt{3}", "4 \\sqrt { 3 }", None, "4\\sqrt{3}", True),
    ("x = \\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", None, "\\frac{\\sqrt{3}}{2}", True),
    ("The radius is \\sqrt{13}", "2\\sqrt{3}", None, "\\sqrt{13}", False),
    ("Half of \\frac{1}{2} of 10 is 2.5", "2.5", None, "2.5", True),
    # units glued to the number; exponents are not "the last number"
    ("Answer: 6 cm", "6cm", None, "6 cm", True),
    ("Answer: 60°", "60", None, "60°", True),
    ("The area is 12cm^2.", "12", None, "12", True),
    ("Answer: 12cm^2", "12 cm", None, "12cm^2", True),
    ("Answer: 5 units", "5", None, "5 units", True),
    ("The temperature dropped to -3 degrees.", "-3", None, "-3", True),
    ("The answer is -3.", "3", None, "-3", False),
    ("The share is 25%.", "25%", None, "25", True),
    ("Answer: 25%", "0.25", None, "25%", False),
    # mixed numbers, a radical over a number, scientific notation (units are dropped: a number
    # with the gold's value is right, as the benchmarks' own rule scorers count it)
    ("Answer: 1 1/2", "1.5", None, "1 1/2", True),
    ("Answer: 1 1/2", "5.5", None, "1 1/2", False),  # not "11/2"
    ("Answer: -2 1/4", "-2.25", None, "-2 1/4", True),
    ("Answer: \\sqrt{2}/2", "0.7071", None, "\\sqrt{2}/2", True),
    ("Answer: 2.5e3", "2500", None, "2.5e3", True),
    # whole numbers compare exactly (a relative 1e-4 let 12346 pass for 12345); a count of
    # things is its number
    ("Answer: 12346", "12345", None, "12346", False),
    ("Answer: 70001", "70000", None, "70001", False),
    ("Answer: 18 eggs", "18", None, "18 eggs", True),
    ("Answer: 5 dollars", "5", None, "5 dollars", True),
    ("Answer: 2 pi", "2", None, "2 pi", False),  # words that change the value
    ("Answer: 10 million", "10", None, "10 million", False),
    ("Answer: 12345.4", "12345", None, "12345.4", False),
    ("Answer: 1 2", "12", None, "1 2", False),
    ("Answer: 1e400", "2e400", None, "1e400", False),
    # an equation is compared whole ("x = 7" is still 7): its right-hand side was taken for
    # the gold and the reply alike, so "1" and every "... = 1" were right for an ellipse
    ("Answer: 1", "\\frac{x^2}{81}+\\frac{y^2}{9}=1", None, "1", False),
    ("Answer: y = 1", "\\frac{x^2}{81}+\\frac{y^2}{9}=1", None, "y = 1", False),
    ("Answer: x^2+y^2=1", "\\frac{x^2}{81}+\\frac{y^2}{9}=1", None, "x^2+y^2=1", False),
    ("Answer: \\frac{x^2}{81}+\\frac{y^2}{9}=1", "\\frac{x^2}{81}+\\frac{y^2}{9}=1", None,
     "\\frac{x^2}{81}+\\frac{y^2}{9}=1", True),
    ("AB = 3 + 4 = 7", "7", None, "7", True),
    ("Answer: 9.4 cm^2", "$9.4 \\mathrm{~cm}^{2}$", None, "9.4 cm^2", True),  # LaTeX's tie
    # a worked answer "expression = value" still gives its value for a plain gold
    ("Answer: 180 - 120 = 60", "60", None, "180 - 120 = 60", True),
    ("So the answer is 180° - 120° = 60°.", "60", None, "180° - 120° = 60°", True),
    ("\\boxed{\\frac{1}{2} \\cdot 6 \\cdot 8 = 24}", "24", None,
     "\\frac{1}{2} \\cdot 6 \\cdot 8 = 24", True),
    ("Answer: 1/2 * 6 * 8 = 24", "24", None, "1/2 * 6 * 8 = 24", True),
    ("Answer: \\sqrt{49} = 7", "7", None, "\\sqrt{49} = 7", True),
    ("Answer: f(-1) = 5", "5", None, "f(-1) = 5", True),
    ("Answer: x + y = 10", "10", None, "x + y = 10", True),
    # one-letter units
    ("Answer: 8 L", "8", None, "8 L", True),
    ("Answer: 2 s", "2", None, "2 s", True),
    ("Answer: 4 h", "4", None, "4 h", True),
    ("Answer: 5 g", "5", None, "5 g", True),
    ("Answer: 3 hundredths", "3", None, "3 hundredths", False),  # a fraction, not 3
    ("Answer: 2 sevenths", "2", None, "2 sevenths", False),
    ("Answer: 3 n", "3", None, "3 n", False),  # a variable, not a count
    ("Answer: 12 345", "12345", None, "12 345", True),  # thousands grouped by spaces
    ("Answer: 1 000 000", "1000000", None, "1 000 000", True),
    ("Answer: 1 1/2 cups", "1.5", None, "1 1/2 cups", True),
    # choice letters in a sentence
    ("So the correct option is C.", "C", CH4, "C", True),
    ("So the correct option is C.", "B", CH4, "C", False),
    ("Therefore, the correct answer is (B)", "B", CH4, "(B)", True),
    ("Option D is correct", "D", CH4, "D", True),
    ("the correct option is a right angle", "right angle", None, None, False),
    # the stated letter is the first one of the answer phrase, not a later one it argues with
    ("The answer is (A), not (B).", "A", CH4, "(A), not (B)", True),
    ("The answer is (B) since (A) is too small.", "B", CH4, "(B) since (A) is too small", True),
    ("Answer: A, because B is too large.", "A", CH4, "A, because B is too large", True),
    ("A, B and C lie on the circle, so the angle is 60", "C", CH4, "60", True),  # points
    # a reply that restates the options ("A. 30 B. 45 ...") names no letter by listing them:
    # the answer is the option text it settles on
    ("A. 30 B. 45 C. 60 D. 90\nThe angle is 60", "C", CH4, "60", True),
    ("Options:\n(A) 30\n(B) 45\n(C) 60\n(D) 90\nSo the angle is 60 degrees.", "C", CH4, "60",
     True),
    ("(A) 30\n(B) 45\n(C) 60\n(D) 90\nSo I pick (C).", "C", CH4, "C", True),
    ("I pick (C) 60.", "C", CH4, "C", True),  # one letter with its own text: an answer
    ("A. 30\nB. 45\nC. 60\nD. 90\nMy choice: C. 60", "C", CH4, "C", True),  # after the list
    ("The options are (A) 30, (B) 45, (C) 60, (D) 90.\nThe angle is (C) 60", "C", CH4, "C", True),
    ("The answer is not (A) but (B).", "B", CH4, "not (A) but (B)", True),
    # an answer given first and other options explained after it is no restated options list
    # (a restatement lists its labels in order from A)
    ("C. 60 is the measure; D. 90 would be too large.", "C", CH4, "C", True),
    ("C. 60\nExplanation: A. 30 and B. 45 are too small.", "C", CH4, "C", True),
    ("C) 60°. A) 30° and B) 45° are the other two angles.", "C", CH4, "C", True),
    # a stated answer that starts with its letter, whatever follows it
    ("Answer: B (45 degrees)", "B", CH4, "B (45 degrees)", True),
    ("Answer: B because angle A is 30", "B", CH4, "B because angle A is 30", True),
    ("Answer: B - 45", "B", CH4, "B - 45", True),
    ("Answer: C 60", "C", CH4, "C 60", True),
    ("Answer: (B) 45, not (A) 30", "B", CH4, "(B) 45, not (A) 30", True),
    ("The answer is (B) 45, since (A) 30 is too small.", "B", CH4,
     "(B) 45, since (A) 30 is too small", True),
    ("The answer is option A, not B.", "A", CH4, "option A, not B", True),
    ("Answer: The correct choice is A, not B", "A", CH4, "The correct choice is A, not B", True),
    ("Answer: A right angle, so D", "D", CH4, "A right angle, so D", True),  # "A" the article
    # a stated phrase that dismisses its first letter, or settles on another one ("so C",
    # "choose C", "the correct option is B"), states the later one
    ("Answer: A is too small; C", "C", CH4, "A is too small; C", True),
    ("Answer: A is incorrect since the angle is 60, so the correct option is C", "C", CH4,
     "A is incorrect since the angle is 60, so the correct option is C", True),
    ("\\boxed{A is wrong, C}", "C", CH4, "A is wrong, C", True),
    ("Final Answer: A 30° angle is too small, so C", "C", CH4,
     "A 30° angle is too small, so C", True),
    ("Answer: A with 30 is wrong; C", "C", CH4, "A with 30 is wrong; C", True),
    ("Answer: D - 90 is too big, choose C", "C", CH4, "D - 90 is too big, choose C", True),
    ("Answer: C is not correct; the correct option is B", "B", CH4,
     "C is not correct; the correct option is B", True),
    ("Answer: B, so A is wrong", "B", CH4, "B, so A is wrong", True),
    # a restated list with a gap (one option written otherwise) is still a restatement
    ("A. 5\nB. 5√2\nC. 10\nD. 20\nThe hypotenuse is 10.", "C", ["5", "5\\sqrt{2}", "10", "20"],
     "10", True),
    # duplicated option text: a prediction equal to the gold option's value is right
    ("Answer: 52", "B", ["38", "52", "52", "62"], "52", True),
    ("Answer: 38", "B", ["38", "52", "52", "62"], "38", False),
    # the gold given as the option text (MathVista): a letter answer names that text
    ("Answer: C", "5", ["3", "4", "5", "6"], "C", True),
    ("(C)", "5", ["3", "4", "5", "6"], "C", True),
    ("(B)", "5", ["3", "4", "5", "6"], "B", False),
    ("Answer: 5", "5", ["3", "4", "5", "6"], "5", True),
    ("The correct option is C.", "4", ["3", "4", "5", "6"], "C", False),
    # a one-word reply is its own answer (the shipped prior's pre-training format)
    ("triangle", "triangle", None, "triangle", True),
    (" Red.\n", "red", None, "Red", True),
    ("no idea", "3", None, None, False),
]


@pytest.mark.parametrize(("text", "target", "choices", "extracted", "correct"), CASES)
def test_table(text, target, choices, extracted, correct):
    assert extract_answer(text, choices) == extracted
    assert score(text, target, choices) == (extracted, correct)


@pytest.mark.parametrize(("text", "target", "choices", "extracted", "correct"), CASES)
def test_table_without_math_verify(monkeypatch, text, target, choices, extracted, correct):
    """The rules alone (fractions, radicals, units) score the table without math-verify."""
    monkeypatch.setattr(scoring, "_math_verify", lambda: None)
    assert score(text, target, choices) == (extracted, correct)


@pytest.mark.parametrize(("text", "target", "choices", "extracted"),
                         [c[:4] for c in CASES if c[-1]])
def test_table_wrong_target_is_wrong(text, target, choices, extracted):
    """Every answer the table scores right is scored wrong against any other target: the scorer
    reads the output rather than saying yes to whatever it extracts."""
    if choices is None:
        others = ["999", "-17", "hexagon"]
    else:
        is_letter = len(target) == 1 and "A" <= target < chr(ord("A") + len(choices))
        gold = choices[ord(target) - ord("A")] if is_letter else target
        others = [chr(ord("A") + i) for i, c in enumerate(choices) if c != gold]
    assert others
    for other in others:
        assert score(text, other, choices) == (extracted, False), other


@pytest.mark.parametrize(("raw", "norm"), [
    ("**Pentagon.**", "pentagon"), ("$60^\\circ$", "60"), ("an isosceles", "isosceles"),
    ("\\text{ square}", "square"), ("c = 13", "13"), ("50%", "50")])
def test_normalize(raw, norm):
    assert normalize(raw) == norm


@pytest.mark.parametrize(("raw", "value"), [
    ("3/4", 0.75), ("\\frac{1}{2}", 0.5), ("-2.5", -2.5), ("1,000", 1000.0), ("12 cm", 12.0),
    ("3 or 4", None), ("pentagon", None), ("1/0", None), ("2\\sqrt{3}", pytest.approx(2 * 3**0.5)),
    ("\\frac{\\sqrt3}{2}", pytest.approx(3 ** 0.5 / 2)), ("-\\sqrt{4}", -2.0), ("6cm", 6.0),
    ("\\sqrt[3]{8}", pytest.approx(2.0)), ("\\frac{1}{0}", None), ("\\sqrt{x}", None),
    ("2\\frac{1}{2}", None), ("-", None)])
def test_to_number(raw, value):
    assert to_number(raw) == value


def test_choice_text_counts_only_when_unambiguous():
    # Duplicated option texts used to make "60" wrong for gold C in ["60", "45", "60", "90"];
    # that was itself a mis-score: "60" *is* the gold option's value (A and C say the same).
    assert is_correct("60", "C", CH4) and is_correct("60", "C", ["60", "45", "60", "90"])
    assert is_correct("(c)", "C", CH4) and not is_correct("B", "C", CH4)
    # ambiguous: the prediction matches options whose values differ from each other
    assert not is_correct("1.00008", "A", ["1", "1.00016", "2", "3"])
    assert is_correct("1", "A", ["1", "1.00016", "2", "3"])


def test_letter_answer_against_gold_option_text():
    choices = ["3", "4", "5", "6"]
    assert is_correct("C", "5", choices) and is_correct("(c)", "5", choices)
    assert not is_correct("B", "5", choices) and not is_correct("C", "4", choices)
    assert is_correct("B", "52", ["38", "52", "52", "62"])
    assert not is_correct("C", "5", None)


def test_a_letter_target_without_choices_reads_the_stated_letter():
    """Held-out rows carry no options list (they are in the question text): a letter gold is
    still compared as a letter, among A-J."""
    assert score("Answer: B) 45", "B") == ("B) 45", True)
    assert score("The correct option is (B).", "B") == ("B", True)
    assert score("The correct option is (D).", "B") == ("D", False)
    assert score("Answer: A, because B is too large.", "B")[1] is False
    assert score("Answer: B", "b")[1]  # a lower-case gold letter is a string: as before
    assert not score("Answer: b) 45", "b")[1]


@pytest.mark.parametrize("mv", ["with math-verify", "rules alone"])
def test_a_reply_that_is_the_gold_itself_is_right(monkeypatch, mv):
    """A bare reply equal to the reference answer (spaces aside) is right whatever the
    extraction makes of it (it took the last number of "(2,2)"), with or without math-verify."""
    if mv == "rules alone":
        monkeypatch.setattr(scoring, "_math_verify", lambda: None)
    for gold in ("(2,2)", "$9 \\pi \\mathrm{cm}^{2}$", "y=2x+1"):
        assert score(gold, gold)[1], gold
    assert score("(2, 2)", "(2,2)") == ("(2, 2)", True)
    assert score("y = 2x + 1", "y=2x+1")[1]
    assert not score("(2,3)", "(2,2)")[1]
    # a reasoning reply is not bare: its last equation is no stated answer
    assert not score("The answer is 3. Not y = 5", "5")[1]
    assert not score("Answer: 7\nCheck: 3 + 4 = 7, and 2 + 2 = 4", "4")[1]
    assert not score("1 1/2", "11/2")[1]
    assert score("(2,2)", "(2,2)", strict=True) == (None, False)  # stated answers only


def test_a_multi_select_gold_needs_exactly_its_letters():
    for reply in ("C\nD", "Answer: C\nD", "C, D", "Answer: C and D", "\\boxed{C,D}"):
        assert score(reply, "C\nD")[1], reply
    for reply in ("Answer: C, D\nI checked each option.", "I pick C and D",
                  "Answer: C and D. A square has four sides.", "Options C and D are correct.",
                  "Answer: C, D are correct.", "Answer: both C and D are correct",
                  "Answer: C, D\nIn triangle ABC, A = 30.",
                  "Answer: C\nD\nExplanation: (A) is wrong.", "Answer:\n- C\n- D",
                  "Answer:\n* C\n* D", "Answer: (C)\n(D)", "Answer: **C**\n**D**",
                  "Answer: C\n\nD", "Answer: C)\nD)", "Answer:\n1. C\n2. D"):
        assert score(reply, "C\nD")[1], reply
    for reply in ("Answer: C", "C, D, E", "Answer: D", "", "Neither C nor D.",
                  "Answer: E. Not C and not D"):
        assert not score(reply, "C\nD")[1], reply
    assert score("Answer: C, D", "C, D", strict=True)[1]
    assert not score("C, D", "C, D", strict=True)[1]  # not stated


def test_a_degenerate_reply_does_not_crash_the_scorer():
    score("Answer: " + "1/" * 1500 + "1", "1")  # no RecursionError (a collapsed model's output)


def test_heldout_uses_the_shared_scorer():
    """The in-training held-out accuracy and the eval tasks share one scorer."""
    import vldft.heldout as heldout

    assert heldout.score is score


# (model output, target, strict extraction): strict counts only a stated final answer
STRICT = [
    ("The figure has 4 corners. Answer: square", "square", "square"),
    ("so the area is \\boxed{12}", "12", "12"),
    ("<answer>60</answer>", "60", "60"),
    ("The answer is 2.50.", "2.5", "2.50"),
    ("The figure has 4 cor: 3 Ane", "3", None),  # broken text ending in the right number
    ("There are 3 dots.", "3", None),
    ("triangle", "triangle", None),
    ("", "4", None),
]


@pytest.mark.parametrize("text, target, extracted", STRICT)
def test_strict_needs_a_stated_answer(text, target, extracted):
    assert extract_answer(text, strict=True) == extracted
    pred, ok = score(text, target, strict=True)
    assert pred == extracted and ok == (extracted is not None)
    assert score(text, target)[1] == (text != "")  # the lenient default still finds them


def test_strict_keeps_the_comparison():
    assert score("Answer: 12 cm", "12", strict=True) == ("12 cm", True)
    assert score("Answer: 5", "6", strict=True) == ("5", False)
    assert score("Answer: (C)", "5", ["3", "4", "5", "6"], strict=True)[1]


def test_heldout_combines_lenient_and_strict_counts_over_ranks():
    """Two ranks' raw counts merge into one accuracy of each kind, lenient and strict."""
    from vldft.heldout import combine

    def part(correct, strict, per_kind):
        return {"n": 4, "n_skipped": 0, "n_scored_ce": 4, "loss_sum": 1.0, "ce_sum": 1.0,
                "p_sum": 2.0, "n_tokens": 4, "correct": correct, "correct_strict": strict,
                "scored": 4, "per_kind": per_kind, "examples": []}

    res = combine([part(3, 1, {"count": [2, 2, 1], "shape": [1, 2, 0]}),
                   part(2, 2, {"count": [2, 4, 2]})])
    assert res["accuracy"] == 5 / 8 and res["accuracy_strict"] == 3 / 8
    assert res["accuracy_by_kind"] == {"count": 4 / 6, "shape": 1 / 2}
    assert res["accuracy_strict_by_kind"] == {"count": 3 / 6, "shape": 0.0}


def test_heldout_accuracy_names_its_denominator_when_rows_lack_answers():
    """30 rows, 10 without an answer: the accuracy is over the 20 (it read as over all 30)."""
    from vldft.heldout import accuracy_line, combine

    part = {"n": 30, "n_skipped": 0, "n_scored_ce": 30, "loss_sum": 1.0, "ce_sum": 1.0,
            "p_sum": 2.0, "n_tokens": 4, "correct": 5, "correct_strict": 5, "scored": 20,
            "per_kind": {"all": [5, 20, 5]}, "examples": []}
    res = combine([part])
    assert res["n_answered"] == 20 and res["accuracy"] == 0.25
    assert "accuracy 25.0% of 20 with an answer (10 without)" in accuracy_line("held-out", res)
    full = combine([{**part, "scored": 30, "per_kind": {"all": [5, 30, 5]}}])
    assert "with an answer" not in accuracy_line("held-out", full)


def test_an_equation_gold_takes_an_equivalent_equation_with_math_verify():
    """Compared whole, an equation is still found equal to the same equation written another
    way (math-verify), and not to its right-hand side."""
    pytest.importorskip("math_verify")
    if scoring._math_verify() is None:
        pytest.skip("math-verify does not import here (eval/pins.txt)")
    gold = "\\frac{x^2}{81}+\\frac{y^2}{9}=1"
    for reply in ("Answer: x^2/81 + y^2/9 = 1", "Answer: \\frac{y^2}{9}+\\frac{x^2}{81}=1"):
        assert score(reply, gold)[1], reply
    for reply in ("Answer: \\frac{x^2}{4}+\\frac{y^2}{9}=1", "Answer: 1"):
        assert not score(reply, gold)[1], reply


def test_math_verify_equivalence_holds_in_a_worker_thread():
    """lmms-eval's own command line scores in a thread pool, where math-verify's signal-based
    timeout raises: the same reply must score the same there as on the main thread (it was
    scored wrong in the thread)."""
    import concurrent.futures

    if scoring._math_verify() is None:
        pytest.skip("math-verify does not import here (eval/pins.txt)")
    cases = [("Answer: x^2+2x+1", "(x+1)^2", True), ("Answer: x^2+1", "(x+1)^2", False)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(lambda c: score(c[0], c[1])[1], cases))
    assert threaded == [score(c[0], c[1])[1] for c in cases] == [c[2] for c in cases]
    # without a timeout there, a power tower is never handed to sympy (it held the GIL: the
    # whole process hung); a daemon thread, so a regression fails here instead of hanging
    import threading

    found: list = []
    replies = ["10^{10^{10}}", "10^{10}!", "(10^{10})!", "\\left(10^{10}\\right)!",
               "{10^{10}}!", "2^{100}!"]
    worker = threading.Thread(target=lambda: found.extend(
        score(f"Answer: \\boxed{{{r}}}", "12")[1] for r in replies), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and found == [False] * len(replies), found


def test_sigterm_while_scoring_is_not_swallowed(monkeypatch):
    """The SIGTERM exception of a resumable evaluation passes through scoring's `except
    Exception` (it was caught there and the answer scored wrong, the evaluation finishing as if
    uninterrupted)."""
    from vldft import scoring
    from vldft.eval.resume import Interrupted

    def parse(*a, **k):
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(scoring, "_math_verify", lambda: (parse, lambda *a, **k: True))
    with pytest.raises(Interrupted):
        scoring.score("Answer: (x+1)^2", "x^2+2x+1")


OPTS = ["30", "45", "60", "90"]


@pytest.mark.parametrize("reply, gold", [
    (r"\boxed{\text{B}}", "B"), (r"The answer is $\boxed{\text{B}}$.", "B"),
    ("Answer: $B$", "B"), (r"Answer: \text{B}", "B"), (r"<answer>\text{B}</answer>", "B"),
    (r"Answer: \textbf{C}", "C"), (r"\boxed{\mathrm{D}}", "D"), ("Answer: C, not A", "C"),
    ("(A), not (B)", "A"), ("not (A) but (B)", "B"), ("Answer: C, since A is too small", "C"),
])
def test_a_letter_in_latex_or_beside_a_rejected_one_is_read(reply, gold):
    """A letter wrapped in LaTeX (\\text{B}, $B$) is that letter (they were scored wrong)."""
    for choices in (OPTS, None):
        assert score(reply, gold, choices)[1], (reply, gold, choices)


@pytest.mark.parametrize("reply, gold", [
    ("The answer is not A", "A"), ("Answer: not B", "B"), ("It is not (A).", "A"),
    ("Answer: A or B", "B"), ("Answer: B or A", "A"), (r"\boxed{A or C}", "C"),
    (r"\boxed{A, B}", "A"), ("A, B, C, or D", "D"), ("The answer is A, B, C, or D", "A"),
    ("(A) (B) (C) (D)", "D"), ("Answer: B, D", "B"), ("Answer: A/B", "B"),
])
def test_a_hedged_or_negated_letter_is_not_an_answer(reply, gold):
    """Several letters offered at once, or a letter the reply rejects, answer nothing (each was
    scored right: the last or the first letter won)."""
    for choices in (OPTS, None):
        assert not score(reply, gold, choices)[1], (reply, gold, choices)


@pytest.mark.parametrize("reply, gold, right", [
    ("Answer: 5 mm", "5 cm", False), ("8 inches", "8 feet", False), ("8 ft", "8 inches", False),
    ("5 g", "5 kg", False), ("8 m", "8 min", False), ("Answer: 5 cm", "5cm", True),
    ("Answer: 12 square cm", "12 cm^2", True), ("It is 60 degrees.", "60°", True),
    ("Answer: 5 units", "5 cm", True), ("the side is 5 cm, so the area is 25", "25 cm^2", True),
])
def test_two_units_must_agree(reply, gold, right):
    """Units are dropped from both sides, but a reply and a gold that both name a unit must
    name the same one ("5 mm" was right for "5 cm"); a generic "units" and a power pass."""
    assert score(reply, gold)[1] is right


def test_a_box_in_a_box_and_a_reply_cut_off_while_reasoning():
    """The outer box is the answer (the inner one was taken: 2 for 1/2); a reply that ends
    inside an unclosed <think> states nothing (its draft "Answer: 5" was scored right)."""
    assert score(r"\boxed{\frac{1}{\boxed{2}}}", "1/2")[1]
    assert score(r"\boxed{3} and then \boxed{4}", "4")[1]
    assert not score("<think>Answer: 5", "5")[1]
    assert score("<think>maybe 4</think>Answer: 5", "5")[1]


@pytest.mark.parametrize("reply, gold, right", [
    ("Answer: x = -3 or x = 3", "3", False), ("Answer: x=5, y=3", "3", False),
    ("Answer: y = 3, x = 5", "5", False), ("Answer: 180 - 120 = 60", "60", True),
    ("Answer: a = b = 60", "60", True), ("Answer: x = 3", "3", True),
])
def test_several_stated_values_are_not_the_last_one(reply, gold, right):
    """A worked answer is its last value, a list of equations is not ("x = -3 or x = 3" was
    right for 3)."""
    assert score(reply, gold)[1] is right


def test_two_options_offered_as_text_are_not_an_answer():
    """ "45° or 60°" was right for the option "60°" (math-verify kept the last value)."""
    opts = ["30°", "45°", "60°", "90°"]
    assert not score("Answer: 45° or 60°", "C", opts)[1]
    assert not score("Answer: 45° or 60°", "60°")[1]
    assert score("Answer: 60°", "C", opts)[1]
