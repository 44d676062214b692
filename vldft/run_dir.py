"""The run directory (``train.output_dir``): which run it belongs to, and what a new run may do
with it, decided before any model or data is loaded.

- Pre-flight: the directory is writable and has room for what the run writes at its fullest:
  the kept checkpoints, the one being written beside them, and ``final/``
  (:func:`check_writable`, :func:`check_disk_space`, :func:`disk_needed`,
  :func:`checkpoint_bytes`); an explicit ``train.resume=<dir>`` is a whole checkpoint of the
  same model (:func:`check_explicit_resume`).
- Ownership: ``run.json`` records the run's *fingerprint* (the settings that define what is
  trained, :func:`fingerprint`); :func:`claim_output_dir` decides fresh / resume / finished /
  refuse from it, and :func:`claim_run_dir` makes every rank act on rank 0's decision.
- ``train.overwrite`` removes exactly the run's own outputs (:func:`run_artefacts`,
  :func:`remove_run`), nothing else in the directory.

The checkpoints themselves (atomic save, resume lookup, pruning) are ``vldft.checkpoint``'s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from accelerate.utils import broadcast_object_list

from vldft.checkpoint import (
    checkpoint_step,
    complete_checkpoints,
    find_resume,
    read_state,
)
from vldft.config import Config, config_to_dict

_HELD: list[int] = []  # this process's locked output directories (file descriptors)


def lock_output_dir(out_dir: Path) -> None:
    """Hold an exclusive lock (``flock``) on the directory ``out_dir`` itself until
    ``release_output_dirs``: a second process training into it (it would resume from the first
    one's checkpoints and write into the same metrics file) is refused in one line. Nothing is
    written. Where the file system has no locks (some network mounts) the run goes on
    unlocked."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"train.output_dir: {out_dir} is in use: another process is training "
                         "into it (two runs in one directory would mix their checkpoints and "
                         "logs); wait for it to end, or choose another train.output_dir") from None
    except OSError:
        os.close(fd)
        return
    _HELD.append(fd)


def release_output_dirs() -> None:
    """Release the locks ``lock_output_dir`` took (closing the descriptor releases them)."""
    while _HELD:
        os.close(_HELD.pop())


