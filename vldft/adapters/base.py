"""The small interface every model family implements.

An adapter owns a Hugging Face model + processor pair and answers the questions the collator,
the objective and the training loop ask of a family: how a conversation is rendered, which token
stands for an image, which string ends an assistant turn, how to get final hidden states, and
which parameters form the vision tower, the projector and the language model. Adding a family
(Qwen2-VL, LLaVA-OneVision, ...) is one file that subclasses ``Adapter`` and fills these in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from vldft.data import open_image


def _tensors(obj) -> list[torch.Tensor]:
    """Every tensor inside a (nested) model output / tuple / list."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


class Adapter:
    """Base class; subclasses set the class attributes and implement the three hooks below."""

    family: str = ""
    image_token: str = ""  # placeholder string the chat template emits for one image
    end_of_turn: str = ""  # string that ends an assistant turn (trained, so the model stops)
    vision_prefixes: tuple[str, ...] = ()  # parameter-name prefixes of the vision tower
    projector_prefixes: tuple[str, ...] = ()  # ... of the projector / merger

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model = model
        self.lora = None  # the peft PeftModel when model.lora is set (vldft.adapters.lora)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id: int = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.pad_token_id: int = self.tokenizer.pad_token_id
        eot_ids = self.tokenizer.encode(self.end_of_turn, add_special_tokens=False)
        if len(eot_ids) != 1:
            raise ValueError(f"{self.family}: end-of-turn {self.end_of_turn!r} is not one token")
        self.eot_token_id: int = eot_ids[0]

    # -- hooks -------------------------------------------------------------------------------
    def load_image(self, image: str | Path | Image.Image,
                   pixels: tuple[int | None, int | None] | None = None) -> Image.Image:
        """Open an image (and apply the family's resizing policy; ``pixels``: per-source
        (min_pixels, max_pixels) overrides where the family supports them)."""
        if isinstance(image, Image.Image):  # never close a caller's image
            return image.convert("RGB")
        with open_image(image) as im:  # a path or encoded bytes (parquet / HF)
            return im.convert("RGB")

    def hidden_states(self, batch: dict[str, torch.Tensor],
                      model: nn.Module | None = None) -> torch.Tensor:
        """Run the backbone (vision + language model, no lm_head): final hidden states [B, T, H].

        ``model`` defaults to the adapter's model; ASFT passes its frozen reference copy."""
        model = self.model if model is None else model
        return model.model(**batch, use_cache=False).last_hidden_state

    def output_layer(self, model: nn.Module | None = None) -> nn.Linear:
        """The output projection (lm_head); its weight may be tied to the input embeddings."""
        return (self.model if model is None else model).lm_head

    def image_token_count(self, size: tuple[int, int],
                          pixels: tuple[int | None, int | None] | None = None) -> int:
        """Tokens one image of ``size`` (width, height) expands to (for length estimates)."""
        raise NotImplementedError

    def dummy_image_inputs(self) -> dict[str, torch.Tensor]:
        """Inputs of ``get_image_features`` for one tiny blank image (text-only batches)."""
        raise NotImplementedError

    # -- shared behaviour --------------------------------------------------------------------
    def dummy_vision_loss(self, model: nn.Module | None = None) -> torch.Tensor:
        """``0 *`` the vision tower + projector output on a tiny blank image.

        Added to the loss of a micro-batch without images so that every rank runs the vision
        tower in every step: FSDP / ZeRO-3 all-gather its weights in lockstep and DDP sees its
        parameters used (their gradients are zeros, not missing). The peers' fix for the hang.
        """
        model = self.model if model is None else model
        ref = next(model.parameters())
        inputs = {k: (v.to(ref.device, ref.dtype) if v.is_floating_point() else v.to(ref.device))
                  for k, v in self.dummy_image_inputs().items()}
        out = model.model.get_image_features(**inputs)
        # pooler_output holds the projected image features: exactly what an image batch uses
        # (other fields, e.g. the tower's last layer, may be unused by design)
        feats = out.pooler_output if getattr(out, "pooler_output", None) is not None else out
        return sum(t.float().sum() for t in _tensors(feats)) * 0.0

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """Render a conversation with the checkpoint's own chat template (text, no tokens)."""
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def process(self, text: str, images: list[Image.Image],
                pixels: tuple[int | None, int | None] | None = None) -> dict[str, torch.Tensor]:
        """Processor call for ONE sample: expands image placeholders, returns [1, T] tensors."""
        out = self.processor(text=[text], images=images or None, return_tensors="pt")
        return dict(out)

    def part_of(self, param_name: str) -> str:
        """'vision', 'projector' or 'language' for a parameter name of ``self.model``."""
        if param_name.startswith(self.projector_prefixes):  # checked first: Qwen's merger
            return "projector"  # lives under the vision tower's prefix
        if param_name.startswith(self.vision_prefixes):
            return "vision"
        return "language"

    def parts(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {
            "vision": [],
            "projector": [],
            "language": [],
        }
        for name, p in self.model.named_parameters():
            groups[self.part_of(name)].append((name, p))
        return groups

    def freeze(self, parts: list[str]) -> None:
        for part, params in self.parts().items():
            for _, p in params:
                p.requires_grad_(part not in parts)

    def freeze_unused(self) -> list[str]:
        """Freeze trainable vision / projector parameters that the image path never uses
        (LLaVA reads vision_feature_layer -2, so CLIP's last layer and post_layernorm idle).
        DDP needs every trainable parameter to receive a gradient in every step. Returns the
        names frozen."""
        params = [(n, p) for n, p in self.parts()["vision"] + self.parts()["projector"]
                  if p.requires_grad]
        if not params:
            return []
        self.model.zero_grad(set_to_none=True)
        self.dummy_vision_loss().backward()
        unused = [n for n, p in params if p.grad is None]
        for _n, p in params:
            if p.grad is None:
                p.requires_grad_(False)
        self.model.zero_grad(set_to_none=True)
        return unused

    def save(self, out_dir: str | Path, state_dict: dict | None = None) -> None:
        """Hugging Face format: loadable by AutoModelForImageTextToText / AutoProcessor. With
        LoRA: the merged model, plus the peft adapter in ``adapter/``. ``state_dict``: the full
        weights when the live parameters are sharded (FSDP / ZeRO-3)."""
        if self.lora is not None:
            from vldft.adapters.lora import save_lora

            save_lora(self, Path(out_dir), state_dict)
        else:
            self.model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
        self.processor.save_pretrained(out_dir)
