"""Question / answer tables -> normalised rows: Hugging Face datasets, text math, Geometry3K.

Fields and the columns tried for each (``SourceConfig.columns`` maps a field to a column):

    question  problem, question, query, prompt      the user prompt (``{question}`` in templates)
    answer    answer                                final answer (raw string, e.g. "\\boxed{3}")
    solution  solution, response                    worked solution: the assistant text
    images    images, image                         list of / one image (HF Image, bytes, path)
    messages  messages                              a whole conversation (``hf`` only; used when
                                                    no question column is mapped)
    choices   choices, options                      ``{choices}`` in templates: "A. x B. y ..."
                                                    (see "Choices" below)
    id        id, pid                               row id (default: "<file>:<row>")

Assistant text and ``Sample.answer``: with a solution and an answer column, the solution is the
assistant text and the answer column the reference. With only an answer column (EasyR1
Geometry3K, GSM8K), that text is the assistant text; the reference is what follows ``####``
(GSM8K) or else the whole raw string. With only a solution (NuminaMath, MetaMathQA) the
reference is what follows ``####``, ``The answer is:`` or the last ``\\boxed{}``.

Choices (``render_prompt``) are never dropped. A list ``[x, y]`` reads "A. x B. y"; an option
that already starts with its own letter ("A:", "A.", "(A)", "A)") keeps it. A template without
``{choices}`` (or no template) gets a row's choices right after the question, as
"QUESTION\\nChoices: A. x B. y", before the rest of the template. Options the question already
lists with their letters (MathVerse's "Choice:\\nA. ...\\nB. ...") are not repeated: nothing is
appended and ``{choices}`` is empty. An empty ``{choices}`` takes its template line with it
when no other placeholder is on it (e.g. "\\nChoices: {choices}"), and the prompt's trailing
whitespace goes. ``choice_counts()`` collects the rows appended to / already listing them
(``vldft-data`` prints the counts).

Images: if the prompt has ``<image>`` placeholders their count must match; if it has none, the
row's images go before the prompt text. HF image columns are read undecoded (bytes), so reading
is cheap; pixels are decoded when the collator opens an ``ImageBytes``.

Loading: parquet files are streamed with pyarrow (256 rows at a time); ``.arrow`` files and
``save_to_disk`` folders are memory-mapped by ``datasets``; a hub id goes to
``datasets.load_dataset``, and when the hub is unreachable (3 s probe) or ``HF_HUB_OFFLINE`` is
set, only the local cache is tried, so an offline run fails at once with a ``DataError``.

Geometry3K (original folders): ``SRC/<id>/data.json`` + ``img_diagram.png`` (or
``SRC/<split>/<id>/...``). Prompt: ``"{problem_text}\\nChoices: A. a B. b C. c D. d"`` (or
``prompt_template`` with ``{question}`` / ``{choices}``), image first; assistant text
``"Answer: C"``; ``Sample.answer`` the letter. ``columns: {question: annotat_text}`` picks the
LaTeX-annotated text.
"""

from __future__ import annotations

import difflib
import json
import re
import string
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from vldft.config import hub_unreachable
from vldft.data import DataError, fail, split_placeholders
from vldft.data.chat import image_ref, require, suggest, turns_to_messages
from vldft.scoring import reference_answer

FIELDS = ("question", "answer", "solution", "images", "messages", "choices", "id")
DEFAULTS = {"question": ("problem", "question", "query", "prompt"), "answer": ("answer",),
            "solution": ("solution", "response"), "images": ("images", "image"),
            "messages": ("messages",), "choices": ("choices", "options"), "id": ("id", "pid")}
TEXT_MATH_LAYOUTS = (("problem", "solution"), ("query", "response"), ("question", "answer"))
TEMPLATE_KEYS = ("question", "choices")

Row = tuple[str, str, Any]  # (where, default id, raw row or a DataError to report)


def check_columns(columns: dict[str, str], where: str) -> None:
    for key in columns:
        if key not in FIELDS:
            raise DataError(f"{where}: columns.{key}: unknown field{suggest(key, list(FIELDS))}"
                            f"; fields: {FIELDS}", "missing_column", where)


def check_template(template: str | None, where: str) -> None:
    if template is None:
        return
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in TEMPLATE_KEYS:
            raise DataError(f"{where}: prompt_template: unknown placeholder {{{name}}}; "
                            f"allowed: {TEMPLATE_KEYS}", "bad_source", where)


