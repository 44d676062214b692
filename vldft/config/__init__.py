"""Typed run configuration: dataclasses loaded from YAML plus ``key=value`` overrides.

    cfg = load_config("configs/demo.yaml", ["train.lr=1e-5", "loss.name=sft"])

The package: ``sections.py`` (the ``model`` / ``data`` / ``loss`` / ``train`` dataclasses, each
validating its own keys), ``parse.py`` (YAML and overrides into those dataclasses, type checks),
``paths.py`` (relative paths, hub ids, hub reachability) and, here, ``Config`` (the sections plus
the checks that span them) and ``load_config``. Every field has a comment; docs/configuration.md
documents the same fields (a test checks that every field has a row in its section's table).
Unknown keys, values of the wrong type and invalid combinations raise ``ConfigError`` naming
the key, before any model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vldft import resources
from vldft.config.parse import _key_parts, apply_override, build, coerce, yaml_error
from vldft.config.paths import (
    FILE_SUFFIXES,
    HUB_ID,
    hub_source,
    hub_unreachable,
    is_hub_id,
    resolve_path,
)
from vldft.config.sections import (
    FORMATS,
    LORA_TARGETS,
    PARTS,
    PIXEL_FAMILIES,
    ConfigError,
    DataConfig,
    LoraSettings,
    LossConfig,
    ModelConfig,
    SourceConfig,
    TrainConfig,
    VideoSettings,
    world_size,
)

DEFAULT_DATA_DIR = "~/.cache/vldft/data"  # data.data_dir when neither it nor $VLDFT_DATA_DIR is set
# split names whose <split>.parquet in a source folder marks it as holding that split
SPLITS = ("train", "test", "validation", "val", "dev", "testmini", "eval")

__all__ = [
    "Config", "ConfigError", "DataConfig", "FILE_SUFFIXES", "FORMATS", "HUB_ID", "LORA_TARGETS",
    "LoraSettings", "LossConfig", "ModelConfig", "PARTS", "SourceConfig", "TrainConfig",
    "VideoSettings", "config_keys", "config_to_dict", "hub_source", "hub_unreachable", "is_hub_id",
    "load_config", "present", "read_config_file", "resolve_path", "saved_encoding",
    "saved_training_data", "saved_video_settings", "video_settings_file",
    "source_pixels", "world_size",
]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    base_dir: str = "."  # directory that relative paths are resolved against (set by load_config)
    config_file: str = ""  # the YAML file it was loaded from (set by load_config; messages)

    def all_sources(self) -> list[SourceConfig]:
        """``data.sources`` plus one normalised-format source per ``data.train_files`` entry;
        a ``hub`` source's ``path`` is its local copy (``local_source``)."""
        return [self.local_source(s) for s in self.data.all_sources()]

    def missing_sources(self, also: list[str] | None = None,
                        overrides: list[str] | None = None) -> str | None:
        """None when every ``hub`` source has a local copy, else one line naming each missing
        source, the paths looked for and the download command (train checks this before any
        model loads); ``also``: other missing pieces the same command fetches, named in the
        same line; ``overrides``: the command line's, kept in that command (they may add or
        change sources; None: not known here, said in words)."""
        missing = self.absent_sources()
        if not missing:
            return None
        return (f"data not downloaded: {'; '.join([*missing, *(also or [])])}. Fetch it where "
                f"the hub is reachable with {self.download_command(overrides)}, then run with "
                "data.data_dir=DIR")

    def absent_sources(self) -> list[str]:
        """Each ``hub`` source without a local copy, as "source 'x' (hub): looked for PATHS"."""
        missing = []
        for src in self.data.sources:
            paths = self.source_paths(src)
            if src.hub is not None and not any(present(p) for p in paths):
                what = f"{src.hub}" + (f", subset {src.subset}" if src.subset else "")
                missing.append(f"source {src.name!r} ({what}): looked for "
                               + ", ".join(str(p) for p in paths))
        return missing

    def download_command(self, overrides: list[str] | None, data_dir: str = "DIR",
                         force: bool = False) -> str:
        """The ``vldft-data download`` command (in backquotes) that fetches this config's data:
        with ``overrides`` (the command line's, but the data dir's, which ``--data-dir`` sets);
        None: not known here, said in words."""
        import shlex

        kept = [shlex.quote(o) for o in overrides or []
                if not o.startswith("data.data_dir=")]
        cmd = " ".join(["vldft-data download", shlex.quote(self.config_file or "CONFIG"), *kept,
                        "--data-dir", data_dir if data_dir == "DIR" else shlex.quote(data_dir),
                        *(["--force"] if force else [])])
        return f"`{cmd}`" + (" (with this run's overrides)" if overrides is None else "")

    def resolve(self, path: str) -> Path:
        """``path`` relative to ``base_dir`` (the config file's directory, see load_config)."""
        return resolve_path(path, self.base_dir)

    def data_root(self) -> Path:
        """Where sources with a ``hub`` key live: ``data.data_dir``, else ``$VLDFT_DATA_DIR``,
        else ``~/.cache/vldft/data``."""
        d = self.data.data_dir or os.environ.get("VLDFT_DATA_DIR") or DEFAULT_DATA_DIR
        return resolve_path(d, Path.cwd() if not self.data.data_dir else self.base_dir)

    def benchmark_root(self) -> Path:
        """Local benchmark copies (``data.decontaminate``): ``train.eval_data_dir``, else the
        data root."""
        t = self.train
        return self.resolve(t.eval_data_dir) if t.eval_data_dir else self.data_root()

    def source_paths(self, src: SourceConfig) -> list[Path]:
        """Where a source's data is looked for, in order: its ``path``; for a ``hub`` source,
        ``<data root>/<name>/<path>``, or without ``path`` ``<split>.parquet``, ``<split>/``
        (save_to_disk) and the folder itself (parquet files in it), the last not when the
        folder holds another split's ``<split>.parquet`` (``SPLITS``)."""
        if src.hub is None:
            return [self.resolve(src.path)]
        base = self.data_root() / str(src.name)
        if src.path:
            return [base / src.path]
        paths = [base / f"{src.split}.parquet", base / src.split]
        # the folder itself (every parquet file in it) unless it holds another split's file as
        # the download names it: a train.parquet copy must not be read as split test
        others = [p for p in base.glob("*.parquet") if p.stem in SPLITS and p.stem != src.split]
        return paths if others else [*paths, base]

    def local_source(self, src: SourceConfig) -> SourceConfig:
        """``src`` with ``path`` set to where its data is (the first of ``source_paths`` that
        exists; the first one if none does, so that reading it names that path)."""
        if src.hub is None:
            return src
        paths = self.source_paths(src)
        found = next((p for p in paths if present(p)), paths[0])
        image_root = src.image_root
        if image_root is not None and not Path(image_root).expanduser().is_absolute():
            image_root = str(self.data_root() / str(src.name) / image_root)
        return dataclasses.replace(src, path=str(found), image_root=image_root)

    def validate(self) -> None:
        """Each section's own checks, then the ones that span sections or look at the disk."""
        m, d, lo, t = self.model, self.data, self.loss, self.train
        m.validate()
        d.validate()
        lo.validate()
        t.validate()
        for i, src in enumerate(d.sources):  # per-source image bounds against the model's
            key = f"data.sources[{i}]"
            if (src.min_pixels or src.max_pixels) and m.family not in PIXEL_FAMILIES:
                raise ConfigError(f"{key}.min_pixels/max_pixels: not supported for {m.family}")
            low, high = src.min_pixels or m.min_pixels, src.max_pixels or m.max_pixels
            if low and high and low > high:
                raise ConfigError(f"{key}.min_pixels: larger than the max_pixels in effect "
                                  f"({high})")
        self._validate_paths()
        if t.max_steps and lo.sft_warmup_steps >= t.max_steps:
            raise ConfigError(f"loss.sft_warmup_steps: {lo.sft_warmup_steps} >= train.max_steps "
                              f"({t.max_steps}); loss.name={lo.name} would never be trained")
        if t.compile == "regional" and m.gradient_checkpointing == "selective":
            raise ConfigError("train.compile: regional with model.gradient_checkpointing="
                              "selective is not supported (the selective policy does not see "
                              "the ops inside a compiled region); use one of them")
        if t.eval_every and not d.heldout_file and not t.eval_tasks:
            raise ConfigError("train.eval_every: set data.heldout_file (or train.eval_tasks) "
                              "to evaluate on")
        if d.packing and t.global_batch_size is not None:
            raise ConfigError("train.global_batch_size: counts samples per step, and with "
                              "data.packing a step's sample count varies (each micro-batch is "
                              "one packed row of up to data.pack_tokens tokens); set "
                              "train.grad_accum (packed rows per device per step) instead")

    def _validate_paths(self) -> None:
        """Every configured input path exists (relative to ``base_dir``), or is a hub id where a
        hub id is allowed."""
        d, t, m = self.data, self.train, self.model
        if m.name_or_path and not m.tiny and not (self.resolve(m.name_or_path).exists()
                                   or is_hub_id(m.name_or_path)):
            raise ConfigError(f"model.name_or_path: {self.resolve(m.name_or_path)} does not "
                              "exist (and is not a hub id owner/name)")
        if m.revision is not None and not m.tiny and m.name_or_path \
                and self.resolve(m.name_or_path).exists():
            raise ConfigError(f"model.revision: {m.revision!r} applies to a hub id, but "
                              f"model.name_or_path is the local folder "
                              f"{self.resolve(m.name_or_path)}; drop model.revision")
        for i, f in enumerate(d.train_files):
            if not self.resolve(f).exists():
                raise ConfigError(f"data.train_files[{i}]: {self.resolve(f)} does not exist"
                                  f"{resources.hint(f)}")
        for i, src in enumerate(d.sources):
            if src.hub is not None:  # downloaded: checked by missing_sources() before training
                continue
            if not (self.resolve(src.path).exists()
                    or hub_source(src.path, src.format, self.base_dir)):
                raise ConfigError(f"data.sources[{i}].path: {self.resolve(src.path)} does not "
                                  "exist (and is not a hub id owner/name)")
        if d.heldout_file and not self.resolve(d.heldout_file).is_file():
            where = self.resolve(d.heldout_file)
            raise ConfigError(f"data.heldout_file: {where} is a folder, not a JSONL file"
                              if where.is_dir() else f"data.heldout_file: {where} does not "
                              f"exist{resources.hint(d.heldout_file)}")
        if t.eval_data_dir is not None and not self.resolve(t.eval_data_dir).is_dir():
            raise ConfigError(f"train.eval_data_dir: {self.resolve(t.eval_data_dir)} is not a "
                              "directory")
        if t.resume not in ("auto", "none") and not self.resolve(t.resume).is_dir():
            raise ConfigError(f"train.resume: {t.resume!r} is neither auto, none nor an "
                              "existing checkpoint directory")


