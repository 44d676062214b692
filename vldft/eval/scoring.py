"""Rule-based answer extraction and scoring, shared by the lmms-eval tasks in ``eval/`` and the
in-training held-out accuracy (``vldft.heldout``).

``extract_answer(text, choices)`` finds the model's final answer, trying in order:
1. the last ``<answer>...</answer>`` block (reasoning-format outputs; searched further below),
2. the last ``\\boxed{...}`` (balanced braces),
3. the last "Answer: X" / "answer is X" (rest of that line or sentence),
4. with ``choices``: a final choice letter ("(C)", "option C", "C." at a line start, a bare "C"),
5. the last number in the text.

``is_correct(pred, target, choices)`` compares after normalisation (case, markdown, ``$``,
``\\text{}``, a leading article, "x =" prefixes, degree and length units): choice letters (a
prediction may also give the choice's text), numbers with a relative tolerance (fractions,
``\\frac``, thousands separators), plain strings, and finally ``math-verify`` equivalence when that
package imports (lmms-eval depends on it; see the README for the version caveat).
"""

from __future__ import annotations

import functools
import math
import re

LETTERS = "ABCDEFGHIJ"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*(?:\*\*)?\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")
_UNITS = re.compile(
    r"(?:\^\s*\{?\\circ\}?|\\circ|°|\bdegrees?\b|\bdeg\b|\bunits?\b|\bcm\b|\bmm\b|\bm\b|"
    r"\bsq\.?\s*units\b|\\%|%)", re.IGNORECASE)


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start: i - 1].strip()
    return None


def _answer_phrase(text: str) -> str | None:
    """Rest of the last "Answer: X" / "the answer is X", up to the end of its sentence."""
    matches = _ANSWER_IS.findall(text)
    for raw in reversed(matches):
        value = re.split(r"(?<=[^\d])\.(?:\s|$)|\.\s", raw.strip() + " ")[0].strip()
        value = value.strip("*`'\" ")
        if value:
            return value
    return None


def _choice_letter(text: str, choices: list[str]) -> str | None:
    """A final choice letter among the first ``len(choices)`` letters, or None."""
    valid = LETTERS[: len(choices)]
    if not valid:
        return None
    stripped = text.strip().strip("*`'\".:()[] ")
    if len(stripped) == 1 and stripped.upper() in valid:
        return stripped.upper()
    patterns = (rf"\(([{valid}])\)", rf"(?:option|choice)\s*\(?([{valid}])\b",
                rf"(?m)^\s*\(?([{valid}])[.):]", rf"\b([{valid}])\s*$")
    found: list[tuple[int, str]] = []
    for pattern in patterns:
        found += [(m.start(1), m.group(1)) for m in re.finditer(pattern, text, re.IGNORECASE)
                  if m.group(1).isupper() or pattern.startswith(r"(?:option")]
    return max(found)[1].upper() if found else None


def extract_answer(text: str | None, choices: list[str] | None = None) -> str | None:
    """The final answer in a model output (raw, not normalised), or None if there is none."""
    if not text:
        return None
    tags = _ANSWER_TAG.findall(text)
    if tags and tags[-1].strip():
        text = tags[-1]
    text = _THINK.sub(" ", text)
    for found in (_last_boxed(text), _answer_phrase(text)):
        if found:
            return found
    if choices:
        letter = _choice_letter(text, choices)
        if letter:
            return letter
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def normalize(answer: str) -> str:
    """Lower-case, unwrap ``$`` / ``\\text{}`` / markdown, drop articles, "x =" and units."""
    s = answer.strip()
    s = re.sub(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\ ", " ").replace("\\dfrac", "\\frac")
    s = s.strip("$*`'\" ").lower()
    if "=" in s and not s.endswith("="):
        s = s.rsplit("=", 1)[1]
    s = _UNITS.sub(" ", s)
    s = re.sub(r"^(?:a|an|the)\s+", "", s.strip())
    s = re.sub(r"\s+", " ", s).strip(" .,;:!?*`'\"")
    return s


def to_number(answer: str) -> float | None:
    """A number from a normalised answer: "1,250", "-2.5", "3/4", "\\frac{3}{4}"; else None."""
    s = normalize(answer).replace(" ", "")
    frac = re.fullmatch(r"(-?)\\frac\{?(-?[\d.]+)\}?\{?(-?[\d.]+)\}?", s)
    if frac:
        s = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    if not re.fullmatch(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|"
                        r"[-+]?\.\d+", s):
        return None
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


def _equivalent(pred: str, target: str) -> bool:
    mv = _math_verify()
    if mv is None:
        return False
    parse, verify = mv
    try:
        return bool(verify(parse(f"${target}$"), parse(f"${pred}$")))
    except Exception:  # noqa: BLE001 - math-verify raises on unparsable input; that is "no"
        return False


def is_correct(pred: str | None, target: str, choices: list[str] | None = None,
               rel_tol: float = 1e-4) -> bool:
    """Whether an extracted answer ``pred`` matches ``target`` (see the module docstring)."""
    if pred is None or not str(pred).strip():
        return False
    target = str(target).strip()
    if choices and len(target) == 1 and target.upper() in LETTERS[: len(choices)]:
        letter = _choice_letter(pred, choices)
        if letter is not None:
            return letter == target.upper()
        # the choice's text counts when it names that choice and no other one
        hits = [i for i, c in enumerate(choices) if is_correct(pred, c)]
        return hits == [LETTERS.index(target.upper())]
    p, t = normalize(pred), normalize(target)
    if p == t:
        return True
    pn, tn = to_number(pred), to_number(target)
    if pn is not None and tn is not None:
        return math.isclose(pn, tn, rel_tol=rel_tol, abs_tol=1e-9)
    return _equivalent(pred, target)


def score(text: str | None, target: str, choices: list[str] | None = None) -> tuple[str | None,
                                                                                      bool]:
    """``(extracted answer, correct)`` for one model output."""
    pred = extract_answer(text, choices)
    return pred, is_correct(pred, target, choices)