def check_writable(out_dir: Path) -> None:
    """Fail before training when ``train.output_dir`` cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"train.output_dir: cannot write to {out_dir}: {e}") from None


def check_free_space(out_dir: Path, n_bytes: int, what: str) -> None:
    """Fail before training when the disk cannot hold ``n_bytes`` more (``what`` says of
    what)."""
    free = shutil.disk_usage(out_dir).free
    if free < n_bytes:
        raise SystemExit(f"train.output_dir: {out_dir} has {free / 2**30:.2f} GiB free but "
                         f"{what} needs about {n_bytes / 2**30:.2f} GiB; free space, lower "
                         "train.keep_checkpoints, or choose another output_dir")


def checkpoint_bytes(n_params: int, n_trainable: int, bytes_per_param: int, resumable: bool
                     ) -> int:
    """Estimate: the HF model, plus (resumable) the model again in state/ and AdamW's two fp32
    moments of the trainable parameters."""
    total = n_params * bytes_per_param
    if resumable:
        total += n_params * bytes_per_param + n_trainable * 8
    return total


def disk_needed(checkpoint: int, final: int, keep: int, saves: int, present: list[int] = ()
                ) -> tuple[int, str]:
    """(bytes, what) the run adds to ``output_dir`` at its fullest.

    ``saves`` periodic checkpoints of ``checkpoint`` bytes, the newest ``keep`` kept (0: all):
    each save writes a whole checkpoint beside the kept ones before the oldest is pruned, and
    the end writes ``final/`` (``final`` bytes) beside the kept ones, so the peak is
    max(min(saves, kept + 1) x checkpoint, kept x checkpoint + final). ``present``: the sizes
    of the whole checkpoints already there, oldest first (a resumed run): on the disk already,
    they count as kept ones."""
    kept = saves if keep == 0 else min(keep, saves)
    peak = max(min(saves, kept + 1) * checkpoint, kept * checkpoint + final)
    on_disk = sum(list(present)[-kept:]) if kept and present else 0  # the newest kept
    gib = 2**30
    what = (f"the run ({kept} kept checkpoint(s)"
            + (" + the one being written beside them" if saves > kept else "")
            + f", {checkpoint / gib:.2f} GiB each, and final/, {final / gib:.2f} GiB"
            + (f"; {on_disk / gib:.2f} GiB of them already there)" if on_disk else ")")
            if saves else f"final/ ({final / gib:.2f} GiB)")
    return max(peak - on_disk, final), what


def check_disk_space(out_dir: Path, n_params: int, n_trainable: int, bytes_per_param: int,
                     train, total_steps: int) -> None:
    """Fail before training when ``out_dir``'s disk cannot hold what the run will write at its
    fullest (:func:`disk_needed`); ``train``: the ``train`` config section."""
    saves = (total_steps - 1) // train.save_every if train.save_every else 0
    present = [dir_bytes(p) for _, p in complete_checkpoints(out_dir, quiet=True)]
    n_bytes, what = disk_needed(checkpoint_bytes(n_params, n_trainable, bytes_per_param, True),
                                checkpoint_bytes(n_params, n_trainable, bytes_per_param, False),
                                train.keep_checkpoints, saves, present)
    check_free_space(out_dir, n_bytes, what)


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_explicit_resume(resume: str, config: dict, resolve: Callable[[str], Path]
                          ) -> Path | None:
    """The checkpoint an explicit ``train.resume=<dir>`` names, checked before anything in
    output_dir is written or removed: it must be a whole checkpoint of the same model (any other
    setting may differ: a deliberate continuation). None for ``auto`` / ``none``."""
    if resume in ("auto", "none"):
        return None
    path = find_resume(resume, Path("."), resolve)
    try:
        theirs = fingerprint(read_state(path).get("config", {}))
    except (OSError, ValueError, AttributeError):
        theirs = {}
    model_diff = [d for d in fingerprint_diff(theirs, fingerprint(config))
                  if d.startswith("model.")]
    if model_diff:
        raise SystemExit(f"train.resume: {path} holds a different model "
                         f"({'; '.join(model_diff)}); it cannot be loaded into this one")
    return path


# --- output-directory ownership --------------------------------------------------------------
#
# An output directory belongs to one run. ``run.json`` (written before training starts) records
# the run's *fingerprint*: every config key that defines what is trained, i.e. the whole
# resolved config minus NOT_FINGERPRINTED below. Resuming (or re-running a finished command)
# needs the same fingerprint; anything else stops before the model loads, naming the keys.

RUN_FILE = "run.json"
NOT_FINGERPRINTED = frozenset({
    # where outputs go and how a run resumes / keeps checkpoints
    "train.output_dir", "train.resume", "train.overwrite", "train.save_every",
    "train.keep_checkpoints",
    # logging, evaluation and guards: observe the run, do not change the updates
    "train.log_every", "train.hist_every", "train.eval_every", "train.eval_max_samples",
    "train.eval_max_new_tokens", "train.eval_batch_size", "train.eval_tasks",
    "train.eval_tasks_limit", "train.eval_tasks_max_new_tokens", "train.eval_data_dir",
    "train.max_nonfinite_steps", "train.on_collapse", "train.collapse_window",
    "train.report_to",
    "data.heldout_file",
    # engine / kernel / memory choices a resume on other hardware may need to change
    "train.optimizer_impl", "train.mixed_precision", "model.attn_implementation",
    "model.gradient_checkpointing", "model.checkpoint_keep", "model.vision_no_grad",
    "model.precompute_segments", "train.liger", "train.compile",
    "loss.chunk_size", "loss.implementation",
    "data.num_workers", "data.on_error",
    # where downloaded sources live (the same data moved elsewhere is the same run)
    "data.data_dir", "data.cache",
})
# the files and directories the training loop writes into output_dir (``train.overwrite`` removes
# exactly these; anything else in the directory is left alone)
RUN_FILES = ("run.json", "config.yaml", "data_summary.json", "metrics.jsonl", "histograms.jsonl",
             "summary.json", "training_curves.png", "prob_histograms.png")
RUN_DIRS = ("final", "final.tmp", "tensorboard")
CKPT_ANY = re.compile(r"^checkpoint-\d+(\.tmp)?$")
EVAL_STEP = re.compile(r"^step-\d+$")


def fingerprint(config: dict) -> dict:
    """Dotted key -> value of the settings that define a run (``config_to_dict`` output).
    Keys a setting makes irrelevant are dropped: ``train.epochs`` when ``train.max_steps`` is
    set, ``train.grad_accum`` when ``train.global_batch_size`` is."""
    flat = {}
    for section, body in config.items():
        if not isinstance(body, dict):
            continue
        for key, value in body.items():
            full = f"{section}.{key}"
            if full == "data.sources" and isinstance(value, list):
                # unset per-source keys are left out, so a key added in a later vldft version
                # (hub, subset, ...) does not make an interrupted run's sources differ
                value = [{k: v for k, v in src.items() if v not in (None, [], {})}
                         if isinstance(src, dict) else src for src in value]
            if full not in NOT_FINGERPRINTED:
                flat[full] = value
    if flat.get("train.max_steps"):
        flat.pop("train.epochs", None)
    if flat.get("train.global_batch_size") is not None:
        flat.pop("train.grad_accum", None)
    return flat


def fingerprint_diff(old: dict, new: dict, old_abs: dict | None = None,
                     new_abs: dict | None = None) -> list[str]:
    """``key: old -> new`` for every key both fingerprints have and that differs (a key one of
    them lacks comes from another vldft version and is not compared). ``old_abs`` / ``new_abs``
    (:func:`absolute_forms`): a path key is the same when its value is the same as written
    (``data/x.jsonl`` in a moved checkout) or as an absolute path (the run's own config.yaml,
    which names ``/home/u/vldft/data/x.jsonl``, rerun)."""
    def short(v) -> str:
        text = json.dumps(v) if not isinstance(v, float) else repr(v)
        return text if len(text) <= 80 else text[:77] + "..."

    def parts(key: str, a, b, a_abs, b_abs) -> list[str]:
        """The differing leaves of a list of the same length or a mapping (one source of
        data.sources: ``data.sources[0].image_root: null -> "/x"``), else the whole value. A
        leaf is the same when its written forms or its absolute forms are (a path written
        relatively in one and absolutely in the other; a checkout moved with its config)."""
        if a == b or a_abs == b_abs:
            return []
        if all(isinstance(v, list) for v in (a, b, a_abs, b_abs)) and \
                len({len(a), len(b), len(a_abs), len(b_abs)}) == 1:
            return [d for i in range(len(a))
                    for d in parts(f"{key}[{i}]", a[i], b[i], a_abs[i], b_abs[i])]
        if all(isinstance(v, dict) for v in (a, b, a_abs, b_abs)):
            return [d for k in sorted(set(a) | set(b))
                    for d in parts(f"{key}.{k}", a.get(k), b.get(k), a_abs.get(k),
                                   b_abs.get(k))]
        return [f"{key}: {short(a_abs)} -> {short(b_abs)}" if a_abs != a or b_abs != b
                else f"{key}: {short(a)} -> {short(b)}"]

    old_abs, new_abs = old_abs or {}, new_abs or {}
    return [d for k in sorted(set(old) & set(new))
            for d in parts(k, old[k], new[k], old_abs.get(k, old[k]), new_abs.get(k, new[k]))]


def absolute_forms(config: dict, absolute: dict | None) -> dict:
    """The fingerprint keys whose value changes when local paths are made absolute
    (``absolute``: ``config_to_dict(cfg, absolute=True)``), with that value."""
    if absolute is None:
        return {}
    fp = fingerprint(config)
    return {k: v for k, v in fingerprint(absolute).items() if fp.get(k) != v}


def run_artefacts(out_dir: Path) -> list[Path]:
    """What a vldft run left in ``out_dir`` (checkpoints, final/, metrics, summary, plots,
    run.json, eval/step-<N>/); empty if none."""
    if not out_dir.is_dir():
        return []
    found = [p for p in sorted(out_dir.iterdir())
             if (p.name in RUN_FILES and (p.is_file() or p.is_symlink()))
             or (p.name in RUN_DIRS and (p.is_dir() or p.is_symlink()))
             or (CKPT_ANY.match(p.name) and (p.is_dir() or p.is_symlink()))]
    ev = out_dir / "eval"
    if ev.is_dir() and not ev.is_symlink():
        found += [p for p in sorted(ev.iterdir()) if EVAL_STEP.match(p.name)]
    return found


def remove_run(out_dir: Path) -> list[Path]:
    """Delete ``run_artefacts(out_dir)`` (a symlink is unlinked, never followed) and ``eval/``
    if that leaves it empty. Returns what was removed; other files are kept."""
    removed = run_artefacts(out_dir)
    for p in removed:
        if p.is_symlink() or not p.is_dir():
            p.unlink()
        else:
            shutil.rmtree(p)
    ev = out_dir / "eval"
    if ev.is_dir() and not ev.is_symlink() and not any(ev.iterdir()):
        ev.rmdir()
    return removed


# keys every vldft version's fingerprint has: a record without them (an empty or another tool's
# config.yaml, a foreign run.json) is not a vldft run's, so its settings count as unknown
REQUIRED_KEYS = ("model.family", "train.seed")


def recorded_fingerprint(out_dir: Path) -> dict | None:
    """The fingerprint of the run in ``out_dir``: ``run.json``; for directories written before
    run.json existed, the newest checkpoint's config, else ``config.yaml``. None if unknown:
    none of these, unreadable or unparsable (broken JSON / YAML, not a mapping), or a record
    that lacks ``REQUIRED_KEYS`` (not written by vldft)."""
    import yaml

    fp = None
    try:
        if (out_dir / RUN_FILE).is_file():
            fp = json.loads((out_dir / RUN_FILE).read_text())["fingerprint"]
        else:
            found = complete_checkpoints(out_dir, quiet=True)
            state = read_state(found[-1][1]) if found else {}
            if isinstance(state, dict) and isinstance(state.get("config"), dict):
                fp = fingerprint(state["config"])
            elif (out_dir / "config.yaml").is_file():
                raw = yaml.safe_load((out_dir / "config.yaml").read_text())
                fp = fingerprint(raw) if isinstance(raw, dict) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None
    if not isinstance(fp, dict) or not all(k in fp for k in REQUIRED_KEYS):
        return None
    return fp


def finished_summary(out_dir: Path) -> dict | None:
    """``summary.json`` of a run that finished (not stopped) with a whole ``final/``; else None."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    final = out_dir / "final"
    if not isinstance(summary, dict) or summary.get("stopped") is not None \
            or not (final / "config.json").is_file():
        return None
    return summary