def resolve_columns(available: list[str], columns: dict[str, str], fmt: str,
                    where: str) -> dict[str, str]:
    """field -> column for this table (mapped, else the first default present).

    Raises ``missing_column`` naming the closest available column."""
    out: dict[str, str] = {}
    for key, col in columns.items():
        if col not in available:
            fail(where, "missing_column", f"column {col!r} (columns.{key}) not found"
                 f"{suggest(col, available)}; columns: {sorted(available)}")
        out[key] = col
    for key, candidates in DEFAULTS.items():
        if key not in out:
            found = [c for c in candidates if c in available]
            if found:
                out[key] = found[0]
    if fmt == "text_math":
        out.pop("images", None)
        out.pop("messages", None)
    if "question" not in columns and "messages" in out and fmt == "hf":
        return {k: v for k, v in out.items() if k in ("messages", "images", "id")}
    out.pop("messages", None)
    need = [("question",), ("answer", "solution")]
    for keys in need:
        if not any(k in out for k in keys):
            tried = [c for k in keys for c in DEFAULTS[k]]
            hints = [f"{k}={m}" for k in keys for c in DEFAULTS[k]
                     for m in difflib.get_close_matches(c, available, n=1, cutoff=0.6)]
            hint = f" (did you mean columns: {hints[0]}?)" if hints else ""
            fail(where, "missing_column", f"no {'/'.join(keys)} column (tried {tried}){hint}; "
                 f"columns: {sorted(available)}; map one with columns: {{{keys[0]}: NAME}}")
    return out


def _own_label(i: int, option: str) -> re.Match | None:
    """The label an option starts with when it is its own letter: "A:", "A.", "(A)", "A)" (not
    "A.5" or "Apple")."""
    letter = chr(65 + i)
    return re.match(rf"\s*(?:\({letter}\)|{letter}\s*[:)]|{letter}\.(?![0-9A-Za-z]))\s*", option)


def _choices(value: Any) -> str:
    """``{choices}``: "A. x B. y ..."; an option already starting with its letter keeps it."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(c).strip() if _own_label(i, str(c)) else f"{chr(65 + i)}. "
                        f"{str(c).strip()}" for i, c in enumerate(value))
    return "" if value is None else str(value).strip()


def _has_choices(value: Any) -> bool:
    return bool(value) if isinstance(value, (list, tuple)) else bool(
        value is not None and str(value).strip())


def _listed(question: str, value: Any) -> bool:
    """Whether the question already lists every option with its letter ("A. x", "(A) x",
    "A: x"; whitespace-insensitive), as MathVerse's "Choice:\\nA. ...\\nB. ..." questions do."""
    text = " ".join(question.split())
    if not isinstance(value, (list, tuple)):
        return " ".join(str(value).split()) in text
    for i, option in enumerate(map(str, value)):
        label = _own_label(i, option)
        core = " ".join((option[label.end():] if label else option).split())
        letter = chr(65 + i)
        end = r"(?![0-9A-Za-z])" if core[-1:].isalnum() else ""
        if not re.search(rf"(?<![0-9A-Za-z])(?:\({letter}\)|{letter}\s*[.:)])\s*"
                         rf"{re.escape(core)}{end}", text):
            return False
    return True


def _drop_choices(template: str) -> str:
    """``template`` for a row without choices: a line whose only placeholder is ``{choices}``
    (e.g. "Choices: {choices}") goes; on a line with ``{question}`` it becomes ""."""
    lines = []
    for line in template.split("\n"):
        names = [n for _, n, _, _ in string.Formatter().parse(line) if n is not None]
        if "choices" in names:
            if set(names) == {"choices"}:
                continue
            line = re.sub(r"\{choices[^{}]*\}", "", line).rstrip()
        lines.append(line)
    return "\n".join(lines)


def render_prompt(template: str | None, question: str, value: Any, where: str) -> str:
    """The user prompt of a row (``template`` None: the question) with its choices ``value``.

    Choices are never dropped: without ``{choices}`` in the template they go right after the
    question as "\\nChoices: A. x B. y"; options the question already lists (``_listed``) are
    not repeated, and ``{choices}`` is then empty. An empty ``{choices}`` takes its line (or
    trailing separator) with it. Rows appended to / already listing are noted for
    ``choice_counts``."""
    template = template or "{question}"
    uses = any(n == "choices" for _, n, _, _ in string.Formatter().parse(template))
    choices = ""
    if _has_choices(value):
        if _listed(question, value):
            _note("in_question", where)
        else:
            choices = _choices(value)
    if choices and not uses:
        _note("appended", where)
        head = question.rstrip()
        question = f"{head}\nChoices: {choices}" if head else f"Choices: {choices}"
    if uses and not choices:
        return _drop_choices(template).format(question=question, choices="").rstrip()
    return template.format(question=question, choices=choices)


