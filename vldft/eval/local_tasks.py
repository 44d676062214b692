"""lmms-eval tasks over local files (no hub access): used by the task YAMLs in ``eval/``.

``LocalTask`` is named by ``class:`` in those YAMLs. It is lmms-eval's own message task
(``ConfigurableMessagesTask``: prompts, generation, metrics and aggregation all stay
lmms-eval's) with one change: ``download`` builds the test split from local files instead of
``datasets.load_dataset(hub id)``. Where the files are:

- ``VLDFT_EVAL_DATA`` (``python -m vldft.eval --data-dir DIR`` sets it): a directory holding
  ``geo_demo/heldout.jsonl`` (vldft's synthetic held-out split, normalised JSONL) and
  ``geometry3k/test.parquet`` or ``geometry3k/test.jsonl`` (the schema of the hub dataset
  ``Yang130/geometry3k_4choices_mixed``: ``images``, ``problem``, ``choices``, ``ground_truth``).
- ``VLDFT_GEO_HELDOUT`` / ``VLDFT_GEOMETRY3K``: a file for one task, overriding the above.
- Without either, the synthetic task reads the bundled ``data/geo_demo/heldout.jsonl``.

The tasks need a chat model class (``vldft``, and lmms-eval's ``qwen2_5_vl`` / ``llava_hf``
resolve to theirs by default).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
from lmms_eval.api.task import ConfigurableMessagesTask
from PIL import Image

from vldft.data import load_jsonl
from vldft.eval.scoring import LETTERS, score

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
G3K_COLUMNS = ("images", "problem", "choices", "ground_truth")


class LocalDataError(ValueError):
    """A local evaluation file is missing or malformed; the message names the file / row / key."""


def data_file(env: str, default_rel: str, bundled: Path | None = None) -> Path:
    """The file a task reads: ``$env``, else ``$VLDFT_EVAL_DATA/default_rel``, else ``bundled``."""
    if os.environ.get(env):
        path = Path(os.environ[env])
    elif os.environ.get("VLDFT_EVAL_DATA"):
        path = Path(os.environ["VLDFT_EVAL_DATA"]) / default_rel
    elif bundled is not None:
        path = bundled
    else:
        raise LocalDataError(f"no data for this task: set VLDFT_EVAL_DATA (--data-dir) to a "
                             f"directory with {default_rel}, or {env} to a file")
    if path.is_dir():  # a directory: its test split
        found = [path / f"test.{ext}" for ext in ("parquet", "jsonl") if (path / f"test.{ext}")
                 .is_file()]
        if not found:
            raise LocalDataError(f"{path}: no test.parquet or test.jsonl in this directory")
        path = found[0]
    if not path.is_file():
        raise LocalDataError(f"{path}: file not found (from {env} / VLDFT_EVAL_DATA)")
    return path


# -- vldft synthetic geometry (normalised JSONL) --------------------------------------------
def load_geo_heldout() -> datasets.Dataset:
    """vldft's held-out JSONL as rows {id, kind, question, image, answer} (one image each)."""
    path = data_file("VLDFT_GEO_HELDOUT", "geo_demo/heldout.jsonl",
                     REPO_DATA / "geo_demo/heldout.jsonl")
    rows = []
    for s in load_jsonl(path):  # raises naming file / line / id on malformed rows
        user = next(m for m in s.messages if m["role"] == "user")
        question = "".join(p["text"] for p in user["content"] if p["type"] == "text")
        if s.answer is None or len(s.images) != 1:
            raise LocalDataError(f"{path}: row {s.id}: needs an 'answer' and exactly one image "
                                 f"(has {len(s.images)})")
        rows.append({"id": s.id, "kind": s.kind or "", "question": question,
                     "image": str(s.images[0]), "answer": str(s.answer)})
    if not rows:
        raise LocalDataError(f"{path}: no rows")
    return datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())


