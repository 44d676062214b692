"""Variable-length ("varlen") attention for packed micro-batches, registered with transformers.

A packed micro-batch is one row of several samples laid end to end (``vldft.packing``). Dense
attention over it needs a block-causal ``[L, L]`` mask (what transformers builds for ``sdpa`` /
``eager`` when ``position_ids`` restart per sample and no 2-D mask is given); a varlen kernel
instead takes the cumulative sample lengths ``cu_seqlens`` and does one call per layer with no
mask and no work across samples. :func:`varlen_attention_forward` is that call, registered as
``VARLEN`` in transformers' ``AttentionInterface`` (and ``AttentionMaskInterface``: padding masks
come as transformers' flash 2-D masks). Its name contains "flash" on purpose: Qwen2.5-VL's vision
tower then hands its window / full attention over to it as one varlen call per layer with its
own ``cu_seq_lens_q`` (otherwise it loops over windows, hundreds of calls per step).

Kernels, chosen per call (under autocast the inputs are cast to its dtype first, as sdpa's
are: mixed-precision training reaches the kernel): on CUDA with fp16 / bf16 inputs the
``flash_attn`` package's ``flash_attn_varlen_func`` when it is installed, otherwise PyTorch's own
``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.9; both signatures it has had are handled);
everywhere else (CPU, fp32) a loop of ``scaled_dot_product_attention`` calls, one per segment,
which is what the tests compare against SDPA with a block-causal mask.

Segments of a call: the vision tower's ``cu_seq_lens_q`` when given; else the micro-batch's
:class:`Segments`, computed once on the CPU by the collator (``model.precompute_segments``) and
handed to every language-model layer as the ``vldft_segments`` keyword (no layer computes them,
no layer waits for the GPU); otherwise each row of the batch, cut where ``position_ids`` do not
continue (+1) — transformers' own packed-sequence rule
(``masking_utils.find_packed_sequence_indices``) — and restricted to the 2-D padding mask's valid
tokens when one is given (then position restarts are ignored, as transformers does), computed by
the first layer of a forward and reused by the others (eval, generation). A call whose queries
are shorter than its keys (generation with a KV cache) goes to dense SDPA with the padding mask
and the causal offset.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

VARLEN = "vldft_flash_varlen"  # "flash" in the name: see the module docstring
SEGMENTS = "vldft_segments"  # the model keyword that carries a micro-batch's ``Segments``


def register() -> str:
    """Register ``VARLEN`` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, flash_attention_mask)
    return VARLEN


def use_varlen(model) -> None:
    """Switch ``model`` (and its sub-models: the setter propagates to the sub-configs) to the
    varlen implementation. Set on the config directly: ``set_attn_implementation`` would try to
    import a flash-attn package for a "flash" name."""
    register()
    model.config._attn_implementation = VARLEN


