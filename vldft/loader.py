"""Training data as micro-batches: the lazily encoded dataset, the endless resumable stream of
micro-batches, and the accounting of skipped samples (each counted once, listed with file,
line, id, image and reason, merged over ranks in checkpoints and the summary).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset

from vldft.attention import SEGMENTS, VARLEN, segments_of
from vldft.collate import Collator, Encoded, SampleError, Skipped
from vldft.config import Config, ConfigError, world_size
from vldft.data import DataError, Sample
from vldft.data.mix import (
    EpochBatchSampler,
    LengthGroupedSampler,
    RandomBatchSampler,
    format_table,
)
from vldft.data.skips import format_entry, skip_entry
from vldft.packing import (
    PACK_WINDOW,
    choose_attention,
    first_fit_decreasing,
    pack,
    packed_segments,
    positions_for,
)

if TYPE_CHECKING:
    from vldft.state import RunState


class EncodedDataset(Dataset):
    """Samples encoded lazily (in DataLoader workers) by the collator. A sample the collator
    rejects becomes a ``Skipped`` naming it (file:line, id, image, reason): counted with
    ``on_error="skip"``, ``fatal`` with ``raise`` (the loop then stops with a one-line
    ``DataError``; raising in a worker would bury the location in a traceback)."""

    def __init__(self, samples: list[Sample], collator: Collator, on_error: str = "raise"):
        self.samples, self.collator, self.on_error = samples, collator, on_error

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            return self.collator.encode(s)
        except SampleError as e:
            return Skipped(s.id, e.reason, s.source, s.origin, e.image,
                           str(e).removeprefix(f"sample {s.id}: "),
                           fatal=self.on_error == "raise")


class PackingSampler(EpochBatchSampler):
    """Micro-batches as packing bins (``data.packing``; ``vldft.packing``): a seeded shuffle of
    the epoch, cut into windows of ``window`` samples, each packed first-fit-decreasing by
    estimated length (capped at ``max_length``, as the collator caps samples) into bins of
    ``pack_tokens``; the fullest bins are halved until the count is a multiple of
    ``multiple_of``; the bins are shuffled. ``batch_size`` is None: accelerate's marker for
    micro-batches of dynamic size."""

    def __init__(self, lengths: list[int], pack_tokens: int, max_length: int, seed: int = 0,
                 window: int = PACK_WINDOW, multiple_of: int = 1) -> None:
        super().__init__(None, seed)
        self.lengths = [min(n, max_length) for n in lengths]
        self.pack_tokens, self.window, self.multiple_of = pack_tokens, window, multiple_of
        self._len: int | None = None

    def __len__(self) -> int:  # bins of epoch 0 (another epoch's count differs by a few)
        if self._len is None:
            epoch, self.epoch = self.epoch, 0
            self._len = len(self.batches())
            self.epoch = epoch
        return self._len

    def batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        bins = []
        for start in range(0, len(order), self.window):
            bins += first_fit_decreasing(order[start:start + self.window], self.lengths,
                                         self.pack_tokens)
        # a whole number of optimizer steps per epoch (multiple_of = processes x grad_accum):
        # no rank then repeats a bin to fill the last round (accelerate's even_batches), and
        # N processes x accumulation A see the same steps as one process x N A
        while len(bins) % self.multiple_of and any(len(b) > 1 for b in bins):
            k = max(range(len(bins)), key=lambda j: (len(bins[j]) > 1,
                                                      sum(self.lengths[i] for i in bins[j])))
            bins[k:k + 1] = [bins[k][::2], bins[k][1::2]]  # the fullest bin, in two
        rng.shuffle(bins)
        return bins


class PackCollator:
    """``collate_fn`` of a packed DataLoader: a bin's encoded samples as one packed row
    (``vldft.packing.pack``), its skipped samples listed as ``Collator.__call__`` lists them.
    A row can exceed ``pack_tokens`` by the error of the length estimates the bins were made
    from (a few tokens a sample at most, e.g. an appended end-of-turn). ``segments``: add the
    row's varlen ``Segments`` (``model.precompute_segments``), computed here on the CPU."""

    def __init__(self, collator: Collator, pack_tokens: int, segments: bool = False) -> None:
        self.collator, self.pack_tokens, self.segments = collator, pack_tokens, segments
        self.positions = positions_for(collator.adapter)

    def __call__(self, items: list[Encoded | Skipped]) -> dict:
        kept = [it for it in items if isinstance(it, Encoded)]
        batch: dict = {"skipped": [it for it in items if isinstance(it, Skipped)],
                       "n_truncated": sum(it.truncated for it in kept),
                       "n_shortened": sum(it.shortened for it in kept)}
        if kept:
            batch.update(pack(kept, self.positions))
            if self.segments:
                batch[SEGMENTS] = packed_segments(batch)
        return batch