def geo_doc_to_visual(doc: dict) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def geo_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question as in training (the synthetic set's answers end with "Answer: X")."""
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def geo_process_results(doc: dict, results: list[str]) -> dict:
    _, ok = score(results[0] if results else "", doc["answer"])
    return {"accuracy": float(ok)}


# -- Geometry3K (schema of Yang130/geometry3k_4choices_mixed) ---------------------------------
def load_geometry3k() -> datasets.Dataset:
    """A local copy of geometry3k_4choices_mixed: parquet (``Dataset.to_parquet`` of the hub
    split) or JSONL whose ``images`` are paths relative to the file."""
    path = data_file("VLDFT_GEOMETRY3K", "geometry3k")
    if path.suffix == ".parquet":
        ds = datasets.Dataset.from_parquet(str(path))
        rows = None
    else:
        rows = []
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LocalDataError(f"{path}:{line_no}: invalid JSON ({e})") from None
                rows.append(_g3k_row(row, path, line_no))
        ds = datasets.Dataset.from_list(rows)
    missing = [c for c in G3K_COLUMNS if c not in ds.column_names]
    if missing:
        raise LocalDataError(f"{path}: missing column(s) {missing}; expected {list(G3K_COLUMNS)}")
    if rows is not None:
        ds = ds.cast_column("images", datasets.Sequence(datasets.Image()))
    for i, target in enumerate(ds["ground_truth"]):
        if str(target).strip().upper() not in LETTERS[:4]:
            raise LocalDataError(f"{path}: row {i}: ground_truth {target!r} is not a letter A-D")
    return ds


def _g3k_row(row: dict, path: Path, line_no: int) -> dict:
    for key in G3K_COLUMNS:
        if key not in row:
            raise LocalDataError(f"{path}:{line_no}: missing key {key!r}")
    images = row["images"] if isinstance(row["images"], list) else [row["images"]]
    resolved = []
    for img in images:
        p = Path(img) if Path(img).is_absolute() else path.parent / img
        if not p.is_file():
            raise LocalDataError(f"{path}:{line_no}: key 'images': file not found: {p}")
        resolved.append(str(p))
    if not isinstance(row["choices"], list) or len(row["choices"]) != 4:
        raise LocalDataError(f"{path}:{line_no}: key 'choices' must be a list of 4 strings")
    return {**row, "images": resolved, "choices": [str(c) for c in row["choices"]]}


def geometry3k_doc_to_visual(doc: dict) -> list[Image.Image]:
    return [img.convert("RGB") for img in doc["images"][:1]]


def geometry3k_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """lmms-eval's geometry3k prompt: problem, "A. choice" lines, then the post prompt."""
    kw = lmms_eval_specific_kwargs or {}
    options = "\n".join(f"{L}. {c}" for L, c in zip(LETTERS, doc["choices"], strict=False))
    post = kw.get("post_prompt", "\nAnswer with the option's letter from the given choices "
                                 "directly.")
    return f"{doc['problem']}\n{options}{post}"


def geometry3k_process_results(doc: dict, results: list[str]) -> dict:
    _, ok = score(results[0] if results else "", doc["ground_truth"], doc["choices"])
    return {"accuracy": float(ok)}


LOADERS = {"geometry3k": load_geometry3k, "geo_heldout": load_geo_heldout}


class LocalTask(ConfigurableMessagesTask):
    """lmms-eval's message task whose test split comes from ``LOADERS[dataset_name]``."""

    def __init__(self, config: dict | None = None, **kwargs) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        if config.get("dataset_name") not in LOADERS:
            raise LocalDataError(f"task {config.get('task')}: dataset_name must be one of "
                                 f"{sorted(LOADERS)}, got {config.get('dataset_name')!r}")
        super().__init__(config=config, **kwargs)

    def download(self, dataset_kwargs=None) -> None:
        split = self.config.test_split
        ds = LOADERS[self.config.dataset_name]()
        self.dataset = datasets.DatasetDict({split: ds})
        image_cols = [n for n, f in ds.features.items() if isinstance(f, datasets.Image) or (
            isinstance(f, (datasets.Sequence, list)) and isinstance(
                getattr(f, "feature", f[0] if isinstance(f, list) else None), datasets.Image))]
        self.dataset_no_image = datasets.DatasetDict({split: ds.remove_columns(image_cols)})