def saved_training_data(checkpoint: str | Path, config: str | Path | None = None
                        ) -> tuple[Path | None, Any]:
    """The training YAML a checkpoint is scored by (:func:`video_settings_file`) and its
    ``data`` section as written (its ``include:`` resolved, as training reads it); ``(None,
    None)`` without one. Read once for :func:`saved_video_settings` and
    :func:`saved_encoding`."""
    path = video_settings_file(checkpoint, config)
    return (None, None) if path is None else (path, read_config_file(path)[0].get("data"))


def saved_video_settings(checkpoint: str | Path, config: str | Path | None = None,
                         given: dict | None = None,
                         saved: tuple[Path | None, Any] | None = None) -> VideoSettings:
    """``data.video`` for scoring a checkpoint as it was trained: the keys of ``given`` (strings
    are cast) over those of ``config`` (a training YAML), else of the run's saved
    ``config.yaml`` beside the checkpoint (``runs/x/final`` -> ``runs/x/config.yaml``), else
    the defaults. Used by ``vldft.heldout`` and ``vldft.eval``. ``saved``: that file and its
    ``data`` section when already read (:func:`saved_training_data`)."""
    path, data = saved if saved is not None else saved_training_data(checkpoint, config)
    raw: dict = {}
    fields = {f.name for f in dataclasses.fields(VideoSettings)}
    if path is not None:
        video = data.get("video") if isinstance(data, dict) else None
        if video is not None and not isinstance(video, dict):
            raise ConfigError(f"{path}: data.video: expected a mapping, got {video!r}")
        raw = dict(video or {})
        unknown = sorted(set(raw) - fields)
        if unknown:  # training refuses such a key: the clips would not be decoded as trained
            raise ConfigError(f"{path}: data.video.{unknown[0]}: unknown key; keys: "
                              f"{sorted(fields)}")
    for k, v in (given or {}).items():
        if k not in fields:
            raise ConfigError(f"data.video.{k}: no such key; keys: {sorted(fields)}")
        raw[k] = float(v) if k == "fps" else None if v in (None, "", "none") else int(v)
    settings = VideoSettings(**raw)
    settings.validate()
    return settings


