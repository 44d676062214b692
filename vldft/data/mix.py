"""Mixing several sources into one training set, and length-grouped batching.

Mixture rule (seeded by ``train.seed``, reproducible): each source is first capped at
``max_samples`` (a seeded random subset). Without weights, the mixture is the union. With
weights (all sources or none), the mixture keeps the union's size N and source i contributes
``round(N * w_i / sum(w))`` samples: whole passes over the source plus a seeded random subset
for the remainder, so a small source can be up-sampled and a large one down-sampled.

Length grouping (``data.group_by_length``, like LLaVA's ``group_by_modality_length``): image
and text-only samples are batched separately; within each modality, a seeded shuffle is cut into
mega-batches of ``64 * batch_size`` samples, each sorted by estimated length and cut into
micro-batches; the micro-batches of both modalities are then shuffled together. Similar lengths
share a batch, so less padding is computed.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from vldft.data import DataError, Sample, image_bounds

MEGA = 64  # micro-batches per mega-batch


def mix(per_source: dict[str, list[Sample]], weights: dict[str, float | None],
        max_samples: dict[str, int | None], seed: int) -> list[Sample]:
    """The training mixture (see the module docstring); keeps source order, loaders shuffle."""
    rng = random.Random(seed)
    capped = {}
    for name, samples in per_source.items():
        cap = max_samples.get(name)
        if cap is not None and cap < len(samples):
            keep = sorted(rng.sample(range(len(samples)), cap))
            samples = [samples[i] for i in keep]
        capped[name] = samples
    if all(weights.get(n) is None for n in capped):
        return [s for samples in capped.values() for s in samples]
    empty = [n for n, v in capped.items() if not v]
    if empty:
        raise DataError(f"data.sources: weighted source(s) {empty} have no samples left "
                        "(every row skipped while reading, dropped by data.decontaminate, or "
                        "the file empty: vldft-data validate CONFIG lists the skipped rows); "
                        "remove them or fix the data", "bad_source")
    total = sum(len(v) for v in capped.values())
    wsum = sum(weights[n] for n in capped)
    out = []
    for name, samples in capped.items():
        want = round(total * weights[name] / wsum)
        whole, rest = divmod(want, len(samples))
        out += samples * whole + [samples[i] for i in sorted(rng.sample(range(len(samples)), rest))]
    return out


def estimate_length(sample: Sample, adapter, pixels=None, video=None) -> int:
    """Tokens of a sample: its rendered text plus each image's token count (image headers only,
    nothing is decoded; ``pixels``: the source's bounds, an image part's own keys over them)
    and each video's (``Adapter.video_token_estimate``: frame count, rate and size from the
    container's header or the first frame's; ``video``: ``data.video``)."""
    text = adapter.render(sample.messages)
    n = len(adapter.tokenizer(text, add_special_tokens=False)["input_ids"])
    n -= text.count(adapter.image_token)  # each placeholder is replaced by its expansion
    eot = adapter.end_of_turn  # the collator appends it to each answer a template leaves
    # without (LLaVA-1.5's "</s>"): packed rows went over pack_tokens
    appended = sum(m["role"] == "assistant" for m in sample.messages) - text.count(eot) \
        if eot else 0
    if appended > 0:
        n += appended * len(adapter.tokenizer(eot, add_special_tokens=False)["input_ids"])
    for v in sample.videos:
        n += adapter.video_token_estimate(v, video) - max(1, len(adapter.video_region))
    bounds = image_bounds(sample.messages, len(sample.images), pixels)  # per-image keys
    for img, px in zip(sample.images, bounds, strict=True):
        try:
            if isinstance(img, (str, Path)):
                with Image.open(img) as im:
                    size = im.size
            else:
                size = img.size
        except (OSError, ValueError):  # unreadable: the collator reports (or skips) it later
            continue
        n += adapter.image_token_count(size, px)
    return n


class EpochBatchSampler(Sampler[list[int]]):
    """Base of vldft's batch samplers: the order of an epoch depends only on (seed, epoch), and
    ``set_position(epoch, skip)`` drops the first ``skip`` batches, which is how a resumed run
    continues exactly where the checkpoint left off (no sample is read to skip it). Deliberately
    not named ``set_epoch``: accelerate's prepared DataLoader calls ``set_epoch(n)`` with its own
    iteration count, which would reset the skip."""

    def __init__(self, batch_size: int, seed: int = 0) -> None:
        self.batch_size, self.seed, self.epoch, self.skip = batch_size, seed, 0, 0

    def set_position(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.skip:])


class RandomBatchSampler(EpochBatchSampler):
    """Shuffled micro-batches of ``batch_size`` (the last one may be short)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        super().__init__(batch_size, seed)
        self.n = n

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def batches(self) -> list[list[int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(
            self.seed * 100_003 + self.epoch)).tolist()
        return [order[k:k + self.batch_size] for k in range(0, self.n, self.batch_size)]


class LengthGroupedSampler(EpochBatchSampler):
    """Micro-batches of similar lengths and one modality (``has_image``), reshuffled every
    epoch (seed + epoch)."""

    def __init__(self, lengths: list[int], has_image: list[bool], batch_size: int,
                 seed: int = 0) -> None:
        super().__init__(batch_size, seed)
        self.lengths, self.has_image = lengths, has_image

    def __len__(self) -> int:
        n_img = sum(self.has_image)
        n_txt = len(self.has_image) - n_img
        return sum(math.ceil(n / self.batch_size) for n in (n_img, n_txt))

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        batches = []
        for modality in (True, False):
            idx = [i for i, h in enumerate(self.has_image) if h == modality]
            rng.shuffle(idx)
            mega = MEGA * self.batch_size
            for start in range(0, len(idx), mega):
                chunk = sorted(idx[start:start + mega], key=lambda i: -self.lengths[i])
                batches += [chunk[k:k + self.batch_size]
                            for k in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        # short batches (one per modality) go last: accelerate's BatchSamplerShard hands out
        # whole rounds of batches and only the final round may hold a short one
        batches.sort(key=lambda b: len(b) < self.batch_size)
        return batches


@dataclass
class TrainingSet:
    samples: Sequence[Sample]  # the mixture, in source order: a list, or (from the start-up
    # cache, vldft.data.cache) a sequence that builds each Sample from a memory-mapped table
    lengths: list[int]  # estimated tokens per sample (same order)
    skips: object  # skips.SkipReport of rows skipped while reading (data.on_error: skip),
    # corrupt / missing images included (every entry: file, line, id, reason, image)
    table: list[dict]  # per source: name, format, read, used, images, videos, clips,
    # text_only, tokens (``source_table``)
    # (and decontaminated, when data.decontaminate is on)
    decontamination: dict | None = None  # data.decontaminate's report: benchmarks, test rows,
    # drops per benchmark and reason, and every dropped row (source, id, origin, benchmark,
    # test_id, reason); None when off
    has_image: list[bool] | None = None  # per sample: has images (same order; filled from
    # ``samples`` when not given)
    choices: dict | None = None  # rows read whose options were appended after the question /
    # already in it: {"appended": n, "in_question": m} (``read_sources``)

    def __post_init__(self) -> None:
        if self.has_image is None:
            self.has_image = [bool(s.images) for s in self.samples]


def read_sources(cfg, choices: dict | None = None
                 ) -> tuple[dict[str, list[Sample]], object]:
    """Every configured source's samples, by label in config order, and the ``SkipReport`` of
    the rows skipped while reading (images verified: a corrupt image is a row error now, with
    file, line, id and image, not hours into training). ``choices``, when given, receives how
    many rows read had their options appended after the question (``"appended"``) or already
    listed in it (``"in_question"``; ``vldft.data.tables.choice_counts``)."""
    from vldft.data.formats import read_source
    from vldft.data.skips import SkipReport
    from vldft.data.tables import choice_counts

    skips = SkipReport()
    with choice_counts() as notes:
        per_source = {src.label: read_source(src, Path(cfg.base_dir), cfg.data.on_error, skips,
                                             verify_images=True)
                      for src in cfg.all_sources()}
    if choices is not None:
        choices.update({kind: len(rows) for kind, rows in notes.items() if rows})
    return per_source, skips


def build_training_set(cfg, adapter) -> TrainingSet:
    """Read every configured source, mix them, estimate lengths; one row per source in
    ``table`` (what the loop prints at start and writes to data_summary.json). Training goes
    through ``vldft.data.cache.training_set``, which keeps this result on disk."""
    from vldft.config import source_pixels

    sources = cfg.all_sources()
    choices: dict = {}
    per_source, skips = read_sources(cfg, choices)
    n_read = {label: len(v) for label, v in per_source.items()}
    decontamination = remove_benchmark_rows(cfg, per_source)
    samples = mix(per_source, {s.label: s.weight for s in sources},
                  {s.label: s.max_samples for s in sources}, cfg.train.seed)
    pixels = source_pixels(cfg)
    lengths = [estimate_length(s, adapter, pixels.get(s.source), cfg.data.video)
               for s in tqdm(samples, desc="lengths", disable=len(samples) < 2000)]
    has_image = [bool(s.images or s.videos) for s in samples]
    table = source_table(sources, n_read, [s.source for s in samples],
                         [(len(s.images), len(s.videos)) for s in samples], lengths,
                         decontamination, cfg.base_dir)
    return TrainingSet(samples, lengths, skips, table, decontamination, has_image, choices)


def format_label(src, base_dir) -> str:
    """A source's format for the mixture table: ``auto`` with the format it detected."""
    if src.format != "auto":
        return src.format
    from vldft.data.formats import detect_format, hub_source, resolve_path

    try:
        found = "hf" if hub_source(src.path, src.format, Path(base_dir)) else detect_format(
            resolve_path(src.path, Path(base_dir)))
    except Exception:  # noqa: BLE001 - a label only: reading the source reports the problem
        return "auto"
    return f"auto: {found}"


def source_table(sources, n_read: dict[str, int], source_of: Iterable[str],
                 media: Iterable[tuple[int, int]], lengths: Iterable[int],
                 decontamination: dict | None, base_dir=".") -> list[dict]:
    """``TrainingSet.table``: per source, rows read, used in the mixture, and of those the
    rows with images, the rows with a video and their clips, the rows with neither, and their
    estimated tokens (one pass over the mixture; ``media``: (images, videos) per sample; a row
    with both counts under ``images`` and ``videos``)."""
    used: Counter = Counter()
    images: Counter = Counter()
    videos: Counter = Counter()
    clips: Counter = Counter()
    text_only: Counter = Counter()
    tokens: Counter = Counter()
    for label, (n_img, n_vid), n in zip(source_of, media, lengths, strict=True):
        used[label] += 1
        images[label] += n_img > 0
        videos[label] += n_vid > 0
        clips[label] += int(n_vid)
        text_only[label] += not (n_img or n_vid)
        tokens[label] += int(n)
    table = []
    for src in sources:
        label = src.label
        row = {"source": label, "format": format_label(src, base_dir), "read": n_read[label],
               "used": used[label], "images": images[label], "videos": videos[label],
               "clips": clips[label], "text_only": text_only[label], "tokens": tokens[label]}
        if decontamination is not None:
            row["decontaminated"] = decontamination["by_source"].get(label, 0)
        if src.max_samples is not None:  # (the log's notes: distinct rows trained)
            row["max_samples"] = src.max_samples
        table.append(row)
    return table


def remove_benchmark_rows(cfg, per_source: dict[str, list[Sample]]) -> dict | None:
    """``data.decontaminate``: drop, in place, every sample of ``per_source`` that matches a
    test row of the named benchmarks' local copies (``vldft.data.decontam``); the report (None
    when off). Runs before mixing, so source weights apply to what is left."""
    if cfg.data.decontaminate == "off":
        return None
    from vldft.data.decontam import BenchmarkIndex, benchmarks_for, decontaminate

    names = benchmarks_for(cfg.data.decontaminate)
    if not names:
        return None
    from vldft.data.benchmarks import LocalDataError

    root = cfg.benchmark_root()
    try:
        index = BenchmarkIndex.from_local(names, root)
    except LocalDataError as e:  # a malformed copy: one line naming file and row
        raise DataError(f"data.decontaminate: {e}", "bad_source") from None
    entries: list[dict] = []
    for label, samples in per_source.items():
        kept, dropped = decontaminate(samples, index)
        per_source[label] = kept
        entries += dropped
    by_bench = Counter(e["benchmark"] for e in entries)
    return {"benchmarks": names, "benchmark_dir": str(root), "test_rows": len(index),
            "dropped": len(entries), "by_benchmark": {n: by_bench.get(n, 0) for n in names},
            "by_reason": dict(Counter(e["reason"] for e in entries)),
            "by_source": dict(Counter(e["source"] for e in entries)), "entries": entries}


def format_table(table: list[dict]) -> str:
    """The mixture table as printed: ``videos`` and ``clips`` only when a source has a video
    row, ``decontaminated`` only when data.decontaminate is on."""
    cols = ["source", "format", "read", "used", "images", "text_only", "tokens"]
    if any(r.get("videos") for r in table):
        cols[5:5] = ["videos", "clips"]
    if table and "decontaminated" in table[0]:
        cols.insert(3, "decontaminated")
    rows = [cols] + [[str(r[c]) for c in cols] for r in table]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  " + "  ".join(v.rjust(w) if i > 1 else v.ljust(w)
                                      for i, (v, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)