class SegmentCollator:
    """``collate_fn`` of padded micro-batches with ``model.precompute_segments``: the
    collator's batch plus its varlen ``Segments`` from the ``[B, L]`` padding mask (CPU)."""

    def __init__(self, collator: Collator) -> None:
        self.collator = collator

    def __call__(self, items: list[Encoded | Skipped]) -> dict:
        batch = self.collator(items)
        if "input_ids" in batch:
            mask = batch.get("attention_mask")
            batch[SEGMENTS] = segments_of(tuple(batch["input_ids"].shape), valid=mask)
        return batch


def build_loader(cfg: Config, data, collator: Collator
                 ) -> tuple[DataLoader, EpochBatchSampler]:
    """The training DataLoader over ``data.samples`` (a ``build_training_set`` result) and its
    batch sampler (length-grouped with ``data.group_by_length``). With ``data.packing``:
    packing bins of ``data.pack_tokens`` tokens, one packed row per micro-batch
    (``vldft.packing``), and the varlen attention in place of ``sdpa``."""
    t, samples = cfg.train, data.samples
    dataset = EncodedDataset(samples, collator, cfg.data.on_error)
    if cfg.data.packing:
        sampler = PackingSampler(data.lengths, cfg.data.pack_tokens, cfg.data.max_length,
                                 t.seed, multiple_of=world_size() * t.grad_accum)
        choose_attention(collator.adapter.model, cfg.model.attn_implementation)
        try:
            collate = PackCollator(collator, cfg.data.pack_tokens, uses_segments(cfg, collator))
        except ValueError as e:  # a model family without per-sample positions
            raise ConfigError(str(e)) from None
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                            num_workers=cfg.data.num_workers, generator=own_generator(t.seed))
        return loader, sampler
    if cfg.data.group_by_length:
        sampler = LengthGroupedSampler(data.lengths, data.has_image, t.micro_batch_size,
                                       t.seed)
    else:
        sampler = RandomBatchSampler(len(samples), t.micro_batch_size, t.seed)
    loader = DataLoader(dataset, batch_sampler=sampler,
                        collate_fn=SegmentCollator(collator) if uses_segments(cfg, collator)
                        else collator, num_workers=cfg.data.num_workers,
                        generator=own_generator(t.seed))
    return loader, sampler


def own_generator(seed: int) -> torch.Generator:
    """The DataLoader's own generator: each new iterator draws its workers' base seed from it,
    not from the global RNG, whose state a checkpoint restores for dropout (LoRA's included).
    Without it a resumed run's first iterator took one draw the uninterrupted run had taken
    at its start, and every later dropout mask shifted."""
    return torch.Generator().manual_seed(seed)


def uses_segments(cfg: Config, collator: Collator) -> bool:
    """Whether micro-batches carry precomputed varlen ``Segments``: ``model.precompute_segments``
    and the model runs vldft's varlen attention (the only function that reads them)."""
    return (cfg.model.precompute_segments
            and collator.adapter.model.config._attn_implementation == VARLEN)


def describe_data(data, seed: int, summary_file: Path) -> str:
    """The console's lines about the training set: the mixture table and the rows skipped
    while reading (all of them listed in ``summary_file``)."""
    text = (f"[vldft] data mixture (seed {seed}; token counts estimated):\n"
            + format_table(data.table))
    dec = getattr(data, "decontamination", None)
    if dec is not None:
        per = ", ".join(f"{n} {b}" for b, n in dec["by_benchmark"].items())
        text += (f"\n[vldft] decontamination: {dec['dropped']} training rows matched test rows "
                 f"of {len(dec['benchmarks'])} benchmarks ({dec['test_rows']} test rows in "
                 f"{dec['benchmark_dir']}) and were dropped: {per}; every one with its test id "
                 f"and reason: {summary_file}")
    for row in data.table:  # what the table shows, said where a glance could miss it
        src, read, used = row["source"], row["read"], row["used"]
        kept = read - row.get("decontaminated", 0)  # the rows sampling draws from
        cap = row.get("max_samples")
        distinct = min(kept, cap) if cap else kept  # max_samples' subset, then the weight
        if not used:
            text += (f"\n[vldft] warning: source {src!r} gives no samples ({read} read "
                     "without error: its other rows were skipped or decontaminated, see below, "
                     "or it is empty)")
        elif used > distinct:
            capped = (f"; max_samples keeps {distinct} of its {kept} rows, the other "
                      f"{kept - distinct} are not trained in this run" if distinct < kept else "")
            text += (f"\n[vldft] note: source {src!r} is repeated: {distinct} rows give {used} "
                     f"samples ({used / distinct:.1f}x, by its weight){capped}")
        elif used < kept:
            text += (f"\n[vldft] note: source {src!r} is subsampled: {used} of its {kept} rows "
                     f"are used (by its weight or max_samples); the other {kept - used} are "
                     "not trained in this run")
    what = {"appended": "had their options appended after the question",
            "in_question": "list their options in the question already (not repeated)"}
    for kind, n in (getattr(data, "choices", None) or {}).items():
        text += f"\n[vldft] note: {n} rows read {what.get(kind, kind)}"
    if data.skips.total:
        text += (f"\n[vldft] skipped while reading:\n{data.skips.summary()}\n  (every skipped "
                 f"row with file, line, id, image and reason: {summary_file})")
    return text