# -- segments ---------------------------------------------------------------------------------
def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` positions -> ``[B, L]`` segment index per token: a new segment wherever the
    position is not the previous one + 1 (transformers' packed-sequence rule)."""
    first = position_ids[:, :1] - 1
    return (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)


def cu_seqlens_of(batch: int, length: int, device: torch.device,
                  position_ids: torch.Tensor | None = None, valid: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Flattened token index of every valid token, cumulative segment lengths (int32, starting
    at 0) and the longest segment, for a ``[batch, length]`` input. Segments never cross rows;
    with a padding mask ``valid``, position restarts are ignored (transformers' rule)."""
    seg = torch.zeros(batch, length, dtype=torch.long, device=device)
    if valid is None and position_ids is not None:
        seg = segment_ids(position_ids.to(device).expand(batch, -1))
    row = torch.arange(batch, device=device)[:, None] * (length + 1)  # rows never merge
    seg = seg + row
    if valid is None and position_ids is None:  # whole rows: no device work, no host sync
        cu = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=device)
        return torch.arange(batch * length, device=device), cu, length
    flat_valid = (torch.ones(batch * length, dtype=torch.bool, device=device) if valid is None
                  else valid.to(device).reshape(-1).bool())
    index = flat_valid.nonzero().squeeze(1)
    seg = seg.reshape(-1)[index]
    if seg.numel() == 0:
        return index, torch.zeros(1, dtype=torch.int32, device=device), 0
    _, counts = torch.unique_consecutive(seg, return_counts=True)
    cu = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    return index, cu, int(counts.max())


@dataclass(frozen=True, eq=False)
class Segments:
    """A micro-batch's varlen segments, computed once (on the CPU, by the collator) for every
    attention layer of its forward passes.

    ``cu``: ``[N + 1]`` int32 cumulative segment lengths over the flattened valid tokens;
    ``max_len``: the longest segment (a Python int: no device read); ``index``: ``[T_valid]``
    flattened ``[B * L]`` positions of the valid tokens (padded batches), None when every token
    is valid (packed rows); ``shape``: ``(B, L)`` of the ``input_ids`` they belong to."""

    cu: torch.Tensor
    max_len: int
    index: torch.Tensor | None
    shape: tuple[int, int]

    def to(self, device, non_blocking: bool = False) -> Segments:
        """A copy on ``device`` (accelerate's loader and ``vldft.step`` call this)."""
        return Segments(self.cu.to(device, non_blocking=non_blocking), self.max_len,
                        None if self.index is None else self.index.to(device,
                                                                       non_blocking=non_blocking),
                        self.shape)


def segments_of(shape: tuple[int, int], position_ids: torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> Segments:
    """``Segments`` of a ``[B, L]`` micro-batch with the attention function's own rule
    (``cu_seqlens_of``): ``position_ids`` ``[B, L]`` text positions (packed rows: cut at every
    restart) or the ``[B, L]`` padding mask ``valid``. Call it on CPU tensors (the collator):
    the host reads are then free."""
    batch, length = shape
    index, cu, max_len = cu_seqlens_of(batch, length, torch.device("cpu"), position_ids, valid)
    return Segments(cu, max_len, None if index.numel() == batch * length else index,
                    (batch, length))


# -- kernels ----------------------------------------------------------------------------------
@functools.cache
def _flash_attn():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.cache
def _torch_varlen():
    """(function, its parameter names) of torch's varlen_attn, or None (torch < 2.9)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def kernel_name(device: torch.device | str, dtype: torch.dtype) -> str:
    """Which kernel ``varlen`` uses for inputs on ``device`` of ``dtype``."""
    if torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if _flash_attn() is not None:
            return "flash_attn"
        if _torch_varlen() is not None:
            return "torch_varlen"
    return "sdpa_loop"


def varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
           causal: bool, scale: float) -> torch.Tensor:
    """Attention within each segment of packed ``q`` ``[T, Hq, D]``, ``k`` / ``v``
    ``[T, Hkv, D]`` (``Hq`` a multiple of ``Hkv``: GQA); ``cu``: ``[N + 1]`` int32 segment
    starts. Returns ``[T, Hq, D]``."""
    kind = kernel_name(q.device, q.dtype)
    if kind == "flash_attn":
        return _flash_attn()(q, k, v, cu, cu, max_len, max_len, softmax_scale=scale,
                             causal=causal)
    if kind == "torch_varlen":
        fn, params = _torch_varlen()
        kwargs: dict = {}
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = q.shape[1] != k.shape[1]
        elif q.shape[1] != k.shape[1]:  # torch 2.9 / 2.10: no GQA, no scale, is_causal
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if "scale" in params:
            kwargs["scale"] = scale
        else:
            q = q * (scale * q.shape[-1] ** 0.5)  # the kernel's default scale is D ** -0.5
        if "window_size" in params:
            kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
        else:
            kwargs["is_causal"] = causal
        return fn(q, k, v, cu, cu, max_len, max_len, **kwargs)
    return _sdpa_loop(q, k, v, cu, causal, scale)


def _sdpa_loop(q, k, v, cu, causal: bool, scale: float) -> torch.Tensor:
    """The portable path: one SDPA call per segment (heads first, as SDPA wants them)."""
    gqa = q.shape[1] != k.shape[1]
    outs = []
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scale,
                                                   enable_gqa=gqa).transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(q.shape)


_LAST: list = [None, None, None]  # (weakref to position_ids, weakref to mask, result)


def _segments(batch: int, length: int, device, position_ids, attention_mask):
    """``cu_seqlens_of`` once per forward pass (the path without precomputed ``Segments``):
    every layer gets the same ``position_ids`` / mask objects, so the result of the first layer
    is reused (one host sync per forward, not per layer; padded Qwen batches come with a mask
    and no text positions, and are cached by the mask). A weak reference to a live tensor
    identifies it; a new forward's tensors are new objects. Index None: every token valid."""
    ref_pos, ref_mask, result = _LAST
    if (result is not None and (position_ids is not None or attention_mask is not None)
            and (ref_pos is None) == (position_ids is None)
            and (ref_pos is None or ref_pos() is position_ids)
            and (ref_mask is None) == (attention_mask is None)
            and (ref_mask is None or ref_mask() is attention_mask)
            and result[3] == (batch, length)):
        return result[:3]
    index, cu, max_len = cu_seqlens_of(batch, length, device, position_ids, attention_mask)
    if index.numel() == batch * length:
        index = None
    if position_ids is not None or attention_mask is not None:
        _LAST[:] = [weakref.ref(position_ids) if position_ids is not None else None,
                    weakref.ref(attention_mask) if attention_mask is not None else None,
                    (index, cu, max_len, (batch, length))]
    return index, cu, max_len


# -- the AttentionInterface function ----------------------------------------------------------
def varlen_attention_forward(module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None,
                             scaling: float | None = None, dropout: float = 0.0,
                             sliding_window: int | None = None, is_causal: bool | None = None,
                             position_ids: torch.Tensor | None = None,
                             cu_seq_lens_q: torch.Tensor | None = None,
                             cu_seq_lens_k: torch.Tensor | None = None,
                             max_length_q: int | None = None, max_length_k: int | None = None,
                             vldft_segments: Segments | None = None,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: ``query`` ``[B, Hq, Lq, D]``, ``key`` / ``value``
    ``[B, Hkv, Lk, D]``; returns ``([B, Lq, Hq, D], None)``. ``vldft_segments``: the
    micro-batch's precomputed ``Segments``, used by the language model's calls (those with
    ``position_ids`` or a padding mask); vision towers get the keyword too and ignore it."""
    if dropout:
        raise ValueError(f"{VARLEN}: attention dropout ({dropout}) is not supported")
    if sliding_window is not None:
        raise ValueError(f"{VARLEN}: sliding-window layers are not supported; use "
                         "model.attn_implementation=sdpa or flash_attention_2")
    B, Hq, Lq, D = query.shape
    Lk = key.shape[2]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    scale = D ** -0.5 if scaling is None else scaling
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"{VARLEN}: expected no mask or a 2-D padding mask, got "
                         f"{tuple(attention_mask.shape)}")
    if Lq != Lk:  # decoding with a KV cache: dense, with padding and the causal offset
        return _dense(query, key, value, attention_mask, causal, scale), None
    if torch.is_autocast_enabled(query.device.type):  # mixed precision (fp32 weights): RoPE's
        # fp32 cos / sin promote q / k to fp32, which on CUDA would miss the varlen kernel (the
        # per-segment loop instead: a host sync per layer). sdpa computes in the autocast dtype
        # (it is on autocast's list); so does this function: the same numbers, the kernel
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = (t.to(dtype) for t in (query, key, value))
    if cu_seq_lens_q is not None:  # the vision tower hands over its own segments
        # the towers pass one tensor as both: an identity check, not torch.equal (which reads
        # the GPU, a host sync in every vision layer); distinct tensors are still compared
        same = cu_seq_lens_k is None or cu_seq_lens_k is cu_seq_lens_q or torch.equal(
            cu_seq_lens_q, cu_seq_lens_k)
        if B != 1 or not same:
            raise ValueError(f"{VARLEN}: expects one row and cu_seq_lens_q == cu_seq_lens_k")
        cu = cu_seq_lens_q.to(torch.int32)
        index = None
        max_len = int(max_length_q) if max_length_q is not None else int(
            (cu[1:] - cu[:-1]).max())
    elif vldft_segments is not None and (position_ids is not None
                                         or attention_mask is not None):
        if vldft_segments.shape != (B, Lq):
            raise ValueError(f"{VARLEN}: precomputed segments of a {vldft_segments.shape} batch "
                             f"in a call on ({B}, {Lq}) tokens")
        seg = vldft_segments.to(query.device)  # a no-op once the step has moved them
        index, cu, max_len = seg.index, seg.cu, seg.max_len
    else:
        index, cu, max_len = _segments(B, Lq, query.device, position_ids, attention_mask)
    q, k, v = (t.transpose(1, 2).reshape(-1, t.shape[1], D) for t in (query, key, value))
    if index is not None:
        q, k, v = q[index], k[index], v[index]
    out = varlen(q, k, v, cu, max_len, causal, scale)
    if index is not None:  # padding positions get zeros (their outputs are never used)
        full = out.new_zeros(B * Lq, Hq, D)
        out = full.index_copy(0, index, out)
    return out.reshape(B, Lq, Hq, D), None


def _dense(query, key, value, attention_mask, causal: bool, scale: float) -> torch.Tensor:
    B, Hq, Lq, D = query.shape
    Lk = key.shape[2]
    allowed = torch.ones(B, 1, Lq, Lk, dtype=torch.bool, device=query.device)
    if causal:  # query i sits at key position i + (Lk - Lq)
        i = torch.arange(Lq, device=query.device)[:, None] + (Lk - Lq)
        allowed = allowed & (torch.arange(Lk, device=query.device)[None, :] <= i)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -Lk:].bool()
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scale,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2)
