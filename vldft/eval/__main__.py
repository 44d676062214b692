"""CLI of the lmms-eval bridge (needs the ``eval`` extra; ``make eval-env`` / ``make test`` install
it, ``make demo`` does not).

    python -m vldft.eval --model runs/demo/final --tasks vldft_geo_heldout
    python -m vldft.eval --model CKPT --suite paper --data-dir /data/vl_bench     # offline
    torchrun --nproc_per_node 8 -m vldft.eval --model CKPT --suite geo --data-dir DIR
    python -m vldft.eval --model CKPT --suite paper --data-dir DIR --backend vllm  # GPUs
    python -m vldft.eval download --suite geo --data-dir DIR    # once, where the hub is reachable
    python -m vldft.eval compare runs/eval/base runs/eval/sft runs/eval/dft [--out DIR]
    python -m vldft.eval model-args CKPT --model-class qwen2_5_vl   # for lmms-eval's own CLI

Arguments are checked before lmms-eval (and torch) load, each problem in one line: no tasks, a
checkpoint folder that is not one, a hub id that is unknown or unreachable without a cached
copy, a missing --data-dir / --include-path, bad numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from vldft.config import hub_unreachable, is_hub_id
from vldft.data.benchmarks import BENCHMARKS, BY_TASK
from vldft.progress import prog_name

EPILOG = ("suites: geo (all eight benchmarks: " + ", ".join(BENCHMARKS) + "), paper (MathVerse, "
          "MathVision, WeMath, Geometry3K, GeoQA), local (vldft's bundled held-out split). "
          "Other commands: `python -m vldft.eval download --help`, `python -m vldft.eval compare "
          "--help`, `python -m vldft.eval model-args --help`.")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): what was wrong, and where --help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _eval_parser() -> argparse.ArgumentParser:
    p = Parser(prog=prog_name("vldft.eval", "vldft-eval"), epilog=EPILOG,
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
                   help="samples per task, a whole number (testing only), or a fraction of "
                        "the task if < 1 (one task, not a group, at a time)")
    p.add_argument("--batch-size", type=int, default=8, help="per process (default 8)")
    p.add_argument("--out", default=None,
                   help="run directory (default runs/eval/<checkpoint parent>_<name>-<tasks>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier evaluation in --out and generate "
                        "every response again (stored ones are not reused)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on every task's generation budget (vldft's model class only)")
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                   help="hf: vldft's model class (transformers generate); vllm: lmms-eval's vllm "
                        "class with the checkpoint's chat template and pixel limits (GPUs)")
    p.add_argument("--model-class", default=None,
                   help="an lmms-eval stock class instead, one vldft can hand the "
                        "checkpoint's image policy: qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5, "
                        "llava_hf (others are refused)")
    p.add_argument("--model-args", default="", help="extra model_args, k=v,k=v")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0 (default: auto)")
    p.add_argument("--verbosity", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   help="lmms-eval's log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return p


def _download(argv: list[str]) -> None:
    p = Parser(
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
    p.add_argument("--revision", action="append", default=[], metavar="BENCH=REV",
                   help="read a benchmark from this branch, tag or commit of its hub repository "
                        "(repeatable; default: main); recorded with the commit read, and a copy "
                        "of another revision is refused")
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
    pairs = {}
    for flag, values in (("--source", args.source), ("--revision", args.revision)):
        bad = [v for v in values if "=" not in v or not v.split("=", 1)[1]]
        if bad:
            p.error(f"{flag} {bad[0]!r}: expected BENCH=VALUE")
        pairs[flag] = dict(v.split("=", 1) for v in values)
    from vldft.data.benchmarks import LocalDataError, download

    missing = [f"{n}={pairs['--source'][n]}" for n in names if n in pairs["--source"]
               and not Path(pairs["--source"][n]).exists()
               and not is_hub_id(pairs["--source"][n])]
    if missing:  # neither a folder nor an owner/name dataset id
        sys.exit(f"[vldft] error: --source {missing[0]}: no such folder (and not a hub "
                 "dataset id owner/name)")
    # what would be read from the hub: not a local --source folder, and no copy kept
    hub = [n for n in names if n in BENCHMARKS
           and not (n in pairs["--source"] and Path(pairs["--source"][n]).is_dir())
           and (args.force or not (Path(args.data_dir) / n / f"{BENCHMARKS[n].split}.parquet"
                                   ).exists())]
    reason = hub_unreachable(timeout=1.5) if hub else None
    if reason is not None:  # (the datasets client retried for ~25 s before saying so)
        sys.exit(f"[vldft] error: {', '.join(hub)}: download needs the Hugging Face hub, which "
                 f"cannot be reached ({reason}); run it where huggingface.co is reachable, or "
                 "pass --source BENCH=LOCAL_DATASETS_REPO")
    try:
        download(list(dict.fromkeys(names)), args.data_dir, pairs["--source"], force=args.force,
                 revisions=pairs["--revision"])
    except LocalDataError as e:
        sys.exit(f"[vldft] error: {e}")
    except (ConnectionError, OSError) as e:  # datasets' hub errors are ConnectionError / OSError
        sys.exit(f"[vldft] error: {type(e).__name__}: {str(e).splitlines()[0]} (download needs "
                 f"the Hugging Face hub: run it where huggingface.co is reachable, or pass "
                 f"--source BENCH=LOCAL_DATASETS_REPO)")


def _model_args(argv: list[str]) -> None:
    """Print the --model_args that give a stock lmms-eval class the checkpoint's image policy
    (for `python -m lmms_eval --model CLASS` run by hand; vldft.eval passes them itself)."""
    p = Parser(prog=prog_name("vldft.eval", "vldft-eval") + " model-args",
               description="The --model_args a stock lmms-eval class needs to score CKPT with "
                           "training's image policy (pixel limits; the video frame cap; "
                           "device_map=cpu on a CPU), "
                           "for `python -m lmms_eval --model CLASS --model_args ...`.")
    p.add_argument("model", help="checkpoint directory (or a cached hub id)")
    p.add_argument("--model-class", required=True, help="the lmms-eval class, e.g. qwen2_5_vl")
    p.add_argument("--device", default=None, help="cpu adds device_map=cpu (default: cpu "
                   "when no CUDA device is present)")
    args = p.parse_args(argv)
    from vldft.eval.run import EvalSetupError, check_model, check_model_class, stock_model_args

    try:
        check_model(args.model)  # a missing folder, a run directory, a file: one line
        check_model_class(args.model, args.model_class)
        extra = stock_model_args(args.model, args.model_class, args.device,
                                 flag="lmms-eval's --model_args")
    except EvalSetupError as e:
        sys.exit(f"[vldft] error: {e}")
    print(",".join(a for a in (f"pretrained={args.model}", extra) if a))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        p = Parser(
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
    if argv[:1] == ["model-args"]:
        _model_args(argv[1:])
        return
    args = _eval_parser().parse_args(argv)
    from vldft.data.benchmarks import LocalDataError
    from vldft.eval.run import EvalSetupError, default_out

    try:
        tasks = check_arguments(args)
    except EvalSetupError as e:
        sys.exit(f"[vldft] error: {e}")
    from vldft.eval.run import evaluate, vllm_model_args  # lmms-eval loads inside evaluate

    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    model_class, model_args = args.model_class or "vldft", args.model_args
    if args.device and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():  # (a driver traceback from the model load)
            sys.exit(f"[vldft] error: --device {args.device}: this machine has no CUDA device; "
                     "use --device cpu, or leave --device out")
    out = args.out or str(default_out(args.model, tasks, args.suite,
                                      "vllm" if args.backend == "vllm" else model_class))
    try:
        if args.backend == "vllm":
            model_class = "vllm"
            model_args = ",".join(a for a in (vllm_model_args(args.model), model_args) if a)
        written = evaluate(args.model, tasks, out, args.suite,
                           limit, args.batch_size, args.data_dir, args.max_new_tokens,
                           model_class, model_args, args.device, args.verbosity,
                           args.include_path, args.overwrite)
    except (EvalSetupError, LocalDataError) as e:
        sys.exit(f"[vldft] error: {e}")
    if written.get("done"):
        print(written["summary"].read_text(), end="")
        print(f"[vldft] already done: {written['results']} holds this evaluation (same "
              "checkpoint files, tasks, settings and data files); --overwrite to run it again")
    elif written:
        print(written["summary"].read_text(), end="")
        print(f"[vldft] wrote {written['results']}, {written['summary']} and "
              f"{len(written['samples'])} per-sample log(s) in {out}")


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The task names given; every check that needs neither lmms-eval nor torch, in one line
    each (``EvalSetupError``). Unknown task names are lmms-eval's to find (it knows them)."""
    from vldft.eval.run import EvalSetupError, check_model, check_model_class

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks and not args.suite:
        raise EvalSetupError("no tasks: pass --tasks NAME[,NAME...] and/or --suite "
                             "geo|paper|local")
    for flag, value, low in (("--limit", args.limit, 0), ("--batch-size", args.batch_size, 1),
                             ("--max-new-tokens", args.max_new_tokens, 1)):
        if value is not None and not (value > low if flag == "--limit" else value >= low):
            raise EvalSetupError(f"{flag} {value}: must be {'> 0' if low == 0 else '>= 1'}")
    if args.limit is not None and args.limit > 1 and args.limit != int(args.limit):
        raise EvalSetupError(f"--limit {args.limit:g}: a count of samples per task (a whole "
                             "number), or a fraction of each task below 1")
    for flag, folders in (("--data-dir", [args.data_dir] if args.data_dir else []),
                          ("--include-path", args.include_path)):
        for folder in folders:
            if not Path(folder).is_dir():
                raise EvalSetupError(f"{flag} {folder}: not a directory")
    bad = [a for a in args.model_args.split(",") if a.strip() and "=" not in a]
    if bad:
        raise EvalSetupError(f"--model-args {args.model_args!r}: {bad[0]!r} is not KEY=VALUE "
                             "(expected KEY=VALUE[,KEY=VALUE...])")
    check_model(args.model)  # a local path: exists, and is a checkpoint
    check_hub_model(args.model)
    if args.model_class:
        check_model_class(args.model, args.model_class)
    if args.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise EvalSetupError("--backend vllm: the vllm package is not installed (pip install "
                                 "vllm, on a machine with a CUDA GPU); leave --backend out to "
                                 "generate with transformers")
    return tasks


