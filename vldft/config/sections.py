"""The config sections (``model``, ``data``, ``loss``, ``train``) as dataclasses, each with a
``validate()`` of its own keys. Checks that need two sections, or paths (which resolve against
the config's directory), are in ``Config.validate`` (``vldft/config/__init__.py``).

Every field has a comment; docs/configuration.md documents the same fields (a test checks that
every field has a row in its section's table)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vldft.objective_spec import ObjectiveSpec

PARTS = ("vision", "projector", "language")


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


def world_size() -> int:
    """Processes of this run (torchrun / accelerate set WORLD_SIZE; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "qkv", "proj", "fc1", "fc2", "linear_1", "linear_2", "mlp.0", "mlp.2"]


@dataclass
class LoraSettings:
    r: int = 16  # LoRA rank
    alpha: float = 32.0  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the LoRA input
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))  # Linear
    # layer names (last name components) that get LoRA, within the parts below
    parts: list[str] = field(default_factory=lambda: ["language"])  # parts that get LoRA
    # (language, vision, projector); everything else is frozen

    def validate(self, freeze: list[str]) -> None:
        """``freeze``: the model's frozen parts (a LoRA part must not be among them all)."""
        for part in self.parts:
            if part not in PARTS:
                raise ConfigError(f"model.lora.parts: unknown part {part!r}; choose from "
                                  f"{PARTS}")
        if not self.parts:
            raise ConfigError(f"model.lora.parts: must name at least one part of {PARTS}")
        if not set(self.parts) - set(freeze):
            raise ConfigError("model.lora.parts: every LoRA part is also in model.freeze; "
                              "nothing would be trained")
        if self.r < 1:
            raise ConfigError("model.lora.r: must be >= 1")
        if not self.alpha > 0:
            raise ConfigError("model.lora.alpha: must be > 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.lora.dropout: must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError("model.lora.target_modules: must name at least one layer")


# model families (vldft.adapters.FAMILIES; docs/families.md); the Qwen ones take pixel bounds
PIXEL_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5")
FAMILY_NAMES = (*PIXEL_FAMILIES, "llava", "llava_onevision")
CHECKPOINT_KEEP = ("attention", "matmul")  # model.checkpoint_keep's choices (vldft.levers)


@dataclass
class ModelConfig:
    family: Literal[FAMILY_NAMES] = "qwen2_5_vl"  # model family (adapter; docs/families.md)
    name_or_path: str | None = None  # hub id or local dir of an HF checkpoint
    revision: str | None = None  # hub id only: the branch, tag or commit to load (null: the
    # hub's main branch, as cached); the commit loaded is logged and kept in summary.json
    tiny: bool = False  # build a tiny random model of `family` locally instead (demo / tests;
    # no download); name_or_path is then ignored, so model.tiny=true tries any shipped config
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # weights dtype on load
    # "sdpa", "eager", "flash_attention_2" (flash extra) or "varlen" (vldft.attention's varlen
    # function also for padded batches: on CUDA one kernel call per layer; packing uses it anyway)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "varlen"] = "sdpa"
    min_pixels: int | None = None  # Qwen families: lower bound on image area after resizing
    max_pixels: int | None = None  # Qwen families: upper bound on image area (limits tokens)
    freeze: list[str] = field(default_factory=list)  # parts to freeze: vision, projector, language
    gradient_checkpointing: bool | Literal["selective"] = False  # recompute activations in
    # backward to save memory (language model and vision tower); "selective": keep the outputs
    # named in checkpoint_keep, recompute only the rest (vldft.levers)
    checkpoint_keep: list[str] = field(default_factory=lambda: list(CHECKPOINT_KEEP))  # with
    # gradient_checkpointing=selective, outputs saved rather than recomputed: "attention" (the
    # attention kernels), "matmul" (matrix products); element-wise ops are always recomputed
    vision_no_grad: bool | Literal["auto"] = "auto"  # run a frozen vision tower without
    # autograd (no activations saved, no backward or recomputation through it; the projector
    # still gets exact gradients); auto: when "vision" is in freeze (LoRA then skips it too)
    precompute_segments: bool = True  # varlen attention: the collator computes a micro-batch's
    # segment boundaries once on the CPU for every layer (no per-layer work or GPU->CPU sync)
    lora: LoraSettings | None = None  # train LoRA adapters (peft) instead of full weights

    def validate(self) -> None:
        if not self.tiny and self.name_or_path is None:
            raise ConfigError("model: set model.name_or_path (a hub id or a checkpoint folder) "
                              "or model.tiny=true")
        for part in self.freeze:
            if part not in PARTS:
                raise ConfigError(f"model.freeze: unknown part {part!r}; choose from {PARTS}")
        if set(self.freeze) >= set(PARTS):
            raise ConfigError("model.freeze: every part is frozen, nothing would be trained")
        if self.family not in PIXEL_FAMILIES and (self.min_pixels or self.max_pixels):
            raise ConfigError(f"model.min_pixels/max_pixels: not supported for {self.family} "
                              f"(only for {', '.join(PIXEL_FAMILIES)})")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError("model.min_pixels: larger than model.max_pixels")
        if self.lora is not None:
            self.lora.validate(self.freeze)
        self._validate_levers()
        if self.attn_implementation == "flash_attention_2" \
                and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation: flash_attention_2 needs the flash-attn "
                              "package (pip install 'vldft[flash]', CUDA only); sdpa or varlen "
                              "need nothing")
        if self.dtype == "float16":
            raise ConfigError("model.dtype: float16 weights would train without loss scaling; "
                              "use float32 with train.mixed_precision (bf16 autocast)")
        for key in ("min_pixels", "max_pixels"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}: must be > 0")

    def _validate_levers(self) -> None:
        """The speed / memory switches (``vldft.levers``)."""
        bad = [k for k in self.checkpoint_keep if k not in CHECKPOINT_KEEP]
        if bad or not self.checkpoint_keep:
            raise ConfigError(f"model.checkpoint_keep: {self.checkpoint_keep} must be a non-empty "
                              f"list of {list(CHECKPOINT_KEEP)}")
        if self.vision_no_grad is True and "vision" not in self.freeze:
            raise ConfigError("model.vision_no_grad: true needs 'vision' in model.freeze (a "
                              "trained vision tower, LoRA included, needs its autograd)")