def write_run_file(out_dir: Path, fp: dict, absolute: dict | None = None) -> None:
    """run.json: the fingerprint and, for path keys, their absolute forms (``absolute_forms``)."""
    tmp = out_dir / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": fp, "absolute": absolute or {}}, indent=1,
                              default=str))
    tmp.rename(out_dir / RUN_FILE)


def recorded_absolute(out_dir: Path) -> dict:
    """run.json's absolute forms of the run's path keys ({} when unknown or not recorded)."""
    try:
        found = json.loads((out_dir / RUN_FILE).read_text()).get("absolute", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


# what a run writes before its first step (metrics.jsonl and histograms.jsonl still empty)
EARLY_FILES = ("run.json", "config.yaml", "data_summary.json", "metrics.jsonl",
               "histograms.jsonl")


def stopped_before_training(out_dir: Path, used: list[Path]) -> bool:
    """Whether ``used`` (``run_artefacts``) is nothing, or only what a run writes before its
    first step: a run that stopped there (a data error such as an overlong sample with
    ``data.overlong=error``) trained nothing, so a run with other settings may take the folder
    (it was refused, though the error's own advice was to change a setting)."""
    for p in used:
        if p.is_symlink() or p.parent != out_dir:
            return False
        if p.name in ("metrics.jsonl", "histograms.jsonl") and p.is_file():
            if p.stat().st_size:
                return False
        elif p.name == "tensorboard" and p.is_dir():  # its writer starts with the run
            if not (out_dir / "metrics.jsonl").is_file() or (out_dir / "metrics.jsonl"
                                                               ).stat().st_size:
                return False
        elif p.name not in EARLY_FILES or not p.is_file():
            return False
    return True


def claim_output_dir(out_dir: Path, config: dict, resume: str, overwrite: bool,
                     resume_path: Path | None = None, absolute: dict | None = None
                     ) -> tuple[str, object]:
    """Decide what a run may do with ``out_dir`` (rank 0 only; the caller broadcasts it).

    Returns one of ``("refuse", message)``, ``("finished", summary)``, ``("resume", None)``
    (after writing run.json if it was missing), ``("fresh", removed)`` (run.json written; with
    ``overwrite`` the old run's artefacts were removed first). Nothing is written on refusal.

    ``resume_path`` is the checkpoint an explicit ``train.resume=<dir>`` names (resolved). One
    inside ``out_dir`` is a deliberate continuation of that run, possibly with other settings
    (e.g. a lower ``train.lr`` from ``checkpoint-500``): it is allowed without
    ``train.overwrite`` and run.json takes the new settings; it is never deleted, so
    ``train.overwrite=true`` with it is refused, and so are outputs newer than it (later
    checkpoints, ``final/``), which belong to the run being continued differently.

    ``absolute``: ``config_to_dict(cfg, absolute=True)``; with it, a path written another way
    that names the same file (the run's own ``config.yaml`` rerun) is the same setting.
    """
    new, new_abs = fingerprint(config), absolute_forms(config, absolute)
    used = run_artefacts(out_dir)
    hint = "set train.overwrite=true to replace it, or choose a new train.output_dir"

    def listing() -> str:
        names = [p.name for p in used if p.parent == out_dir]
        return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")

    removed: list[Path] = []
    if resume_path is None and resume not in ("auto", "none"):  # (callers that did not resolve)
        resume_path = Path(resume).expanduser()
    if resume_path is not None and resume not in ("auto", "none") \
            and resume_path.resolve().is_relative_to(out_dir.resolve()):
        if overwrite:
            return "refuse", (f"train.overwrite=true would delete {resume_path}, the checkpoint "
                              "train.resume names; drop train.overwrite (an explicit "
                              "train.resume continues this run, with the new settings), or copy "
                              "the checkpoint out of train.output_dir first")
        at = checkpoint_step(resume_path)
        later = [p.name for s, p in complete_checkpoints(out_dir, quiet=True)
                 if at is not None and s > at and p.resolve() != resume_path.resolve()]
        if (out_dir / "final").exists():
            later.append("final")
        if later:
            return "refuse", (f"train.resume: {out_dir} holds outputs newer than {resume_path} "
                              f"({', '.join(later[:4])}{', ...' if len(later) > 4 else ''}); "
                              "continuing from it here would mix two runs: choose a new "
                              f"train.output_dir (train.resume={resume_path} still works from "
                              "there), or remove them")
        if recorded_fingerprint(out_dir) != new:
            write_run_file(out_dir, new, new_abs)  # the run goes on with these settings
        return "resume", None
    if stopped_before_training(out_dir, used):  # a fresh run rewrites every one of them
        write_run_file(out_dir, new, new_abs)
        return "fresh", removed
    old, old_abs = recorded_fingerprint(out_dir), recorded_absolute(out_dir)
    summary = finished_summary(out_dir)
    if not overwrite:
        if old is None:
            return "refuse", (f"train.output_dir: {out_dir} holds outputs of a run whose settings "
                              f"are unknown ({listing()}); {hint}")
        diff = fingerprint_diff(old, new, old_abs, new_abs)
        if diff:
            what = "finished run" if summary is not None else "run"
            newest = complete_checkpoints(out_dir, quiet=True)[-1:]
            go_on = (f"; to continue it with these settings, name its checkpoint: "
                     f"train.resume={newest[0][1]}" if newest and summary is None else "")
            return "refuse", (f"train.output_dir: {out_dir} holds a {what} with different "
                              f"settings ({'; '.join(diff)}); {hint}{go_on}")
        if resume == "none":
            return "refuse", (f"train.resume=none: {out_dir} already holds this run's outputs "
                              f"({listing()}); set train.overwrite=true to delete them and start "
                              "over, or choose a new train.output_dir")
        if summary is not None:
            return "finished", summary
        if not (out_dir / RUN_FILE).is_file():
            write_run_file(out_dir, new, new_abs)
        return "resume", None
    # overwrite: an interrupted run with the same settings still resumes (a preempted job whose
    # config says overwrite=true must not lose its checkpoints); anything else is replaced
    if (old is not None and not fingerprint_diff(old, new, old_abs, new_abs) and resume != "none"
            and summary is None):
        if not (out_dir / RUN_FILE).is_file():
            write_run_file(out_dir, new, new_abs)
        return "resume", None
    # a folder without a vldft record: a checkpoint-<N> without vldft's state/ and
    # trainer_state.json is another tool's (a Hugging Face Trainer's), not deleted
    foreign = [] if old is not None else [
        p for p in run_artefacts(out_dir) if CKPT_ANY.match(p.name)
        and not p.name.endswith(".tmp") and p.is_dir() and not p.is_symlink()
        and not ((p / "state").is_dir() and (p / "trainer_state.json").is_file())]
    if foreign:
        return "refuse", (f"train.overwrite: {foreign[0]} is not a vldft checkpoint (no state/ "
                          "and trainer_state.json: another tool's?); overwrite deletes only "
                          "vldft's own outputs: move it, or choose a new train.output_dir")
    removed = remove_run(out_dir)
    write_run_file(out_dir, new, new_abs)
    return "fresh", removed


def claim_run_dir(cfg: Config, out_dir: Path, accelerator, log: Callable[..., None]
                  ) -> tuple[str, object]:
    """``claim_output_dir`` for a whole run: rank 0 decides, before any model or data is
    loaded, and every rank acts on its decision (no rank waits alone). A refusal, or any
    failure while deciding, raises ``SystemExit`` on every rank. Returns ``("finished",
    summary)`` (nothing to do), ``("resume", None)`` or ``("fresh", removed paths)``, after
    logging what was found or removed."""
    t = cfg.train
    decision: list = [None]
    if accelerator.is_main_process:
        try:
            check_writable(out_dir)
            lock_output_dir(out_dir)  # held until the run ends (train.main releases it)
            # an explicit train.resume is checked (whole, same model) before anything is removed
            explicit = check_explicit_resume(t.resume, config_to_dict(cfg), cfg.resolve)
            decision[0] = claim_output_dir(out_dir, config_to_dict(cfg), t.resume, t.overwrite,
                                           explicit, config_to_dict(cfg, absolute=True))
        except SystemExit as e:
            decision[0] = ("refuse", str(e))
        except Exception as e:  # noqa: BLE001 (any failure refuses on every rank, never a hang)
            decision[0] = ("refuse", f"train.output_dir: could not check {out_dir} "
                           f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})")
    if accelerator.num_processes > 1:
        decision = broadcast_object_list(decision)
    action, detail = decision[0]
    if action == "refuse":
        raise SystemExit(f"[vldft] refused: {detail}")
    if action == "finished":
        log(f"[vldft] {out_dir} already holds this run, finished ({detail.get('steps')} steps, "
            f"{out_dir / 'final'}); nothing to do (train.overwrite=true retrains it, or choose a "
            "new train.output_dir)")
    if action == "fresh" and detail:
        log(f"[vldft] train.overwrite: removed the previous run's {len(detail)} outputs from "
            f"{out_dir} ({', '.join(sorted(p.name for p in detail)[:6])}"
            f"{', ...' if len(detail) > 6 else ''})")
    return action, detail
