"""The four engines against each other on ONE GPU: plain, FSDP2, DeepSpeed ZeRO-2, ZeRO-3, each
running vldft's real training loop (``vldft.train.main``) on the same seed and data, world size 1
(NCCL; two ranks cannot share one GPU under NCCL), for the tiny Qwen2.5-VL and for the
Qwen2.5-VL-3B architecture with random weights (nothing downloaded).

    python bench/engines_gpu.py --out DIR          # on the GPU machine (bench/gpu.sh, phase 2)
    python bench/engines_gpu.py --cpu-dry-run --out DIR   # tiny model, CPU, gloo (~30 s)
    python bench/engines_gpu.py [--models tiny,3b] [--engines plain,fsdp,zero2,zero3]
                                [--steps 3] [--work DIR]

Each engine's environment is what ``accelerate launch --config_file configs/accelerate/<x>.yaml
--num_processes 1`` sets (accelerate's own launcher code computes it), with the launcher's
``LOCAL_RANK=0 RANK=0 WORLD_SIZE=1``; ``plain`` has none of it (accelerate's single-process
loop). Between engines the accelerate state is reset; the process group stays.

Per model, run dirs under ``--work`` (default: /dev/shm when it has room, else the temporary
folder; only the JSON goes to ``--out``):

- ``tiny`` (tests/tiny_demo.yaml): fp32 weights, bf16 autocast on the GPU (``train.
  mixed_precision=bf16``; the dry run: fp32), 3 optimizer steps of 2 micro-batches of 2, a
  checkpoint at step 2, then the run resumed from it (``final/`` moved aside first): resumed
  final weights against the uninterrupted ones; the export loaded with
  ``AutoModelForImageTextToText.from_pretrained``.
- ``3b``: Qwen2.5-VL-3B's architecture (bench/qwen.py's numbers; 151,936-row vocabulary, the
  tiny model's tokenizer and special ids, so the demo data feeds it) in bf16 weights without
  autocast (``model.dtype=bfloat16 train.mixed_precision=no``: the "bf16_bench" set-up of
  bench/recipe_gpu.py; fp32 master weights under DeepSpeed's bf16 mode would need ~20 bytes a
  parameter, 75 GB, on one H100), lr 1e-4, the same 3 steps, no intermediate checkpoint (a
  3B ``state/`` is ~30 GB); each engine's 7.5 GB ``final/`` is deleted once compared. The dry
  run builds bench/qwen.py's small config instead.

Compared with ``plain`` of the same model: the loss, target tokens and gradient norm of every
step, and the exported weights, each export loaded with
``AutoModelForImageTextToText.from_pretrained`` on the CPU (largest difference; dtype;
``update_error``: the norm of the difference over the norm of plain's own update from the
initial weights). Tolerances (``ok``): fp32 (dry run) loss 1e-5 relative, gradient norm 5e-4,
update error 1e-3; bf16 loss 2e-2, gradient norm 5e-2, update error 0.2 (DeepSpeed's bf16 mode
exports its bf16 weights, plain its fp32 master weights: the rounding counts in). Every engine's
error (out of memory included) is recorded and the next one runs; the JSON is rewritten after
each run, so a run cut short keeps what it measured. Also per run: ``fsdp_units`` (modules of
the Hugging Face model that FSDP2's ``fully_shard`` made units of their own; 0: only vldft's
root module is one), ``zero3_params`` (parameters ZeRO-3 partitioned), peak GPU memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    free,
    free_port,
    peak_mem_gib,
    reset_peak,
    run_header,
    save_result,
)
from qwen import qwen25vl_3b_config, qwen25vl_small_config  # noqa: E402

ENGINES = ("plain", "fsdp", "zero2", "zero3")
MODELS = ("tiny", "3b")
TINY_CONFIG = ROOT / "tests/tiny_demo.yaml"
DIST_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
            "MASTER_PORT")
TOL = {"fp32": {"loss": 1e-5, "grad_norm": 5e-4, "update_error": 1e-3},
       "bf16": {"loss": 2e-2, "grad_norm": 5e-2, "update_error": 0.2}}


# ----------------------------------------------------------------------------- engines
def launcher_env(config: str | Path, mixed_precision: str | None,
                 num_processes: int = 1) -> dict[str, str]:
    """The ACCELERATE_* / FSDP_* variables ``accelerate launch --config_file CONFIG
    --num_processes N --mixed_precision MP`` sets (CONFIG: a path, or an engine name for
    configs/accelerate/<name>.yaml; MP None: no flag, e.g. for a config whose precision a
    DeepSpeed JSON states). tests/deepspeed_worker.py uses it too."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = Path(config) if Path(config).suffix else ROOT / f"configs/accelerate/{config}.yaml"
    precision = ["--mixed_precision", mixed_precision] if mixed_precision else []
    args = launch_command_parser().parse_args(
        ["--config_file", str(path), "--num_processes", str(num_processes), *precision,
         "--main_process_port", "0", "-m", "vldft.train"])
    args, defaults, from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before its launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def enter_engine(engine: str, mixed_precision: str, port: int) -> None:
    """Set the environment of ``engine`` and reset accelerate's (and transformers' DeepSpeed)
    global state, so the next ``vldft.train.main`` builds its accelerator afresh."""
    from accelerate.state import AcceleratorState, GradientState
    from transformers.integrations import unset_hf_deepspeed_config

    for k in list(os.environ):
        if k.startswith(("ACCELERATE_", "FSDP_")) or k in DIST_ENV:
            os.environ.pop(k)
    if engine != "plain":
        os.environ.update(launcher_env(engine, mixed_precision))
        os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    unset_hf_deepspeed_config()  # a ZeRO-3 config left registered would partition the next model


