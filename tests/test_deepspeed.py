"""DeepSpeed ZeRO-2 and ZeRO-3 through vldft.train on the CPU: 2 processes (DeepSpeed's CPU
accelerator, gloo), launched with ``accelerate launch --config_file configs/accelerate/zero2.yaml``
(tests/deepspeed_worker.py runs the stages in that one launch): the shipped ZeRO-2 and ZeRO-3
configs, and ZeRO-3 from a DeepSpeed JSON that keeps no parameter whole. They train a tiny
Qwen2.5-VL with untied input / output embeddings on image rows and text-only rows, so that in
some step one rank's micro-batch has an image while the other's is text-only (checked). Each
stage's run equals the single-process run on the same global batch (losses, target counts,
gradient norms, weights), the shipped stages' checkpoints resume to bitwise the same final
weights, and their Hugging Face exports load with plain transformers and hold exactly the
weights DeepSpeed's own checkpoint holds. Skipped only where deepspeed is not installed
(``make test`` installs it)."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_CONFIG, free_port, tiny_demo_rows

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed (make test installs it; by hand: DS_BUILD_OPS=0 pip "
           "install --no-build-isolation deepspeed==0.19.8, after torch)")

STAGES = ["zero2", "zero3", "zero3_json", "zero3_asft"]
# allowed after step 1, about 5x the measured (see test_deepspeed_run_equals_...): relative
# loss / mean_p / gradient norm difference, weights' difference / update (norms), largest
# weight difference
TOLERANCE = {"zero2": (5e-5, 1e-4, 3e-4), "zero3": (3e-4, 1e-3, 2e-3),
             "zero3_json": (3e-4, 1e-3, 2e-3), "zero3_asft": (1e-5, 1e-4, 1e-5)}
SHIPPED = ["zero2", "zero3"]  # the shipped accelerate configs: resumed and exported too
# zero3_json's DeepSpeed JSON: every parameter sharded and gathered per module (the default
# keeps tensors under 100,000 elements whole on every rank: all of the tiny model's), and a
# train_batch_size for some other accumulation, which vldft's loop settings replace
DS_JSON = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                 "stage3_gather_16bit_weights_on_model_save": True},
           "train_batch_size": 64, "train_micro_batch_size_per_gpu": "auto",
           "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
LAUNCH_TIMEOUT = 600  # a collective that hangs fails the test instead of hanging it


def clean_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in list(env):
        if k.startswith("ACCELERATE_") or k in ("WORLD_SIZE", "RANK", "LOCAL_RANK",
                                                 "MASTER_ADDR", "MASTER_PORT"):
            env.pop(k)
    return env


def records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def hf_weights(path: Path) -> dict:
    """A saved checkpoint loaded with plain transformers: its parameters by name."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path).state_dict()


