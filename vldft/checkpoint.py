"""Resumable checkpoints: written atomically, found again, pruned.

A checkpoint is a directory ``checkpoint-<step>/``:

- the model in Hugging Face format (plus the tokenizer / processor), so it can be evaluated or
  loaded with ``from_pretrained`` as it is (with LoRA: ``adapter/`` holds the peft adapter);
- ``state/``: ``accelerator.save_state`` (model, optimizer, lr scheduler, every rank's RNG
  states; sharded the way the engine wants under FSDP / DeepSpeed);
- ``trainer_state.json``: the step, the data position (epoch, micro-batches consumed), the
  metric window, the logged history and the skip counters; written last.

Everything is written to ``checkpoint-<step>.tmp/`` and renamed when complete, so a directory
without ``.tmp`` is always whole. A crash mid-save leaves a ``.tmp`` that resuming ignores (with
a warning) and the next save removes; a save that fails (disk full) removes it at once and
raises ``CheckpointSaveError``: one line naming the checkpoint kept. On a multi-node run
``output_dir`` must be on a filesystem every node sees (each rank writes its own RNG state).
Who may write into ``output_dir`` at all (run.json, resume or refuse) is ``vldft.run_dir``'s
question.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

STATE_FILE = "trainer_state.json"
NAME = re.compile(r"^checkpoint-(\d+)$")


class TrainingAborted(RuntimeError):
    """The run stopped on a fault it cannot train through (a failed save, too many non-finite
    steps); the message is one line that says what was kept and what to do. ``vldft-train``
    prints it without a traceback and exits 1."""


class CheckpointSaveError(TrainingAborted):
    """A checkpoint (or ``final/``) could not be written; its partial files were removed."""


def kept_note(out_dir: Path) -> str:
    """"kept: checkpoint-500 (intact)" for the newest whole checkpoint in ``out_dir``, or
    "no checkpoint was kept"."""
    found = complete_checkpoints(out_dir, quiet=True)
    return f"kept: {found[-1][1].name} (intact)" if found else "no checkpoint was kept"


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# what the writers that do not raise OSError say: safetensors (SafetensorError: "IoError(Os {
# code: 28, kind: StorageFull ...})"), torch.save (RuntimeError: "... file write failed")
_DISK_FULL_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded")


def _write_failure(e: BaseException) -> str | None:
    """"disk full" / "could not write" when ``e`` (or what caused it) is a failed write, else
    None (a bug, which keeps its traceback)."""
    chain, seen = [], e
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(x, OSError) and x.errno in _DISK_FULL for x in chain) or any(
            t in str(x) for x in chain for t in _DISK_FULL_TEXT):
        return "disk full"
    if any(isinstance(x, OSError) or "write failed" in str(x) for x in chain):
        return "could not write"
    return None


def _save_failed(e: BaseException, what: str, out_dir: Path) -> CheckpointSaveError | None:
    """The one-line error of a failed save of ``what`` (partial files already removed)."""
    kind = _write_failure(e)
    if kind is None:
        return None
    detail = " ".join(str(e).split())[:200] or type(e).__name__
    todo = ("free space on that disk (or lower train.keep_checkpoints), then rerun the same "
            "command to resume" if kind == "disk full" else
            "fix that, then rerun the same command to resume")
    head = f"disk full while writing {what}" if kind == "disk full" else f"could not write {what}"
    return CheckpointSaveError(f"{head} in {out_dir} ({detail}); partial files removed; "
                               f"{kept_note(out_dir)}; {todo}")


def warn(msg: str) -> None:
    print(f"[vldft] warning: {msg}", file=sys.stderr, flush=True)


def complete_checkpoints(out_dir: Path, quiet: bool = False) -> list[tuple[int, Path]]:
    """``(step, path)`` of the whole checkpoints in ``out_dir``, oldest first. Half-written
    ones (``.tmp``, or no ``trainer_state.json``) are skipped with a warning."""
    found = []
    if not out_dir.is_dir():
        return found
    for p in sorted(out_dir.iterdir()):
        if p.name.startswith("checkpoint-") and p.name.endswith(".tmp"):
            if not quiet:
                warn(f"ignoring the half-written checkpoint {p} (a save was interrupted)")
            continue
        m = NAME.match(p.name)
        if not m or not p.is_dir():
            continue
        if not (p / STATE_FILE).is_file() or not (p / "state").is_dir():
            if not quiet:
                warn(f"ignoring {p}: it has no {STATE_FILE} or state/ (not a whole checkpoint)")
            continue
        found.append((int(m.group(1)), p))
    return sorted(found)


def find_resume(resume: str, out_dir: Path, resolve: Callable[[str], Path]) -> Path | None:
    """The checkpoint to resume from per ``train.resume`` (auto / none / a directory)."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(out_dir)
        return found[-1][1] if found else None
    path = resolve(resume)
    if not (path / STATE_FILE).is_file() or not (path / "state").is_dir():
        raise SystemExit(f"train.resume: {path} is not a whole vldft checkpoint "
                         f"(needs {STATE_FILE} and state/)")
    return path


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def checkpoint_step(path: Path) -> int | None:
    """The step of the checkpoint at ``path`` (its ``trainer_state.json``; else its name)."""
    try:
        return int(read_state(path)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        m = NAME.match(path.name)
        return int(m.group(1)) if m else None


def prune(out_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` whole checkpoints (0 keeps everything)."""
    if keep <= 0:
        return
    for _, path in complete_checkpoints(out_dir, quiet=True)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def save(path: Path, accelerator, write_model: Callable[[Path], None], trainer_state: dict
         ) -> None:
    """Write a whole checkpoint to ``path`` atomically (all ranks call this).

    ``write_model(dir)`` writes the Hugging Face files (main process only). When a write fails
    (disk full, permissions; an ``OSError``, or the safetensors / torch writers' own errors for
    it) the temporary directory is removed, earlier checkpoints are untouched, and
    ``CheckpointSaveError`` says so in one line, naming the checkpoint that was kept.
    """
    tmp = path.with_name(path.name + ".tmp")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted save
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp / "state"), safe_serialization=False)
        if accelerator.is_main_process:
            write_model(tmp)
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state))
    except Exception as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        error = _save_failed(e, path.name, path.parent)
        if error is None:
            raise
        raise error from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    accelerator.wait_for_everyone()


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the lines of a metrics file up to ``step`` (a resumed run rewrites what followed).
    A line that is not a JSON record (the torn last line of a ``kill -9`` during an append, NUL
    bytes) is dropped, not an error: the resumed run writes its steps again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def save_final(write_model: Callable[[Path], None], accelerator, path: Path) -> None:
    """Hugging Face files only (``final/``), written to ``<path>.tmp`` then renamed."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written save from a crashed run
        try:
            write_model(tmp)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            error = _save_failed(e, f"{path.name}/", path.parent)
            if error is None:
                raise
            raise error from e
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    accelerator.wait_for_everyone()
