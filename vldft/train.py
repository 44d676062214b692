"""Fine-tune a vision-language model with DFT (or SFT): one readable loop on accelerate.

    python -m vldft.train configs/demo.yaml                       # tiny model, CPU, minutes
    python -m vldft.train configs/demo.yaml train.lr=1e-3 loss.name=sft
    torchrun --nproc_per_node 8 -m vldft.train configs/qwen25vl_geo.yaml

Per optimizer step: gather ``grad_accum`` micro-batches, count their target tokens on every rank,
sum the counts over ranks, then backpropagate ``loss_sum / global_count`` for each micro-batch
(times the world size, because DDP averages gradients). Batch 8 x accumulation 1 and batch 2 x
accumulation 4 therefore give the same update. Outputs go to ``train.output_dir``:
``metrics.jsonl``, ``config.yaml``, ``checkpoint-<step>/`` and ``final/`` (Hugging Face format),
``summary.json``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from vldft.adapters import Adapter, load_adapter
from vldft.collate import IGNORE, Collator
from vldft.config import Config, ConfigError, config_to_dict, load_config
from vldft.data import Sample, load_jsonl
from vldft.heldout import evaluate_heldout
from vldft.objectives import compute_objective


class EncodedDataset(Dataset):
    """Samples encoded lazily (in DataLoader workers) by the collator."""

    def __init__(self, samples: list[Sample], collator: Collator) -> None:
        self.samples, self.collator = samples, collator

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.collator.encode(self.samples[i])


class ObjectiveModule(nn.Module):
    """Backbone + objective in ONE forward, so DDP / FSDP wrap (and gather) both together."""

    def __init__(self, adapter: Adapter) -> None:
        super().__init__()
        self.model = adapter.model
        self.adapter = adapter

    def forward(self, batch: dict[str, torch.Tensor], objective: str):
        batch = dict(batch)
        labels = batch.pop("labels")
        hidden = self.adapter.hidden_states(batch)
        head = self.adapter.output_layer()
        out = compute_objective(hidden, head.weight, labels, objective, bias=head.bias)
        return out.loss_sum, out.stats


def model_inputs(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def count_targets(batch: dict) -> int:
    """Target tokens of a micro-batch (labels are shifted inside the objective)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def accumulate_gradients(module: nn.Module, micro_batches: list[dict], objective: str,
                         accelerator: Accelerator) -> dict[str, float]:
    """Forward + backward over one optimizer step's micro-batches with global normalisation.

    Returns the step's totals (summed over ranks): n_tokens, loss_sum, ce_sum, p_sum,
    entropy_sum, n_seen (non-padding tokens processed).
    """
    local = torch.tensor([sum(count_targets(b) for b in micro_batches)], dtype=torch.float64,
                         device=accelerator.device)
    n_global = float(accelerator.reduce(local, reduction="sum").item())
    scale = accelerator.num_processes / max(n_global, 1.0)
    totals = torch.zeros(5, dtype=torch.float64, device=accelerator.device)
    for k, batch in enumerate(micro_batches):
        inputs = model_inputs(batch, accelerator.device)
        sync = k == len(micro_batches) - 1
        ctx = accelerator.no_sync(module) if not sync else _nullcontext()
        with ctx:
            loss_sum, stats = module(inputs, objective)
            accelerator.backward(loss_sum * scale)
        totals += torch.stack([loss_sum.detach().double(), stats["ce_sum"].double(),
                               stats["p_sum"].double(), stats["entropy_sum"].double(),
                               inputs["attention_mask"].sum().double()])
    totals = accelerator.reduce(totals, reduction="sum").tolist()
    keys = ("loss_sum", "ce_sum", "p_sum", "entropy_sum", "n_seen")
    return {"n_tokens": n_global, **dict(zip(keys, totals, strict=True))}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def build_optimizer(adapter: Adapter, cfg: Config) -> torch.optim.Optimizer:
    """AdamW with one group per (part, decay): per-part learning rates, no decay on 1-D params."""
    t = cfg.train
    lrs = {"language": t.lr, "vision": t.vision_lr or t.lr, "projector": t.projector_lr or t.lr}
    groups = []
    for part, named in adapter.parts().items():
        params = [p for _, p in named if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": lrs[part], "name": f"{part}",
                               "weight_decay": t.weight_decay if decay else 0.0})
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.adam_betas))