# ----------------------------------------------------------------------------- models
class Models:
    """What ``vldft.train.main`` loads (it calls ``vldft.train.load_adapter``): the tiny model,
    or the 3B architecture with the tiny model's processor; keeps each model's initial
    weights (CPU copy) from its first build."""

    def __init__(self, dry_run: bool, device: str) -> None:
        import vldft.train

        vldft.train._import_recipe()  # bind its names first, then replace load_adapter
        self.original = vldft.train.load_adapter
        self.dry_run, self.device, self.name = dry_run, device, "tiny"
        self.init: dict[str, dict[str, torch.Tensor]] = {}
        self.last = None
        vldft.train.load_adapter = self.load

    def load(self, mcfg):
        tiny = self.original(mcfg)
        adapter = tiny if self.name == "tiny" else self.big(tiny, mcfg)
        self.last = adapter  # read after the run (sharding facts), then dropped
        if self.name not in self.init:
            self.init[self.name] = {k: v.detach().to("cpu", copy=True)
                                    for k, v in adapter.model.state_dict().items()}
        return adapter

    def big(self, tiny, mcfg):
        """Qwen2.5-VL-3B's architecture (dry run: the small one) with the tiny model's special
        token ids, random weights in ``model.dtype``, built on the device."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        from vldft.adapters import Qwen2_5_VLAdapter

        arch = (qwen25vl_small_config() if self.dry_run else qwen25vl_3b_config()).to_dict()
        ids = tiny.model.config
        keys = ("image_token_id", "video_token_id", "vision_start_token_id",
                "vision_end_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
        arch.update({k: getattr(ids, k) for k in keys})
        arch["text_config"].update(eos_token_id=ids.eos_token_id, pad_token_id=ids.pad_token_id,
                                   bos_token_id=ids.bos_token_id)
        config = Qwen2_5_VLConfig.from_dict(arch)
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[mcfg.dtype]
        with torch.device(self.device):
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                config, dtype=dtype, attn_implementation="sdpa")
        return Qwen2_5_VLAdapter(model, tiny.processor, mcfg.min_pixels, mcfg.max_pixels)


def overrides(model: str, out: Path, steps: int, gpu: bool) -> list[str]:
    common = ["data.heldout_file=null", "train.eval_max_samples=0", f"train.max_steps={steps}",
              "loss.sft_warmup_steps=1", "train.micro_batch_size=2", "train.grad_accum=2",
              "train.log_every=1", f"train.output_dir={out}", "train.overwrite=true"]
    if model == "tiny":
        return [*common, "train.save_every=2",
                f"train.mixed_precision={'bf16' if gpu else 'no'}"]
    return [*common, "train.save_every=0", "train.lr=1e-4",
            f"model.dtype={'bfloat16' if gpu else 'float32'}", "train.mixed_precision=no"]


# ----------------------------------------------------------------------------- one run
def records(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def weights(path: Path, device: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f, device=device))
    return out


def hf_load(path: Path, device: str) -> dict[str, torch.Tensor]:
    """The export as plain transformers loads it: its parameters by name."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto", device_map=device)
    return {k: v.detach() for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def run_engine(models: Models, model: str, engine: str, args, work: Path, device: str) -> dict:
    from accelerate.state import AcceleratorState

    import vldft.train
    from vldft.config import load_config

    gpu = device == "cuda"
    mp = "bf16" if gpu and model == "tiny" else "no"
    enter_engine(engine, mp, args.port)
    models.name = model
    out = work / model / engine
    cfg = load_config(TINY_CONFIG, overrides(model, out, args.steps, gpu))
    reset_peak(device)
    t0 = time.perf_counter()
    vldft.train.main(cfg)
    row: dict = {"model": model, "engine": engine, "train_s": round(time.perf_counter() - t0, 2),
                 "peak_mem_gib": peak_mem_gib(device)}
    state = AcceleratorState()  # read before release() resets it
    plugin = state.deepspeed_plugin
    row.update(distributed_type=state.distributed_type.value, num_processes=state.num_processes,
               device=state.device.type, mixed_precision=state.mixed_precision,
               zero_stage=plugin.zero_stage if plugin is not None else None,
               backend=(torch.distributed.get_backend() if torch.distributed.is_initialized()
                        and engine != "plain" else None),
               steps=[{k: r[k] for k in ("step", "loss", "ce", "grad_norm", "target_tokens",
                                         "lr")} for r in records(out)])
    model_ = models.last.model  # how the engine holds the weights: FSDP2 units (fully_shard
    # swaps a module's class in place), ZeRO-3 partitioned parameters (``ds_id``)
    row["fsdp_units"] = sum(type(m).__name__.startswith("FSDP") for m in model_.modules())
    row["zero3_params"] = sum(hasattr(p, "ds_id") for p in model_.parameters())
    row["params"] = sum(1 for _ in model_.parameters())
    models.last = model_ = None
    release(device)  # the trained model and optimizer: gone before the exports load
    if model == "tiny":  # the same run stopped after checkpoint-2, resumed
        shutil.move(out / "final", out / "uninterrupted")
        (out / "summary.json").unlink()
        t1 = time.perf_counter()
        summary = vldft.train.main(cfg)
        row["resume_s"] = round(time.perf_counter() - t1, 2)
        row["resumed_from"] = summary.get("resumed_from")
        a, b = weights(out / "final", "cpu"), weights(out / "uninterrupted", "cpu")
        row["resume_max_diff"] = max_diff(a, b)
        row["resume_bitwise"] = a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
        models.last = None
        release(device)
    return row


def release(device: str) -> None:
    """Drop accelerate's references to the last run's model and optimizer, free the memory."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    gc.collect()
    free(device)


def update_norm(ref: dict, init: dict, device: str) -> float | None:
    """The norm of plain's update: its exported weights minus the initial ones (both on the
    CPU; brought to ``device`` one tensor at a time). None if their names differ."""
    if init.keys() != ref.keys():
        return None
    return sum(float((ref[k].to(device).float() - init[k].to(device).float()).pow(2).sum())
               for k in ref) ** 0.5


def compare(row: dict, plain: dict, ref: dict, work: Path, device: str, dry_run: bool) -> None:
    """``row`` against ``plain`` (same model; ``ref``: plain's export as transformers loads
    it, on the CPU): steps and exported weights, with ``ok``. The export is loaded onto
    ``device`` (the run's model is gone by now), ``ref`` brought there a tensor at a time."""
    model, engine = row["model"], row["engine"]
    tol = TOL["fp32" if dry_run else "bf16"]
    loss = max(abs(a["loss"] - b["loss"]) / abs(a["loss"])
               for a, b in zip(plain["steps"], row["steps"], strict=True))
    norm = max(abs(a["grad_norm"] - b["grad_norm"]) / abs(a["grad_norm"])
               for a, b in zip(plain["steps"], row["steps"], strict=True))
    tokens = [s["target_tokens"] for s in row["steps"]] == [s["target_tokens"]
                                                             for s in plain["steps"]]
    got = hf_load(work / model / engine / "final", device)  # plain transformers reads it
    same_keys = got.keys() == ref.keys()
    row["loss_rel_diff"], row["grad_norm_rel_diff"] = loss, norm
    row["target_tokens_equal"], row["same_keys"] = tokens, same_keys
    row["export_dtype"] = sorted({str(v.dtype).removeprefix("torch.") for v in got.values()})
    if same_keys:
        worst = off = 0.0
        for k in ref:
            d = got[k].float() - ref[k].to(device).float()
            worst, off = max(worst, float(d.abs().max())), off + float(d.pow(2).sum())
        row["weights_max_abs_diff"] = worst
        moved = plain.get("update_norm")
        if moved:
            row["plain_update_norm"], row["update_error"] = moved, off ** 0.5 / moved
    del got
    free(device)
    row["ok"] = bool(tokens and same_keys and loss <= tol["loss"] and norm <= tol["grad_norm"]
                     and row.get("update_error", float("inf")) <= tol["update_error"]
                     and row.get("resume_bitwise", True))
    row["tolerances"] = tol


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None,
                   help="folder of engines_gpu.json (default: $OUT, else runs/bench/gpu)")
    p.add_argument("--work", default=None, help="run dirs (default: /dev/shm or a temp dir)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="the tiny model (and the small 3B stand-in) on the CPU, gloo; FSDP is "
                        "left out (accelerate builds it only on GPUs)")
    args = p.parse_args(argv)
    from common import gpu_out

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu-dry-run")
    device = "cpu" if dry else "cuda"
    out_dir = Path(args.out or gpu_out())
    out_dir.mkdir(parents=True, exist_ok=True)
    shm = Path("/dev/shm")
    if args.work:
        work = Path(args.work)
    elif not dry and shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30:
        work = Path(tempfile.mkdtemp(prefix="engines_gpu_", dir=shm))
    else:
        work = Path(tempfile.mkdtemp(prefix="engines_gpu_"))
    engines = [e for e in args.engines.split(",") if e]
    if dry and "fsdp" in engines:
        engines.remove("fsdp")
    args.port = free_port()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    result = {**run_header("engines_gpu.py", argv, device,
                           cpu_label="cpu (dry run)", dry_run=dry, args=vars(args)),
              "work": str(work), "rows": []}
    try:
        import deepspeed
        result["machine"]["deepspeed"] = deepspeed.__version__
    except ImportError as e:
        result["machine"]["deepspeed"] = f"not importable: {e}"
    path = out_dir / "engines_gpu.json"
    models = Models(dry, device)
    for model in [m for m in args.models.split(",") if m]:
        plain = ref = None
        for engine in ["plain", *[e for e in engines if e != "plain"]]:
            print(f"== {model} / {engine}", flush=True)
            try:
                row = run_engine(models, model, engine, args, work, device)
                if engine == "plain":
                    plain, ref = row, hf_load(work / model / "plain/final", "cpu")
                    row["update_norm"] = update_norm(ref, models.init[model], device)
                    row["export_dtype"] = sorted({str(v.dtype).removeprefix("torch.")
                                                  for v in ref.values()})
                elif plain is not None:
                    compare(row, plain, ref, work, device, dry)
            except Exception as e:  # out of memory included: recorded, the next engine runs
                row = {"model": model, "engine": engine, "ok": False,
                       "error": f"{type(e).__name__}: {str(e)[:500]}",
                       "traceback": traceback.format_exc()[-3000:]}
            result["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("steps", "traceback")}),
                  flush=True)
            save_result(path, result, t0)
            if model == "3b" and engine != "plain":  # a 3B export is 7.5 GB: not kept
                shutil.rmtree(work / model / engine, ignore_errors=True)
            gc.collect()
            free(device)
        models.init.pop(model, None)
        del ref
        if model == "3b":
            shutil.rmtree(work / model, ignore_errors=True)
    if not args.work:  # a folder of this run's own (on /dev/shm: memory)
        shutil.rmtree(work, ignore_errors=True)
    result["all_ok"] = all(r.get("ok", r["engine"] == "plain" and "error" not in r)
                           for r in result["rows"])
    save_result(path, result, t0)
    print(f"engines_gpu: all ok: {result['all_ok']}; {path}", flush=True)
    return result


if __name__ == "__main__":
    main()
