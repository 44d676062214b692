"""Tiny random models with local tokenizers: the embedded default for the demo and the tests.

Nothing here touches the network. The tokenizer is byte-level BPE without merges (one token per
byte, the 256 GPT-2 byte symbols) plus the family's special tokens, so any text round-trips; the
chat templates are the real checkpoints' templates, so masking is exercised on the real format.
"""

from __future__ import annotations

from transformers import (
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Qwen/Qwen2.5-VL-*-Instruct chat_template (transformers' Qwen2.5-VL processor template).
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# llava-hf/llava-1.5-*-hf chat_template: "USER: <image>\n... ASSISTANT: ..." with no end-of-turn
# token after the answer (the collator appends </s> so the model learns to stop).
LLAVA_1_5_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]


def byte_tokenizer(specials: list[str], eos: str, pad: str, template: str) -> Qwen2Tokenizer:
    """Byte-level tokenizer: ids 0-255 are bytes, then ``specials`` in order."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    for i, tok in enumerate(specials):
        vocab[tok] = 256 + i
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token=eos, pad_token=pad
    )
    extra = [s for s in specials if s not in (eos, pad)]
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.chat_template = template
    return tok


def tiny_qwen2_5_vl(min_pixels: int | None = None, max_pixels: int | None = None):
    """~0.6M-parameter Qwen2.5-VL (text 2x128, vision 2x64) + processor, random init."""
    tok = byte_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>",
                         template=QWEN2_5_VL_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    image_processor = Qwen2VLImageProcessor(
        min_pixels=min_pixels or 56 * 56, max_pixels=max_pixels or 112 * 112
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_5_VL_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6],
                             "rope_theta": 10000.0},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
    return model, processor


def tiny_llava(image_size: int = 112):
    """Tiny LLaVA-1.5-style model (CLIP tower 2x64, Qwen2 text 2x128) + processor, random init."""
    tok = byte_tokenizer(LLAVA_SPECIALS, eos="</s>", pad="<pad>", template=LLAVA_1_5_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=14,
        vision_feature_select_strategy="default", chat_template=LLAVA_1_5_TEMPLATE,
        image_token="<image>", num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=14,
            projection_dim=64,
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tok), hidden_size=128, intermediate_size=256,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"],
        ),
        image_token_id=ids["<image>"], vision_feature_layer=-2,
        vision_feature_select_strategy="default", pad_token_id=ids["<pad>"],
    )
    model = LlavaForConditionalGeneration(config)
    _set_generation_ids(model, eos=ids["</s>"], pad=ids["<pad>"])
    return model, processor


def _set_generation_ids(model, eos: int, pad: int) -> None:
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = None
