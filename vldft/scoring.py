"""Rule-based answer extraction and scoring, shared by the lmms-eval tasks in ``eval/`` and the
in-training held-out accuracy (``vldft.heldout``).

``extract_answer(text, choices)`` finds the model's final answer, trying in order:
1. the last ``<answer>...</answer>`` block (reasoning-format outputs; searched further below),
   after ``<think>`` blocks are dropped (an unclosed one to the end: a reply cut off while
   reasoning states nothing),
2. the last ``\\boxed{...}`` (balanced braces; a box inside it is part of it),
3. the last "Answer: X" / "answer is X" (rest of that line or sentence),
4. with ``choices``: a final choice letter ("(C)", "option C", "the correct option is C",
   "C." at a line start, a bare "C"); the labels of a restated options list ("A. 30 B. 45",
   "(A) 30" lines: labels in order from A) are passed over, they answer nothing,
5. whichever ends later: the last LaTeX fraction / radical expression (``\\frac{1}{2}``,
   ``2\\sqrt{3}``, ``\\frac{\\sqrt{3}}{2}``) or the last number (not an exponent like ``cm^2``).

``extract_answer(text, choices, strict=True)`` stops after step 3: only a stated answer
counts. ``vldft.heldout`` reports both; a model whose replies break into noise that happens to end
in the right number scores under the lenient steps 4-5 but not under strict.

``is_correct(pred, target, choices)`` compares after normalisation (case, markdown, ``$``,
``\\text{}``, a leading article, "x =" prefixes (a name before "=": an equation such as "x^2 + y^2
= 1" is compared whole, and a worked answer "180 - 120 = 60" also by its last value for a gold
without "="), spaces around LaTeX braces, degree signs, percent signs and units that follow a
number, glued or not: "6cm", "12 cm^2", "5 units"; but a reply and a gold that both name a unit
must name the same one, a power aside: "5 mm" is not "5 cm"): numbers (a whole-number gold within
0.01, so 12346 and 12345.4 are not 12345; others with a relative tolerance; a count of things, "18
eggs", is its number, "2 pi", "10 million" or "3 hundredths" not; fractions, mixed numbers "1 1/2",
``\\frac``, "2.5e3", thousands separators ("1,250", "12 345"), and products of numbers, ``\\frac``
and ``\\sqrt`` such as ``4\\sqrt{3}`` = ``\\sqrt{48}``), plain strings, and finally ``math-verify``
equivalence when that package imports (lmms-eval depends on it; eval/pins.txt says which versions
import together). ``score`` also counts a bare reply that is the gold itself as written (case,
``$`` and spaces around punctuation aside: "(2, 2)" for "(2,2)") whatever its extraction gives, and
a multi-select gold without ``choices`` ("C\\nD", "C, D") needs exactly its letters. With
``choices``:

- a letter wrapped in LaTeX (``\\text{B}``, ``$B$``) is that letter; a reply that offers several
  letters ("A or B", ``\\boxed{A, B}``, "A, B, C, or D") or rejects one ("not A") names none.
- a letter target (geometry3k): a predicted letter (the one a stated answer settles on: "A is
  too small, so C" and "the correct option is C" state C; else the one it starts with: "(A),
  not (B)" states A; else its last one: "not (A) but (B)" states B) must be that letter; a
  predicted text counts when it matches the gold option and every option it matches has the
  gold option's value. So "52" is right for gold B in ["38", "52", "52", "62"] (B and C say
  the same thing), but a prediction matching two options whose values differ is ambiguous and
  wrong. ``score`` also takes a whole reply that is the gold option's text as written
  ("090^\\circ T"), unless that text reads as a letter or the reply names a choice letter.
- no ``choices`` and a target that is one capital letter A-J (a held-out row whose options are
  in its question): a choice letter among A-J.
- a text target (MathVista): the prediction may match the text itself, or name a letter whose
  option text matches it ("(C)" is right for target "5" in ["3", "4", "5", "6"]).
"""

from __future__ import annotations

import functools
import math
import re
import threading

