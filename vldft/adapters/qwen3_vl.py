"""Qwen3-VL, dense (``Qwen3VLForConditionalGeneration``) and MoE
(``Qwen3VLMoeForConditionalGeneration``, e.g. 30B-A3B).

ViT with patch 16 (32 x 32 pixels per image token after the 2x2 merger), interleaved mRoPE, and
DeepStack: features of some vision layers go through their own mergers
(``model.visual.deepstack_merger_list``, counted as projector here) and are added to the hidden
states of the first LLM layers at the image positions. The dummy vision pass of a text-only
micro-batch therefore covers those mergers too (``Adapter.dummy_vision_loss`` sums the DeepStack
features). Image / video / vision-start ids are Qwen2.5's (151655, 151656, 151652); the
Instruct template has no default system prompt. Video: the processor replaces the template's
``<|vision_start|><|video_pad|><|vision_end|>`` as a whole by, per temporal patch, a text
timestamp ``<t seconds>`` and the frame's own vision start / pads / end (``video_region``); the
timestamps come from the frames' indices and the source's frame rate, and ``get_rope_index``
gives every frame its own temporal position.

MoE: ``hidden_states`` asks the language model for its router logits and keeps
``router_aux_loss_coef * load_balancing_loss`` (transformers' Switch-Transformer loss, the
term ``Qwen3VLMoeForConditionalGeneration.forward`` adds to its loss) for the training step,
which adds it weighted by the micro-batch's target tokens (``Adapter.pop_aux_loss``).
"""

from __future__ import annotations

import torch

from vldft.adapters.qwen_vl import QwenVLAdapter


class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    model_class = "Qwen3VLForConditionalGeneration"
    projector_prefixes = ("model.visual.merger.", "model.visual.deepstack_merger_list.")
    video_region = ("<|vision_start|>", "<|video_pad|>", "<|vision_end|>")


class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    family = "qwen3_vl_moe"
    model_types = ("qwen3_vl_moe",)
    model_class = "Qwen3VLMoeForConditionalGeneration"

    def hidden_states(self, batch, model=None):
        model = self.model if model is None else model
        train = torch.is_grad_enabled() and model is self.model
        out = model.model(**batch, use_cache=False, output_router_logits=train)
        if train and out.router_logits is not None:
            from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import (
                load_balancing_loss_func,
            )

            tc = model.config.text_config
            aux = load_balancing_loss_func(out.router_logits, tc.num_experts,
                                           tc.num_experts_per_tok, batch.get("attention_mask"))
            self._aux_loss = tc.router_aux_loss_coef * aux
        return out.last_hidden_state
