"""CLI of the lmms-eval bridge (needs the ``eval`` extra: ``pip install -e ".[eval]"``).

    python -m vldft.eval --model runs/demo/final --tasks vldft_geo_heldout --limit 20 --out OUT
    python -m vldft.eval --model Qwen/Qwen2.5-VL-3B-Instruct --suite geo --batch-size 8
    python -m vldft.eval compare OUT_BASE OUT_SFT OUT_DFT [--out DIR]
"""

from __future__ import annotations

import argparse
import sys


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vldft.eval",
                                description="Evaluate a checkpoint with lmms-eval "
                                            "(or: python -m vldft.eval compare RUN_DIR ...)")
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--tasks", default="", help="comma-separated lmms-eval task names")
    p.add_argument("--suite", action="append", default=[],
                   help="named task list: geo (hub tasks, rule-scored), local (offline tasks)")
    p.add_argument("--limit", type=float, default=None,
                   help="samples per task (testing only; a fraction if < 1)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", default=None, help="run directory (default: runs/eval/<model>)")
    p.add_argument("--data-dir", default=None,
                   help="local data for the eval/ tasks (sets VLDFT_EVAL_DATA)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on every task's generation budget")
    p.add_argument("--model-class", default="vldft",
                   help="lmms-eval model class (vldft, qwen2_5_vl, llava_hf, ...)")
    p.add_argument("--model-args", default="", help="extra model_args, k=v,k=v")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0 (default: auto)")
    p.add_argument("--verbosity", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        p = argparse.ArgumentParser(prog="python -m vldft.eval compare")
        p.add_argument("runs", nargs="+", help="run directories; the first is the baseline")
        p.add_argument("--out", default=None,
                       help="where comparison.md / .png go (default: the runs' parent dir)")
        args = p.parse_args(argv[1:])
        from vldft.eval.report import compare

        compare(args.runs, args.out)
        return
    args = _eval_parser().parse_args(argv)
    from pathlib import Path

    from vldft.eval.run import evaluate

    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    out = args.out or str(Path("runs/eval") / Path(args.model.rstrip("/")).name)
    written = evaluate(args.model, [t for t in args.tasks.split(",") if t], out, args.suite,
                       limit, args.batch_size, args.data_dir, args.max_new_tokens,
                       args.model_class, args.model_args, args.device, args.verbosity)
    if written:
        print(written["summary"].read_text(), end="")
        print(f"[vldft] wrote {written['results']}, {written['summary']} and "
              f"{len(written['samples'])} per-sample log(s) in {out}")


if __name__ == "__main__":
    main()