def micro_batch_stream(loader: DataLoader, skips: Counter, counts: Counter):
    """Endless stream of non-empty micro-batches over epochs; records skipped samples."""
    while True:
        for batch in loader:
            for s in batch["skipped"]:
                skips[s.reason] += 1
            counts["truncated"] += batch["n_truncated"]
            if "input_ids" in batch:
                yield batch


def _mixed_precision(cfg: Config) -> str:
    mp = cfg.train.mixed_precision
    if mp == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mp


def main(cfg: Config) -> dict:
    """Train per ``cfg``; returns the summary dict (also written to output_dir/summary.json)."""
    t = cfg.train
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg))
    set_seed(t.seed)
    out_dir = cfg.resolve(t.output_dir)
    is_main = accelerator.is_main_process
    log = print if is_main else (lambda *a, **k: None)

    samples = []
    for f in cfg.data.train_files:
        root = cfg.resolve(cfg.data.image_root) if cfg.data.image_root else None
        samples += load_jsonl(cfg.resolve(f), root)
    heldout = load_jsonl(cfg.resolve(cfg.data.heldout_file)) if cfg.data.heldout_file else []

    adapter = load_adapter(cfg.model)
    adapter.freeze(cfg.model.freeze)
    if cfg.model.gradient_checkpointing:
        adapter.model.gradient_checkpointing_enable({"use_reentrant": False})
    adapter.model.config.use_cache = False
    n_params = {part: sum(p.numel() for _, p in ps) for part, ps in adapter.parts().items()}
    log(f"[vldft] {cfg.model.family} ({cfg.model.name_or_path or 'tiny'}): "
        + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in n_params.items())
        + f"; frozen: {cfg.model.freeze or 'none'}; {len(samples)} training samples")

    collator = Collator(adapter, cfg.data.max_length, cfg.data.overlong, cfg.data.train_on)
    generator = torch.Generator().manual_seed(t.seed)
    loader = DataLoader(EncodedDataset(samples, collator), batch_size=t.micro_batch_size,
                        shuffle=True, generator=generator, collate_fn=collator,
                        num_workers=cfg.data.num_workers)
    optimizer = build_optimizer(adapter, cfg)
    module = ObjectiveModule(adapter)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    total = t.max_steps or max(1, math.ceil(t.epochs * len(loader) / t.grad_accum))
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total),
                              num_training_steps=total)

    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        metrics_file = open(out_dir / "metrics.jsonl", "w")
    skips, counts = Counter(), Counter()
    stream = micro_batch_stream(loader, skips, counts)
    window: Counter = Counter()
    history: list[dict] = []
    start = time.perf_counter()
    evals: list[dict] = []

    def run_heldout(step: int) -> None:
        if not (heldout and t.eval_max_samples and is_main):
            return
        module.eval()
        res = evaluate_heldout(adapter, collator, heldout[: t.eval_max_samples],
                               t.eval_batch_size, t.eval_max_new_tokens, cfg.loss.name)
        module.train()
        res["step"] = step
        evals.append(res)
        metrics_file.write(json.dumps({"step": step, "heldout": {
            k: v for k, v in res.items() if k != "examples"}}) + "\n")
        acc = "n/a" if res["accuracy"] is None else f"{res['accuracy']:.1%}"
        tqdm.write(f"[vldft] step {step} held-out: ce {res['ce']:.4f}, accuracy {acc}")

    bar = tqdm(total=total, desc="train", disable=not is_main, dynamic_ncols=True)
    module.train()
    for step in range(1, total + 1):
        objective = "sft" if step <= cfg.loss.sft_warmup_steps else cfg.loss.name
        micro = [next(stream) for _ in range(t.grad_accum)]
        step_totals = accumulate_gradients(module, micro, objective, accelerator)
        grad_norm = float("nan")
        if t.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), t.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.update(step_totals)
        window["steps"] += 1
        if step % t.log_every == 0 or step == total:
            n = max(window["n_tokens"], 1.0)
            elapsed = time.perf_counter() - start
            rec = {"step": step, "objective": objective, "loss": window["loss_sum"] / n,
                   "ce": window["ce_sum"] / n, "mean_p": window["p_sum"] / n,
                   "entropy": window["entropy_sum"] / n, "lr": scheduler.get_last_lr()[0],
                   "grad_norm": grad_norm, "target_tokens": int(window["n_tokens"]),
                   "tokens_per_s": window["n_seen"] / max(elapsed - window.get("t0", 0.0), 1e-9),
                   "elapsed_s": round(elapsed, 2)}
            history.append(rec)
            if is_main:
                metrics_file.write(json.dumps(rec) + "\n")
                metrics_file.flush()
            bar.set_postfix(loss=f"{rec['loss']:.4f}", ce=f"{rec['ce']:.3f}", lr=f"{rec['lr']:.2e}",
                            tok_s=f"{rec['tokens_per_s']:.0f}")
            window = Counter(t0=elapsed)
        bar.update(1)
        if step < total and ((t.eval_every and step % t.eval_every == 0)
                             or step == cfg.loss.sft_warmup_steps):
            run_heldout(step)
        if t.save_every and step % t.save_every == 0 and step < total:
            _save(adapter, accelerator, out_dir / f"checkpoint-{step}")
    bar.close()
    final_dir = out_dir / "final"
    _save(adapter, accelerator, final_dir)

    summary = {"steps": total, "objective": cfg.loss.name,
               "sft_warmup_steps": cfg.loss.sft_warmup_steps, "train_samples": len(samples),
               "skipped": dict(skips), "truncated": counts["truncated"],
               "first_log": history[0], "last_log": history[-1],
               "train_seconds": round(time.perf_counter() - start, 1), "checkpoint": str(final_dir)}
    run_heldout(total)
    if evals:
        summary["heldout"] = evals[-1]
        summary["heldout_history"] = [{k: e[k] for k in ("step", "ce", "loss", "accuracy")}
                                      for e in evals]
    if is_main:
        metrics_file.close()
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        _print_summary(summary, history)
    accelerator.wait_for_everyone()
    return summary


