"""Run lmms-eval's real evaluator (``lmms_eval.evaluator.simple_evaluate``) on a checkpoint and
write ``results.json``, per-sample logs ``samples_<task>.jsonl`` and ``summary.md`` to one run
directory (``python -m vldft.eval --help``).

Every requested task is built from its own YAML config (lmms-eval's, or vldft's in ``eval/``)
with vldft's task class (``vldft.eval.local_tasks``): its test split comes from a local copy when
``data_dir`` holds one (``vldft.data.benchmarks``), otherwise from the hub, which is checked
first so that an unreachable hub fails in seconds, naming the local alternative.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import hashlib
import io
import json
import os
import time
from pathlib import Path

from vldft.config import hub_unreachable
from vldft.data.benchmarks import (
    BENCHMARKS,
    BY_TASK,
    LocalDataError,
    find_local,
    geo_heldout_path,
    geo_heldout_root,
)
from vldft.data.benchmarks import SUITES as BENCHMARK_SUITES
from vldft.eval.resume import (
    Interrupted,
    ResponseStore,
    checkpoint_fingerprint,
    file_digest,
    make_resumable,
    run_fingerprint,
    sigterm_interrupts,
)
from vldft.resources import resource
from vldft.scoring import extract_answer

TASK_DIR = resource("eval")  # vldft's task YAMLs (--include_path); vldft.resources
# Rule-scored tasks (no judge, no API key; names checked against lmms-eval 0.7.3 by a test).
SUITES = {
    # "geo": every benchmark of vldft.data.benchmarks (MathVerse, MathVision, WeMath, MathVista,
    # DynaMath, LogicVista, Geometry3K, GeoQA); "paper": the DFT paper's multimodal benchmarks
    # (MathVerse, MathVision, WeMath) plus geometry
    **{name: [BENCHMARKS[b].task for b in names] for name, names in BENCHMARK_SUITES.items()},
    # vldft's synthetic held-out split (bundled; no download)
    "local": ["vldft_geo_heldout"],
}
# lmms-eval's MathVerse / MathVista modules build an OpenAI client at import time, which raises
# without a key even when no judge is used (openai >= 2); the rule-scored tasks never call it.
PLACEHOLDER_KEY = "vldft-placeholder-no-judge"


class EvalSetupError(RuntimeError):
    """The evaluation cannot start (data missing, hub unreachable, bad task); one line, named."""


def requested_tasks(tasks: list[str], suites: list[str]) -> list[str]:
    """Tasks named directly plus those of each (known) suite, in order, once each."""
    return list(dict.fromkeys([*tasks, *(t for s in suites for t in SUITES.get(s, []))]))


def resolve_tasks(tasks: list[str], suites: list[str], known: set[str]) -> list[str]:
    """Tasks named directly plus those of each suite, in order, checked against ``known``."""
    for suite in suites:
        if suite not in SUITES:
            raise ValueError(f"unknown suite {suite!r}; suites: {sorted(SUITES)}")
    names = requested_tasks(tasks, suites)
    if not names:
        raise ValueError("no tasks: pass --tasks and/or --suite")
    unknown = [name for name in names if name not in known]
    if unknown:
        hints = "; ".join(f"{name!r}: closest {difflib.get_close_matches(name, known, n=3)}"
                          for name in unknown)
        what = f"task {unknown[0]!r} is" if len(unknown) == 1 else \
            f"tasks {', '.join(map(repr, unknown))} are"
        raise ValueError(f"{what} not known to lmms-eval (nor in vldft's {TASK_DIR}); {hints}")
    return names


def check_eval_extra() -> None:
    """lmms-eval and the rest of the ``eval`` extra must be installed (``make demo`` installs
    only the demo's packages); else an ``EvalSetupError`` naming ``make eval-env``."""
    import importlib.util

    missing = [name for module, name in (("lmms_eval", "lmms-eval"), ("Levenshtein", "Levenshtein"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise EvalSetupError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed (the "
            f"eval extra; `make demo` installs only the demo's packages): in the checkout run "
            f'`make eval-env`, or pip install -e ".[eval]" and then pip install --no-deps -r '
            f"{TASK_DIR / 'pins.txt'}")


def prepare_environment() -> dict:
    """Make the rule-scored tasks importable offline; returns what was set (for results.json).
    A missing eval extra, or math packages without eval/pins.txt, is an ``EvalSetupError``."""
    check_eval_extra()
    notes = {}
    if not os.environ.get("OPENAI_API_KEY"):
        os.environ["OPENAI_API_KEY"] = PLACEHOLDER_KEY
        notes["OPENAI_API_KEY"] = "placeholder (judge-scored tasks need a real key)"
    noise = io.StringIO()
    try:  # latex2sympy2's parser prints an ANTLR version warning at import (harmless: the pins)
        with contextlib.redirect_stdout(noise):
            import latex2sympy2  # noqa: F401
            import math_verify  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the pins are not installed
        raise EvalSetupError(
            f"math_verify / latex2sympy2 do not import ({type(e).__name__}: {e}); lmms-eval's "
            f"math tasks need these versions: pip install --no-deps -r "
            f"{TASK_DIR / 'pins.txt'}") from None
    rest = [x for x in noise.getvalue().splitlines() if not x.startswith("ANTLR runtime and")]
    if rest:
        print("\n".join(rest))
    return notes


def _go_offline() -> None:
    """No network attempts (and no retries) for the rest of this process."""
    import datasets
    import huggingface_hub.constants as hub

    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True


def _check_cached(name: str, config: dict, reason: str) -> None:
    """A hub task without a local copy, while the hub is unreachable: fine if the dataset is in
    the datasets cache; otherwise a one-line error naming the local alternative."""
    import datasets

    try:
        datasets.load_dataset(config["dataset_path"], config.get("dataset_name"),
                              split=config["test_split"])
        return
    except Exception:  # noqa: BLE001 - not cached (or unreadable): the message below says what to do
        pass
    bench = BY_TASK.get(name)
    if bench is None:
        hint = "give a task YAML that reads local files with --include-path DIR"
    else:
        hint = (f"make a local copy once where the hub is reachable (python -m vldft.eval download "
                f"--tasks {name} --data-dir DIR), then pass --data-dir DIR")
    raise EvalSetupError(f"task {name}: its data {config['dataset_path']} is not reachable "
                         f"({reason}) and not in the datasets cache; {hint}")


_TASK_INDEX: dict[tuple, dict] = {}  # (folder, its YAMLs' stat rows) -> lmms-eval's index of it


def _folder_key(folder: str) -> tuple:
    """A task folder and the (path, size, mtime) of every YAML under it: lmms-eval's index of the
    folder is a function of those files, so an edit, an addition or a removal gives a new key
    (not tracked: a YAML outside the folder that one of its YAMLs ``include``s by absolute path).
    Statting lmms-eval's ~1,900 task YAMLs takes ~0.1 s; parsing them takes ~7 s."""
    rows = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".yaml"):
                path = os.path.join(root, name)
                st = os.stat(path)
                rows.append((path, st.st_size, st.st_mtime_ns))
    return os.path.realpath(folder), tuple(rows)


def task_manager(verbosity: str = "WARNING", include_path: list[str] | None = None,
                 model_name: str | None = None):
    """lmms-eval's ``TaskManager`` whose per-folder task index is kept for the process: lmms-eval
    re-parses every task YAML it ships (~7 s on a CPU) for each ``TaskManager``, and a training
    run with ``train.eval_tasks`` builds one per evaluation. A folder whose YAMLs changed (size,
    mtime, added, removed) is indexed again. On an lmms-eval without the per-folder indexer
    (``TaskManager._get_task_and_group``), a plain ``TaskManager``."""
    from lmms_eval.tasks import TaskManager

    if not callable(getattr(TaskManager, "_get_task_and_group", None)):
        return TaskManager(verbosity, include_path=include_path, model_name=model_name)
    return _cached_manager_class(TaskManager)(verbosity, include_path=include_path,
                                              model_name=model_name)


_MANAGER_CLASSES: dict[type, type] = {}


def _cached_manager_class(base: type) -> type:
    if base not in _MANAGER_CLASSES:
        import copy

        class CachedTaskManager(base):
            def _get_task_and_group(self, task_dir: str):
                key = _folder_key(task_dir)
                if key not in _TASK_INDEX:
                    _TASK_INDEX[key] = super()._get_task_and_group(task_dir)
                return copy.deepcopy(_TASK_INDEX[key])  # a caller may edit its index

        CachedTaskManager.__doc__ = base.__doc__
        _MANAGER_CLASSES[base] = CachedTaskManager
    return _MANAGER_CLASSES[base]


def build_tasks(names: list[str], manager, data_dir: str | Path | None, chat: bool,
                model_name: str | None = None) -> list:
    """One lmms-eval task config (dict) per name, built with vldft's task class; local copies
    from ``data_dir`` where it has them (a missing one is an error naming its expected paths)."""
    from lmms_eval import utils

    from vldft.eval.local_tasks import LOCAL_KEY, VldftSimpleTask, VldftTask

    base = VldftTask if chat else VldftSimpleTask
    cls = type(base.__name__, (base,), {"default_model_name": model_name})
    reason = None
    out: list = []
    missing: list[str] = []
    used_data_dir = False
    for name in names:
        entry = manager.task_index[name]
        if entry["type"] not in ("task", "python_task"):
            out.append(name)  # a group: lmms-eval builds its members
            continue
        config = utils.load_yaml_config(entry["yaml_path"], mode="full")
        config["class"] = cls
        bench = BY_TASK.get(name)
        if name == "vldft_geo_heldout":  # --data-dir's geo_demo/ if it has one, else bundled
            from vldft.eval.local_tasks import load_geo_heldout

            root = geo_heldout_root(data_dir)
            if root is not None:
                config["dataset_path"] = root
                used_data_dir = True
            load_geo_heldout(root)  # its rows checked before the model
        elif bench is not None and data_dir is not None:
            try:
                find_local(bench, data_dir)
            except LocalDataError as e:
                missing.append(str(e))
                continue
            used_data_dir = True
            config["dataset_path"] = str(data_dir)
            config["dataset_kwargs"] = {LOCAL_KEY: bench.name}
        elif "/" in str(config.get("dataset_path", "")) and not Path(
                config["dataset_path"]).exists():  # a hub id
            reason = reason or hub_unreachable() or ""
            if reason:
                _go_offline()
                _check_cached(name, config, reason)
        out.append(config)
    if missing:
        raise EvalSetupError(f"{len(missing)} benchmark(s) without a local copy: "
                             + " | ".join(missing))
    if data_dir is not None and not used_data_dir:
        print(f"[vldft] warning: --data-dir {data_dir}: none of these tasks read from it")
    return out


def image_policy(model: str) -> dict[str, int] | None:
    """The checkpoint's saved pixel limits ``{"min_pixels", "max_pixels"}`` (Qwen families:
    what training resized images to), ``{}`` for a processor without them (LLaVA), None when
    no processor config can be read (a hub id that is not cached)."""
    files = [Path(model) / n for n in ("processor_config.json", "preprocessor_config.json")]
    if not Path(model).is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            files = [Path(f) for n in ("processor_config.json", "preprocessor_config.json")
                     if isinstance(f := try_to_load_from_cache(model, n), str)]
        except Exception:  # noqa: BLE001 - no cache, a malformed id: no policy known
            files = []
    for path in files:
        if path.is_file():
            cfg = json.loads(path.read_text())
            cfg = cfg.get("image_processor", cfg)
            size = {"min_pixels": cfg.get("min_pixels") or (cfg.get("size") or {}).get(
                "shortest_edge"), "max_pixels": cfg.get("max_pixels") or (
                cfg.get("size") or {}).get("longest_edge")}
            return {k: int(v) for k, v in size.items() if v}
    return None


def vllm_model_args(model: str) -> str:
    """model_args for lmms-eval's ``vllm`` class that keep training's image policy: the
    checkpoint's pixel limits as vLLM ``mm_processor_kwargs`` (vLLM applies the checkpoint's own
    chat template). lmms-eval's vllm class sends images as PNG (lossless), ignores a task's stop
    strings, and uses max(task budget, its max_new_tokens=4096) new tokens."""
    size = image_policy(model) or {}
    return f"mm_processor_kwargs={json.dumps(size, separators=(',', ':'))}" if size else ""


# lmms-eval's stock classes for vldft's families and how each takes the checkpoint's image
# policy: the Qwen classes as min_pixels / max_pixels arguments (their own defaults, e.g.
# min_pixels=256*28*28, would re-size every image); llava_hf has no pixel bounds to give
PIXEL_ARGS_CLASSES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")
# ... and the frame cap of the checkpoint's data.video: the argument each class takes it as,
# and the class's own default (left out when equal, so a command's arguments stay as before)
FRAME_ARG = {**dict.fromkeys(PIXEL_ARGS_CLASSES, ("max_num_frames", 32)),
             "qwen3_5": ("max_num_frames", 768), "llava_hf": ("max_frames_num", 32)}
PLAIN_CLASSES = ("llava_hf",)
DEVICE_MAP_CLASSES = (*PIXEL_ARGS_CLASSES, "llava_hf")  # default device_map="auto" (CUDA)


def stock_model_args(model: str, model_class: str, device: str | None, given: str = "",
                     flag: str = "--model-args") -> str:
    """model_args that give a stock lmms-eval class (``--model-class``) the checkpoint's image
    policy, its ``data.video.max_frames`` (``FRAME_ARG``; where it is not the class's default)
    and, on a CPU, ``device_map=cpu``
    (their default ``auto`` moves inputs to CUDA); arguments in ``given`` win. A class vldft
    cannot hand the policy to is refused in one line (``EvalSetupError``; ``flag``: where the
    user gives model arguments, named in it)."""
    if model_class == "vldft" or model_class.startswith("vllm"):
        return ""
    if model_class not in (*PIXEL_ARGS_CLASSES, *PLAIN_CLASSES):
        raise EvalSetupError(
            f"--model-class {model_class}: vldft does not know how to give this class the "
            f"checkpoint's image policy (pixel limits) and chat template, so its scores could "
            f"silently differ from training's; use the default vldft class, or one of "
            f"{', '.join((*PIXEL_ARGS_CLASSES, *PLAIN_CLASSES))}")
    keys = {a.split("=", 1)[0].strip() for a in given.split(",") if "=" in a}
    args = []
    if model_class in PIXEL_ARGS_CLASSES and not {"min_pixels", "max_pixels"} <= keys:
        policy = image_policy(model)
        if policy is None:
            raise EvalSetupError(
                f"--model-class {model_class}: cannot read the image policy of {model} (no "
                f"processor config here or in the hub cache), and the class's own pixel "
                f"defaults differ from training's; pass {flag} min_pixels=N,max_pixels=M")
        args += [f"{k}={v}" for k, v in policy.items() if k not in keys]
    name, default = FRAME_ARG[model_class]
    if name not in keys:
        from vldft.config import ConfigError, saved_video_settings

        try:
            frames = saved_video_settings(model).max_frames
        except ConfigError as e:
            raise EvalSetupError(f"--model-class {model_class}: {e}") from None
        args += [f"{name}={frames}"] if frames != default else []
    import torch

    cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if cpu and model_class in DEVICE_MAP_CLASSES and "device_map" not in keys:
        args.append("device_map=cpu")
    return ",".join(args)


def metric_rows(results: dict) -> list[dict]:
    """One row per (task, metric) of lmms-eval's ``results`` (stderr kept beside its metric)."""
    rows = []
    for task, values in results.get("results", {}).items():
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in values.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float, str)):
                continue
            if isinstance(value, str) and value.endswith("%"):  # WeMath reports "61.23%"
                try:
                    value = float(value[:-1]) / 100
                except ValueError:
                    continue
            metric, filt = key.split(",", 1)
            if isinstance(value, str):
                continue
            stderr = values.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": metric, "value": float(value), "n": n,
                         "stderr": stderr if isinstance(stderr, (int, float)) else None})
    return rows


