"""Sequence packing: several encoded samples laid end to end in one row of at most
``data.pack_tokens`` tokens, exactly equivalent to training them one at a time.

What makes it exact:
- **Positions restart per sample.** Each sample's positions are computed alone and concatenated:
  Qwen2.5-VL's mRoPE positions by the model's own ``get_rope_index`` on that sample (its image
  grids only), passed as ``position_ids [4, 1, L]``: row 0 the text positions ``0..n-1`` of each
  sample, rows 1-3 the temporal / height / width positions (transformers >= 4.54 reads a 4-row
  tensor as packed). LLaVA: ``[1, L]`` positions ``0..n-1`` per sample.
- **No attention across samples.** The batch carries no ``attention_mask``: transformers then
  derives the samples from the position restarts (``find_packed_sequence_indices``) and builds a
  block-causal mask for ``sdpa`` / ``eager``; ``vldft.attention``'s varlen function (what a
  packed run uses in place of ``sdpa``) and ``flash_attention_2`` cut their segments at the same
  restarts. An all-ones 2-D mask would
  silently turn that detection off, so none is ever sent. The vision towers already encode each
  image on its own.
- **No label across a boundary.** The first token of every sample has label -100, so the last
  hidden state of sample A never learns to predict sample B's first token (alone, that label is
  dropped by the shift anyway); the target count of a packed row is the sum of its samples'.

Which samples share a row (``vldft.loader.PackingSampler``): an epoch's seeded shuffle is cut
into windows of ``PACK_WINDOW`` samples; each window is packed by :func:`first_fit_decreasing`
on estimated lengths into bins of ``pack_tokens``; the bins of the epoch are shuffled. Every
sample is seen once per epoch, and the order depends only on (seed, epoch), so
``set_position`` resumes exactly as the other samplers do. Text-only and image samples pack
together. The loader's ``PackCollator`` turns a bin's encoded samples into one row (:func:`pack`).

This module needs torch only (transformers for the varlen attention it selects), so the GPU
benchmark runs it where vldft's other dependencies are not installed.

Per-sample positions come from the adapter (``Adapter.packed_positions(encoded) -> LongTensor
[rows, n]``); the mRoPE families' adapters call :func:`mrope_positions` below.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only
    from vldft.collate import Encoded

IGNORE = -100  # the label of untrained positions (vldft.collate.IGNORE; no import: this module
# stays importable with torch and transformers alone, as the GPU benchmark machine has them)
PACK_WINDOW = 512  # samples packed together (first-fit-decreasing) before moving on


# -- which samples share a row ----------------------------------------------------------------
def first_fit_decreasing(indices: list[int], lengths: list[int], capacity: int
                         ) -> list[list[int]]:
    """Bins (lists of ``indices``) whose ``lengths`` sum to at most ``capacity``: longest
    first, each into the first bin with room (ties keep the given order). An item longer than
    ``capacity`` gets a bin of its own."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(indices, key=lambda i: -lengths[i]):
        n = lengths[i]
        for b, left in enumerate(room):
            if n <= left:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


# -- per-sample positions ---------------------------------------------------------------------
# extras with one row per image / video (not per token), and the video ones
PER_MEDIA_KEYS = ("image_grid_thw", "image_sizes", "video_grid_thw", "second_per_grid_ts")


@functools.cache
def _rope_params(cls: type) -> frozenset[str]:
    """The arguments ``cls.get_rope_index`` takes (``mm_token_type_ids`` from transformers
    5.2x on; the GPU image may have an older one). Once per class, not once per sample."""
    return frozenset(inspect.signature(cls.get_rope_index).parameters)


def rope_media_kwargs(cls: type, batch: dict) -> dict:
    """The grids (and Qwen2.5-VL's ``second_per_grid_ts``: seconds per temporal patch) of a
    batch that ``cls.get_rope_index`` takes."""
    keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
    return {k: batch.get(k) for k in keys if k in _rope_params(cls)}


def mrope_positions(model, enc: Encoded, image_token_id: int,
                    video_token_id: int | None = None) -> torch.Tensor:
    """``[4, n]`` for one sample of a packed row: text positions 0..n-1, then the model's own
    mRoPE (t, h, w) positions of this sample alone (``model.model.get_rope_index`` with only its
    image / video grids). transformers reads a 4-row ``position_ids`` as packed."""
    ids = enc.input_ids.unsqueeze(0)
    inner = model.model
    kwargs = rope_media_kwargs(type(inner), enc.extras)
    if "mm_token_type_ids" in _rope_params(type(inner)):
        mm = enc.extras.get("mm_token_type_ids")  # transformers >= 5.2x takes the token types
        if mm is None:
            mm = (ids == image_token_id).int()
            if video_token_id is not None:
                mm = mm + 2 * (ids == video_token_id).int()
        kwargs["mm_token_type_ids"] = mm.reshape(1, -1)
    with torch.no_grad():
        rope, _ = inner.get_rope_index(input_ids=ids, **kwargs)
    return torch.cat([torch.arange(ids.shape[1]).unsqueeze(0), rope[:, 0].to(torch.long)])


