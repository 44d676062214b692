"""Tiny random models of the newer families (Qwen2-VL, Qwen3-VL dense / MoE, Qwen3.5,
LLaVA-OneVision) with local byte-level tokenizers and the families' real chat templates.

Each builder returns ``(model, processor)`` like ``tiny.tiny_qwen2_5_vl``: a text model of
2 layers x 64, a vision tower of 1-2 layers x 32, a few hundred thousand parameters, nothing
downloaded. The special-token layout follows the real vocabularies (same names, same order), so
templates and masking run on the real format; ``vldft.adapters.vocab`` gives the real ids.
"""

from __future__ import annotations

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from vldft.adapters import templates
from vldft.adapters.tiny import _set_generation_ids, byte_tokenizer
from vldft.adapters.vocab import (
    LLAVA_ONEVISION_SPECIALS,
    QWEN2_SPECIALS,
    QWEN3_5_SPECIALS,
    QWEN3_SPECIALS,
)

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)


def _qwen_tokenizer(specials: list[str], template: str):
    tok = byte_tokenizer(specials, eos="<|im_end|>", pad="<|endoftext|>", template=template)
    return tok, {t: tok.convert_tokens_to_ids(t) for t in specials}


def _qwen_ids(ids: dict) -> dict:
    """The multimodal token ids a Qwen config carries."""
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"],
                vision_end_token_id=ids["<|vision_end|>"])


def _image_processor(patch: int, min_pixels: int | None, max_pixels: int | None, unit: int):
    """Qwen2VLImageProcessor (all Qwen families use it) bounded by area, in ``unit`` tiles."""
    lo, hi = min_pixels or unit * unit, max_pixels or 4 * unit * unit
    return Qwen2VLImageProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                 size={"shortest_edge": lo, "longest_edge": hi})


def tiny_qwen2_vl(min_pixels: int | None = None, max_pixels: int | None = None):
    """Qwen2-VL: ViT (patch 14, 2x2 merger) + Qwen2 LM with mRoPE; 28 x 28 pixels per token."""
    tok, ids = _qwen_tokenizer(QWEN2_SPECIALS, templates.QWEN2_VL)
    processor = Qwen2VLProcessor(image_processor=_image_processor(14, min_pixels, max_pixels, 28),
                                 tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=templates.QWEN2_VL)
    config = Qwen2VLConfig(
        text_config=dict(TEXT, vocab_size=len(tok), bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                          "rope_theta": 10000.0}, tie_word_embeddings=True),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        **_qwen_ids(ids), tie_word_embeddings=True,
    )
    return _finish(Qwen2VLForConditionalGeneration(config), processor, ids)


def _qwen3_vl_config(cls, ids: dict, vocab: int, **text_extra):
    return cls(
        text_config=dict(TEXT, vocab_size=vocab, head_dim=16, bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True, "rope_theta": 10000.0},
                         **text_extra),
        # two vision layers: layer 0 feeds DeepStack into the first LLM layer
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=64, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0]),
        **_qwen_ids(ids), tie_word_embeddings=True,
    )


def _qwen3_processor(tok, template: str, min_pixels, max_pixels):
    return Qwen3VLProcessor(image_processor=_image_processor(16, min_pixels, max_pixels, 32),
                            tokenizer=tok, video_processor=Qwen3VLVideoProcessor(
                                patch_size=16, merge_size=2, temporal_patch_size=2),
                            chat_template=template)


def tiny_qwen3_vl(min_pixels: int | None = None, max_pixels: int | None = None):
    """Qwen3-VL dense: ViT (patch 16, 32 x 32 pixels per token) with DeepStack + Qwen3 LM with
    interleaved mRoPE; the Instruct (non-thinking) template."""
    tok, ids = _qwen_tokenizer(QWEN3_SPECIALS, templates.QWEN3_VL_INSTRUCT)
    processor = _qwen3_processor(tok, templates.QWEN3_VL_INSTRUCT, min_pixels, max_pixels)
    config = _qwen3_vl_config(Qwen3VLConfig, ids, len(tok))
    return _finish(Qwen3VLForConditionalGeneration(config), processor, ids)


def tiny_qwen3_vl_moe(min_pixels: int | None = None, max_pixels: int | None = None):
    """Qwen3-VL MoE (as 30B-A3B): every LLM layer a 4-expert top-2 sparse MLP; router logits
    are output so the adapter adds the load-balancing loss."""
    tok, ids = _qwen_tokenizer(QWEN3_SPECIALS, templates.QWEN3_VL_INSTRUCT)
    processor = _qwen3_processor(tok, templates.QWEN3_VL_INSTRUCT, min_pixels, max_pixels)
    config = _qwen3_vl_config(Qwen3VLMoeConfig, ids, len(tok), num_experts=4,
                              num_experts_per_tok=2, moe_intermediate_size=32,
                              decoder_sparse_step=1, router_aux_loss_coef=0.001)
    return _finish(Qwen3VLMoeForConditionalGeneration(config), processor, ids)


def tiny_qwen3_5(min_pixels: int | None = None, max_pixels: int | None = None):
    """Qwen3.5 (image-text): hybrid LM (gated-DeltaNet linear attention + full attention every
    2nd layer here), Qwen3-VL-style vision tower without DeepStack; thinking template."""
    tok, ids = _qwen_tokenizer(QWEN3_5_SPECIALS, templates.QWEN3_5)
    processor = _qwen3_processor(tok, templates.QWEN3_5, min_pixels, max_pixels)
    config = Qwen3_5Config(
        text_config=dict(TEXT, vocab_size=len(tok), head_dim=16, bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         layer_types=["linear_attention", "full_attention"],
                         linear_conv_kernel_dim=4, linear_key_head_dim=16,
                         linear_value_head_dim=16, linear_num_key_heads=2,
                         linear_num_value_heads=4,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True, "rope_theta": 10000.0,
                                          "partial_rotary_factor": 0.5},
                         tie_word_embeddings=True),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=64, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=64),
        **_qwen_ids(ids), tie_word_embeddings=True,
    )
    return _finish(Qwen3_5ForConditionalGeneration(config), processor, ids)


def tiny_llava_onevision(image_size: int = 28):
    """LLaVA-OneVision: SigLIP tower + 2-layer MLP projector + Qwen2 LM; anyres tiling (a base
    view plus tiles from ``image_grid_pinpoints``, unpadded, a newline embedding per row)."""
    tok = byte_tokenizer(LLAVA_ONEVISION_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                         template=templates.LLAVA_ONEVISION)
    ids = {t: tok.convert_tokens_to_ids(t) for t in LLAVA_ONEVISION_SPECIALS}
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size],
                 [2 * image_size, image_size]]
    image_processor = LlavaOnevisionImageProcessor(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints,
        do_pad=True)
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(  # frames at the tower's size, as images
            size={"height": image_size, "width": image_size}),
        chat_template=templates.LLAVA_ONEVISION,
        num_image_tokens=(image_size // 14) ** 2, vision_feature_select_strategy="full",
        image_token="<image>", video_token="<video>")
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
                           patch_size=14),
        text_config=dict(TEXT, model_type="qwen2", vocab_size=len(tok), bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         tie_word_embeddings=True),
        image_token_id=ids["<image>"], video_token_id=ids["<video>"],
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints, tie_word_embeddings=True,
    )
    return _finish(LlavaOnevisionForConditionalGeneration(config), processor, ids)


def _finish(model, processor, ids: dict):
    _set_generation_ids(model, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
    return model, processor
