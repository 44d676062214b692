"""Evaluation: the lmms-eval bridge and the shared rule-based answer scorer (docs/evaluation.md).

``python -m vldft.eval --model CKPT --suite geo --data-dir DIR`` runs lmms-eval's real evaluator
(``vldft.eval.run``) on the benchmarks of ``vldft.eval.benchmarks`` (local copies, ``download``);
``python -m vldft.eval compare RUN_DIR ...`` tabulates runs (``vldft.eval.report``).
``vldft.eval.scoring`` and ``vldft.eval.benchmarks`` are free of lmms-eval imports
(``scoring`` is used by the in-training held-out accuracy; the ``eval`` extra is optional).
"""
