"""YAML and ``section.key=value`` overrides into the section dataclasses: type checks that name
the key (only lossless conversions, e.g. int -> float), unknown keys with a "did you mean",
YAML syntax errors as one ``file:line:column`` line."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml

from vldft.config.sections import ConfigError


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless cases (int->float)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
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
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, f"{key}.")
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
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ConfigError(  # e.g. a commit hash of digits only: 0123456 is octal 42798
            f"{key}: expected str, got {type(value).__name__} {value!r}: YAML reads unquoted "
            f"digits as a number (with a leading 0 as octal); quote the value, e.g. "
            f"\"{key}='0123456'\" on the command line (the shell drops bare quotes), "
            "\"0123456\" in a file")
    raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


def build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            shown = names - {"base_dir", "config_file"}  # vldft's records, not settable
            if full == "sweep":  # a study file (vldft.study) given to training
                raise ConfigError("sweep: a study's section, not a training key: run the study "
                                  "with python -m vldft.compare CONFIG (--list shows its runs, "
                                  "--index I trains one of them), or remove the sweep section "
                                  "to train the base config")
            raise ConfigError(f"{full}: unknown key{_did_you_mean(key, shown)}; "
                              f"valid keys: {sorted(shown)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value or {}, f"{full}.")
        else:
            kwargs[key] = coerce(value, tp, full)
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


def yaml_error(where: str, e: yaml.YAMLError) -> ConfigError:
    """A one-line ConfigError for a YAML syntax error: ``where:line:column: problem``."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{where}{pos}: invalid YAML: {problem}"
                       + (f" ({context})" if context else ""))


def _key_parts(key: str) -> list[str | int]:
    """``data.sources[0].subset`` (or ``data.sources.0.subset``) -> ["data", "sources", 0,
    "subset"]."""
    out: list[str | int] = []
    for part in key.strip().split("."):
        name, *indices = part.replace("]", "").split("[")
        for piece in ([name] if name else []) + indices:
            out.append(int(piece) if piece.isdigit() else piece)
    return out


def apply_override(raw: dict[str, Any], item: str) -> tuple[str | int, ...]:
    """Set one ``section.key=value``; a list element is addressed by its index, e.g.
    ``data.sources[0].subset=geo3k`` or ``data.sources[1]={path: x.jsonl}``. Returns the key
    set, as parts: ``("data", "sources", 0, "subset")``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-5")
    key, text = item.split("=", 1)
    parts = _key_parts(key)
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(f"{key}: index {part} is out of range (the list has {size} "
                                  "entries)")
        elif not isinstance(node, dict):
            raise ConfigError(f"{key}: {parts[i - 1]} is not a section")
        if last:
            node[part] = parse_value(text, f"override {item!r}: value")
            return tuple(parts)
        elif isinstance(part, int):
            node = node[part]
        else:
            node = node.setdefault(part, [] if isinstance(parts[i + 1], int) else {})


def parse_value(text: str, where: str) -> Any:
    """A command-line value read as YAML (``1e-5``, ``[a, b]``, ``null``; empty: None)."""
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise yaml_error(where, e) from None