def engines_cmd(tmp_path: Path, *extra: str) -> list[str]:
    """bench/engines_gpu.py's CPU dry run (world size 1, gloo), its run dirs under tmp_path."""
    return [sys.executable, str(ROOT / "bench/engines_gpu.py"), "--cpu-dry-run", "--out",
            str(tmp_path), "--work", str(tmp_path / "work"), *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` started with its output going to ``log`` (a file: a pipe nobody reads yet would
    stall it), in a process group of its own (``finish`` ends launcher and workers together)."""
    with log.open("w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path) -> str:
    """The output of a started process; it must end in time and succeed."""
    try:
        proc.wait(timeout=LAUNCH_TIMEOUT)
    finally:
        if proc.poll() is None:  # hung (a collective that never completes): its whole group
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 0, out[-6000:]
    return out


def write_assets(assets: Path) -> None:
    """What every stage trains: the shipped tiny prior with its output layer untied from the
    input embedding (Qwen2.5-VL-7B's layout; a tied one is gathered once with the output
    layer), 16 image rows and 16 text-only rows of the demo data (image paths absolute),
    and zero3_json's accelerate config with its DeepSpeed JSON."""
    import torch
    from transformers import AutoModelForImageTextToText

    prior = ROOT / "priors/tiny-qwen25vl-geo"
    model = AutoModelForImageTextToText.from_pretrained(prior)
    model.config.tie_word_embeddings = model.config.text_config.tie_word_embeddings = False
    g = torch.Generator().manual_seed(0)
    head = model.lm_head.weight.detach()
    model.lm_head.weight = torch.nn.Parameter(head + 0.01 * torch.randn(head.shape, generator=g))
    model.save_pretrained(assets / "untied")
    for f in prior.iterdir():  # the processor's files
        if f.name.startswith(("tokenizer", "processor", "chat_template")):
            shutil.copy(f, assets / "untied" / f.name)
    rows = []
    for i, row in enumerate(tiny_demo_rows(32)):
        if i % 2:  # the same question and answer, without its image
            row["id"], row["images"] = row["id"] + "-text", []
            row["messages"] = [{**m, "content": [c for c in m["content"] if c["type"] == "text"]}
                               for m in row["messages"]]
        rows.append(row)
    (assets / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (assets / "ds_zero3.json").write_text(json.dumps(DS_JSON))
    shipped = yaml.safe_load((ROOT / "configs/accelerate/zero3.yaml").read_text())
    shipped.pop("mixed_precision")  # the JSON's to say (accelerate refuses both)
    shipped["deepspeed_config"] = {"deepspeed_config_file": str(assets / "ds_zero3.json"),
                                   "zero3_init_flag": False}
    (assets / "zero3_json.yaml").write_text(yaml.safe_dump(shipped))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process DeepSpeed launch, bench/engines_gpu.py's dry run (plain and ZeRO-3 on the
    tiny model) and, meanwhile, the single-process reference: started together, since most of
    each is starting processes and importing."""
    from deepspeed_worker import ASFT, overrides

    from vldft.config import load_config
    from vldft.train import main

    root = tmp_path_factory.mktemp("deepspeed")
    (root / "assets").mkdir()
    write_assets(root / "assets")
    launch = start([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / "configs/accelerate/zero2.yaml"), "--num_processes", "2",
                    "--mixed_precision", "no", "--main_process_port", str(free_port()),
                    str(ROOT / "tests/deepspeed_worker.py"), str(root)], root / "launch.log")
    engines_dir = root / "engines"
    dry = start(engines_cmd(engines_dir, "--models", "tiny", "--engines", "plain,zero3"),
                root / "engines.log")
    try:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:  # the same global batch in one process: 4 micro-batches of 2 per step
            main(load_config(TINY_CONFIG, [*overrides(root / "single"), "train.grad_accum=4"]))
            main(load_config(TINY_CONFIG, [*overrides(root / "single_asft"), *ASFT,
                                           "train.grad_accum=4"]))
        finally:
            torch.set_num_threads(threads)
    finally:
        out = finish(launch, root / "launch.log")
        finish(dry, root / "engines.log")
    engines = {e["stage"]: e for e in map(json.loads, (line for line in out.splitlines()
                                                          if line.startswith('{"stage"')))}
    return root, engines, json.loads((engines_dir / "engines_gpu.json").read_text())


def test_deepspeed_really_ran_every_stage_on_two_cpu_processes(runs):
    root, engines, _ = runs
    assert sorted(engines) == sorted(STAGES)
    for name, stage in (("zero2", 2), ("zero3", 3), ("zero3_json", 3), ("zero3_asft", 3)):
        e = engines[name]
        assert (e["distributed_type"], e["zero_stage"], e["num_processes"], e["device"],
                e["backend"]) == ("DEEPSPEED", stage, 2, "cpu", "gloo"), e
        # a step in which one rank's micro-batch had the image and the other's only text
        steps = list(zip(*e["modalities"], strict=True))
        assert len(steps) == 3 and all(len(r) == 2 for step in steps for r in step), steps
        assert any(a != b for r0, r1 in steps for a, b in zip(r0, r1, strict=True)), steps
        if name == "zero3_json":  # the JSON's settings ran, its train_batch_size replaced
            assert (e["persistence_threshold"], e["train_batch_size"]) == (0, 2 * 2), e
        if name not in SHIPPED:
            continue
        assert e["resumed_from"] == str(root / name / "checkpoint-2")
        files = {p.name for p in (root / name / "checkpoint-2/state/pytorch_model").iterdir()}
        # the optimizer state is split over the two ranks; under ZeRO-3 the weights too
        assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= files
        if stage == 3:
            assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)} <= files
            # where the held-out scoring would meet a shard of lm_head.weight: refused first
            assert "not supported under DeepSpeed ZeRO-3" in e["heldout_refused"]
        else:
            assert "mp_rank_00_model_states.pt" in files


@pytest.mark.parametrize("name", STAGES)
def test_deepspeed_run_equals_the_single_process_run(runs, name):
    root, _, _ = runs
    single = root / ("single_asft" if name == "zero3_asft" else "single")
    one, ds = records(single), records(root / name)
    assert [r["step"] for r in ds] == [r["step"] for r in one] == [1, 2, 3]
    # step 1 (the gradients before any update): the same to fp32 rounding. Later steps follow
    # updates in which Adam's first steps (g / (|g| + eps)) enlarge the rounding of near-zero
    # gradient sums (summed in another order over ranks) into weight differences. Measured on
    # these data: DDP (torchrun, 2 processes) 1.5e-6 / 7.5e-6 of the loss at steps 2 / 3 and
    # 2.2e-5 of the update in the final weights; ZeRO-2 1.4e-6 / 9.7e-6 and 2.4e-5 (DDP's
    # level); ZeRO-3 9.8e-6 / 6.6e-5 and 1.7e-4, 4.3e-4 at worst (its reduce-scatter and the
    # clipping over shards round again). A wrong step (a rank's micro-batch lost or counted
    # twice) shows in step 1's loss and gradient norm, which stay tight.
    later, update, worst_allowed = TOLERANCE[name]
    for a, b in zip(one, ds, strict=True):
        assert b["target_tokens"] == a["target_tokens"]
        rel = 1e-6 if a["step"] == 1 else later
        for key in ("loss", "ce", "mean_p", *(["kl"] if "kl" in a else [])):
            assert b[key] == pytest.approx(a[key], rel=rel), (a["step"], key)
        # DeepSpeed's own norm, before its clipping at train.max_grad_norm (2.0; step 1 is
        # clipped): a loss scaled by the accumulation steps would show here
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=max(rel, 1e-5)), a["step"]
        assert b["lr"] == a["lr"]
    assert one[0]["grad_norm"] > 2.0
    if name == "zero3_asft":  # ASFT from step 2, its KL anchor live (LoRA B moved in step 1)
        assert [r["objective"] for r in ds] == ["sft", "asft", "asft"]
        assert all(r["kl"] > 0.01 for r in ds[1:]), ds

    ref = hf_weights(single / "final")
    got = hf_weights(root / name / "final")  # the export, read by plain transformers
    assert got.keys() == ref.keys()
    init = hf_weights(root / "assets/untied")
    moved = sum(float((ref[n] - init[n]).pow(2).sum()) for n in ref) ** 0.5
    off = sum(float((got[n] - ref[n]).pow(2).sum()) for n in ref) ** 0.5
    worst = max(float((got[n] - ref[n]).abs().max()) for n in ref)
    # an update is up to 3 x lr = 1.2e-2 an element; an element updated the wrong way is off
    # by twice that
    assert moved > 1.0
    assert off / moved < update, (off, moved)
    assert worst < worst_allowed, worst


@pytest.mark.parametrize("name", SHIPPED)
def test_deepspeed_checkpoint_resumes_to_the_same_weights(runs, name):
    from safetensors.torch import load_file

    root, _, _ = runs
    resumed = load_file(root / name / "final/model.safetensors")
    uninterrupted = load_file(root / name / "uninterrupted/model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(resumed[k].equal(uninterrupted[k]) for k in resumed)
    state = json.loads((root / name / "checkpoint-2/trainer_state.json").read_text())
    assert state["step"] == 2


@pytest.mark.parametrize("name", SHIPPED)
def test_deepspeed_export_holds_deepspeeds_own_weights(runs, name):
    """checkpoint-2's Hugging Face files equal the fp32 weights DeepSpeed's own converter
    (zero_to_fp32) rebuilds from that checkpoint's sharded state/: bitwise."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, _, _ = runs
    ckpt = root / name / "checkpoint-2"
    master = {k.removeprefix("model."): v  # ObjectiveModule.model is the Hugging Face model
              for k, v in get_fp32_state_dict_from_zero_checkpoint(ckpt / "state").items()}
    exported = hf_weights(ckpt)
    assert exported.keys() == master.keys()
    assert all(exported[k].equal(master[k]) for k in exported)


def test_deepspeed_requested_without_a_launcher_falls_back_with_a_warning(monkeypatch):
    """``ACCELERATE_USE_DEEPSPEED=true`` in a plain ``python -m vldft.train`` (no launcher):
    accelerate cannot build DeepSpeed, and vldft says so instead of staying silent."""
    from accelerate.state import AcceleratorState, GradientState
    from conftest import demo_config

    from vldft.step import build_accelerator

    for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with pytest.warns(UserWarning, match="DEEPSPEED was requested but accelerate runs NO"):
            accelerator = build_accelerator(demo_config())
        assert accelerator.state.deepspeed_plugin is None
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_the_documented_launch_line_trains_like_one_process(tmp_path, name):
    """The docs' command as it is, with the shipped config unedited but for the process count
    (its bf16 is not used: train.mixed_precision auto is fp32 without a GPU), against
    ``python -m vldft.train`` on the same global batch."""
    common = ["data.heldout_file=null", "train.max_steps=3", "loss.sft_warmup_steps=1",
              "train.micro_batch_size=2", "train.log_every=1", "train.eval_max_samples=0"]
    launch = start([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                    str(ROOT / f"configs/accelerate/{name}.yaml"), "--num_processes", "2",
                    "--main_process_port", str(free_port()), "-m", "vldft.train",
                    str(TINY_CONFIG), *common, "train.grad_accum=1",
                    f"train.output_dir={tmp_path / 'ds'}"], tmp_path / "ds.log")
    out = finish(launch, tmp_path / "ds.log")
    assert "engine DEEPSPEED x 2 on cpu, mixed precision no" in out
    finish(start([sys.executable, "-m", "vldft.train", str(TINY_CONFIG), *common,
                  "train.grad_accum=2", f"train.output_dir={tmp_path / 'one'}"],
                 tmp_path / "one.log"), tmp_path / "one.log")
    for a, b in zip(records(tmp_path / "one"), records(tmp_path / "ds"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    ref, got = hf_weights(tmp_path / "one/final"), hf_weights(tmp_path / "ds/final")
    assert max(float((got[n] - ref[n]).abs().max()) for n in ref) < 2e-4


def engines_dry_run(tmp_path: Path, *extra: str) -> dict:
    finish(start(engines_cmd(tmp_path, *extra), tmp_path / "engines.log"),
           tmp_path / "engines.log")
    return json.loads((tmp_path / "engines_gpu.json").read_text())


def check_engine_rows(data: dict, models: list[str], engines: list[str]) -> None:
    rows = data["rows"]
    assert [(r["model"], r["engine"]) for r in rows] == [(m, e) for m in models
                                                         for e in engines]
    assert data["dry_run"] and data["all_ok"], rows
    for r in rows:
        assert "error" not in r, r
        assert (r["num_processes"], r["device"]) == (1, "cpu")
        if r["engine"] == "plain":
            assert r["distributed_type"] == "NO"
            continue
        assert (r["distributed_type"], r["zero_stage"], r["backend"]) == (
            "DEEPSPEED", int(r["engine"][-1]), "gloo")
        assert r["ok"] and r["same_keys"] and r["target_tokens_equal"]
        assert r["loss_rel_diff"] < 1e-5 and r["update_error"] < 1e-3
        assert r["plain_update_norm"] > 0.1  # the weights moved
        if r["model"] == "tiny":
            assert r["resume_bitwise"] and r["resumed_from"].endswith("checkpoint-2")


def test_engines_gpu_cpu_dry_run(runs):
    """bench/engines_gpu.py's own code path on the CPU (world size 1, gloo): plain and ZeRO-3 in
    one process on the tiny model, checkpoint resume and export included (the fixture ran it
    beside the 2-process launch)."""
    check_engine_rows(runs[2], ["tiny"], ["plain", "zero3"])


@pytest.mark.slow
def test_engines_gpu_cpu_dry_run_every_engine_and_the_3b_stand_in(tmp_path):
    data = engines_dry_run(tmp_path)  # FSDP is left out on the CPU (accelerate: GPUs only)
    check_engine_rows(data, ["tiny", "3b"], ["plain", "zero2", "zero3"])