FORMATS = ("auto", "normalized", "llava", "messages", "sharegpt", "hf", "geometry3k", "text_math")


@dataclass
class SourceConfig:
    path: str = ""  # file, folder, parquet / arrow file, saved-to-disk dataset dir, or hub id
    format: Literal[FORMATS] = "auto"  # row format (docs/data.md); auto: detect
    name: str | None = None  # label in reports (default: the path's stem)
    weight: float | None = None  # relative share of the mixture (sampled with repetition)
    max_samples: int | None = None  # keep at most this many (seeded choice)
    image_root: str | None = None  # base dir of relative image paths (default: the file's dir)
    prompt_template: str | None = None  # user prompt format, e.g. "{question}\nAnswer with A-D."
    system: str | None = None  # system prompt added to every sample of this source
    split: str = "train"  # split of a Hugging Face dataset
    columns: dict[str, str] = field(default_factory=dict)  # field -> column (hf, text_math,
    # geometry3k): question, answer, solution, images, messages, id, choices
    min_pixels: int | None = None  # Qwen2.5-VL per-source override of model.min_pixels
    max_pixels: int | None = None  # Qwen2.5-VL per-source override of model.max_pixels
    allow_outside_root: bool | None = None  # may an image path resolve (after .. / symlinks)
    # outside image_root? null: no for a source with `hub` (downloaded data), yes otherwise
    hub: str | None = None  # Hugging Face dataset id that `vldft-data download` fetches this
    # source from; its local copy is data.data_dir/<name>/ and `path` is relative to that folder
    # (default: <split>.parquet, <split>/ or the folder itself; docs/data.md)
    subset: str | None = None  # the hub dataset's config name, e.g. "geo170k(qa)"
    hub_files: list[str] = field(default_factory=list)  # files of the hub dataset repository
    # fetched as they are (upstream layout; .zip / .tar / .tar.gz archives extracted); empty:
    # the split's rows are saved as <split>.parquet with the images embedded
    revision: str | None = None  # with `hub`: the branch, tag or commit to download (null: the
    # main branch); the commit downloaded is recorded, and a copy of another one is refused

    @property
    def label(self) -> str:
        return self.name or Path(self.path.rstrip("/")).stem or self.path

    def validate(self, key: str) -> None:
        """``key``: where this source sits, e.g. ``data.sources[0]`` (errors name it)."""
        if self.hub is not None:
            if not self.name:
                raise ConfigError(f"{key}.name: required with {key}.hub (the folder "
                                  "data.data_dir/<name>/ holds the download)")
            if Path(self.path).is_absolute() or ".." in Path(self.path).parts:
                raise ConfigError(f"{key}.path: with {key}.hub, a path inside "
                                  f"data.data_dir/{self.name}/ (got {self.path!r})")
        elif not self.path:
            raise ConfigError(f"{key}.path: required")
        if (self.subset or self.hub_files or self.revision) and self.hub is None:
            raise ConfigError(f"{key}.subset/hub_files/revision: only with {key}.hub")
        if self.weight is not None and not self.weight > 0:
            raise ConfigError(f"{key}.weight: must be > 0")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"{key}.max_samples: must be >= 1")
        for bound in ("min_pixels", "max_pixels"):
            if getattr(self, bound) is not None and getattr(self, bound) <= 0:
                raise ConfigError(f"{key}.{bound}: must be > 0")
        if self.prompt_template is not None and "{question}" not in self.prompt_template:
            raise ConfigError(f"{key}.prompt_template: must contain {{question}}")