def _save(adapter: Adapter, accelerator: Accelerator, path: Path) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = path.with_name(path.name + ".tmp")
        adapter.save(tmp)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.rename(path)
    accelerator.wait_for_everyone()


def _reasons(skips: dict) -> str:
    return f" ({', '.join(f'{n} {why}' for why, n in skips.items())})" if skips else ""


def _print_summary(summary: dict, history: list[dict]) -> None:
    first, last = summary["first_log"], summary["last_log"]
    print("\n[vldft] loss curve (step: objective loss | plain CE | mean target p):")
    stride = max(1, len(history) // 10)
    for rec in history[::stride] + ([history[-1]] if (len(history) - 1) % stride else []):
        print(f"  {rec['step']:>5} {rec['objective']:>3}: {rec['loss']:.4f} | ce {rec['ce']:.4f}"
              f" | p {rec['mean_p']:.3f}")
    print(f"[vldft] {summary['steps']} steps in {summary['train_seconds']} s; "
          f"ce {first['ce']:.4f} -> {last['ce']:.4f}; "
          f"skipped {sum(summary['skipped'].values())} samples{_reasons(summary['skipped'])}; "
          f"truncated {summary['truncated']}")
    for h in summary.get("heldout_history", []):
        acc = "n/a" if h["accuracy"] is None else f"{h['accuracy']:.1%}"
        print(f"[vldft] held-out at step {h['step']} ({summary['heldout']['n']} samples): "
              f"ce {h['ce']:.4f}, {summary['objective']} loss {h['loss']:.4f}, "
              f"answer accuracy {acc}")
    if summary.get("heldout", {}).get("accuracy_by_kind"):
        kinds = summary["heldout"]["accuracy_by_kind"]
        print("[vldft] final accuracy by kind: "
              + ", ".join(f"{k} {v:.0%}" for k, v in kinds.items()))
    print(f"[vldft] saved Hugging Face checkpoint: {summary['checkpoint']}")


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    try:
        cfg = load_config(argv[0], argv[1:])
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    main(cfg)


if __name__ == "__main__":
    cli()
