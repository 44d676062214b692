"""Progress bars in log files: a bar redraws itself with ``\\r``, which a terminal shows as one
line and a log file (or a pipe) keeps as noise. vldft's commands call :func:`quiet_if_logging`
first; vldft's own bars use tqdm's documented ``disable=None`` ("disable on non-TTY")."""

from __future__ import annotations

import sys


def quiet_if_logging() -> bool:
    """When stderr is not a terminal, turn off the progress bars of transformers /
    huggingface_hub (``transformers.utils.logging.disable_progress_bar``) and of datasets
    (``datasets.disable_progress_bars``). Returns whether it did; a terminal keeps them."""
    if sys.stderr.isatty():
        return False
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # also huggingface_hub's
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    return True


def prog_name(module: str, script: str) -> str:
    """The program name for a command's usage line: the console script's name (``script``,
    e.g. ``vldft-eval``) when it was started that way, else ``python -m <module>``."""
    from pathlib import Path

    return script if Path(sys.argv[0]).name == script else f"python -m {module}"