def check_hub_model(model: str) -> None:
    """A hub id (``org/name``, no such local path) must be loadable: when the hub cannot be
    reached, from the local Hugging Face cache; when it can, it must exist there. Either
    failure is one line (``EvalSetupError``) instead of transformers' traceback."""
    from vldft.eval.run import EvalSetupError

    if Path(model).exists() or not is_hub_id(model):
        return
    reason = hub_unreachable(timeout=1.5)
    if reason is not None:
        import huggingface_hub.constants as hub

        snapshots = Path(hub.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "snapshots"
        if any(snapshots.glob("*/config.json")):
            return  # transformers reads the cached copy
        raise EvalSetupError(
            f"--model {model}: no such local folder, and the hub cannot be reached ({reason}) "
            f"with no cached copy in {hub.HF_HUB_CACHE}; pass a checkpoint folder, or download "
            f"it where the hub is reachable (hf download {model} --local-dir DIR) "
            "and pass --model DIR")
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(model, timeout=10)
    except GatedRepoError:
        raise EvalSetupError(f"--model {model}: a gated model; accept its terms on "
                             f"https://huggingface.co/{model} and log in (hf auth "
                             "login)") from None
    except RepositoryNotFoundError:
        raise EvalSetupError(f"--model {model}: no such model on the hub (or a private one: "
                             "log in with hf auth login), and no such local "
                             "folder") from None
    except Exception:  # noqa: BLE001 - anything else (a slow hub): loading will say it
        return


if __name__ == "__main__":
    main()
