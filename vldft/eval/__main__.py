"""CLI of the lmms-eval bridge (needs the ``eval`` extra; ``make test`` / ``make demo`` install it).

    python -m vldft.eval --model runs/demo/final --tasks vldft_geo_heldout
    python -m vldft.eval --model CKPT --suite paper --data-dir /data/vl_bench     # offline
    torchrun --nproc_per_node 8 -m vldft.eval --model CKPT --suite geo --data-dir DIR
    python -m vldft.eval --model CKPT --suite paper --data-dir DIR --backend vllm  # GPUs
    python -m vldft.eval download --suite geo --data-dir DIR    # once, where the hub is reachable
    python -m vldft.eval compare runs/eval/base runs/eval/sft runs/eval/dft [--out DIR]
"""

from __future__ import annotations

import argparse
import sys

from vldft.eval.benchmarks import BENCHMARKS, BY_TASK
from vldft.progress import prog_name

EPILOG = ("suites: geo (all eight benchmarks: " + ", ".join(BENCHMARKS) + "), paper (MathVerse, "
          "MathVision, WeMath, Geometry3K, GeoQA), local (vldft's bundled held-out split). "
          "Other commands: `python -m vldft.eval download --help`, `python -m vldft.eval compare "
          "--help`.")


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog_name("vldft.eval", "vldft-eval"), epilog=EPILOG,
                                description="Evaluate a checkpoint with lmms-eval.")
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--tasks", default="", help="comma-separated lmms-eval task names")
    p.add_argument("--suite", action="append", default=[], choices=["geo", "paper", "local"],
                   help="named task list (repeatable)")
    p.add_argument("--data-dir", default=None,
                   help="local benchmark copies: DIR/<benchmark>/... (docs/evaluation.md); "
                        "tasks without one read the hub")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="a folder of your own lmms-eval task YAMLs (repeatable)")
    p.add_argument("--limit", type=float, default=None,
                   help="samples per task (testing only; a fraction if < 1)")
    p.add_argument("--batch-size", type=int, default=8, help="per process (default 8)")
    p.add_argument("--out", default=None,
                   help="run directory (default runs/eval/<checkpoint parent>_<name>-<tasks>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier evaluation in --out")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on every task's generation budget")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                   help="hf: vldft's model class (transformers generate); vllm: lmms-eval's vllm "
                        "class with the checkpoint's chat template and pixel limits (GPUs)")
    p.add_argument("--model-class", default=None,
                   help="any lmms-eval model class instead (qwen2_5_vl, llava_hf, ...)")
    p.add_argument("--model-args", default="", help="extra model_args, k=v,k=v")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0 (default: auto)")
    p.add_argument("--verbosity", default="WARNING",
                   help="lmms-eval's log level (DEBUG, INFO, WARNING, ERROR)")
    return p


def _download(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog=prog_name("vldft.eval", "vldft-eval") + " download",
        description="Save benchmarks' test splits from the Hugging Face hub as "
                    "DIR/<benchmark>/<split>.parquet (images embedded), for offline evaluation "
                    "with --data-dir DIR. Run it where the hub is reachable.")
    p.add_argument("--data-dir", required=True,
                   help="where DIR/<benchmark>/<split>.parquet files go")
    p.add_argument("--suite", action="append", default=[], choices=["geo", "paper"],
                   help="the benchmarks of a suite (repeatable)")
    p.add_argument("--tasks", default="", help="comma-separated task names (of --suite geo)")
    p.add_argument("--benchmarks", default="",
                   help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    p.add_argument("--source", action="append", default=[], metavar="BENCH=DATASET",
                   help="read a benchmark from another dataset id or a local datasets repository")
    p.add_argument("--force", action="store_true", help="download again over existing files")
    args = p.parse_args(argv)
    from vldft.eval.run import SUITES

    tasks = [t for t in args.tasks.split(",") if t]
    for suite in args.suite:
        tasks += SUITES[suite]
    unknown = [t for t in tasks if t not in BY_TASK]
    if unknown:
        p.error(f"not a benchmark task: {unknown}; benchmark tasks: {sorted(BY_TASK)}")
    names = [BY_TASK[t].name for t in tasks] + [b for b in args.benchmarks.split(",") if b]
    if not names:
        p.error("nothing to download: pass --suite, --tasks or --benchmarks")
    sources = dict(s.split("=", 1) for s in args.source)
    from vldft.eval.benchmarks import LocalDataError, download

    try:
        download(list(dict.fromkeys(names)), args.data_dir, sources, force=args.force)
    except LocalDataError as e:
        sys.exit(f"[vldft] error: {e}")
    except (ConnectionError, OSError) as e:  # datasets' hub errors are ConnectionError / OSError
        sys.exit(f"[vldft] error: {type(e).__name__}: {str(e).splitlines()[0]} (download needs "
                 f"the Hugging Face hub: run it where huggingface.co is reachable, or pass "
                 f"--source BENCH=LOCAL_DATASETS_REPO)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        p = argparse.ArgumentParser(
            prog=prog_name("vldft.eval", "vldft-eval") + " compare",
            description="Benchmarks as columns, one row per run, an average column and deltas "
                        "against the first run: comparison.md (printed), .csv and .png.")
        p.add_argument("runs", nargs="+", help="run directories; the first is the baseline")
        p.add_argument("--out", default=None,
                       help="where comparison.* go (default: the first run's parent dir)")
        args = p.parse_args(argv[1:])
        from vldft.eval.report import compare

        try:
            compare(args.runs, args.out)
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"[vldft] error: {e}")
        return
    if argv[:1] == ["download"]:
        _download(argv[1:])
        return
    args = _eval_parser().parse_args(argv)
    from vldft.eval.benchmarks import LocalDataError
    from vldft.eval.run import (
        EvalSetupError,
        check_model,
        default_out,
        evaluate,
        vllm_model_args,
    )

    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    model_class, model_args = args.model_class or "vldft", args.model_args
    if args.backend == "vllm":
        model_class = "vllm"
        model_args = ",".join(a for a in (vllm_model_args(args.model), model_args) if a)
    tasks = [t for t in args.tasks.split(",") if t]
    out = args.out or str(default_out(args.model, tasks, args.suite))
    try:
        check_model(args.model)
        written = evaluate(args.model, tasks, out, args.suite,
                           limit, args.batch_size, args.data_dir, args.max_new_tokens,
                           model_class, model_args, args.device, args.verbosity,
                           args.include_path, args.overwrite)
    except (EvalSetupError, LocalDataError) as e:
        sys.exit(f"[vldft] error: {e}")
    if written:
        print(written["summary"].read_text(), end="")
        print(f"[vldft] wrote {written['results']}, {written['summary']} and "
              f"{len(written['samples'])} per-sample log(s) in {out}")


if __name__ == "__main__":
    main()