def write_samples(out: Path, samples: dict) -> list[Path]:
    """``samples_<task>.jsonl``: doc id, target, response, extracted answer, metrics."""
    paths = []
    for task, rows in samples.items():
        path = out / f"samples_{task}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for s in sorted(rows, key=lambda r: r.get("doc_id", 0)):
                resp = s.get("filtered_resps") or s.get("resps") or [""]
                while isinstance(resp, list):
                    resp = resp[0] if resp else ""
                doc = s.get("doc") or {}
                choices = doc.get("choices") if isinstance(doc, dict) else None
                metrics = {k: s[k] for k in s if isinstance(s[k], (int, float)) and k not in (
                    "doc_id",)}
                fh.write(json.dumps({"doc_id": s.get("doc_id"), "target": str(s.get("target")),
                                     "response": str(resp),
                                     "extracted": extract_answer(str(resp), choices),
                                     **metrics}, ensure_ascii=False, default=str) + "\n")
        paths.append(path)
    return paths


def summary_markdown(model: str, rows: list[dict], meta: dict) -> str:
    lines = [f"# Evaluation of `{model}`", "",
             f"lmms-eval {meta['lmms_eval_version']}, model class `{meta['model_class']}`"
             + (f" (`{meta['model_args']}`)" if meta.get("model_args") else "") + ", "
             f"limit {meta['limit']}, batch size {meta['batch_size']}, "
             f"{meta['world_size']} process(es), {meta['wall_s']:.0f} s, {meta['date']}", "",
             "| task | metric | value | stderr | n |", "|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['stderr']:.4f}" if r["stderr"] is not None else "-"
        lines.append(f"| {r['task']} | {r['metric']} | {r['value']:.4f} | {err} | {r['n']} |")
    return "\n".join(lines) + "\n"


def default_out(model: str, tasks: list[str] = (), suites: list[str] = (),
                model_class: str = "vldft") -> Path:
    """``runs/eval/<parent>_<name>-<selection>`` for a checkpoint directory (``runs/a/final``
    and ``runs/b/final`` differ), ``runs/eval/<org>__<name>-<selection>`` for a hub id; the
    selection is the suites and tasks (``paper``, ``vldft_geo_heldout``, ...), shortened with a
    hash when long, so that two evaluations of one checkpoint do not collide either; a class
    other than vldft's own adds ``-<class>`` (a stock class's scores are another evaluation)."""
    path = Path(model.rstrip("/"))
    if path.exists():
        path = path.resolve()
        name = f"{path.parent.name}_{path.name}"
    else:
        name = model.strip("/").replace("/", "__")
    picked = "+".join([*suites, *tasks])
    if len(picked) > 48:
        import hashlib

        picked = f"{picked[:36]}-{hashlib.sha1(picked.encode()).hexdigest()[:8]}"
    name = f"{name}-{picked}" if picked else name
    return Path("runs/eval") / (name if model_class == "vldft" else f"{name}-{model_class}")


def check_model(model: str) -> None:
    """A checkpoint path that does not exist, or a run directory given instead of its
    ``final/``, is a one-line error (not a hub lookup traceback)."""
    path = Path(model)
    looks_local = model.startswith((".", "/", "~")) or model.count("/") != 1 or path.exists()
    # runs/demo where runs/ is a folder of vldft runs (not Qwen/, which a hub id also names)
    parent = not looks_local and _holds_runs(path.parent)
    if not looks_local and not parent:
        return  # org/name: a hub id
    if not path.exists():
        raise EvalSetupError(f"--model {model}: no such checkpoint directory" + (
            f" ({path.parent}/ is a local folder, so this is not read as a hub id)"
            if parent else ""))
    if path.is_file():
        raise EvalSetupError(f"--model {model}: a file; pass the checkpoint folder (with its "
                             f"config.json), e.g. {path.parent}")
    if path.is_dir() and not (path / "config.json").is_file():
        hint = next((f" (did you mean {path / d}?)" for d in ("final",) if
                     (path / d / "config.json").is_file()), "")
        if (path / "adapter_config.json").is_file():  # vldft's final/adapter/ (LoRA)
            hint = (" (a LoRA adapter: vldft saves the merged model beside it, "
                    f"{path.parent}, which evaluates as a plain checkpoint)"
                    if (path.parent / "config.json").is_file() else
                    " (a LoRA adapter: merge it into its base model first)")
        raise EvalSetupError(f"--model {model}: no config.json here, not a Hugging Face "
                             f"checkpoint{hint}")
    if not isinstance(model_type(path), str):
        raise EvalSetupError(f"--model {model}: its config.json names no model_type, not a "
                             "transformers checkpoint")


def _holds_runs(folder: Path) -> bool:
    """Whether ``folder`` is a vldft run directory or holds one (a ``run.json``)."""
    try:
        return folder.is_dir() and ((folder / "run.json").is_file() or any(
            (d / "run.json").is_file() for d in folder.iterdir() if d.is_dir()))
    except OSError:
        return False


def model_type(folder: Path) -> str | None:
    """The ``model_type`` of a checkpoint folder's config.json (None: unreadable or absent)."""
    try:
        value = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


# the checkpoints (config.json's model_type, by prefix) each stock lmms-eval class loads
CLASS_MODEL_TYPES = {"qwen2_vl": ("qwen2_vl",), "qwen2_5_vl": ("qwen2_5_vl",),
                     "qwen3_vl": ("qwen3_vl",), "qwen3_5": ("qwen3_5",), "llava_hf": ("llava",)}


def check_model_class(model: str, model_class: str) -> None:
    """A stock class given a local checkpoint of another family is one line (it was a
    ``KeyError`` or a reshape error from inside the class)."""
    kinds = CLASS_MODEL_TYPES.get(model_class)
    kind = model_type(Path(model)) if Path(model).is_dir() else None
    if kinds and kind and not kind.startswith(kinds):
        fits = [c for c, k in CLASS_MODEL_TYPES.items() if kind.startswith(k)]
        raise EvalSetupError(
            f"--model-class {model_class}: loads {'/'.join(kinds)} checkpoints, and {model} is "
            f"{kind}; use the default vldft class"
            + (f" or --model-class {fits[0]}" if fits else ""))


# what run_identity's keys are, in a refusal's words
IDENTITY_WORDS = {"run": "checkpoint files or model settings", "tasks": "tasks",
                  "limit": "--limit", "data_dir": "--data-dir", "include_paths": "--include-path",
                  "data": "data files"}


def _files_digest(files: list[Path], base: Path) -> str:
    """sha256 over ``files`` (named relative to ``base``) of each one's content digest
    (``resume.file_digest``, as resuming digests weights): a file added, removed,
    replaced or edited changes it, a copy elsewhere or a new modification time does not."""
    rows = []
    for f in files:
        try:
            rows.append((os.path.relpath(f, base), file_digest(f)))
        except OSError:  # gone, a dangling link, unreadable: recorded as such
            rows.append((os.path.relpath(f, base), None))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _heldout_files(path: Path) -> list[Path]:
    """vldft_geo_heldout's file and every image and video its rows name (relative to its
    folder): one entry or a list of them, a clip's frame list, ``{"video": ...}``, a frame
    folder's files."""
    files = [path]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return files

    def add(ref) -> None:
        if isinstance(ref, list):
            for item in ref:
                add(item)
        elif isinstance(ref, dict):
            add(ref.get("video") or ref.get("image") or ref.get("path"))
        elif isinstance(ref, str) and ref:
            f = Path(ref) if Path(ref).is_absolute() else path.parent / ref
            try:
                files.extend(sorted(p for p in f.iterdir() if p.is_file()) if f.is_dir() else [f])
            except OSError:  # an unreadable folder: recorded as a file that cannot be read
                files.append(f)

    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            for key in ("images", "image", "videos", "video"):
                add(row.get(key))
    return files


def _tree_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, through linked folders too (an extracted ``images/`` linked
    in; ``Path.rglob`` does not enter them), each real folder once (a link cycle ends); a
    dangling link is listed (recorded as unreadable)."""
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        found = (Path(root) / n for n in names)  # a named pipe or a socket is not data (and
        files.extend(p for p in found  # opening one blocks); a dangling link is listed
                     if p.is_file() or (p.is_symlink() and not p.exists()))
    return sorted(files)


def data_identity(tasks: list[str], data_dir, out: Path | None = None) -> dict:
    """Per task, the local data it reads and a digest of it (``_files_digest``):
    ``vldft_geo_heldout``'s file (``$VLDFT_GEO_HELDOUT``, ``--data-dir`` or bundled) and the
    images and videos its rows name; a benchmark's files under ``<data-dir>/<benchmark>/``
    (``out``, the evaluation's own folder, left out); None for data read from the hub."""
    found = {}
    for name in tasks:
        if name == "vldft_geo_heldout":
            path = geo_heldout_path(geo_heldout_root(data_dir)).resolve()  # as build_tasks
            found[name] = {"file": str(path),
                           "files": _files_digest(_heldout_files(path), path.parent)}
        elif name in BY_TASK and data_dir is not None:
            folder = (Path(data_dir) / BY_TASK[name].name).resolve()
            skip = out.resolve() if out is not None else None
            files = [p for p in _tree_files(folder)
                     if not (skip and p.resolve().is_relative_to(skip))]
            found[name] = {"folder": str(folder), "files": _files_digest(files, folder)}
        else:
            found[name] = None
    return found


def run_identity(fingerprint: str, tasks: list[str], limit, data_dir, include_paths,
                 out: Path | None = None) -> dict:
    """What makes two evaluations the same (results.json's ``vldft.identity``): the run
    fingerprint (checkpoint files, model class and arguments, batch size), the tasks, the
    limit, the data and task folders, and the data files the tasks read (``data_identity``)."""
    return {"run": fingerprint, "tasks": list(tasks), "limit": limit,
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
            "include_paths": [str(Path(p).resolve()) for p in include_paths],
            "data": data_identity(list(tasks), data_dir, out)}


def _run_words(saved: dict, settings: dict | None) -> str:
    """Which of the run fingerprint's parts differ, in words: the model class, the batch
    size, the model arguments (``--model-args`` / ``--max-new-tokens``), else the checkpoint's
    files. ``saved``: results.json's ``vldft`` record; ``settings``: this evaluation's
    (``model_args`` with the checkpoint path as ``<checkpoint>``)."""
    if not settings:
        return IDENTITY_WORDS["run"]
    args = str(saved.get("model_args", ""))
    for key in ("pretrained", "model") if "=<checkpoint>" in settings["model_args"] else ():
        args = args.replace(f"{key}={saved.get('model')}", f"{key}=<checkpoint>", 1)
    words = [f"--model-class ({saved.get('model_class')} -> {settings['model_class']})"
             if saved.get("model_class") != settings["model_class"] else "",
             f"--batch-size ({saved.get('batch_size')} -> {settings['batch_size']})"
             if saved.get("batch_size") != settings["batch_size"] else "",
             f"model arguments (--model-args / --max-new-tokens: {args} -> "
             f"{settings['model_args']})" if args != settings["model_args"] else ""]
    return ", ".join(w for w in words if w) or "checkpoint files"


def finished_evaluation(out: Path, identity: dict | None, legacy: dict | None = None,
                        settings: dict | None = None) -> dict:
    """``out``'s finished evaluation when its results.json records ``identity`` (or
    ``legacy``: the same evaluation as an older vldft recorded it), as :func:`evaluate` returns
    it, plus ``"done": True``; else ``EvalSetupError`` (another evaluation: it says which
    settings differ; ``settings``: this one's model class, batch size and model arguments,
    ``_run_words``)."""
    path = out / "results.json"
    try:
        saved = json.loads(path.read_text())
        recorded, rows = saved["vldft"].get("identity"), saved["metrics"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        recorded = rows = None
    if identity is None or recorded is None or recorded not in (identity, legacy):
        differ = [(_run_words(saved["vldft"], settings) if k == "run" else IDENTITY_WORDS[k])
                  + (" (not recorded by the vldft that wrote it)" if k not in recorded else "")
                  for k in identity if recorded.get(k) != identity[k]] \
            if isinstance(recorded, dict) and identity else []
        why = f", different in: {', '.join(differ)}" if differ else ""
        raise EvalSetupError(f"{path} exists (another evaluation{why}): pass another --out, or "
                             "--overwrite to replace it")
    return {"results": path, "summary": out / "summary.md",
            "samples": sorted(out.glob("samples_*.jsonl")), "rows": rows, "done": True}


def evaluate(model, tasks: list[str], out_dir: str | Path, suites: list[str] = (),
             limit: int | float | None = None, batch_size: int = 8,
             data_dir: str | Path | None = None, max_new_tokens: int | None = None,
             model_class: str = "vldft", model_args: str = "", device: str | None = None,
             verbosity: str = "WARNING", include_paths: list[str | Path] = (),
             overwrite: bool = False, label: str | None = None) -> dict:
    """Evaluate ``model`` (a path / hub id, or an ``lmms`` instance) on ``tasks`` (+ ``suites``)
    with lmms-eval; returns what was written: {"results", "summary", "samples", "rows"} (empty
    on the non-zero ranks of a distributed run). When ``out_dir`` already holds this evaluation
    (same checkpoint files, settings and tasks: :func:`run_identity`), nothing runs and its
    files are returned with ``"done": True``; another evaluation there needs ``overwrite``."""
    out = Path(out_dir)
    identity = None  # an in-memory model has none: never "the same evaluation"
    if isinstance(model, (str, Path)):
        key = "model" if model_class.startswith("vllm") else "pretrained"
        args = f"{key}={model}"
        if model_class == "vldft" and max_new_tokens:
            args += f",max_new_tokens={max_new_tokens}"
        elif max_new_tokens and model_class.startswith("vllm"):  # no cap: it was ignored
            raise EvalSetupError("--max-new-tokens applies to vldft's own model class only; "
                                 "--backend vllm generates up to the larger of each task's "
                                 "budget and the class's own max_new_tokens (--model-args "
                                 "max_new_tokens=N): drop --max-new-tokens")
        elif max_new_tokens:  # it was dropped without a word: full-length responses
            raise EvalSetupError(f"--max-new-tokens applies to vldft's own model class only; "
                                 f"--model-class {model_class} generates with each task's own "
                                 "budget (its generation_kwargs): drop --max-new-tokens, or use "
                                 "the default model class")
        extra = stock_model_args(str(model), model_class, device, model_args)
        args = ",".join(a for a in (args, extra, model_args) if a)
        # a local checkpoint counts by its files (checkpoint_fingerprint), not by how its path
        # is written (runs/x/final, ./runs/x/final/, an absolute path, a copy elsewhere)
        local = Path(model).is_dir()
        same = args.replace(f"{key}={model}", f"{key}=<checkpoint>", 1) if local else args
        checkpoint = checkpoint_fingerprint(str(model))  # the weights are read once
        fingerprint = run_fingerprint(str(model), model_class, same, batch_size, checkpoint)
        identity = run_identity(fingerprint, requested_tasks(list(tasks), list(suites)), limit,
                                data_dir, include_paths, out)
        # an evaluation written before (the path in its fingerprint) is still this one
        legacy = {**identity, "run": run_fingerprint(str(model), model_class, args, batch_size,
                                                     checkpoint)} if local else None
    if out.exists() and not out.is_dir():
        raise EvalSetupError(f"--out {out}: a file, not a folder")
    if (out / "results.json").exists() and not overwrite:
        done = finished_evaluation(out, identity, legacy, {  # else EvalSetupError
            "model_class": model_class, "batch_size": batch_size, "model_args": same}
            if identity is not None else None)
        return done if int(os.environ.get("RANK", "0")) == 0 else {}
    if data_dir is not None and not Path(data_dir).is_dir():
        raise EvalSetupError(f"--data-dir {data_dir}: not a directory")
    env_notes = prepare_environment()
    _quiet_loguru(verbosity)
    import lmms_eval
    from lmms_eval import evaluator
    from lmms_eval.api.model import lmms
    from lmms_eval.models import get_model

    for p in include_paths:
        if not Path(p).is_dir():
            raise EvalSetupError(f"--include-path {p}: not a directory")
    paths = [str(TASK_DIR), *[str(Path(p).resolve()) for p in include_paths]]
    manager = task_manager(verbosity, include_path=paths, model_name=model_class)
    try:
        names = resolve_tasks(list(tasks), list(suites), set(manager.all_tasks))
    except ValueError as e:
        raise EvalSetupError(str(e)) from None
    groups = [n for n in names if manager.task_index[n]["type"] not in ("task", "python_task")]
    if limit is not None and 0 < limit < 1 and (len(names) > 1 or groups):
        # lmms-eval turns the fraction into the first task's count and uses it for every task
        # (and the last task's count when scoring): each task's share would be wrong
        raise EvalSetupError(f"--limit {limit:g}: a fraction applies to one task at a time "
                             f"(lmms-eval would take {', '.join(groups or names[1:])} with the "
                             "first task's count): evaluate the tasks one by one, or pass a "
                             "whole number of samples per task")
    store = None
    if isinstance(model, lmms):  # in memory (train.eval_tasks): not fingerprinted, not resumed
        lm, args, model_label = model, "", label or type(model).__name__
    else:
        model_label = str(model)
    chat = not (model.is_simple if isinstance(model, lmms)
                else getattr(get_model(model_class), "is_simple", True))
    configs = build_tasks(names, manager, data_dir, chat, model_class)  # data first, then model
    if not isinstance(model, lmms):
        try:
            lm = get_model(model_class).create_from_arg_string(
                args, {"batch_size": batch_size, "max_batch_size": None, "device": device})
        except (ValueError, TypeError) as e:  # e.g. an unknown --model-args key
            raise EvalSetupError(f"--model-class {model_class} with model_args {args!r}: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                 ) from None
        rank = int(os.environ.get("RANK", "0"))
        if overwrite and rank == 0:  # interrupted, this run must not leave the old results
            (out / "results.json").unlink(missing_ok=True)  # looking like a finished one,
            (out / "summary.md").unlink(missing_ok=True)  # nor their summary and per-sample
            for old in out.glob("samples_*.jsonl"):  # logs (a task it does not run kept its)
                old.unlink()
        store = ResponseStore(out / "responses", rank, fresh=overwrite,  # --overwrite: nothing
                              world=int(os.environ.get("WORLD_SIZE", "1")))  # stored is reused
        if store.found and int(os.environ.get("RANK", "0")) == 0:
            print(f"[vldft] resuming: {store.found} responses stored in {store.root} by an "
                  "interrupted run; those of the same requests and settings are reused, the "
                  "rest generated (results.json's resumed_responses counts the reused)")
        make_resumable(lm, store, fingerprint, block=max(1, int(batch_size)))
    start = time.perf_counter()
    try:
        with sigterm_interrupts() if store is not None else contextlib.nullcontext():
            results = evaluator.simple_evaluate(
                model=lm, model_args=args, tasks=configs, limit=limit, batch_size=batch_size,
                device=device, log_samples=True, task_manager=manager, verbosity=verbosity,
                # 1: math-verify's timeout uses signal.alarm, which fails in the worker threads
                # lmms-eval scores with by default; its reasoning tasks then score every answer 0
                process_docs_parallel=1)
    except (KeyboardInterrupt, Interrupted) as e:
        if store is None:
            raise
        why = "SIGTERM" if isinstance(e, Interrupted) else "Ctrl-C"
        again = "the same command without --overwrite" if overwrite else "the same command"
        raise SystemExit(f"[vldft] interrupted ({why}): {len(store.kept)} responses are kept in "
                         f"{store.root}; rerun {again} to continue (only the missing ones are "
                         "generated)") from None
    wall = time.perf_counter() - start
    if results is None:  # only on non-zero ranks of a distributed run
        return {}
    out.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", {})
    world = int(os.environ.get("WORLD_SIZE", "1"))
    meta = {"model": model_label, "model_class": model_class, "model_args": args,
            "resumed_responses": store.reused if store is not None else 0,
            "tasks": names, "limit": limit, "batch_size": batch_size, "world_size": world,
            "lmms_eval_version": getattr(lmms_eval, "__version__", None) or _version(),
            "wall_s": wall, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
            "n_samples": {t: len(v) for t, v in samples.items()}, "environment": env_notes,
            "identity": identity}
    rows = metric_rows(results)
    results_path = out / "results.json"
    tmp = results_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"vldft": meta, "metrics": rows, "lmms_eval": results},
                              indent=2, default=str, ensure_ascii=False))
    sample_paths = write_samples(out, samples)
    summary = out / "summary.md"
    summary.write_text(summary_markdown(model_label, rows, meta))
    os.replace(tmp, results_path)  # last: a results.json means a complete run
    return {"results": results_path, "summary": summary, "samples": sample_paths, "rows": rows}


def _quiet_loguru(level: str) -> None:
    """lmms-eval logs through loguru at DEBUG by default; keep its console at ``level``."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level.upper())


def _version() -> str:
    from importlib.metadata import version

    return version("lmms_eval")