def saved_encoding(saved: tuple[Path | None, Any]) -> dict:
    """``max_length`` / ``overlong`` / ``train_on`` of a training YAML's ``data`` section
    (:func:`saved_training_data`), checked as training checks them; {} without a file (the
    collator's defaults)."""
    path, data = saved
    if path is None:
        return {}
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: data: expected a mapping")
    hints = typing.get_type_hints(DataConfig)
    out = {k: coerce(data[k], hints[k], f"{path}: data.{k}")
           for k in ("max_length", "overlong", "train_on") if data.get(k) is not None}
    if out.get("max_length", 1) < 1:
        raise ConfigError(f"{path}: data.max_length: must be >= 1")
    return out


def video_settings_file(checkpoint: str | Path, config: str | Path | None = None
                        ) -> Path | None:
    """The training YAML :func:`saved_video_settings` reads: ``config`` (an error if absent),
    else the run's ``config.yaml`` beside the checkpoint; None: none, the defaults apply."""
    if config:
        if not Path(config).is_file():
            raise ConfigError(f"{config}: no such file")
        return Path(config)
    saved = Path(str(checkpoint)).parent / "config.yaml"
    return saved if saved.is_file() else None


def source_pixels(cfg: Config) -> dict[str, tuple[int | None, int | None]]:
    """Per-source Qwen2.5-VL (min_pixels, max_pixels) overrides, as the training loop uses."""
    return {s.label: (s.min_pixels, s.max_pixels) for s in cfg.all_sources()
            if s.min_pixels or s.max_pixels}


