"""lmms-eval task classes and functions of vldft (imported by lmms-eval; needs the eval extra).

``VldftTask`` is lmms-eval's own message task (``ConfigurableMessagesTask``: prompts, generation,
metrics and aggregation all stay lmms-eval's); ``VldftSimpleTask`` the same over
``ConfigurableTask`` for lmms-eval's "simple" model classes. ``vldft.eval.run`` builds every
requested task from its YAML config with one of them, so that:

- a benchmark with a local copy (``--data-dir``) reads its test split from local files
  (``vldft.data.benchmarks.load_local``; ``dataset_kwargs: {vldft_local: <benchmark>}``) instead
  of ``datasets.load_dataset(<hub id>)``: a stock task's prompt, extraction and metrics run
  unchanged on the same rows;
- aggregations that divide by the number of correct answers report 0 (with the sample count)
  instead of crashing on an all-wrong run (lmms-eval's WeMath does).

The YAMLs in the repository's ``eval/`` folder use ``VldftTask`` directly:
``vldft_geo_heldout`` (vldft's synthetic held-out split) and ``geoqa`` (GeoQA test, which
lmms-eval lacks), both scored by vldft's shared rule-based scorer.
"""

from __future__ import annotations

import functools
import logging

import datasets
from lmms_eval.api.task import ConfigurableMessagesTask, ConfigurableTask
from PIL import Image

from vldft.data import DataError, load_jsonl
from vldft.data.benchmarks import (
    BENCHMARKS,
    LETTERS,
    LocalDataError,
    geo_heldout_path,
    load_local,
    readable_image,
)
from vldft.scoring import score

log = logging.getLogger("vldft.eval")
LOCAL_KEY = "vldft_local"  # dataset_kwargs key: read this benchmark from its local copy


def guard_aggregation(fn, task: str, metric: str):
    """``fn`` that reports 0.0 (and logs why) where it would divide by zero."""

    @functools.wraps(fn)
    def aggregate(items):
        try:
            return fn(items)
        except ZeroDivisionError:
            log.warning("%s %s: the aggregation divided by zero on %d samples (no correct "
                        "answer, or none of a kind); reported 0.0", task, metric, len(items))
            return 0.0

    return aggregate


class _LocalData:
    """The download step of vldft's tasks: local files where ``dataset_kwargs`` says so."""

    def __init__(self, config: dict | None = None, model_name: str | None = None, **kwargs):
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        for m in config.get("metric_list") or []:
            if callable(m.get("aggregation")):
                m["aggregation"] = guard_aggregation(m["aggregation"], config.get("task"),
                                                     m.get("metric"))
        super().__init__(config=config, model_name=model_name or self.default_model_name,
                         **kwargs)

    default_model_name: str | None = None

    def download(self, dataset_kwargs=None) -> None:
        kwargs = dict(dataset_kwargs or {})
        local = kwargs.pop(LOCAL_KEY, None)
        if local is None:
            return super().download(kwargs or None)
        if local == "geo_heldout":
            ds = load_geo_heldout(self.config.dataset_path)
        elif local in BENCHMARKS:
            ds = load_local(BENCHMARKS[local], self.config.dataset_path)
        else:
            raise LocalDataError(f"task {self.config.task}: unknown local dataset {local!r}")
        split = self.config.test_split
        if self.config.process_docs is not None:
            ds = self.config.process_docs(ds)
        self.dataset = datasets.DatasetDict({split: ds})
        if getattr(self.config, "process_results_use_image", False):
            self.dataset_no_image = self.dataset
            return
        image_cols = [n for n, f in ds.features.items() if _is_image(f)]
        self.dataset_no_image = datasets.DatasetDict({split: ds.remove_columns(image_cols)})


def _is_image(feature) -> bool:
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and feature:
        inner = feature[0]
    return isinstance(feature, datasets.Image) or isinstance(inner, datasets.Image)


class VldftTask(_LocalData, ConfigurableMessagesTask):
    """lmms-eval's chat task with vldft's local data and guarded aggregations."""


class VldftSimpleTask(_LocalData, ConfigurableTask):
    """lmms-eval's simple task with vldft's local data and guarded aggregations."""


# -- vldft synthetic geometry (normalised JSONL) --------------------------------------------
def load_geo_heldout(root: str | None = None) -> datasets.Dataset:
    """vldft's held-out JSONL (:func:`geo_heldout_path`) as rows {id, kind, question, image,
    answer}."""
    path = geo_heldout_path(root)
    if not path.is_file():
        raise LocalDataError(f"{path}: file not found (vldft_geo_heldout reads "
                             f"<data-dir>/geo_demo/heldout.jsonl)")
    rows = []
    try:
        samples = load_jsonl(path)
    except DataError as e:  # names file / line / id: one line, as the other data errors
        raise LocalDataError(str(e)) from None
    for s in samples:
        user = next(m for m in s.messages if m["role"] == "user")
        question = "".join(p["text"] for p in user["content"] if p["type"] == "text")
        if s.videos:
            raise LocalDataError(f"{path}: row {s.id}: has a video; vldft_geo_heldout takes one "
                                 "image per row (score clips with python -m vldft.heldout CKPT "
                                 "FILE)")
        if s.answer is None or len(s.images) != 1:
            raise LocalDataError(f"{path}: row {s.id}: needs an 'answer' and exactly one image "
                                 f"(has {len(s.images)})")
        readable_image(s.images[0], f"{path}: row {s.id}")
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


# -- GeoQA (columns of the hub port hz2475/geoQA: subject, choices, label, image) ------------
def geoqa_keep_test(ds: datasets.Dataset) -> datasets.Dataset:
    """GeoQA's test rows (the hub port keeps every split in one, named by ``original_split``),
    each label checked against its choices."""
    if "original_split" in ds.column_names:
        ds = ds.filter(lambda r: r["original_split"] == "test")
    for i, (label, choices) in enumerate(zip(ds["label"], ds["choices"], strict=True)):
        try:  # a label outside the options was a target no reply could match
            ok = 0 <= int(label) < len(choices or [])
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise LocalDataError(f"geoqa test row {i}: label {label!r} does not name one of its "
                                 f"{len(choices or [])} choices (0-based)")
    return ds


def geoqa_doc_to_visual(doc: dict) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def geoqa_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """Problem, then "A. choice" lines, then the post prompt (as lmms-eval's geometry3k)."""
    kw = lmms_eval_specific_kwargs or {}
    options = "\n".join(f"{L}. {c}" for L, c in zip(LETTERS, doc["choices"], strict=False))
    return f"{doc['subject']}\n{options}{kw.get('post_prompt', '')}"


def geoqa_doc_to_target(doc: dict) -> str:
    return LETTERS[int(doc["label"])]


def geoqa_process_results(doc: dict, results: list[str]) -> dict:
    _, ok = score(results[0] if results else "", geoqa_doc_to_target(doc), doc["choices"])
    return {"accuracy": float(ok)}
