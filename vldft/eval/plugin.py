"""Entry point ``lmms_eval.models`` -> ``vldft``: how lmms-eval (0.7.x) discovers our model class.

Kept import-light (lmms-eval loads it while building its model registry); the class itself lives
in ``vldft.eval.model`` and is imported only when ``--model vldft`` is used.
"""

from __future__ import annotations


def manifests():
    """The model manifests vldft adds to lmms-eval's registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="vldft", chat_class_path="vldft.eval.model.VldftLMM")]
