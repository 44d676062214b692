"""Typed run configuration: dataclasses loaded from YAML plus ``key=value`` overrides.

    cfg = load_config("configs/demo.yaml", ["train.lr=1e-5", "loss.name=sft"])

Every field has a comment; docs/configuration.md documents the same fields (a test checks
that every field has a row in its section's table). Unknown keys, values of the wrong type
and invalid combinations raise ``ConfigError`` naming the key, before any model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from vldft.objectives import ObjectiveSpec

PARTS = ("vision", "projector", "language")


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


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


@dataclass
class ModelConfig:
    family: Literal["qwen2_5_vl", "llava"] = "qwen2_5_vl"  # model family (adapter to use)
    name_or_path: str | None = None  # hub id or local dir of an HF checkpoint
    tiny: bool = False  # build a tiny random model locally instead (demo / tests; no download)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # weights dtype on load
    attn_implementation: str = "sdpa"  # "sdpa", "eager" or "flash_attention_2" (flash extra)
    min_pixels: int | None = None  # Qwen2.5-VL: lower bound on image area after resizing
    max_pixels: int | None = None  # Qwen2.5-VL: upper bound on image area (limits image tokens)
    freeze: list[str] = field(default_factory=list)  # parts to freeze: vision, projector, language
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    # (language model and vision tower)
    lora: LoraSettings | None = None  # train LoRA adapters (peft) instead of full weights


FORMATS = ("auto", "normalized", "llava", "messages", "sharegpt", "hf", "geometry3k", "text_math")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow", ".csv", ".png", ".jpg")


def is_hub_id(path: str) -> bool:
    """"owner/name" that is not a missing local file (``data/train.jsonl`` is not a hub id)."""
    return bool(HUB_ID.match(path)) and Path(path).suffix.lower() not in FILE_SUFFIXES


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

    @property
    def label(self) -> str:
        return self.name or Path(self.path.rstrip("/")).stem or self.path


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)  # training sources, mixed
    train_files: list[str] = field(default_factory=list)  # shorthand: normalised JSONL files
    on_error: Literal["raise", "skip"] = "raise"  # bad rows: stop, or skip + count + report
    group_by_length: bool = False  # batch samples of similar length (per modality)
    heldout_file: str | None = None  # JSONL scored after training (CE + answer accuracy)
    image_root: str | None = None  # base dir for relative image paths (default: the file's dir)
    max_length: int = 2048  # max tokens per sample, image tokens included
    overlong: Literal["truncate", "skip", "error"] = "truncate"  # samples over max_length
    train_on: Literal["all", "last"] = "all"  # train every assistant turn, or the last only
    num_workers: int = 0  # DataLoader worker processes


@dataclass(frozen=True)
class LossConfig(ObjectiveSpec):
    """The objective's fields (name, min_weight, alpha, kl_lambda, eaft_topk, eaft_alpha,
    sft_mix, chunk_size, implementation: defined once, in ``vldft.objectives.ObjectiveSpec``)
    plus the schedule of objectives."""

    sft_warmup_steps: int = 0  # optimizer steps of plain SFT before switching to `name`

    def spec(self, name: str | None = None) -> ObjectiveSpec:
        """The objective for a step (``name`` overrides, e.g. "sft" during the warm-up)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ObjectiveSpec)}
        if name is not None:
            fields["name"] = name
        return ObjectiveSpec(**fields)


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
    eval_data_dir: str | None = None  # local benchmark copies for eval_tasks (the eval CLI's
    # --data-dir; made by `python -m vldft.eval download`); null: the hub / datasets cache
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


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    base_dir: str = "."  # directory that relative paths are resolved against (set by load_config)

    def all_sources(self) -> list[SourceConfig]:
        """``data.sources`` plus one normalised-format source per ``data.train_files`` entry."""
        return [*(SourceConfig(path=f, format="normalized", image_root=self.data.image_root)
                  for f in self.data.train_files), *self.data.sources]

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def validate(self) -> None:
        m, d, lo, t = self.model, self.data, self.loss, self.train
        if m.tiny == (m.name_or_path is not None):
            raise ConfigError("model: set exactly one of model.tiny=true or model.name_or_path")
        for part in m.freeze:
            if part not in PARTS:
                raise ConfigError(f"model.freeze: unknown part {part!r}; choose from {PARTS}")
        if set(m.freeze) >= set(PARTS):
            raise ConfigError("model.freeze: every part is frozen, nothing would be trained")
        if m.family != "qwen2_5_vl" and (m.min_pixels or m.max_pixels):
            raise ConfigError("model.min_pixels/max_pixels: only supported for qwen2_5_vl")
        if m.min_pixels and m.max_pixels and m.min_pixels > m.max_pixels:
            raise ConfigError("model.min_pixels: larger than model.max_pixels")
        if m.lora is not None:
            lo_ = m.lora
            for part in lo_.parts:
                if part not in PARTS:
                    raise ConfigError(f"model.lora.parts: unknown part {part!r}; choose from "
                                      f"{PARTS}")
            if not set(lo_.parts) - set(m.freeze):
                raise ConfigError("model.lora.parts: every LoRA part is also in model.freeze; "
                                  "nothing would be trained")
            if lo_.r < 1:
                raise ConfigError("model.lora.r: must be >= 1")
            if not lo_.alpha > 0:
                raise ConfigError("model.lora.alpha: must be > 0")
            if not 0 <= lo_.dropout < 1:
                raise ConfigError("model.lora.dropout: must be in [0, 1)")
            if not lo_.target_modules:
                raise ConfigError("model.lora.target_modules: must name at least one layer")
        if m.dtype == "float16":
            raise ConfigError("model.dtype: float16 weights would train without loss scaling; "
                              "use float32 with train.mixed_precision (bf16 autocast)")
        for key in ("min_pixels", "max_pixels"):
            if getattr(m, key) is not None and getattr(m, key) <= 0:
                raise ConfigError(f"model.{key}: must be > 0")
        if not d.train_files and not d.sources:
            raise ConfigError("data.sources: at least one source (or data.train_files) is needed")
        for i, src in enumerate(d.sources):
            key = f"data.sources[{i}]"
            if not src.path:
                raise ConfigError(f"{key}.path: required")
            if src.weight is not None and not src.weight > 0:
                raise ConfigError(f"{key}.weight: must be > 0")
            if src.max_samples is not None and src.max_samples < 1:
                raise ConfigError(f"{key}.max_samples: must be >= 1")
            if (src.min_pixels or src.max_pixels) and m.family != "qwen2_5_vl":
                raise ConfigError(f"{key}.min_pixels/max_pixels: only supported for qwen2_5_vl")
            for bound in ("min_pixels", "max_pixels"):
                if getattr(src, bound) is not None and getattr(src, bound) <= 0:
                    raise ConfigError(f"{key}.{bound}: must be > 0")
            low, high = src.min_pixels or m.min_pixels, src.max_pixels or m.max_pixels
            if low and high and low > high:
                raise ConfigError(f"{key}.min_pixels: larger than the max_pixels in effect "
                                  f"({high})")
            if src.prompt_template is not None and "{question}" not in src.prompt_template:
                raise ConfigError(f"{key}.prompt_template: must contain {{question}}")
        for i, f in enumerate(d.train_files):
            if not self.resolve(f).exists():
                raise ConfigError(f"data.train_files[{i}]: {self.resolve(f)} does not exist")
        for i, src in enumerate(d.sources):
            hub_ok = src.format in ("auto", "hf", "text_math") and is_hub_id(src.path)
            if not self.resolve(src.path).exists() and not hub_ok:
                raise ConfigError(f"data.sources[{i}].path: {self.resolve(src.path)} does not "
                                  "exist (and is not a hub id owner/name)")
        if d.heldout_file and not self.resolve(d.heldout_file).is_file():
            raise ConfigError(f"data.heldout_file: {self.resolve(d.heldout_file)} does not exist")
        if sum(src.weight is not None for src in d.sources) not in (0, len(d.sources)):
            raise ConfigError("data.sources: give a weight to every source or to none")
        labels = [src.label for src in self.all_sources()]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"data.sources: duplicate source names {labels}; set `name`")
        if d.max_length < 16:
            raise ConfigError("data.max_length: must be at least 16")
        if lo.sft_warmup_steps < 0:
            raise ConfigError("loss.sft_warmup_steps: must be >= 0")
        if d.num_workers < 0:
            raise ConfigError("data.num_workers: must be >= 0")
        if t.max_steps and lo.sft_warmup_steps >= t.max_steps:
            raise ConfigError(f"loss.sft_warmup_steps: {lo.sft_warmup_steps} >= train.max_steps "
                              f"({t.max_steps}); loss.name={lo.name} would never be trained")
        if t.eval_every and not d.heldout_file and not t.eval_tasks:
            raise ConfigError("train.eval_every: set data.heldout_file (or train.eval_tasks) "
                              "to evaluate on")
        self._validate_eval_tasks()
        self._validate_report_to()
        for key in ("weight_decay", "max_grad_norm"):
            if getattr(t, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0")
        for key in ("micro_batch_size", "grad_accum", "log_every", "eval_batch_size",
                    "eval_max_new_tokens", "max_nonfinite_steps"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1")
        for key in ("max_steps", "save_every", "eval_every", "eval_max_samples", "hist_every",
                    "keep_checkpoints"):
            if getattr(t, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0")
        if t.max_steps == 0 and t.epochs <= 0:
            raise ConfigError("train.epochs: must be > 0 when train.max_steps is 0")
        for key in ("lr", "vision_lr", "projector_lr"):
            value = getattr(t, key)
            if value is not None and not value > 0:
                raise ConfigError(f"train.{key}: must be > 0")
        if not 0 <= t.warmup_ratio < 1:
            raise ConfigError("train.warmup_ratio: must be in [0, 1)")
        if t.collapse_window < 2:
            raise ConfigError("train.collapse_window: must be >= 2 (a trend needs two records)")
        if t.global_batch_size is not None:
            world = world_size()
            per_step = t.micro_batch_size * world
            if t.global_batch_size < 1 or t.global_batch_size % per_step:
                raise ConfigError(
                    f"train.global_batch_size: {t.global_batch_size} is not a positive multiple "
                    f"of micro_batch_size x world size = {t.micro_batch_size} x {world}")
        if t.resume not in ("auto", "none") and not self.resolve(t.resume).is_dir():
            raise ConfigError(f"train.resume: {t.resume!r} is neither auto, none nor an "
                              "existing checkpoint directory")
        if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
            raise ConfigError("train.adam_betas: must be two numbers in [0, 1)")

    def _validate_report_to(self) -> None:
        import importlib.util

        if self.train.report_to == "tensorboard" and importlib.util.find_spec(
                "tensorboard") is None:
            raise ConfigError('train.report_to: tensorboard is not installed: pip install -e '
                              '".[tensorboard]" (or pip install tensorboard)')

    def _validate_eval_tasks(self) -> None:
        """``train.eval_tasks`` and its keys. Task names are resolved by lmms-eval when the
        training loop builds (``vldft.train.check_eval_tasks``), still before any model loads."""
        t = self.train
        for key in ("eval_tasks_limit", "eval_tasks_max_new_tokens"):
            if getattr(t, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0")
        if t.eval_data_dir is not None and not self.resolve(t.eval_data_dir).is_dir():
            raise ConfigError(f"train.eval_data_dir: {self.resolve(t.eval_data_dir)} is not a "
                              "directory")
        if not t.eval_tasks:
            return
        if any(not name.strip() for name in t.eval_tasks):
            raise ConfigError("train.eval_tasks: empty task name")
        if len(set(t.eval_tasks)) != len(t.eval_tasks):
            raise ConfigError(f"train.eval_tasks: duplicate task names {t.eval_tasks}")
        if importlib.util.find_spec("lmms_eval") is None:
            raise ConfigError("train.eval_tasks: needs lmms-eval, which is not installed; "
                              'pip install -e ".[eval]" (or set train.eval_tasks=[])')


def source_pixels(cfg: Config) -> dict[str, tuple[int | None, int | None]]:
    """Per-source Qwen2.5-VL (min_pixels, max_pixels) overrides, as the training loop uses."""
    return {s.label: (s.min_pixels, s.max_pixels) for s in cfg.all_sources()
            if s.min_pixels or s.max_pixels}


def world_size() -> int:
    """Processes of this run (torchrun / accelerate set WORLD_SIZE; 1 otherwise)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless cases (int->float)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads a bare `no` as false
            value = "no"
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp} for {key}")
    raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{full}: unknown key{_did_you_mean(key, names)}; "
                              f"valid keys: {sorted(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # a dataclass's own validation (ObjectiveSpec names the field)
        raise ConfigError(str(e)) from None


def _did_you_mean(key: Any, names: set[str]) -> str:
    """ " (did you mean 'freeze'?)" for a misspelt key (difflib's closest valid key), or ""."""
    close = difflib.get_close_matches(str(key), sorted(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _yaml_error(where: str, e: yaml.YAMLError) -> ConfigError:
    """A one-line ConfigError for a YAML syntax error: ``where:line:column: problem``."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{where}{pos}: invalid YAML: {problem}"
                       + (f" ({context})" if context else ""))


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-5")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise _yaml_error(f"override {item!r}: value", e) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (YAML), apply ``section.key=value`` overrides, validate, return a Config.

    Relative paths (in the file and the overrides) are resolved against the directory the
    command is run from if the file is inside it, else against the file's own directory. The
    one exception is vldft's own ``configs/*.yaml`` (the checkout's or an installed package's
    bundled copy, ``vldft.resources``): their data paths resolve against the bundle (so the
    installed demo config finds the bundled demo data from any directory), while a relative
    ``train.output_dir`` resolves against the current directory (training output never goes
    into site-packages).
    """
    from vldft import resources

    raw: dict[str, Any] = {}
    base = Path.cwd()
    bundled = False
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:  # file:line:column, not a traceback
                raise _yaml_error(str(path), e) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        here = path.resolve().parent
        bundled = any(here == (root / "configs").resolve()
                      for root in (resources.BUNDLED, resources.CHECKOUT))
        if bundled:
            base = here.parent
        elif not path.resolve().is_relative_to(base.resolve()):
            base = here
    for item in overrides or []:
        _apply_override(raw, item)
    if bundled and isinstance(raw.get("train", {}), dict):
        train = raw.setdefault("train", {})
        out = train.get("output_dir", TrainConfig.output_dir)
        if isinstance(out, str) and not Path(out).expanduser().is_absolute():
            train["output_dir"] = str(Path.cwd() / out)
    raw.setdefault("base_dir", str(base))
    cfg = _build(Config, raw, "")
    cfg.validate()
    return cfg


def config_keys(cls: type | None = None, prefix: str = "") -> dict[str, list[str]] | list[str]:
    """Every config key by section (``--help``): ``{"model": ["family", ..., "lora.r", ...]}``;
    nested sections as ``lora.r``, lists of mappings as ``sources[] (name, ...)``. With
    ``cls``, that dataclass's keys as a list."""
    if cls is None:
        return {name: config_keys(tp) for name, tp in typing.get_type_hints(Config).items()
                if name != "base_dir"}
    out = []
    for name, tp in typing.get_type_hints(cls).items():
        inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
        if not inner:
            out.append(prefix + name)
        elif typing.get_origin(tp) is list:  # data.sources: a list of mappings
            out.append(f"{prefix}{name}[] ({', '.join(config_keys(inner[0]))})")
        else:
            out += config_keys(inner[0], f"{prefix}{name}.")
    return out


def config_to_dict(cfg: Config) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d.pop("base_dir")
    return d