LETTERS = "ABCDEFGHIJ"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
# reasoning: a closed <think> block, or an unclosed one to the end (a reply cut off while it
# was still reasoning states no answer: its drafts do not count)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.IGNORECASE | re.DOTALL)
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*(?:\*\*)?\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\d.^_])(?<!\^\{)[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
                     r"(?:\s*/\s*\d+(?:\.\d+)?)?")
_BRACES = r"\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"  # up to three levels deep
_ARG = rf"(?:{_BRACES}|\d)"
_TERM = rf"\\[dt]?frac\s*{_ARG}\s*{_ARG}|\\sqrt\s*(?:\[[^\]]*\])?\s*{_ARG}"
_MATH = re.compile(rf"(?:\d+(?:\.\d+)?\s*[-+]\s*|-\s*)?(?:\d+(?:\.\d+)?\s*)?(?:{_TERM})"
                   rf"(?:\s*(?:{_TERM}))*")
_UNITS = re.compile(
    r"\^\s*\{?\\circ\}?|\\circ|°|\\%|%|(?<=[\d}])\s*(?:sq\.?\s*|square\s+)?(?:units?|degrees?|"
    r"deg|[ckm]?m|meters?|centimeters?|inch(?:es)?|ft|feet|[kcm]?g|[m]?l|s|h|min)(?:\s*\^\s*\{?[23]\}?|[²³])?(?![a-z])",
    re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces; a box inside
    another is part of it (``\\boxed{\\frac{1}{\\boxed{2}}}`` is ``\\frac{1}{{2}}``, not ``2``)."""
    spans = []  # (start, end) of each balanced box's content
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            spans.append((m.end(), i - 1))
    outer = [(a, b) for a, b in spans if not any(a2 < a and b <= b2 for a2, b2 in spans)]
    if not outer:
        return None  # an inner box is its content: braces are harmless in LaTeX
    return re.sub(r"\\(?:boxed|fbox)\s*\{", "{", text[outer[-1][0]: outer[-1][1]]).strip()


def _answer_phrase(text: str) -> str | None:
    """Rest of the last "Answer: X" / "the answer is X", up to the end of its sentence."""
    matches = _ANSWER_IS.findall(text)
    for raw in reversed(matches):
        value = re.split(r"(?<=[^\d])\.(?:\s|$)|\.\s", raw.strip() + " ")[0].strip()
        value = value.strip("*`'\" ")
        if value:
            return value
    return None


# LaTeX around a letter: \text{B}, \textbf{B}, \mathrm{B}, $B$
_LATEX_WRAP = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mathit)\s*\{([^{}]*)\}")
# several letters offered at once: "A or B", "A, B", "A/B", "A, B, C, or D", "(A) (B)"
_LETTER_LIST = re.compile(r"\(?[A-J]\)?(?:\s*(?:[,/;&]|\s)\s*(?:(?:or|and)\s+)?\(?[A-J]\)?)+",
                          re.IGNORECASE)
# a letter the reply rejects: "not A", "not (B)", "not option C"
_NOT_BEFORE = re.compile(r"\bnot\s*(?:option\s+|choice\s+)?\(?$", re.IGNORECASE)


def _choice_letter(text: str, choices: list[str], last: bool = True) -> str | None:
    """A choice letter among the first ``len(choices)`` letters, or None: the last one in a
    reply (``last``), the first one in a stated answer phrase ("(A), not (B)" states A).
    Labels of a restated options list ("A. 30 B. 45", "(A) 30" on each line: two letters or
    more each followed by its own option text) name no answer and are passed over; so do a
    letter the reply rejects ("not A") and a reply that is several letters ("A or B", "A, B,
    C, or D"). LaTeX around a letter (``\\text{B}``, ``$B$``) is dropped."""
    valid = LETTERS[: len(choices)]
    if not valid:
        return None
    text = _LATEX_WRAP.sub(r"\1", text).replace("$", "")
    stripped = text.strip().strip("*`'\".:()[] ")
    if _LETTER_LIST.fullmatch(stripped):
        return None
    if len(stripped) == 1 and stripped.upper() in valid:
        return stripped.upper()
    # (pattern, whether a lower-case letter counts: "option c" yes, "the answer is a ..." no)
    patterns = ((rf"\(([{valid}])\)", False),
                (rf"(?:option|choice)\s*:?\s*\(?([{valid}])\b", True),
                (rf"(?:answer|option|choice)\s+is\s*:?\s*\(?([{valid}])\b", False),
                (rf"(?m)^\s*\(?([{valid}])[.):]", False), (rf"\b([{valid}])\s*$", False))
    if not last:  # a stated phrase that settles on a letter later ("A is too small, so C",
        # "choose C", "the correct option is B") states that one
        cues = [m.group(1).upper() for m in re.finditer(
            rf"(?:\bso|\bthus|\btherefore|\bhence|\bchoose|\bpick|\bselect|correct\s+"
            rf"(?:option|choice|answer)\s+is)\s*:?\s*(?:option\s+|choice\s+)?\(?([{valid}])\)?"
            rf"(?=\s*$|\s*[.,;:)])", text, re.IGNORECASE) if m.group(1).isupper()]
        if cues:
            return cues[-1]
        # one that starts with its letter: "A, because ...", "B (45 degrees)", "B - 45", "C 60"
        # (not "A right angle", "A 30° angle": "A" may be the article; not "A is too small")
        rest = valid.replace("A", "")
        patterns += ((rf"\A\s*\(?([{valid}])\)?(?=\s*$|[.,;:)]|\s*[-\u2013\u2014(]|"
                      rf"\s+(?:because|since|not|rather|which)\b)", False),)
        if rest:
            patterns += ((rf"\A\s*\(?([{rest}])\)?(?=\s+\d)", False),)
    found: list[tuple[int, str, int]] = []  # (where, letter, end of the match)
    for pattern, lower_ok in patterns:
        found += [(m.start(1), m.group(1).upper(), m.end())
                  for m in re.finditer(pattern, text, re.IGNORECASE)
                  if (m.group(1).isupper() or lower_ok)
                  and not _NOT_BEFORE.search(text[:m.start(1)])]

    # a restated options list: the first "X. option" / "(X) option" of each letter; two or more
    # of them, in order from A ("A. 30 B. 45 ...", one written otherwise may be missing), span
    # the listing, and the labels inside
    # that span answer nothing ("C. 60; A. 30 and B. 45 are too small" restates nothing)
    firsts = [m for L, option in zip(valid, choices, strict=False) if str(option).strip()
              for m in [re.search(rf"(?<![A-Za-z])\(?{L}[.):]\s*"
                                  rf"{re.escape(str(option).strip())}", text, re.IGNORECASE)]
              if m]
    order = "".join(m.group().lstrip("(")[0].upper() for m in sorted(firsts, key=re.Match.start))
    if len(firsts) >= 2 and order[0] == "A" and list(order) == sorted(set(order)):
        lo, hi = min(m.start() for m in firsts), max(m.end() for m in firsts)
        found = [f for f in found if not lo <= f[0] < hi]
    if not found:
        return None
    if not last:  # a stated phrase: the letter it starts with ("(A), not (B)", "option A, not
        start = min(found)  # B", "the correct choice is A"), else its last
        if _LEAD.fullmatch(text[: start[0]]):
            return start[1]
    return max(found)[1]


# what may come before a stated phrase's own letter: "", "(", "option ", "the correct choice is "
_LEAD = re.compile(r"[\s(*`'\"]*(?:(?:the\s+)?(?:(?:correct|right|best|final)\s+)?"
                   r"(?:option|choice|answer)\s*(?:is\s*)?:?[\s(*`'\"]*)?", re.IGNORECASE)
_ONE_WORD = re.compile(r"\s*([A-Za-z]+)\.?\s*")


def extract_answer(text: str | None, choices: list[str] | None = None,
                   strict: bool = False) -> str | None:
    """The final answer in a model output (raw, not normalised), or None if there is none.
    ``strict``: only an answer the output states (steps 1-3: ``<answer>``, ``\\boxed{}``,
    "Answer: X"); a bare letter, word or trailing number does not count."""
    if not text:
        return None
    tags = _ANSWER_TAG.findall(text)
    if tags and tags[-1].strip():
        text = tags[-1]
        if strict:  # the tag states the answer
            return _last_boxed(text) or _answer_phrase(text) or text.strip()
    text = _THINK.sub(" ", text)
    for found in (_last_boxed(text), _answer_phrase(text)):
        if found:
            return found
    if strict:
        return None
    if choices:
        letter = _choice_letter(text, choices)
        if letter:
            return letter
    word = _ONE_WORD.fullmatch(text)
    if word:  # a one-word reply ("triangle") is its own answer
        return word.group(1)
    # the last number, unless it is part of (or before) a final \\frac / \\sqrt expression
    last = max((m for pattern in (_MATH, _NUMBER) for m in pattern.finditer(text)),
               key=lambda m: (m.end(), -m.start()), default=None)
    return last.group().strip() if last else None


def reference_answer(solution: str) -> str | None:
    """The final answer of a worked reference solution (a dataset's, not a model's): after the
    last ``####`` (GSM8K), else the last ``\\boxed{...}`` (NuminaMath), else the last "The
    answer is: X" (MetaMathQA); None when there is none. GSM8K's ``#### 72`` is the last
    line: a markdown heading (``#### Step 2``) with lines after it is not an answer."""
    if "####" in solution:
        tail = solution.rsplit("####", 1)[1].strip()
        if tail and "\n" not in tail:
            return tail
    return _last_boxed(solution) or _answer_phrase(solution)


def normalize(answer: str) -> str:
    """Lower-case, unwrap ``$`` / ``\\text{}`` / markdown, drop articles, "x =" and units."""
    s = answer.strip()
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", " ").replace("\\dfrac", "\\frac")
    s = s.replace("~", " ").strip("$*`'\" ").lower()  # "\mathrm{~cm}": LaTeX's tie is a space
    lhs = s.split("=", 1)[0]
    if "=" in s and not s.endswith("=") and lhs.strip() and not re.search(
            r"[-+*/^]|\\(?:frac|sqrt)", lhs) and not _SEVERAL_EQUATIONS.search(s):
        # "x = 7", "AB = 3 + 4 = 7": the value (not "x = -3 or x = 3": two values); an
        s = s.rsplit("=", 1)[1]  # equation ("x^2/81 + y^2/9 = 1") stays whole
    s = re.sub(r"\s+\\", r"\\", re.sub(r"\s*([{}])\s*", r"\1", s)).replace("\\tfrac", "\\frac")
    s = _UNITS.sub(" ", s)
    s = re.sub(r"^(?:a|an|the)\s+", "", s.strip())
    s = re.sub(r"\s+", " ", s).strip(" .,;:!?*`'\"")
    return s


def _group(s: str, i: int) -> tuple[str, int] | None:
    """The ``{...}`` group (or one digit: ``\\sqrt3``) at ``s[i]`` and the index after it."""
    if s[i: i + 1].isdigit():
        return s[i], i + 1
    if s[i: i + 1] != "{":
        return None
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1: j], j + 1
    return None


def _latex_value(s: str) -> float | None:
    """Value of a (space-free) product of a number, ``\\frac{a}{b}`` and ``\\sqrt[n]{a}``, or None
    (a number before ``\\frac``, "2\\frac{1}{2}", may be a mixed number: left to math-verify)."""
    if not s.lstrip("-"):
        return None
    value, i = (-1.0, 1) if s.startswith("-") else (1.0, 0)
    number = re.match(r"\d+(?:\.\d+)?", s[i:])
    if number:
        value, i = value * float(number.group()), i + number.end()
        if s.startswith("\\frac", i):
            return None
    while i < len(s):
        command = re.match(r"\\frac|\\sqrt(?:\[(\d+)\])?", s[i:])
        if not command:
            return None
        i, parts = i + command.end(), []
        for _ in range(2 if command.group().startswith("\\frac") else 1):
            group = _group(s, i)
            inner = _value(group[0]) if group else None
            if inner is None:
                return None
            parts.append(inner)
            i = group[1]
        if len(parts) == 2:
            if not parts[1]:
                return None
            value *= parts[0] / parts[1]
        elif parts[0] < 0:
            return None
        else:
            value *= parts[0] ** (1 / float(command.group(1) or 2))
    return value


# "18 eggs", "42 more minutes", "1 1/2 cups" (a word of one letter is a variable: "3 n")
_TRAILING_WORDS = re.compile(r"([-+]?[\d.,/]+(?: \d+/\d+)?)((?: [a-z]{2,}){1,3})")
# words after a number that change its value: "2 pi", "10 million", "5 squared" are not 2, 10, 5
_MATH_WORDS = frozenset(
    "pi million millions thousand thousands hundred hundreds billion billions trillion dozen "
    "dozens squared cubed square cube root roots sqrt half halves third thirds quarter quarters "
    "fourth fourths fifth fifths sixth sixths seventh sevenths eighth eighths ninth ninths "
    "tenth tenths hundredth hundredths thousandth thousandths millionth millionths percent "
    "times over plus minus".split())


def to_number(answer: str) -> float | None:
    """A number from a normalised answer: "1,250", "-2.5", "3/4", "1 1/2", "2.5e3",
    "\\frac{3}{4}", "2\\sqrt{3}", "\\frac{\\sqrt{3}}{2}", "\\sqrt{2}/2", "6 cm"; else None."""
    s = normalize(answer)
    words = _TRAILING_WORDS.fullmatch(s)  # a count of things: the number ("18 eggs")
    if words and not _MATH_WORDS & set(words.group(2).split()):
        s = words.group(1)
    mixed = re.fullmatch(r"([-+]?)(\d+) (\d+)/(\d+)", s)  # "1 1/2" (not 11/2)
    if mixed:
        sign, whole, num, den = mixed.groups()
        if not 0 < int(num) < int(den):
            return None
        value = int(whole) + int(num) / int(den)
        return -value if sign == "-" else value
    if re.fullmatch(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?", s):  # "12 345": thousands by spaces
        s = s.replace(" ", "")
    if re.search(r"\d\s+\d", s):  # "1 2": two numbers, not 12
        return None
    value = _value(s.replace(" ", ""))
    return value if value is None or math.isfinite(value) else None


def _value(s: str) -> float | None:
    """A space-free "1,250" / "-2.5" / "3/4" / "2.5e3" / LaTeX product (over a number, or over
    another one: "\\sqrt{2}/2") as a float, else None."""
    if re.fullmatch(r"[-+]?\d+(?:\.\d+)?e[-+]?\d+", s):
        return float(s)
    if not re.fullmatch(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|"
                        r"[-+]?\.\d+", s):
        depth, over = 0, []
        for i, ch in enumerate(s):  # a "/" outside every brace group divides two values
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if ch == "/" and depth == 0:
                over.append(i)
        if len(over) > 1:  # "1/2/3": not one value
            return None
        if over:
            num, den = _latex_value(s[:over[0]]), _latex_value(s[over[0] + 1:])
            return num / den if num is not None and den else None
        return _latex_value(s)
    s = s.replace(",", "")
    try:
        if "/" in s:
            num, den = s.split("/")
            return float(num) / float(den) if float(den) else None
        return float(s)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def _math_verify():
    """``(parse, verify)`` from math-verify, or None where it does not import."""
    try:
        from math_verify import parse, verify
    except Exception:  # noqa: BLE001 - missing, or broken (0.1.0 needs latex2sympy2_extended)
        return None
    return parse, verify


# what math-verify (sympy) may evaluate without end: a tower or a 4+ digit power, a 4+ digit
# factorial (only checked where no timeout can stop it)
_UNBOUNDED = re.compile(r"\^\s*\{[^{}]*\^"  # 10^{10^{10}}
                        r"|\^\s*\(?[-+]?\d+\)?\s*\^"  # 10^10^10
                        r"|\^\s*[{(]?\s*[-+]?\d{4,}"  # 2^{1000}
                        r"|\d{4,}\s*\}?\s*!"  # 1000!, {1000}!
                        r"|[})^]\s*!|\^[^!]*!")  # (10^{10})!, {10^{10}}!, 2^{100}!


def _equivalent(pred: str, target: str) -> bool:
    mv = _math_verify()
    if mv is None:
        return False
    parse, verify = mv
    # math-verify's timeouts use signal.alarm, which raises outside the main thread (lmms-eval's
    # own command line scores in worker threads): there, no timeout rather than every answer 0,
    # and so no input that could run for ever (10^{10^{10}} held the GIL: the whole process hung)
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    if limit is None and any(_UNBOUNDED.search(s) or len(s) > 300 for s in (pred, target)):
        return False
    try:
        return bool(verify(parse(f"${target}$", parsing_timeout=limit),
                           parse(f"${pred}$", parsing_timeout=limit), timeout_seconds=limit))
    except Exception:  # noqa: BLE001 - math-verify raises on unparsable input; that is "no"
        return False


def is_correct(pred: str | None, target: str, choices: list[str] | None = None,
               rel_tol: float = 1e-4) -> bool:
    """Whether an extracted answer ``pred`` matches ``target`` (see the module docstring)."""
    if pred is None or not str(pred).strip():
        return False
    target = str(target).strip()
    letter = _choice_letter(pred, choices, last=False) if choices else None
    if choices and len(target) == 1 and target.upper() in LETTERS[: len(choices)]:
        if letter is not None:
            return letter == target.upper()
        # the choice's text counts when it matches the gold option, and every option it
        # matches has the gold option's value (duplicated option texts are not ambiguous)
        gold = choices[LETTERS.index(target.upper())]
        hits = [c for c in choices if is_correct(pred, c)]
        return gold in hits and all(is_correct(c, gold) for c in hits)
    if _same(pred, target, rel_tol):
        return True
    # a gold given as the option text (MathVista): a letter names its option's text
    return letter is not None and _same(choices[LETTERS.index(letter)], target, rel_tol)


_UNIT_NAMES = {"meter": "m", "meters": "m", "centimeter": "cm", "centimeters": "cm",
               "inch": "inch", "inches": "inch", "feet": "ft", "degree": "deg", "degrees": "deg",
               "circ": "deg", "°": "deg"}


def _unit(s: str) -> str | None:
    """The unit after the last number of an answer, spelt one way ("cm" for "square cm" and
    "cm^2": a power is not compared, golds often leave it out; "deg" for "°" and "\\circ"),
    or None (none, or a generic "units")."""
    found = [m.group() for m in _UNITS.finditer(s)]
    if not found:
        return None
    u = re.sub(r"[\s{}\\^.²³]", "", found[-1].lower()).rstrip("23")
    u = re.sub(r"^(?:square|sq)", "", u)
    return None if "unit" in u else _UNIT_NAMES.get(u, u)


_SEVERAL_EQUATIONS = re.compile(r"=[^=]*(?:[,;]|\bor\b|\band\b)[^=]*=", re.IGNORECASE)


def _same(pred: str, target: str, rel_tol: float) -> bool:
    """Whether two answers agree as strings (spaces aside: "(2, 2)" is "(2,2)"), numbers (two
    whole numbers exactly, others within ``rel_tol``) or (with math-verify) math expressions.
    Units are dropped, but two answers that both name one must name the same ("5 mm" is not
    "5 cm"; a power is not compared: "12 cm^2" is "12 cm")."""
    pu, tu = _unit(pred), _unit(target)
    if pu and tu and pu != tu:
        return False
    p, t = normalize(pred), normalize(target)
    if _squash(p) == _squash(t):
        return True
    pn, tn = to_number(pred), to_number(target)
    if pn is not None and tn is not None:
        if tn.is_integer():  # a whole gold: 12346 and 12345.4 are not 12345 (7.0001 is 7)
            return abs(pn - tn) <= min(0.01, rel_tol * abs(tn)) or pn == tn
        return math.isclose(pn, tn, rel_tol=rel_tol, abs_tol=1e-9)
    if re.search(r"\bor\b", p) and not re.search(r"\bor\b", t):
        return False  # two answers offered ("45° or 60°"): math-verify took the last one
    if "=" in pred and "=" not in target and not pred.rstrip().endswith("=") \
            and not _SEVERAL_EQUATIONS.search(pred):
        # a worked answer for a plain gold: "180 - 120 = 60" is its last value (not a list of
        # values: "x = -3 or x = 3", "x=5, y=3" state two answers)
        if _same(pred.rsplit("=", 1)[1], target, rel_tol):
            return True
    return _equivalent(pred, target)


def _squash(s: str) -> str:
    """``s`` without the spaces around punctuation and operators ("(2, 2)" is "(2,2)", "y = 2x
    + 1" is "y=2x+1"); spaces between words and digits stay ("1 1/2" is not "11/2")."""
    return re.sub(r"\s*([,;:(){}\[\]=+\-*/^<>])\s*", r"\1", s.strip())


_LETTER_SET = re.compile(r"[A-J](?:\s*(?:[,;/\n]|\band\b|\s)\s*[A-J])+")


def _letter_set_score(text: str, target: str, strict: bool) -> tuple[str | None, bool]:
    """A multi-select gold ("C\nD", "C, D"): the capital letters A-J the answer names, from its
    stated answer ("Answer: C, D", ``\\boxed{C,D}``, to the end of the reply) or, lenient, the
    whole reply, must be exactly the gold's."""
    text = _THINK.sub(" ", text)
    boxed = _last_boxed(text)
    stated = list(_ANSWER_IS.finditer(text))
    if boxed:
        part = boxed
    elif stated:  # the last "Answer: ..." up to the end of its sentence; letters may go on
        # over the next lines while each holds letters only ("Answer: C\nD")
        first, *rest = text[stated[-1].start(1):].split("\n")
        item = r"[(*`]*[A-J][)*`.]*"  # "C", "(C)", "C)", "**C**"
        for line in rest:
            if not line.strip():
                continue  # blank lines between letters
            if not re.fullmatch(rf"\s*(?:[-*\u2022]|\d+[.)])?\s*{item}(?:\s*(?:[,;/]|\band\b)?"
                                rf"\s*{item})*\s*[.,;]?\s*", line):
                break
            first += "\n" + line
        first = re.sub(r"(?m)^\s*(?:[-*\u2022]|\d+[.)])\s+", "", first)  # list markers
        part = re.split(r"\.(?:\s|$)", first, maxsplit=1)[0]
    else:
        part = None if strict else text
    if part is None:
        return None, False
    # a capital letter A-J standing alone, not a word ("I checked", "A square", "E is wrong" are
    # not letters of the answer; "C and D", "D are correct" are)
    letters = set(re.findall(r"(?<![\w'])([A-J])(?![\w'])(?!\s+(?!(?:and|are|both)\b)[a-z])",
                             part))
    return part.strip(), bool(letters) and letters == set(re.findall(r"[A-J]", target))


def score(text: str | None, target: str, choices: list[str] | None = None,
          strict: bool = False) -> tuple[str | None, bool]:
    """``(extracted answer, correct)`` for one model output (``strict``: see
    :func:`extract_answer`). A target that is one capital letter A-J without ``choices`` (a
    held-out row whose options are in its question) is a choice letter among A-J."""
    gold = str(target).strip()
    if choices is None and _LETTER_SET.fullmatch(gold):
        return _letter_set_score(text or "", gold, strict)
    if choices is None and len(gold) == 1 and gold in LETTERS:
        choices = [""] * len(LETTERS)  # letters only: no option texts to compare
    pred = extract_answer(text, choices, strict)
    ok = is_correct(pred, target, choices)
    reply = _THINK.sub(" ", text or "").strip()
    at = reply.rfind(pred) if ok and pred else -1
    gold_unit = _unit(gold) if at >= 0 else None
    if gold_unit and _unit(reply[at:at + len(pred) + 24]) not in (None, gold_unit):
        ok = False  # a number taken from "8 inches" for gold "8 feet": its unit is not gold's
    if not ok and not strict and reply and _bare(reply) == _bare(gold):
        return reply, True  # a bare reply that is the gold itself: "(2,2)", "$9 \\pi cm^2$"
    if (not ok and not strict and reply and choices and len(gold) == 1
            and gold.upper() in LETTERS[: len(choices)]):  # or the gold option's text itself,
        option = str(choices[LETTERS.index(gold.upper())])  # unless it reads as a letter (an
        # option "B" under gold A: the reply "B" names option B) or the reply names a letter
        if (option.strip() and _bare(reply) == _bare(option)
                and not re.fullmatch(r"[A-Ja-j]", _bare(option))
                and _choice_letter(reply, choices, last=False) is None):
            return reply, True
    return pred, ok


def _bare(s: str) -> str:
    """``s`` for comparing a whole reply with a gold as written: lower case, ``$`` and
    ``\\text{}`` / ``\\mathrm{}`` unwrapped, spaces around punctuation dropped (no "x =" step,
    no unit stripping: the whole string must match)."""
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}", r"\1", s.strip())
    return _squash(re.sub(r"\s+", " ", s.replace("$", "")).lower())
