"""The small interface every model family implements (the adapter contract).

An adapter owns a Hugging Face model + processor pair and answers the questions the collator,
the objective and the training loop ask of a family. The whole contract:

- **load or tiny-build**: ``vldft.adapters.load_adapter(model_cfg)`` picks the class by
  ``model.family`` (``FAMILIES``; a checkpoint's family comes from its ``config.json``
  ``model_type``, ``family_of_checkpoint``), loads ``model_class`` + ``AutoProcessor`` or builds
  the family's tiny model (``TINY_BUILDERS``);
- **processor with pixel limits**: ``load_image`` / ``process`` / ``image_token_count`` apply the
  family's image policy (per-source ``(min_pixels, max_pixels)`` where
  ``supports_pixel_bounds``);
- **chat template**: ``render`` (the checkpoint's own template, with ``template_kwargs``);
  ``end_of_turn`` is the string that ends an answer (trained);
- **parts**: ``vision_prefixes`` / ``projector_prefixes`` split parameters into vision /
  projector / language for freezing and per-part learning rates (``parts``, ``freeze``);
- **image tokens**: ``image_token`` / ``image_token_id``, the placeholder the processor expands;
- **video** (families with a ``video_token``): ``load_video`` decodes a clip with
  ``data.video`` (``vldft.data.video``), ``process`` expands its placeholder,
  ``video_region`` names the template tokens the processor replaces as a whole (Qwen3-VL: the
  whole ``<|vision_start|><|video_pad|><|vision_end|>``, which becomes per-frame timestamps and
  frames), ``video_token_counts`` the pad tokens of each video (the collator masks the whole
  expansion); ``video_frames_fixed``: every clip gets exactly ``max_frames`` frames (LLaVA-
  OneVision batches videos as one tensor, so their frame counts must agree);
- **dummy vision pass**: ``dummy_image_inputs`` feeds ``dummy_vision_loss`` for text-only
  micro-batches (every rank runs the vision path, every trained vision parameter gets a zero);
- **forward**: ``hidden_states`` (final hidden states, no lm_head) and ``output_layer``;
  ``pop_aux_loss`` hands the step any auxiliary loss of the last training forward (MoE routers);
- **positions**: ``position_ids`` (the family's RoPE positions of a batch, per sample; None
  where the model's default 1-D positions apply) and ``packed_positions`` (one sample's
  positions for a packed row, ``vldft.packing``);
- **saving**: ``save`` (Hugging Face format, loadable without vldft).

Adding a family is one file that subclasses ``Adapter`` and fills in the class attributes and
the hooks, one tiny builder, and a row in ``FAMILIES`` / ``TINY_BUILDERS``; the conformance suite
(``tests/test_conformance.py``) then holds it to the same tests as every other family.
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
    model_types: tuple[str, ...] = ()  # config.json model_type values of this family
    model_class: str = ""  # transformers class that loads a checkpoint of this family
    supports_pixel_bounds: bool = False  # model.min_pixels / max_pixels are honoured
    packing_refused: str = ""  # why data.packing cannot work for the family ("" = it can)
    multi_turn_refused: str = ""  # why a sample with several answers cannot train ("" = it can)
    template_kwargs: dict = {}  # extra chat-template variables (Qwen3.5: enable_thinking)
    image_token: str = ""  # placeholder string the chat template emits for one image
    video_token: str = ""  # ... for one video ("" = the family takes no video)
    video_region: tuple[str, ...] = ()  # template tokens of one video that the processor
    # replaces as a whole (default: the video token alone)
    video_unit: int = 28  # decoded frames are resized to multiples of this many pixels
    video_frames_fixed: bool = False  # every clip gets exactly data.video.max_frames frames
    end_of_turn: str = ""  # string that ends an assistant turn (trained, so the model stops)
    vision_prefixes: tuple[str, ...] = ()  # parameter-name prefixes of the vision tower
    projector_prefixes: tuple[str, ...] = ()  # ... of the projector / merger

    def __init__(self, model: nn.Module, processor: Any, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> None:
        # min_pixels / max_pixels: only families with supports_pixel_bounds read them
        self.model = model
        self._aux_loss: torch.Tensor | None = None
        self.lora = None  # the peft PeftModel when model.lora is set (vldft.adapters.lora)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id: int = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id: int | None = (self.tokenizer.convert_tokens_to_ids(self.video_token)
                                           if self.video_token else None)
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

        Run for a micro-batch without images (``vldft.step.blank_passes``: right after the
        token embedding, its zero added to the embedded tokens) so that every rank runs the
        vision tower in every step, where and as an image rank does: FSDP / ZeRO-3 gather its
        weights in lockstep and DDP sees its parameters used (their gradients are zeros, not
        missing). The peers' fix for the hang.
        """
        model = self.model if model is None else model
        ref = next(model.parameters())
        inputs = {k: (v.to(ref.device, ref.dtype) if v.is_floating_point() else v.to(ref.device))
                  for k, v in self.dummy_image_inputs().items()}
        out = model.model.get_image_features(**inputs)
        # pooler_output holds the projected image features: exactly what an image batch uses
        # (other fields, e.g. the tower's last layer, may be unused by design); Qwen3-VL's
        # DeepStack features are used too (added into the first LLM layers)
        feats = out.pooler_output if getattr(out, "pooler_output", None) is not None else out
        tensors = _tensors(feats) + _tensors(getattr(out, "deepstack_features", None))
        return sum(t.float().sum() for t in tensors) * 0.0

    def pop_aux_loss(self) -> torch.Tensor | None:
        """The auxiliary loss of the last training forward (MoE router load balancing, already
        scaled by its coefficient), once; None for dense families."""
        aux, self._aux_loss = self._aux_loss, None
        return aux

    def position_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Position ids of a padded batch as the model computes them (Qwen: mRoPE ``[3, B, T]``),
        per sample; None for families whose model uses plain 1-D positions."""
        return None

    def packed_positions(self, enc) -> torch.Tensor:
        """Positions of ONE encoded sample (``collate.Encoded``) for a packed row
        (``vldft.packing``): ``[1, n]`` = 0..n-1 for 1-D RoPE models."""
        return torch.arange(len(enc.input_ids)).unsqueeze(0)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """Render a conversation with the checkpoint's own chat template (text, no tokens)."""
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt,
            **self.template_kwargs)

    def process(self, text: str, images: list[Image.Image],
                pixels: tuple[int | None, int | None] | None = None,
                videos: list | None = None) -> dict[str, torch.Tensor]:
        """Processor call for ONE sample: expands image (and video: ``vldft.data.video.Decoded``)
        placeholders, returns [1, T] tensors."""
        out = self.processor(text=[self.processor_text(text, videos)], images=images or None,
                             return_tensors="pt", **self.video_kwargs(videos))
        return dict(out)

    def processor_text(self, text: str, videos: list | None = None) -> str:
        """The text handed to the processor: with videos, each whole ``video_region`` (Qwen3-VL:
        ``<|vision_start|><|video_pad|><|vision_end|>``) becomes the bare video token, whose
        expansion brings each frame's own start / end. transformers >= 5.25 collapses it itself
        (``Qwen3VLProcessor.get_text_with_replacements``); 5.20-5.24 kept the outer pair around
        the frames (a vision start / end pair the model never saw)."""
        if videos and len(self.video_region) > 1:
            text = text.replace("".join(self.video_region), self.video_token)
        return text

    # -- video ---------------------------------------------------------------------------------
    def load_video(self, video, settings, max_frames: int | None = None):
        """Decode one ``vldft.data.video.Video`` with ``settings`` (``data.video``, with the
        clip's own values over it: ``Video.settings``); ``max_frames`` lowers the frame cap (an
        overlong sample is shortened by frames)."""
        from vldft.data.video import decode

        if not self.video_token:
            raise ValueError(f"model family {self.family!r} does not take video")
        settings = video.settings(settings)
        fixed = (max_frames or settings.max_frames) if self.video_frames_fixed else None
        return decode(video, settings, self.video_unit, max_frames, nframes=fixed)

    def video_kwargs(self, videos: list | None) -> dict:
        """Processor arguments for decoded ``videos`` (frames already sampled: the processor
        must not sample again; the metadata gives the frames' times)."""
        if not videos:
            return {}
        from transformers.video_utils import VideoMetadata

        meta = [VideoMetadata(total_num_frames=v.total, fps=v.fps, frames_indices=v.indices)
                for v in videos]
        return {"videos": [v.frames for v in videos], "video_metadata": meta,
                "do_sample_frames": False}

    def video_token_estimate(self, video, settings) -> int:
        """Tokens one video expands to (``vldft.data.video.plan``: headers only; ``settings``
        with the clip's own values over it, as ``load_video``), for length estimates; an
        unreadable video counts 0 (the collator reports it)."""
        raise NotImplementedError(f"{self.family}: no video")

    def video_token_counts(self, out: dict[str, torch.Tensor]) -> list[int]:
        """Video pad tokens of each video in a processed sample (default: the runs of
        ``video_token_id`` in ``input_ids``)."""
        ids = out["input_ids"][0].tolist()
        runs, prev = [], None
        for t in ids:
            if t == self.video_token_id:
                if prev != t:
                    runs.append(0)
                runs[-1] += 1
            prev = t
        return runs

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
