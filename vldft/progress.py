"""Progress bars in log files: a bar redraws itself with ``\\r``, which a terminal shows as one
line and a log file (or a pipe) keeps as noise. vldft's commands call :func:`quiet_if_logging`
first; vldft's own bars use tqdm's documented ``disable=None`` ("disable on non-TTY")."""

from __future__ import annotations

import os
import sys


def quiet_if_logging() -> bool:
    """When stderr is not a terminal, turn off the progress bars of transformers /
    huggingface_hub and of datasets. Returns whether it did; a terminal keeps them.

    The libraries are not imported for this (that costs seconds, and a command's argument
    errors answer before they load): the environment variables they read at import are set
    (``HF_HUB_DISABLE_PROGRESS_BARS``, which transformers follows too, and
    ``HF_DATASETS_DISABLE_PROGRESS_BARS``; a value already set is kept), and a library already
    imported is told directly."""
    if sys.stderr.isatty():
        return False
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # also huggingface_hub's
    elif "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
    return True


def prog_name(module: str, script: str) -> str:
    """The program name for a command's usage line: the console script's name (``script``,
    e.g. ``vldft-eval``) when it was started that way, else ``python -m <module>``."""
    from pathlib import Path

    return script if Path(sys.argv[0]).name == script else f"python -m {module}"
