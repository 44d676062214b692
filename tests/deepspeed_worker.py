"""Worker for test_deepspeed.py: vldft.train.main under DeepSpeed ZeRO-2, ZeRO-3, then ZeRO-3
from a DeepSpeed JSON of the user's, in one 2-process launch (``accelerate launch
--config_file configs/accelerate/zero2.yaml --num_processes 2 --mixed_precision no
tests/deepspeed_worker.py OUT``; on a CPU machine that is DeepSpeed's CPU accelerator with
gloo). Starting processes is most of the cost, so the stages share it: before each, the
accelerate state is reset and the environment is set to what ``accelerate launch`` derives from
that stage's accelerate config (its own code does it).

Every stage trains ``OUT/assets``: a tiny Qwen2.5-VL checkpoint whose embedding is not tied to
its output layer, on rows with an image and text-only rows, so some micro-batch has an image on
one rank and only text on the other (each rank's micro-batch modalities per step are printed).
Per stage, in ``OUT/<name>``: 3 optimizer steps of 2 micro-batches per rank (the accumulation
path), a checkpoint at step 2, ``final/``. For the shipped configs, ``final/`` is then moved to
``uninterrupted/`` and the same config is run again, resuming from checkpoint-2
(``train.resume: auto``), which writes ``final/`` anew; under ZeRO-3, last: a config with
held-out scoring during training must be refused by ``build_accelerator``. ``zero3_json``
(``OUT/assets/zero3_json.yaml``, its DeepSpeed JSON beside it) keeps no parameter whole
(``stage3_param_persistence_threshold: 0``: every module's weights are gathered in its forward
and backward) and states a ``train_batch_size`` of its own. ``zero3_asft``: the shipped ZeRO-3
config with ASFT and LoRA on the language model and projector (``ASFT``; its KL anchor is a
second pass of the same sharded model with the adapters off). Rank 0 prints one JSON line per
stage: the engine that ran, the checkpoint resumed from, the refusal, the modalities."""

import json
import os
import shutil
import sys
from pathlib import Path

import torch.distributed as dist
from accelerate.state import AcceleratorState, GradientState

import vldft.step
from vldft.config import ConfigError, load_config
from vldft.step import build_accelerator
from vldft.train import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from engines_gpu import launcher_env  # noqa: E402  (what accelerate launch would set)

STEPS = 3


def accelerate_config(name: str, root: Path) -> Path:
    """A shipped accelerate config (configs/accelerate/<name>.yaml), or one of the test's."""
    shipped = ROOT / f"configs/accelerate/{name}.yaml"
    return shipped if shipped.exists() else root / "assets" / f"{name}.yaml"


def overrides(out: Path) -> list[str]:
    """The stage's run in ``out``; model and data from ``out.parent / "assets"``."""
    assets = out.parent / "assets"
    return ["model.tiny=false", f"model.name_or_path={assets / 'untied'}",
            f"data.train_files=[{assets / 'mixed.jsonl'}]",
            "data.heldout_file=null", f"train.max_steps={STEPS}", "loss.sft_warmup_steps=1",
            "train.micro_batch_size=2", "train.grad_accum=2", "train.log_every=1",
            "train.save_every=2", "train.eval_max_samples=0", "train.mixed_precision=no",
            "train.max_grad_norm=2.0",  # not accelerate's DeepSpeed default of 1.0
            f"train.output_dir={out}"]


# the run's objective per stage (the shipped configs resume from checkpoint-2 as well)
ASFT = ["loss.name=asft", "model.lora={r: 4, dropout: 0.0, parts: [language, projector]}"]
STAGES = {"zero2": ("zero2", []), "zero3": ("zero3", []), "zero3_json": ("zero3_json", []),
          "zero3_asft": ("zero3", ASFT)}

MODALITIES: list[list[str]] = []  # this rank's micro-batches per step: "image" / "text"


def observe_modalities() -> None:
    """Record each step's micro-batch modalities on the way into vldft's own
    accumulate_gradients (vldft.train binds it from vldft.step at its first run)."""
    real = vldft.step.accumulate_gradients

    def observed(module, micro_batches, *args, **kwargs):
        MODALITIES.append(["image" if "pixel_values" in b else "text" for b in micro_batches])
        return real(module, micro_batches, *args, **kwargs)

    vldft.step.accumulate_gradients = observed


def run_stage(name: str, out: Path) -> None:
    config, objective = STAGES[name]
    for key in [k for k in os.environ if k.startswith("ACCELERATE_DEEPSPEED")]:
        del os.environ[key]  # an earlier stage's (e.g. zero3_json's config file)
    path = accelerate_config(config, out.parent)  # precision: --mixed_precision no, unless a
    no = None if "deepspeed_config_file" in path.read_text() else "no"  # JSON states it
    os.environ.update({k: v for k, v in launcher_env(path, no, num_processes=2).items()
                       if k.startswith("ACCELERATE_")})
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    cfg = load_config(ROOT / "tests/tiny_demo.yaml", [*overrides(out), *objective])
    MODALITIES.clear()
    main(cfg)
    state = AcceleratorState()
    ds = state.deepspeed_plugin.deepspeed_config
    engine = {"stage": name, "distributed_type": state.distributed_type.value,
              "zero_stage": state.deepspeed_plugin.zero_stage,
              "num_processes": state.num_processes, "device": state.device.type,
              "backend": dist.get_backend(), "mixed_precision": state.mixed_precision,
              "persistence_threshold": ds.get("zero_optimization", {}).get(
                  "stage3_param_persistence_threshold"),
              "train_batch_size": ds.get("train_batch_size")}
    modalities = [None, None]
    dist.all_gather_object(modalities, list(MODALITIES))
    engine["modalities"] = modalities
    if name == config:  # a shipped config: the same run interrupted after checkpoint-2, resumed
        if state.is_main_process:
            shutil.move(out / "final", out / "uninterrupted")
            (out / "summary.json").unlink()
        dist.barrier()
        resumed = main(cfg)
        engine["resumed_from"] = resumed.get("resumed_from")
    if name == "zero3":  # held-out scoring during training: refused before any model loads
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        try:
            build_accelerator(load_config(ROOT / "tests/tiny_demo.yaml", [
                *overrides(out), "data.heldout_file=data/geo_demo/heldout.jsonl",
                "train.eval_max_samples=4"]))
            engine["heldout_refused"] = None
        except ConfigError as e:
            engine["heldout_refused"] = str(e)
    if state.is_main_process:
        print(json.dumps(engine), flush=True)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    observe_modalities()
    for stage in sys.argv[2:] or STAGES:
        run_stage(stage, root / stage)
    # end the process group before the interpreter does (left to exit, a gloo thread was once
    # still running: "terminate called without an active exception", exit code -6)
    dist.barrier()
    dist.destroy_process_group()