def micro_batch_stream(loader: DataLoader, sampler: EpochBatchSampler, state: RunState,
                       world: int):
    """Endless stream of non-empty micro-batches over epochs, recording into ``state``.
    ``state.pos`` ({"epoch", "consumed"}) is the data position a checkpoint saves: micro-batches
    this rank has taken from the current epoch (trainable or not). Records skipped samples
    (each once: ``state.seen`` holds their (source, id); counted by (source, reason) in
    ``state.skips`` and listed in ``state.skip_entries`` with file, line, id, image, message)
    and truncations (``state.truncated``); a ``fatal`` skip (data.on_error=raise) stops with a
    ``DataError`` naming it; stops with an error if a whole pass over the data yields nothing
    to train on."""
    pos, seen, skips = state.pos, state.seen, state.skips
    while True:
        full_pass, yielded = pos["consumed"] == 0, 0
        # every rank takes every world-th batch of the sampler's order, so a rank that has
        # consumed k batches of this epoch resumes after k x world of the sampler's batches
        sampler.set_position(pos["epoch"], pos["consumed"] * world)
        for batch in guard_workers(loader):
            pos["consumed"] += 1
            for s in batch["skipped"]:
                if s.fatal:
                    where = f"{s.origin or s.source} (id {s.sample_id})"
                    msg = s.message.removeprefix(f"sample {s.sample_id}: ")
                    fix = ("data.overlong=truncate or skip, or a larger data.max_length, takes "
                           "such samples") if s.reason == "too_long" else \
                        "data.on_error=skip skips such samples"
                    raise DataError(f"{where}: {msg} ({fix})", s.reason, where, msg,
                                    image=s.image)
                # keyed by (source, id): ids such as "0" or "train.jsonl:3" recur across
                # sources (a plain id: from an older checkpoint that stored ids only)
                if (s.source, s.sample_id) not in seen and s.sample_id not in seen:
                    seen.add((s.source, s.sample_id))
                    skips[(s.source, s.reason)] += 1
                    state.skip_entries.append(skip_entry(
                        s.source, s.origin or s.sample_id, s.reason, s.message or s.reason,
                        s.sample_id, s.image, stage="encode"))
            state.truncated += batch["n_truncated"]
            state.video_shortened += batch.get("n_shortened", 0)
            if "input_ids" in batch:
                yielded += 1
                yield batch
        if full_pass and not yielded:
            raise DataError(no_trainable_sample(state))
        pos["epoch"], pos["consumed"] = pos["epoch"] + 1, 0


def no_trainable_sample(state: RunState) -> str:
    """The one-line error of a pass over the data in which every sample was skipped while
    encoding: counts by source and reason, the first rows with file, line and id, a hint."""
    counts = ", ".join(f"{n} {src}/{why}" for (src, why), n in sorted(state.skips.items()))
    entries = dedupe(state.skip_entries)
    shown = "; ".join(format_entry(e) for e in entries[:3])
    more = f"; and {len(entries) - 3} more" if len(entries) > 3 else ""
    cut = any(why in ("image_cut", "video_cut", "truncated_empty", "too_long")
              for _, why in state.skips)
    hint = (" (data.max_length is shorter than these samples' image / video blocks or prompts: "
            "raise it)" if cut else "")
    return (f"a whole pass over the training data gave no sample to train on: every sample was "
            f"skipped while encoding, {counts or 'none recorded'}{hint}; {shown}{more}")


