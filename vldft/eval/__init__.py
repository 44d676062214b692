"""Evaluation: the lmms-eval bridge and the shared rule-based answer scorer.

``python -m vldft.eval --model CKPT --tasks vldft_geo_heldout`` runs lmms-eval's real evaluator
(``vldft.eval.run``); ``python -m vldft.eval compare RUN_DIR ...`` tabulates runs
(``vldft.eval.report``). ``vldft.eval.scoring`` is imported by the in-training held-out scoring
as well, so it must stay free of lmms-eval imports (the ``eval`` extra is optional).
"""
