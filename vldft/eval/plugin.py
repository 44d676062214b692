"""Entry point ``lmms_eval.models`` -> ``vldft``: how lmms-eval (0.7.x) finds vldft's model class
(``--model vldft``) and vldft's tasks (``geoqa``, ``vldft_geo_heldout``).

lmms-eval has an entry-point group for model classes but none for tasks: its ``TaskManager``
indexes its own ``lmms_eval/tasks/`` plus ``--include_path`` folders only (its
``LMMS_EVAL_PLUGINS`` variable adds ``<plugin>.tasks`` to the include path after the
``TaskManager`` is built, so it does not reach the task index, and is deprecated). lmms-eval calls
:func:`manifests` while it imports ``lmms_eval.models`` (its evaluator and its eval CLI do, whatever
``--model`` is): that call also adds vldft's task folder (``vldft.resources.resource("eval")``:
the checkout's ``eval/`` or an installed wheel's ``vldft/_bundled/eval``) to the folders every
``TaskManager`` indexes, after lmms-eval's own and any ``--include_path`` (so those win a name
clash). ``python -m lmms_eval --model vldft --tasks vldft_geo_heldout`` then needs no include path.

Kept import-light: the model class lives in ``vldft.eval.model`` and is imported only when
``--model vldft`` is used. Nothing here may raise: lmms-eval drops every entry-point model when one
entry point fails.
"""

from __future__ import annotations

import os

_MARK = "_vldft_task_dir"  # set on the wrapped TaskManager.initialize_tasks


def task_dir() -> str:
    """vldft's lmms-eval task folder: the checkout's ``eval/`` or the wheel's bundled copy."""
    from vldft.resources import resource

    return str(resource("eval"))


def register_tasks() -> bool:
    """Make every lmms-eval ``TaskManager`` also index :func:`task_dir` (once per process).
    Returns whether it is registered; on an lmms-eval whose ``TaskManager`` has another shape,
    warns and returns False (``--include_path`` still works there)."""
    try:
        from lmms_eval.tasks import TaskManager

        original = TaskManager.initialize_tasks
        if getattr(original, _MARK, None):
            return True
        folder = task_dir()

        def initialize_tasks(self, include_path=None, include_defaults=True):
            paths = [] if include_path is None else (
                [include_path] if isinstance(include_path, str) else list(include_path))
            if os.path.realpath(folder) not in {os.path.realpath(str(p)) for p in paths}:
                paths.append(folder)  # last: lmms-eval's own and the user's folders win a clash
            return original(self, include_path=paths, include_defaults=include_defaults)

        setattr(initialize_tasks, _MARK, folder)
        initialize_tasks.__doc__ = original.__doc__
        TaskManager.initialize_tasks = initialize_tasks
        return True
    except Exception as e:  # noqa: BLE001 - never break lmms-eval's model registry
        import warnings

        warnings.warn(f"vldft could not register its lmms-eval tasks ({type(e).__name__}: {e}); "
                      "pass --include_path with vldft's task folder (python -c \"from "
                      "vldft.eval.plugin import task_dir; print(task_dir())\")", stacklevel=2)
        return False


def manifests():
    """The model manifests vldft adds to lmms-eval's registry (and vldft's task folder)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    register_tasks()
    return [ModelManifest(model_id="vldft", chat_class_path="vldft.eval.model.VldftLMM")]