def guard_workers(loader: DataLoader):
    """Iterate ``loader``, turning a dead worker process into an actionable error."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            if not any(k in str(e) for k in ("killed by signal", "exited unexpectedly")):
                raise
            raise RuntimeError(
                f"a data-loading worker process died ({e}). Usual causes: out of memory "
                "(lower data.num_workers or train.micro_batch_size) or a crash while decoding "
                "an image; rerun with data.num_workers=0 to see the failing sample's error "
                "in the main process") from e
        yield batch



SHOWN_SKIPS = 5  # skipped rows listed on the console (all of them: data_summary.json)


def dedupe(entries: list[dict]) -> list[dict]:
    """Encode-time skip entries, one per (source, id, reason), in a stable order."""
    out = {(e["source"], e["id"], e["reason"]): e for e in entries}
    return sorted(out.values(), key=lambda e: (e["source"], str(e["file"]), e["line"] or 0,
                                               str(e["id"])))


def seen_keys(st: dict) -> set:
    """The encode-time skips a checkpoint (trainer_state.json's dict) recorded, as the
    (source, id) keys of ``micro_batch_stream``'s ``seen``. Older checkpoints stored plain
    ids: one that a saved entry names takes that entry's source; one that none names
    (checkpoints with counts only) stays a plain id, which matches that id in any source."""
    sources: dict[str, list] = {}
    for e in st.get("skip_entries", []):
        sources.setdefault(e["id"], []).append(e["source"])
    keys: set = set()
    for k in st["seen"]:
        if isinstance(k, (list, tuple)):
            keys.add(tuple(k))
        elif k in sources:
            keys.update((src, k) for src in sources[k])
        else:
            keys.add(k)
    return keys


def merge_skip_state(parts: list[tuple[list, list[dict]]]) -> dict:
    """The encode-time skip fields of a checkpoint from every rank's (``seen``, entries): their
    union, deduplicated, with counts by (source, reason) from the entries. Every rank resumes
    from this union, so a skip met only on rank k > 0 before the checkpoint is not lost."""
    seen = {tuple(k) if isinstance(k, (list, tuple)) else k for keys, _ in parts for k in keys}
    entries = dedupe([e for _, part in parts for e in part])
    skips = Counter((e["source"], e["reason"]) for e in entries)
    return {"seen": sorted((list(k) if isinstance(k, tuple) else k for k in seen), key=str),
            "skips": [[list(k), n] for k, n in skips.items()], "skip_entries": entries}


def data_summary(data, encode_counts: dict, encode_entries: list[dict]) -> dict:
    """data_summary.json: the mixture table, skip counts (read / encode) and every skipped
    row (``skipped``: stage, source, reason, file, line, id, image, offset, message)."""
    read = data.skips.to_dict()
    out = {"sources": data.table,
           "read_skips": {k: v for k, v in read.items() if k != "entries"},
           "encode_skips": encode_counts,
           "skipped": read["entries"] + encode_entries}
    if getattr(data, "decontamination", None) is not None:
        out["decontamination"] = data.decontamination
    return out


def skip_listing(entries: list[dict], out_dir: Path) -> str:
    """Console lines: skip counts by reason, the first few skipped rows, where the rest are."""
    by_reason = Counter(f"{e['stage']} {e['reason']}" for e in entries)
    lines = [f"[vldft] {len(entries)} skipped rows ("
             + ", ".join(f"{n} {why}" for why, n in sorted(by_reason.items())) + "):"]
    lines += [f"  {format_entry(e)}" for e in entries[:SHOWN_SKIPS]]
    more = f"{len(entries) - SHOWN_SKIPS} more; " if len(entries) > SHOWN_SKIPS else ""
    lines.append(f"  ({more}every skipped row with file, line, id, image and reason: "
                 f"{out_dir / 'data_summary.json'})")
    return "\n".join(lines)


def all_ranks_skips(state: RunState, world: int) -> tuple[Counter, list[dict]]:
    """The encode-time skips of every rank (a collective when ``world > 1``): counts as
    ``"source/reason" -> samples`` and the deduplicated entries. A sample skipped on two ranks
    (different epochs) counts once, so any number of processes agrees with a single process;
    after a resume from an older checkpoint that kept counts only, the counts are summed."""
    skipped: Counter = Counter()
    for part in (gather_object([dict(state.skips)]) if world > 1 else [state.skips]):
        skipped.update({f"{src or 'data'}/{why}": n for (src, why), n in part.items()})
    entries = dedupe([e for part in (gather_object([state.skip_entries]) if world > 1
                                     else [state.skip_entries]) for e in part])
    if not state.counts_only_skips:
        skipped = Counter(f"{e['source'] or 'data'}/{e['reason']}" for e in entries)
    return skipped, entries
