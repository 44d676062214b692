"""Evaluation: the lmms-eval bridge (docs/evaluation.md).

``python -m vldft.eval --model CKPT --suite geo --data-dir DIR`` runs lmms-eval's real evaluator
(``vldft.eval.run``) on the benchmarks of ``vldft.data.benchmarks`` (local copies, ``download``);
``python -m vldft.eval compare RUN_DIR ...`` tabulates runs (``vldft.eval.report``).
The answer scorer is ``vldft.scoring`` (a bottom layer: the in-training held-out accuracy uses
it too); it and ``vldft.data.benchmarks`` are free of lmms-eval imports (the ``eval`` extra is
optional).
"""