@dataclass
class VideoSettings:
    """How a video becomes frames (vldft.data.video), the same in training, held-out scoring and
    vldft.eval."""

    fps: float = 2.0  # frames sampled per second of a video file; a list / folder of frames is
    # taken as a clip already sampled at this rate (timestamps: frame i at i / fps seconds)
    min_frames: int = 4  # at least this many frames from a video file (when it has them;
    # never more than max_frames)
    max_frames: int = 32  # frame cap per video (Qwen joins 2 frames per patch: odd is floored)
    min_pixels: int | None = None  # per-frame pixel floor (Qwen: default 128 tokens' worth)
    max_pixels: int | None = None  # per-frame pixel cap (Qwen: default 768 tokens' worth)
    max_tokens: int = 2048  # video-token budget per video: frames are made smaller (never
    # fewer) until T/2 x tokens-per-frame-pair fits (qwen-vl-utils' total_pixels)

    def validate(self) -> None:
        if not self.fps > 0:
            raise ConfigError("data.video.fps: must be > 0")
        if self.min_frames < 1 or self.max_frames < 2:
            raise ConfigError("data.video.min_frames / max_frames: at least 1 / 2")
        if self.max_tokens < 1:
            raise ConfigError("data.video.max_tokens: must be >= 1")
        for key in ("min_pixels", "max_pixels"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ConfigError(f"data.video.{key}: must be > 0")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError("data.video.min_pixels: larger than data.video.max_pixels")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)  # training sources, mixed
    train_files: list[str] = field(default_factory=list)  # shorthand: normalised JSONL files
    on_error: Literal["raise", "skip"] = "raise"  # bad rows: stop, or skip + count + report
    group_by_length: bool = False  # batch samples of similar length (per modality)
    heldout_file: str | None = None  # JSONL scored after training (CE + answer accuracy)
    image_root: str | None = None  # base dir for relative image paths of train_files,
    # heldout_file and every local source without its own (default: each file's dir)
    max_length: int = 2048  # max tokens per sample, image tokens included
    overlong: Literal["truncate", "skip", "error"] = "truncate"  # samples over max_length
    train_on: Literal["all", "last"] = "all"  # train every assistant turn, or the last only
    num_workers: int = 0  # DataLoader worker processes
    packing: bool = False  # pack samples end to end into micro-batches of pack_tokens tokens
    # (vldft.packing: per-sample positions, no attention across samples; micro_batch_size and
    # group_by_length are then unused)
    pack_tokens: int = 4096  # tokens per packed micro-batch; data.max_length must not exceed it
    data_dir: str | None = None  # where sources with a `hub` key live, one folder per source
    # name (`vldft-data download CONFIG --data-dir DIR` fills it); null: $VLDFT_DATA_DIR, else
    # ~/.cache/vldft/data
    decontaminate: bool | str | list[str] = "off"  # drop training rows that match a
    # benchmark's test rows (same or near-same image, or a specific question): "off", a suite
    # ("paper", "geo") or a list of benchmarks / lmms-eval tasks; reads their local copies
    # (`vldft.eval --data-dir` layout) from train.eval_data_dir, else from the data dir

    video: VideoSettings = field(default_factory=VideoSettings)  # frames of video parts
    cache: bool = True  # keep the read, checked (and decontaminated), length-estimated
    # training set on disk, keyed by the sources' files and the settings (vldft.data.cache;
    # $VLDFT_CACHE_DIR, else ~/.cache/vldft/sets): rank 0 builds it, the other ranks and every
    # restart map it. false: every rank reads every source on every start

    def __post_init__(self) -> None:
        if self.decontaminate is False:  # YAML 1.1 reads a bare `off` as false
            self.decontaminate = "off"

    def all_sources(self) -> list[SourceConfig]:
        """One normalised-format source per ``train_files`` entry, then ``sources``;
        ``image_root`` is the image root of each of them that has none of its own (a source
        with ``hub`` aside: its image root is inside its download)."""
        own = [src if src.image_root or src.hub or not self.image_root
               else dataclasses.replace(src, image_root=self.image_root) for src in self.sources]
        return [*(SourceConfig(path=f, format="normalized", image_root=self.image_root)
                  for f in self.train_files), *own]

    def validate(self) -> None:
        if not self.train_files and not self.sources:
            raise ConfigError("data.sources: at least one source (or data.train_files) is needed")
        for i, src in enumerate(self.sources):
            src.validate(f"data.sources[{i}]")
        if sum(src.weight is not None for src in self.sources) not in (0, len(self.sources)):
            raise ConfigError("data.sources: give a weight to every source or to none")
        labels = [src.label for src in self.all_sources()]
        if len(set(labels)) != len(labels):
            twice = sorted({x for x in labels if labels.count(x) > 1})
            from_files = [f for f in self.train_files if Path(f).stem in twice]
            how = (f"data.train_files {from_files} are named by their file stem, which they "
                   "share: list them as data.sources entries, each with its own `name`"
                   if from_files else "give each data.sources entry its own `name`")
            raise ConfigError(f"data.sources: duplicate source names {twice}; {how}")
        if self.max_length < 16:
            raise ConfigError("data.max_length: must be at least 16")
        self.video.validate()
        if self.num_workers < 0:
            raise ConfigError("data.num_workers: must be >= 0")
        if self.pack_tokens < 16:
            raise ConfigError("data.pack_tokens: must be at least 16")
        dec = self.decontaminate
        bad = dec is True or (not dec if isinstance(dec, list) else not str(dec).strip())
        if bad:
            raise ConfigError('data.decontaminate: "off", a suite name or a non-empty list of '
                              "benchmarks / tasks")
        if self.packing and self.max_length > self.pack_tokens:
            raise ConfigError(f"data.max_length ({self.max_length}) > data.pack_tokens "
                              f"({self.pack_tokens}): with data.packing a sample must fit in "
                              "one packed micro-batch; raise data.pack_tokens or lower "
                              "data.max_length")