def positions_for(adapter) -> Callable[[Encoded], torch.Tensor]:
    """The per-sample position function of ``adapter`` (``[rows, n]`` per sample)."""
    own = getattr(adapter, "packed_positions", None)
    if own is None:
        raise ValueError(f"data.packing: no per-sample positions for model family "
                         f"{getattr(adapter, 'family', '?')!r} (its adapter has no "
                         "packed_positions)")
    return own


# -- one packed row ---------------------------------------------------------------------------
def pack(samples: list[Encoded], positions: Callable[[Encoded], torch.Tensor]) -> dict:
    """One row of ``samples`` end to end: ``input_ids`` / ``labels`` ``[1, L]`` (first label of
    every sample -100), ``position_ids`` (``[4, 1, L]`` for 4-row positions, else ``[1, L]``),
    per-token extras concatenated to ``[1, L]``, image tensors concatenated in order, and
    ``n_packed`` (samples). No ``attention_mask``: see the module docstring."""
    labels = []
    for enc in samples:
        lab = enc.labels.clone()
        lab[0] = IGNORE  # never trained on the previous sample's last hidden state
        labels.append(lab)
    pos = torch.cat([positions(enc) for enc in samples], dim=1)
    batch: dict = {
        "input_ids": torch.cat([enc.input_ids for enc in samples]).unsqueeze(0),
        "labels": torch.cat(labels).unsqueeze(0),
        "position_ids": pos.unsqueeze(1) if pos.shape[0] > 1 else pos,
        "n_packed": len(samples),
    }
    keys = dict.fromkeys(k for enc in samples for k in enc.extras)
    for key in keys:
        values = [enc.extras[key] for enc in samples if key in enc.extras]
        per_token = values[0].dim() == 2 and values[0].shape[0] == 1
        if per_token and key not in PER_MEDIA_KEYS:
            if len(values) != len(samples):
                raise ValueError(f"per-token extra {key!r} is missing from some samples")
            batch[key] = torch.cat(values, dim=1)  # per-token extra (mm_token_type_ids)
        else:
            batch[key] = cat_media(key, values)
    return batch


def cat_media(key: str, values: list[torch.Tensor]) -> torch.Tensor:
    """Per-image / per-video tensors of several samples as one (dim 0).

    LLaVA-OneVision's image ``pixel_values`` ``[images, tiles, C, H, W]`` are zero-padded on the
    tile axis (the model reads each image's own tiles, from ``image_sizes``); its
    ``pixel_values_videos`` ``[videos, frames, C, H, W]`` must agree in frames (the model reads
    them as one block), which ``Adapter.video_frames_fixed`` guarantees."""
    if values[0].dim() == 5 and key == "pixel_values_videos":
        frames = {v.shape[1] for v in values}
        if len(frames) > 1:
            raise ValueError(f"videos with different frame counts {sorted(frames)} cannot share "
                             "a batch for this family")
    elif values[0].dim() == 5:
        n = max(v.shape[1] for v in values)
        return torch.cat([torch.nn.functional.pad(
            v, (0, 0, 0, 0, 0, 0, 0, n - v.shape[1])) for v in values], dim=0)
    return torch.cat(values, dim=0)  # pixel_values, image_grid_thw, video_grid_thw, ...


def choose_attention(model, requested: str) -> str:
    """The attention implementation a packed run uses: ``sdpa`` (the default) becomes
    ``vldft.attention``'s varlen function on every device (CUDA: one varlen kernel call per
    layer; CPU: one SDPA call per sample, measured 2.3x faster than sdpa with transformers'
    block-causal [L, L] mask on 4k-token rows, bench/RESULTS.md); ``eager`` and
    ``flash_attention_2`` are kept (both handle packed positions). Returns the name used."""
    if requested == "sdpa":
        from vldft.attention import use_varlen

        use_varlen(model)
        return model.config._attn_implementation
    return requested


def row_lengths(batch: dict) -> list[int]:
    """Token count of each sample in a packed row (from its position restarts)."""
    pos = batch["position_ids"]
    text = pos[0, 0] if pos.dim() == 3 else pos[0]
    starts = (text == 0).nonzero().squeeze(1).tolist() + [text.numel()]
    return [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]



def packed_segments(batch: dict):
    """The ``vldft.attention.Segments`` of one packed row (a :func:`pack` result), computed
    once on the CPU from its text positions' restarts (``[1, L]`` row 0 of ``position_ids``),
    for every attention layer of the forward (``model.precompute_segments``)."""
    from vldft.attention import segments_of

    pos = batch["position_ids"]
    text = pos[0] if pos.dim() == 3 else pos  # [4, 1, L] mRoPE rows: row 0 is the text
    return segments_of(tuple(batch["input_ids"].shape), position_ids=text)
