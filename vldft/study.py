"""An objective study's definition: a training config's ``sweep`` section (plus the command
line's ``--grid`` / ``--variant``) expanded into named runs, each validated before anything is
trained. ``python -m vldft.compare`` trains and reports them; ``python -m vldft.probe`` reads
study configs through :func:`load_base_config`.

Runs: the grid's product (unless variants are given and the grid only varies ``train.seed``),
plus each variant crossed with the grid axes it does not set itself; named
``<variant>_<key><value>...`` (``loss.name`` by its value), trained into ``<out>/runs/<name>``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vldft.config import ConfigError, load_config, read_config_file, resolve_path
from vldft.config.parse import parse_value

SEED_KEY = "train.seed"


@dataclass
class Run:
    name: str
    variant: str
    settings: dict[str, Any]  # grid axis -> value
    overrides: list[str]  # every key=value of this run (variant + grid)

    @property
    def group(self) -> str:
        """The run's name without its seed: runs of one group are replicates."""
        return _name(self.variant, {k: v for k, v in self.settings.items() if k != SEED_KEY})


@dataclass
class Study:
    config: Path
    base: list[str]  # the config file as key=value overrides (sweep removed) + CLI overrides
    out: Path
    runs: list[Run] = field(default_factory=list)
    bundled: bool = False  # a shipped study file: its (and the CLI's) outputs go to the cwd


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1].replace("_", "")


def _name(variant: str, settings: dict) -> str:
    """``<variant>_<key><value>...``: loss.name by its value alone, no "base" prefix."""
    parts = [] if variant == "base" and settings else [variant]
    parts += [str(v) if k == "loss.name" else f"{_short(k)}{v}" for k, v in settings.items()]
    return "_".join(parts)


def _flatten(raw: dict) -> list[str]:
    """A config mapping as ``section.key=<json>`` overrides (JSON is YAML)."""
    out = []
    for section, body in raw.items():
        if isinstance(body, dict):
            out += [f"{section}.{k}={json.dumps(v)}" for k, v in body.items()]
        else:
            out.append(f"{section}={json.dumps(body)}")
    return out


def split_sweep(path: Path) -> tuple[list[str], dict, bool]:
    """A config file as ``key=value`` overrides for ``load_config(None, ...)`` (with its
    ``base_dir`` rule), its ``sweep`` section ({} if none), and whether it is a bundled
    (shipped) config."""
    raw, base_dir, bundled = read_config_file(path)
    sweep = raw.pop("sweep", None) or {}
    if not isinstance(sweep, dict) or set(sweep) - {"out", "grid", "variants"}:
        raise ConfigError(f"{path}: sweep: a mapping with keys out, grid, variants; got "
                          f"{sorted(sweep) if isinstance(sweep, dict) else sweep!r}")
    if isinstance(sweep.get("out"), str):  # a folder the study writes: a shipped file's, here
        sweep["out"] = str(resolve_path(sweep["out"], Path.cwd() if bundled else base_dir))
    return [*_flatten(raw), f"base_dir={json.dumps(str(base_dir))}"], sweep, bundled


def load_base_config(path: str | Path, overrides: list[str] = ()):
    """``load_config`` for a file that may carry a ``sweep`` section (ignored)."""
    return load_config(path, list(overrides), sweep_ok=True)


def build_study(config: str | Path, overrides: list[str] = (), grid: list[str] = (),
                variants: list[list[str]] = (), out: str | Path | None = None) -> Study:
    """Read CONFIG (+ its ``sweep`` section), apply the CLI's grid / variants / overrides and
    validate every run's configuration before anything is trained."""
    path = Path(config)
    base, sweep, bundled = split_sweep(path)
    base += overrides

    axes: dict[str, list] = {}
    for key, values in (sweep.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: sweep.grid.{key}: expected a non-empty list")
        axes[key] = values
    for item in grid:
        key, sep, text = item.partition("=")
        if not sep or not text:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,...")
        where = f"--grid {item!r}: value"
        axes[key.strip()] = [parse_value(v, where) for v in text.split(",")]
    if SEED_KEY in axes:  # replicates last: names read <config>_seed<k>
        axes[SEED_KEY] = axes.pop(SEED_KEY)
    named: dict[str, list[str]] = {}
    for name, body in (sweep.get("variants") or {}).items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: sweep.variants.{name}: expected a mapping of overrides")
        named[str(name)] = [f"{k}={json.dumps(v)}" for k, v in body.items()]
    for name, *items in variants:
        if "=" in name:
            raise ConfigError(f"--variant {name!r}: the first word is the variant's name")
        named[name] = list(items)

    base_cfg = load_config(None, base, bundled=bundled)  # the base config alone must be valid
    if not base_cfg.data.heldout_file:
        raise ConfigError("data.heldout_file: compare scores every run on held-out data; set "
                          "it in the config or as an override")
    from_file = out is None  # else --out, a command-line path: from the working directory
    if out is None:
        out = sweep.get("out") or f"{base_cfg.train.output_dir.rstrip('/')}_compare"
    study = Study(path, base, base_cfg.resolve(str(out)) if from_file
                  else resolve_path(out, Path.cwd()), bundled=bundled)
    runs: list[tuple[str, list[str], dict[str, list]]] = []
    if not named or any(k != SEED_KEY for k in axes):
        runs.append(("base", [], axes))  # the grid itself compares configurations
    for name, items in named.items():
        own = {i.split("=", 1)[0].strip() for i in items}
        runs.append((name, items, {k: v for k, v in axes.items() if k not in own}))
    for variant, items, var_axes in runs:
        for values in itertools.product(*var_axes.values()):
            settings = dict(zip(var_axes, values, strict=True))
            run = Run(_name(variant, settings), variant, settings,
                      [*items, *(f"{k}={json.dumps(v)}" for k, v in settings.items())])
            try:
                load_config(None, [*base, *run.overrides], bundled=bundled)
            except ConfigError as e:
                raise ConfigError(f"run {run.name}: {e}") from None
            study.runs.append(run)
    names = [r.name for r in study.runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"runs {dup} would be trained twice (a variant repeats a grid "
                          "configuration); rename or drop one")
    return study


def run_dir(study: Study, run: Run) -> Path:
    return study.out / "runs" / run.name