def read_config_file(path: Path) -> tuple[dict[str, Any], Path, bool]:
    """A config file's top-level mapping, the directory its relative paths resolve against
    (see :func:`load_config`), and whether it is one of vldft's own (bundled) configs."""
    if path.is_dir():
        raise ConfigError(f"config file {path}: is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{resources.hint(path)}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:  # file:line:column, not a traceback
            raise yaml_error(str(path), e) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    raw = _with_include(raw, path, [path.resolve()])
    base, bundled = _file_base(path)
    if bundled:
        _bundled_outputs(raw)
    return raw, base, bundled


def _generated(raw: dict[str, Any]) -> list[tuple[str | int, ...]]:
    """Where a raw config names a relative path under ``runs/``: something a run wrote or the
    user generated (``python -m vldft.data.synth_video runs/video_data``), not shipped data."""
    return [where for where in path_locations(raw)
            if isinstance(value := _at(raw, where), str) and Path(value).parts[:1] == ("runs",)]


def _bundled_outputs(raw: dict[str, Any]) -> None:
    """A bundled config's folders a run writes into (``_WRITTEN``, ``train.output_dir``'s
    default included) and its paths under ``runs/`` (``_generated``), made absolute against
    the working directory, in place: they never go into site-packages, and the data its header
    has the user generate is read where it was generated."""
    train = raw.setdefault("train", {})
    if isinstance(train, dict):
        train.setdefault("output_dir", TrainConfig.output_dir)
    absolute_paths(raw, [*_WRITTEN, *_generated(raw)], Path.cwd())


def _file_base(path: Path) -> tuple[Path, bool]:
    """The directory a config file's relative paths resolve against (see
    :func:`load_config`), and whether it is one of vldft's own (bundled) configs."""
    here = path.resolve().parent
    for root in (resources.BUNDLED, resources.CHECKOUT):  # configs/ and its subfolders
        if here.is_relative_to((root / "configs").resolve()):
            return (root / "configs").resolve().parent, True
    return Path.cwd() if path.resolve().is_relative_to(Path.cwd().resolve()) else here, False


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# Folders a run writes or downloads into: an included file's stay relative (they follow the
# including file, as a bundled config's follow the working directory)
_WRITTEN = (("train", "output_dir"), ("train", "resume"), ("data", "data_dir"),
            ("train", "eval_data_dir"))


def _with_include(raw: dict[str, Any], path: Path, chain: list[Path]) -> dict[str, Any]:
    """A file's top-level ``include: FILE`` (relative to the file): that file's sections with
    this file's on top (e.g. the real recipes share ``configs/recipes/geo_math.yaml``). The
    included file's data paths (model folder, train / held-out files, image roots, source
    paths) resolve as they would in that file run by itself, made absolute where its folder
    differs from this file's; the folders a run writes into (``_WRITTEN``) and paths under
    ``runs/`` (``_generated``: what runs wrote or the user generated) follow this file, and so
    the file that is run, through any chain of includes."""
    name = raw.pop("include", None)
    if name is None:
        return raw
    if not isinstance(name, str):
        raise ConfigError(f"{path}: include: expected a file name, got {name!r}")
    inc = (path.resolve().parent / Path(name).expanduser()).resolve()
    if inc in chain:
        raise ConfigError(f"{path}: include: {name} includes itself (via {chain})")
    if inc.is_dir():
        raise ConfigError(f"{path}: include: {inc} is a folder, not a YAML file")
    if not inc.is_file():
        raise ConfigError(f"{path}: include: {inc} not found{resources.hint(name)}")
    with open(inc) as f:
        try:
            base = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise yaml_error(str(inc), e) from None
    if not isinstance(base, dict):
        raise ConfigError(f"{inc}: top level must be a mapping")
    base = _with_include(base, inc, [*chain, inc])
    inc_base = _file_base(inc)[0]
    if inc_base.resolve() != _file_base(path)[0].resolve():
        keep = [*_WRITTEN, *_generated(base)]
        absolute_paths(base, [w for w in path_locations(base) if w not in keep], inc_base)
    return _merge(base, raw)


def path_locations(raw: dict[str, Any]) -> list[tuple[str | int, ...]]:
    """Where a (raw) config names a local path: ``model.name_or_path``, each
    ``data.train_files`` entry, ``data.heldout_file`` / ``image_root`` / ``data_dir``,
    ``train.output_dir`` / ``eval_data_dir`` / ``resume``, and each local source's ``path`` and
    ``image_root`` (a ``hub`` source's ``path`` lies inside its download folder: not one)."""
    def part(name: str) -> dict:
        value = raw.get(name)
        return value if isinstance(value, dict) else {}

    data = part("data")
    found: list[tuple[str | int, ...]] = [("model", "name_or_path"), ("data", "heldout_file"),
                                          ("data", "image_root"), ("data", "data_dir"),
                                          ("train", "output_dir"), ("train", "eval_data_dir"),
                                          ("train", "resume")]
    files = data.get("train_files")
    found += [("data", "train_files", i) for i in range(len(files))] \
        if isinstance(files, list) else []
    sources = data.get("sources")
    for i, src in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(src, dict) and src.get("hub") is None:
            found += [("data", "sources", i, "path"), ("data", "sources", i, "image_root")]
    return found


def _at(raw: Any, where: tuple[str | int, ...]) -> Any:
    """The value at a key path of a raw config (``("data", "sources", 0, "path")``), or None
    where a section or key is missing (a file may leave out whole sections)."""
    for key in where:
        if isinstance(raw, dict):
            raw = raw.get(key)
        elif isinstance(raw, list) and isinstance(key, int) and key < len(raw):
            raw = raw[key]
        else:
            return None
    return raw


def absolute_paths(raw: dict[str, Any], touched: list[tuple[str | int, ...]],
                   base: Path) -> None:
    """Make the relative paths at ``touched`` (keys, as ``apply_override`` returns them)
    absolute against ``base``, in place. A key counts when it or a section / list / source
    holding it is in ``touched`` (``data.sources[1]={path: x.jsonl}``); hub ids
    (``model.name_or_path``, a source's ``path`` without a local folder of that name) and
    ``train.resume``'s ``auto`` / ``none`` stay. Used for the paths overrides set (a path typed
    on the command line is taken from the directory the command runs in, whatever folder the
    config file's own paths resolve against) and for an included file's data paths."""
    for where in path_locations(raw):
        if not any(where[: len(t)] == t for t in touched):
            continue
        node, value = _at(raw, where[:-1]), _at(raw, where)
        if not isinstance(value, str) or not value or value.startswith("~") \
                or Path(value).is_absolute() or value in ("auto", "none") \
                and where == ("train", "resume"):
            continue
        if (where == ("model", "name_or_path") or where[-1] == "path") and is_hub_id(value) \
                and not (base / value).exists():
            continue
        node[where[-1]] = str(base / value)


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                sweep_ok: bool = False, bundled: bool = False) -> Config:
    """Load ``path`` (YAML), apply ``section.key=value`` overrides, validate, return a Config.

    Relative paths in the file (``model.name_or_path`` when that local directory exists) are
    resolved against the directory the command is run from if the file is inside it, else
    against the file's own directory; those the overrides set, against the directory the
    command is run from (:func:`absolute_paths`). The one exception is vldft's own
    ``configs/**.yaml`` (the checkout's or an installed package's bundled copy,
    ``vldft.resources``): their data paths resolve against the bundle (so the installed demo
    config finds the bundled demo data from any directory), while the folders a run writes
    into and paths under ``runs/`` (data the user generates) resolve against the current
    directory (:func:`_bundled_outputs`: nothing goes into site-packages). An ``include:``'d
    file's data paths resolve as in that file (:func:`_with_include`). ``sweep_ok``: a study
    file's ``sweep`` section (``vldft.study``) is ignored instead of refused. ``bundled`` (with
    ``path`` None): the overrides are a bundled config's, flattened (a shipped study file, with
    its ``base_dir``), so the bundled rule applies to the folders and ``runs/`` paths they set.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        raw, base, _ = read_config_file(Path(path))
        if sweep_ok:
            raw.pop("sweep", None)
        for key in ("base_dir", "config_file"):  # vldft's records of where the file lies
            if key in raw:
                raise ConfigError(f"{path}: {key}: not a config key (vldft sets it from the "
                                  "file's location: relative paths are taken from its folder)")
    for item in overrides or [] if path is not None else []:  # the file's location sets
        if item.split("=", 1)[0].strip() in ("base_dir", "config_file"):  # these two
            raise ConfigError(f"{item.split('=', 1)[0].strip()}: not a config key (vldft sets "
                              "it from the config file's location); sections: "
                              f"{sorted(config_keys())}")
    touched = [apply_override(raw, item) for item in overrides or []]
    if base.resolve() != Path.cwd().resolve():
        absolute_paths(raw, touched, Path.cwd())
    if bundled and path is None:
        _bundled_outputs(raw)
    raw.setdefault("base_dir", str(base))
    if path is not None:
        raw.setdefault("config_file", str(path))
    try:
        cfg = build(Config, raw, "")
    except ConfigError as e:  # a key or value of the file's (not an override's): name the file
        raise ConfigError(_in_file(str(e), path, touched)) from None
    name = cfg.model.name_or_path
    if name and cfg.resolve(name).exists():  # a local checkpoint, e.g. the bundled prior
        cfg.model.name_or_path = str(cfg.resolve(name))
    cfg.validate()
    return cfg


def _in_file(message: str, path: str | Path | None, touched: list[tuple]) -> str:
    """``message`` (``key: problem``) prefixed with the config file when ``key`` is the file's:
    no override set it or a section holding it (an ``include``'d file's keys count as the
    file's)."""
    key = message.split(":", 1)[0]
    if path is None or " " in key:
        return message
    parts = tuple(_key_parts(key))
    if any(parts[:len(t)] == t or t[:len(parts)] == parts for t in touched):
        return message
    try:  # a file with an include: the key may be the included file's
        includes = "include" in (yaml.safe_load(Path(path).read_text()) or {})
    except (OSError, yaml.YAMLError, TypeError):
        includes = False
    return f"{path}{' (or a file it includes)' if includes else ''}: {message}"


def config_keys(cls: type | None = None, prefix: str = "") -> dict[str, list[str]] | list[str]:
    """Every config key by section (``--help``): ``{"model": ["family", ..., "lora.r", ...]}``;
    nested sections as ``lora.r``, lists of mappings as ``sources[] (name, ...)``. With
    ``cls``, that dataclass's keys as a list."""
    if cls is None:
        return {name: config_keys(tp) for name, tp in typing.get_type_hints(Config).items()
                if name not in ("base_dir", "config_file")}
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


def config_to_dict(cfg: Config, absolute: bool = False) -> dict[str, Any]:
    """The config as a mapping (without vldft's ``base_dir`` / ``config_file`` records).
    ``absolute``: each local path it names (``data.train_files``, ``heldout_file``,
    ``image_root``, ``data_dir``, a local source's ``path`` and ``image_root``,
    ``train.output_dir``, ``eval_data_dir``, a ``resume`` checkpoint) made absolute, so that
    the mapping means the same read from any directory: a run's ``config.yaml``. A ``hub``
    source's ``path`` (inside its download folder) and hub ids stay as written."""
    d = dataclasses.asdict(cfg)
    d.pop("base_dir")
    d.pop("config_file")
    if absolute:
        def full(path: str | None) -> str | None:
            return None if path is None else str(cfg.resolve(path))

        data, train = d["data"], d["train"]
        data["train_files"] = [full(p) for p in data["train_files"]]
        for key in ("heldout_file", "image_root", "data_dir"):
            data[key] = full(data[key])
        for src in data["sources"]:
            if src["hub"] is None and not hub_source(src["path"], src["format"], cfg.base_dir):
                src["path"], src["image_root"] = full(src["path"]), full(src["image_root"])
        for key in ("output_dir", "eval_data_dir"):
            train[key] = full(train[key])
        if train["resume"] not in ("auto", "none"):
            train["resume"] = full(train["resume"])
    return d


def present(path: Path) -> bool:
    """Whether a downloaded source's candidate path holds data: a file, or a folder with a
    parquet file or a ``save_to_disk`` dataset in it (an empty folder is a failed download)."""
    if path.is_file():
        return True
    return path.is_dir() and (any((path / m).is_file() for m in (
        "state.json", "dataset_dict.json")) or next(path.rglob("*.parquet"), None) is not None)