_NOTES: ContextVar[dict[str, list[str]] | None] = ContextVar("vldft_choices", default=None)


@contextmanager
def choice_counts() -> Iterator[dict[str, list[str]]]:
    """While open, collect the locations of rows whose choices were appended after the question
    (``"appended"``) or were already listed in it (``"in_question"``)."""
    notes: dict[str, list[str]] = defaultdict(list)
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def _note(kind: str, where: str) -> None:
    notes = _NOTES.get()
    if notes is not None:
        notes[kind].append(where)


def qa_row(raw: Any, cols: dict[str, str] | None, columns: dict[str, str], fmt: str,
           template: str | None, where: str) -> dict:
    """One table row -> normalised row (``cols`` None: resolve per row, for JSON rows)."""
    if not isinstance(raw, dict):
        fail(where, "bad_row", f"expected an object, got {type(raw).__name__}")
    if cols is None:
        cols = resolve_columns(list(raw), columns, fmt, where)
    images = raw.get(cols["images"]) if "images" in cols else None
    if "messages" in cols:
        messages, imgs, vids = turns_to_messages(raw.get(cols["messages"]), "role", "content",
                                                 images, where, fmt)
        if vids:
            fail(where, "bad_content", f"video parts are not read from {fmt} tables; use a "
                 "messages / sharegpt / llava JSON(L) file")
        return {"messages": messages, "images": imgs, "answer": raw.get(cols.get("answer", ""))}
    question = raw.get(cols["question"])
    if question is not None and not isinstance(question, str):
        fail(where, "bad_row", f"column {cols['question']!r} (question) is not text: "
             f"{question!r}")
    question = question or ""  # an image-only question is fine (checked by sample_from_row)
    # a row without a choices column (a GSM8K row in a source whose template has {choices})
    # loses the template's {choices} line (render_prompt), as a row with empty choices does
    choices = raw.get(cols["choices"]) if "choices" in cols else None
    if choices is not None and not isinstance(choices, (list, tuple, str)):
        fail(where, "bad_row", f"column {cols['choices']!r} (choices) is not a list of "
             f"options or text: {choices!r}")
    question = render_prompt(template, question, choices, where)
    answer = raw.get(cols["answer"]) if "answer" in cols else None
    solution = raw.get(cols["solution"]) if "solution" in cols else None
    for key, value in (("answer", answer), ("solution", solution)):
        if value is not None and not isinstance(value, (str, int, float)):
            fail(where, "bad_row", f"column {cols[key]!r} ({key}) is not text: {value!r}")
    if solution is not None:
        text = str(solution)
        ref = str(answer) if answer is not None else reference_answer(text)
    else:
        text = "" if answer is None else str(answer)
        ref = reference_answer(text) if "####" in text else (text or None)
    user = split_placeholders(question)
    if images is None:
        images = []
    elif not isinstance(images, list):
        images = [images]
    images = [image_ref(img, where) for img in images]
    if images and not any(p["type"] == "image" for p in user):
        user = [{"type": "image"} for _ in images] + user
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": [{"type": "text", "text": text}]}],
            "images": images, "answer": ref}


# -- readers: (where, default id, raw) rows ----------------------------------------------------
def iter_dataset(ds: Any, name: str) -> tuple[list[str], Iterator[Row]]:
    """Columns and rows of a ``datasets.Dataset``, read as Arrow: image columns stay
    undecoded ({"bytes", "path"} structs), and nothing is cast or copied."""

    def rows() -> Iterator[Row]:
        i = 0
        for batch in ds.with_format("arrow").iter(batch_size=256):
            for row in batch.to_pylist():
                yield f"{name} row {i}", f"{Path(name).name}:{i}", row
                i += 1

    return list(ds.column_names), rows()


def iter_parquet(paths: list[Path]) -> tuple[list[str], Iterator[Row]]:
    """Stream parquet files with pyarrow (HF Image columns arrive as {"bytes", "path"})."""
    import pyarrow.parquet as pq

    files = [pq.ParquetFile(p) for p in paths]
    names = [set(f.schema_arrow.names) for f in files]
    if any(n != names[0] for n in names):
        raise DataError(f"{paths[0].parent}: parquet files have different columns", "bad_source")

    def rows() -> Iterator[Row]:
        for path, f in zip(paths, files, strict=True):
            i = 0
            for batch in f.iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield f"{path} row {i}", f"{path.name}:{i}", row
                    i += 1

    return list(files[0].schema_arrow.names), rows()


