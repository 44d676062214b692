"""vldft's lmms-eval model class (``--model vldft``), registered through the ``lmms_eval.models``
entry point (``vldft.eval.plugin``).

It loads a checkpoint with vldft's adapters, so evaluation sees what training saw: the
checkpoint's own chat template, the adapter's image policy (Qwen2.5-VL: resized by
qwen-vl-utils within ``min_pixels`` / ``max_pixels``, never re-encoded to JPEG) and the same
greedy, left-padded batched generation as the in-training held-out accuracy
(``vldft.heldout.generate_messages``). Works for tiny vldft checkpoints (which carry their local
tokenizer / processor) and for real HF ids or paths (Qwen2.5-VL, LLaVA in HF format).

Model args (``--model_args k=v,...``): ``pretrained``, ``family`` (auto: from config.json),
``device`` (auto: cuda if available), ``dtype`` (auto: bfloat16 on CUDA, float32 on CPU),
``batch_size``, ``min_pixels`` / ``max_pixels`` (default: the checkpoint processor's),
``max_new_tokens`` (caps every task's budget), ``attn_implementation``, and for video tasks
``video_fps`` / ``video_min_frames`` / ``video_max_frames`` / ``video_min_pixels`` /
``video_max_pixels`` / ``video_max_tokens`` (``data.video``'s keys; default: the ``data.video``
of the run the checkpoint was saved in, read from its ``config.yaml``, else ``data.video``'s
defaults), so clips are decoded as in training.

Many processes: ``torchrun --nproc_per_node N -m vldft.eval ...`` (or ``accelerate launch``).
lmms-eval deals the documents out round-robin by ``RANK`` / ``WORLD_SIZE``, pads uneven shards
and gathers every sample on rank 0, which writes the results; each process here only takes its
own GPU (``cuda:LOCAL_RANK``) and joins the process group (gloo on CPU). The model is replicated,
not sharded: each process must hold a whole copy.

``VldftLMM.from_adapter`` wraps a model already in memory (the training loop's
``train.eval_tasks``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from tqdm import tqdm
from transformers import AutoConfig

from vldft.adapters import MODEL_TYPES, load_adapter
from vldft.config import ModelConfig, VideoSettings, saved_video_settings
from vldft.data.video import Video
from vldft.device import model_device
from vldft.heldout import generate_messages


def detect_family(pretrained: str) -> str:
    """vldft family of a checkpoint from its config.json ``model_type``."""
    model_type = AutoConfig.from_pretrained(pretrained).model_type
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{pretrained}: model_type {model_type!r} is not supported by vldft "
                         f"(supported: {sorted(MODEL_TYPES)})")
    return MODEL_TYPES[model_type]


def to_vldft_messages(chat: ChatMessages) -> tuple[list[dict], list, list[Video]]:
    """lmms-eval chat messages -> (vldft messages with image / video parts, images in order,
    videos in order: a file path, or a list of frames)."""
    messages, images, videos = [], [], []
    for msg in chat.messages:
        parts = []
        for part in msg.content:
            if part.type == "text":
                parts.append({"type": "text", "text": part.text})
            elif part.type == "image":
                parts.append({"type": "image"})
                images.append(part.url)  # PIL image or path; the adapter opens / resizes it
            elif part.type == "video":
                if getattr(part, "start_time", None) is not None or getattr(
                        part, "end_time", None) is not None:
                    raise ValueError("vldft model: video segments (start / end time) are not "
                                     "supported")
                parts.append({"type": "video"})
                url = part.url
                videos.append(Video(frames=list(url), name=f"{len(url)} frames")
                              if isinstance(url, (list, tuple)) else
                              Video.from_path(Path(str(url).removeprefix("file://")), str(url)))
            else:
                raise ValueError(f"vldft model: {part.type} inputs are not supported")
        messages.append({"role": msg.role, "content": parts})
    return messages, images, videos


VIDEO_KEYS = tuple(f.name for f in dataclasses.fields(VideoSettings))


class VldftLMM(lmms):
    """Chat-style lmms-eval model over a vldft adapter."""

    is_simple = False

    def __init__(self, pretrained: str, family: str = "auto", device: str = "auto",
                 dtype: str = "auto", batch_size: int | str = 1,
                 min_pixels: int | None = None, max_pixels: int | None = None,
                 max_new_tokens: int | None = None, attn_implementation: str = "sdpa",
                 **kwargs) -> None:
        super().__init__()
        video = {k.removeprefix("video_"): kwargs.pop(k) for k in list(kwargs)
                 if k.startswith("video_") and k.removeprefix("video_") in VIDEO_KEYS}
        if kwargs:
            raise ValueError(f"vldft model: unknown model_args {sorted(kwargs)}; known: "
                             "pretrained, family, device, dtype, batch_size, min_pixels, "
                             "max_pixels, max_new_tokens, attn_implementation, "
                             + ", ".join(f"video_{k}" for k in VIDEO_KEYS))
        self.video = saved_video_settings(pretrained, given=video)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if world > 1 and device == "cuda":  # one GPU per process
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self._device = torch.device(device)
        if self._device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # half the cores per process: on a busy 2-core machine two spinning OpenMP threads
            # made an evaluation 13x slower (80 s vs 6 s); idle, 1 and 2 threads took 6 s each
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // (2 * world)))
        if world > 1:  # joins the process group lmms-eval gathers over (gloo on CPU)
            self.accelerator = Accelerator(cpu=self._device.type == "cpu")
            self._rank, self._world_size = self.accelerator.process_index, world
        if dtype == "auto":
            dtype = "bfloat16" if self._device.type == "cuda" else "float32"
        family = detect_family(pretrained) if family == "auto" else family
        cfg = ModelConfig(family=family, name_or_path=str(pretrained), dtype=dtype,
                          attn_implementation=attn_implementation,
                          min_pixels=int(min_pixels) if min_pixels else None,
                          max_pixels=int(max_pixels) if max_pixels else None)
        self.adapter = load_adapter(cfg)
        self.adapter.model.to(self._device).eval()
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else None

    @classmethod
    def from_adapter(cls, adapter, batch_size: int = 8, max_new_tokens: int | None = None,
                     video: VideoSettings | None = None) -> VldftLMM:
        """Wrap a loaded adapter (its model stays where it is; training mode is restored by the
        caller). Single process: the in-training evaluation runs on rank 0."""
        self = cls.__new__(cls)
        lmms.__init__(self)
        self.adapter = adapter
        self._device = model_device(adapter.model)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else None
        self.video = video or VideoSettings()
        return self

    @property
    def model(self):
        return self.adapter.model

    @property
    def tokenizer(self):
        return self.adapter.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    def _gen_kwargs(self, task_kwargs: dict) -> tuple[int, dict, list[str]]:
        """(max_new_tokens, generate() kwargs, stop strings) from a task's generation_kwargs."""
        kw = dict(task_kwargs or {})
        budget = int(kw.pop("max_new_tokens", 128))
        if self.max_new_tokens:
            budget = min(budget, self.max_new_tokens)
        until = kw.pop("until", [])
        until = [until] if isinstance(until, str) else list(until or [])
        temperature = float(kw.pop("temperature", 0) or 0)
        gen = {"do_sample": False}
        if temperature > 0:  # sampling only when a task asks for it; greedy otherwise
            gen = {"do_sample": True, "temperature": temperature}
            if kw.get("top_p") is not None:
                gen["top_p"] = float(kw["top_p"])
        if int(kw.get("num_beams", 1) or 1) > 1:
            gen["num_beams"] = int(kw["num_beams"])
        return budget, gen, [u for u in until if u]

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """One completion per request, in request order, batched by equal generation kwargs."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[2].items())), []).append(i)
        pbar = tqdm(total=len(requests), desc="vldft generating",
                    disable=True if self.rank != 0 else None)  # None: off when not a TTY
        was_training = self.model.training
        self.model.eval()
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start: start + self.batch_size]
                convs = []
                for i in chunk:
                    _ctx, doc_to_messages, _kw, doc_id, task, split = requests[i].args
                    doc = self.task_dict[task][split][doc_id]
                    messages, images, videos = to_vldft_messages(
                        ChatMessages(messages=doc_to_messages(doc)))
                    convs.append((messages, images,
                                  [self.adapter.load_video(v, self.video) for v in videos]))
                budget, gen, until = self._gen_kwargs(requests[chunk[0]].args[2])
                texts = generate_messages(self.adapter, convs, budget, self._device, **gen)
                for i, text in zip(chunk, texts, strict=True):
                    for stop in until:
                        text = text.split(stop)[0]
                    n_out = len(self.tokenizer.encode(text, add_special_tokens=False))
                    results[i] = GenerationResult(text=text,
                                                  token_counts=TokenCounts(output_tokens=n_out))
                pbar.update(len(chunk))
        pbar.close()
        self.model.train(was_training)
        return results

    def loglikelihood(self, requests):
        raise NotImplementedError("vldft model: loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("vldft model: multi-round tasks are not supported")
