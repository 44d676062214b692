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
a warning) and the next save removes. On a multi-node run ``output_dir`` must be on a
filesystem every node sees (each rank writes its own RNG state). Who may write into
``output_dir`` at all (run.json, resume or refuse) is ``vldft.run_dir``'s question.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

STATE_FILE = "trainer_state.json"
NAME = re.compile(r"^checkpoint-(\d+)$")


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

    ``write_model(dir)`` writes the Hugging Face files (main process only). On an OSError (disk
    full, permissions) the temporary directory is removed, earlier checkpoints are untouched,
    and the error says so.
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
    except OSError as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        earlier = [str(p) for _, p in complete_checkpoints(path.parent, quiet=True)]
        raise RuntimeError(
            f"could not write checkpoint {path}: {e}. The partial files were removed; "
            + (f"the previous checkpoint {earlier[-1]} is intact (resume with "
               "train.resume=auto)" if earlier else "no earlier checkpoint exists")) from e
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    accelerator.wait_for_everyone()


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the lines of a metrics file up to ``step`` (a resumed run rewrites what followed)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def save_final(write_model: Callable[[Path], None], accelerator, path: Path) -> None:
    """Hugging Face files only (``final/``), written to ``<path>.tmp`` then renamed."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written save from a crashed run
        write_model(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    accelerator.wait_for_everyone()