def iter_geometry3k(root: Path, split: str) -> Iterator[Row]:
    split_dir = next((root / s for s in (split, {"validation": "val"}.get(split, split))
                      if (root / s).is_dir()), None)
    base = split_dir or root
    dirs = sorted((d for d in base.iterdir() if (d / "data.json").is_file()),
                  key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0,
                                 d.name))
    if not dirs:
        raise DataError(f"{root}: no problem folders with data.json (geometry3k layout: "
                        "SRC/<id>/data.json + img_diagram.png, or SRC/<split>/<id>/...)",
                        "bad_source", str(root))
    for d in dirs:
        where = str(d / "data.json")
        try:
            data = json.loads((d / "data.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            yield where, d.name, DataError(f"{where}: invalid JSON ({e})", "bad_json", where,
                                           f"invalid JSON ({e})")
            continue
        if isinstance(data, dict):
            data["_dir"] = str(d)
        yield where, d.name, data


def geometry3k_row(raw: Any, columns: dict[str, str], template: str | None,
                   where: str) -> dict:
    if not isinstance(raw, dict):
        fail(where, "bad_row", "data.json must hold an object")
    question = require(raw, columns.get("question", "problem_text"), where, "geometry3k")
    choices = require(raw, columns.get("choices", "choices"), where, "geometry3k")
    letter = require(raw, columns.get("answer", "answer"), where, "geometry3k")
    if not isinstance(question, str) or not question.strip():
        fail(where, "empty_turn", "the problem text is empty")
    if not isinstance(choices, list) or not 2 <= len(choices) <= 26:
        fail(where, "bad_row", f"'choices' must be a list of 2-26 options, got {choices!r}")
    letters = [chr(65 + i) for i in range(len(choices))]
    if not isinstance(letter, str) or letter.strip().upper() not in letters:
        fail(where, "bad_answer", f"answer {letter!r} is not one of {letters}")
    letter = letter.strip().upper()
    prompt = render_prompt(template or "{question}\nChoices: {choices}", question.strip(),
                           choices, where)
    return {"messages": [{"role": "user", "content": [{"type": "image"},
                                                      {"type": "text", "text": prompt}]},
                         {"role": "assistant", "content": [{"type": "text",
                                                            "text": f"Answer: {letter}"}]}],
            "images": [str(Path(raw["_dir"]) / "img_diagram.png")], "answer": letter}


# -- loading tables --------------------------------------------------------------------------
@contextmanager
def _offline():
    """Force the hub libraries into offline mode (cache only) for one call."""
    import datasets
    import huggingface_hub.constants as hub

    saved = hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def load_hub(name: str, split: str) -> Any:
    """``datasets.load_dataset(name, split=split)``; offline: from the cache only, fast."""
    import datasets

    online = hub_unreachable() is None
    try:
        if online:
            return datasets.load_dataset(name, split=split)
        with _offline():
            return datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub client raises many types; all mean "cannot load"
        why = "" if online else " (the hub is unreachable or HF_HUB_OFFLINE is set, and the " \
            "dataset is not in the local cache)"
        raise DataError(f"{name}: cannot load Hugging Face dataset split {split!r}{why}: {e}. "
                        "Download it where the hub is reachable (load_dataset(...).to_parquet() "
                        "or .save_to_disk()) and set the source path to the local copy",
                        "bad_source", name) from None


def _local_dataset(path: Path, split: str) -> Any:
    from datasets import Dataset, DatasetDict, load_from_disk

    ds = Dataset.from_file(str(path)) if path.is_file() else load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; splits: {list(ds)} (set split)",
                            "bad_source", str(path))
        ds = ds[split]
    return ds


def open_table(path: Path, name: str, split: str, hub: bool) -> tuple[list[str], Iterator[Row]]:
    """Columns and rows of a table source: hub id ``name``, dataset folder, parquet, arrow."""
    if hub:
        return iter_dataset(load_hub(name, split), name)
    if path.is_dir():
        if not any((path / m).is_file() for m in ("dataset_info.json", "state.json",
                                                  "dataset_dict.json")):
            files = sorted(path.rglob("*.parquet"))
            if not files:
                raise DataError(f"{path}: no parquet files and no save_to_disk dataset",
                                "bad_source", str(path))
            chosen = [f for f in files if split in f.name] or files
            return iter_parquet(chosen)
        return iter_dataset(_local_dataset(path, split), str(path))
    if path.suffix.lower() == ".parquet":
        return iter_parquet([path])
    if path.suffix.lower() == ".arrow":
        return iter_dataset(_local_dataset(path, split), str(path))
    raise DataError(f"{path}: not a table (parquet / arrow / dataset folder)", "bad_source",
                    str(path))