@dataclass(frozen=True)
class LossConfig(ObjectiveSpec):
    """The objective's fields (name, min_weight, alpha, kl_lambda, eaft_topk, eaft_alpha,
    sft_mix, chunk_size, implementation: defined once, in ``vldft.objective_spec.ObjectiveSpec``,
    which checks them when built) plus the schedule of objectives."""

    sft_warmup_steps: int = 0  # optimizer steps of plain SFT before switching to `name`

    def spec(self, name: str | None = None) -> ObjectiveSpec:
        """The objective for a step (``name`` overrides, e.g. "sft" during the warm-up)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ObjectiveSpec)}
        if name is not None:
            fields["name"] = name
        return ObjectiveSpec(**fields)

    def validate(self) -> None:
        if self.sft_warmup_steps < 0:
            raise ConfigError("loss.sft_warmup_steps: must be >= 0")


@dataclass
class TrainConfig:
    output_dir: str = "runs/demo"  # checkpoints, metrics.jsonl, config.yaml, summary.json
    seed: int = 0  # seeds python, numpy, torch and the data order
    epochs: float = 1.0  # passes over the training data (ignored when max_steps > 0)
    max_steps: int = 0  # optimizer steps; 0 means derive from epochs
    micro_batch_size: int = 4  # samples per forward pass per device
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-5  # peak learning rate of the language model
    vision_lr: float | None = None  # vision tower lr (default: lr)
    projector_lr: float | None = None  # projector / merger lr (default: lr)
    weight_decay: float = 0.0  # AdamW weight decay (never applied to biases and norms)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    optimizer_impl: Literal["auto", "fused", "foreach"] = "auto"  # AdamW kernels: fused (one
    # kernel per step, CPU and CUDA); auto = fused except under FSDP / DeepSpeed (foreach)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"  # lr decay after warmup
    warmup_ratio: float = 0.1  # fraction of steps with linear lr warmup
    max_grad_norm: float = 1.0  # gradient clipping (0 disables)
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"  # auto: bf16 on a bf16 GPU, else fp32
    log_every: int = 10  # optimizer steps between metric log lines
    hist_every: int = 0  # steps between target-probability histograms (0: at each log_every)
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    eval_every: int = 0  # steps between held-out evaluations (0: at the end, and at the
    # switch from the SFT warm-up to the objective)
    eval_max_samples: int = 64  # held-out samples scored (0 disables held-out evaluation)
    eval_max_new_tokens: int = 64  # greedy generation length for held-out accuracy
    eval_batch_size: int = 16  # held-out batch size (also train.eval_tasks' batch size)
    eval_tasks: list[str] = field(default_factory=list)  # lmms-eval task names (or vldft's,
    # e.g. vldft_geo_heldout) scored on rank 0 every eval_every steps and at the end, into
    # output_dir/eval/step-<N>/ and metrics.jsonl; [] = off. Needs the eval extra
    eval_tasks_limit: int = 50  # samples per task in those evaluations (0: all)
    eval_tasks_max_new_tokens: int = 0  # cap on each task's generation budget (0: the task's)
    eval_data_dir: str | None = None  # local benchmark copies for eval_tasks and
    # data.decontaminate (the eval CLI's --data-dir; made by `python -m vldft.eval download` or
    # `vldft-data download`); null: the data dir (data.data_dir) when it holds them, else the
    # hub / datasets cache
    global_batch_size: int | None = None  # samples per optimizer step over all ranks; sets
    # grad_accum = global / (micro_batch_size x world size), which must divide evenly
    resume: str = "auto"  # "auto": continue from the newest complete checkpoint-<step> in
    # output_dir if there is one; "none": start fresh; or a checkpoint directory
    overwrite: bool = False  # let this run replace an output_dir that holds another run (other
    # settings), a finished run, or any run with resume=none: vldft's own outputs there are
    # deleted first (other files are kept); an interrupted run with the same settings resumes
    keep_checkpoints: int = 3  # newest resumable checkpoints kept (0: keep all)
    max_nonfinite_steps: int = 10  # abort after this many consecutive non-finite steps
    on_collapse: Literal["warn", "stop", "off"] = "warn"  # collapse guard (probability-
    # weighted objectives): warn, or save a checkpoint and stop, or no guard
    collapse_window: int = 5  # log records the collapse guard looks back over
    report_to: Literal["none", "tensorboard"] = "none"  # also write every metrics.jsonl number
    # as a TensorBoard scalar under output_dir/tensorboard (needs the tensorboard extra)
    liger: bool = False  # Liger-Kernel's fused RMSNorm / SwiGLU / (m)RoPE in the model (CUDA
    # only, needs the liger-kernel package); vldft's chunked loss is kept (vldft.levers)
    compile: Literal["none", "regional"] = "none"  # regional: torch.compile every decoder layer
    # and vision block (the chunked loss stays eager; the first steps are slower, compiling)

    def validate(self) -> None:
        """This section's own keys; ``resume`` and ``eval_data_dir`` (paths) and the keys that
        depend on other sections are checked by ``Config.validate``."""
        self._validate_eval_tasks()
        if self.liger and importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError("train.liger: the liger-kernel package is not installed (pip "
                              "install liger-kernel; CUDA only), or set train.liger=false")
        if self.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError('train.report_to: tensorboard is not installed: pip install -e '
                              '".[tensorboard]" (or pip install tensorboard)')
        for key in ("weight_decay", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0")
        for key in ("micro_batch_size", "grad_accum", "log_every", "eval_batch_size",
                    "eval_max_new_tokens", "max_nonfinite_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1")
        for key in ("max_steps", "save_every", "eval_every", "eval_max_samples", "hist_every",
                    "keep_checkpoints"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("train.epochs: must be > 0 when train.max_steps is 0")
        for key in ("lr", "vision_lr", "projector_lr"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"train.{key}: must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("train.warmup_ratio: must be in [0, 1)")
        if self.collapse_window < 2:
            raise ConfigError("train.collapse_window: must be >= 2 (a trend needs two records)")
        if self.global_batch_size is not None:
            world = world_size()
            per_step = self.micro_batch_size * world
            if self.global_batch_size < 1 or self.global_batch_size % per_step:
                raise ConfigError(
                    f"train.global_batch_size: {self.global_batch_size} is not a positive "
                    f"multiple of micro_batch_size x world size = {self.micro_batch_size} x "
                    f"{world}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError("train.adam_betas: must be two numbers in [0, 1)")

    def _validate_eval_tasks(self) -> None:
        """``eval_tasks`` and its keys. Task names are resolved by lmms-eval when the training
        loop builds (``vldft.train.check_eval_tasks``), still before any model loads."""
        for key in ("eval_tasks_limit", "eval_tasks_max_new_tokens"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0")
        if not self.eval_tasks:
            return
        if any(not name.strip() for name in self.eval_tasks):
            raise ConfigError("train.eval_tasks: empty task name")
        if len(set(self.eval_tasks)) != len(self.eval_tasks):
            raise ConfigError(f"train.eval_tasks: duplicate task names {self.eval_tasks}")
        if importlib.util.find_spec("lmms_eval") is None:
            raise ConfigError("train.eval_tasks: needs lmms-eval, which is not installed; "
                              'pip install -e ".[eval]" (make eval-env), or train without the '
                              "benchmark evaluations: train.eval_tasks=[] (and "
                              "train.eval_every=0 where no data.heldout_file is set)")
