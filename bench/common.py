"""The benchmark harness: what every script in ``bench/`` shares, so that each script is a thin
scenario (what it builds and measures) over one set of measuring tools.

- results: ``default_out`` / ``gpu_out`` (where a script writes), ``run_header`` (machine facts,
  the command as run), ``write_json`` / ``save_result`` (the JSON, stamped with ``wall_s``);
- timing: ``sync``, ``timed`` (device-synchronised seconds of a call), ``Stopwatch`` (wall and
  CPU seconds of a block), ``profiled`` / ``kernels_per_call``, ``reset_peak`` /
  ``peak_mem_gib``, ``oom_guard``, ``rss_kib`` / ``peak_rss_kib``, ``to_device``;
- FLOPs and MFU: ``qwen_flop_terms``, ``mfu``, ``PEAK_TFLOPS`` / ``peak_tflops``,
  ``pick_device``;
- child processes (one measurement per fresh process): ``run_child`` / ``child_result``,
  ``free_port`` (a rendezvous port for ``torchrun`` / ``accelerate``);
- tables: ``markdown_table``, ``fmt_mfu``.

The Qwen2.5-VL the scripts train (configs, models, synthetic samples) is ``bench/qwen.py``. Only
torch is imported at module level, so the GPU scripts run where nothing else is installed.

Every script writes to ``runs/bench/`` (gitignored) by default: ``default_out(name)``. Curated
results are copied by hand into ``bench/results/<date>_<device>/`` and summarised in
``bench/RESULTS.md``, which no script writes (bench/README.md).

Import paths: the scripts run as ``python bench/<script>.py`` from a working tree where vldft may
not be installed (the GPU machine), so each script that imports ``vldft`` keeps one
``sys.path.insert(0, ROOT)``; ``common`` and sibling modules import without one, since Python
puts the script's own folder (``bench/``) first on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench"  # default output folder of every script (gitignored)


# ----------------------------------------------------------------------------- results
def default_out(name: str) -> str:
    """Default ``--out`` of a script: ``runs/bench/<name>``."""
    return str(RUNS / name)


def gpu_out() -> str:
    """Default ``--out`` folder of the GPU scripts: ``$OUT`` (bench/gpu.sh), else
    ``runs/bench/gpu/``."""
    return os.environ.get("OUT", default_out("gpu"))


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path``, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def save_result(path: str | Path, result: dict, t0: float) -> Path:
    """Stamp ``result["wall_s"]`` (seconds since ``t0``, a ``time.perf_counter()``) and write it:
    called after every measurement, so a run cut short keeps what it measured."""
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return write_json(path, result)


def command_line(script: str, argv: list[str] | None) -> str:
    """The command as run: ``python bench/<script> <args>`` (``argv`` None: ``sys.argv``)."""
    return " ".join([f"python bench/{script}", *(sys.argv[1:] if argv is None else argv)])


def run_header(script: str, argv: list[str] | None, device: str, **extra) -> dict:
    """The head of a results JSON: machine facts (with the device's name), the command as run,
    and ``extra`` (args, dry_run, ...)."""
    info = machine_info()
    info["device"] = (torch.cuda.get_device_name() if device.startswith("cuda")
                      else extra.pop("cpu_label", "cpu"))
    return {"machine": info, "command": command_line(script, argv), **extra}


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
            "load_avg": load_avg()}
    for mod in ("transformers", "accelerate", "trl"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def load_avg() -> list[float]:
    """The 1 / 5 / 15-minute load averages, rounded (recorded before and after a CPU run)."""
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- timing, memory
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


class Stopwatch:
    """Wall (``wall``) and process CPU (``cpu``) seconds between ``start()`` and ``stop()``, or of
    a ``with`` block; with ``device``, the device is synchronised at both ends. CPU seconds are
    what a shared machine does not inflate (one thread: the work done)."""

    def __init__(self, device=None) -> None:
        self.device, self.wall, self.cpu = device, 0.0, 0.0

    def start(self) -> Stopwatch:
        sync(self.device)
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> Stopwatch:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        return self

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()


def profiled(fn, device):
    """torch.profiler's record of one ``fn()``: CPU activity, and CUDA activity on a CUDA
    device (synchronised before the record closes)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if str(device).startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        sync(device)
    return prof


def kernels_per_call(fn, device) -> dict:
    """CUDA kernels launched by one ``fn()`` (torch.profiler device events; 0 on the CPU) and the
    attention operator calls made on the CPU side (flash / varlen / SDPA kernels)."""
    events = profiled(fn, device).events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    attn = [e for e in events if any(k in e.name for k in (
        "flash", "varlen", "scaled_dot_product", "efficient_attention", "cudnn_attention"))
        and e.device_type == torch.autograd.DeviceType.CPU]
    return {"cuda_kernels": len(kernels), "attention_ops_cpu_side": len(attn)}


def reset_peak(device) -> None:
    """Start a new peak-memory window (CUDA; a no-op on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mem_gib(device) -> float | None:
    """Peak allocated device memory since ``reset_peak``, GiB (2 decimals); None on the CPU."""
    if str(device).startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def oom_guard(fn, limit: int = 200):
    """``(fn(), None)``, or ``(None, message)`` when it runs out of memory: the first line of the
    error, at most ``limit`` characters. The exception (and the tensors its traceback pins) is
    gone when this returns, so the caller can free memory."""
    try:
        return fn(), None
    except torch.OutOfMemoryError as e:
        return None, str(e).split("\n")[0][:limit]


def rss_kib() -> int:
    """This process's current resident set size, KiB (``/proc``; 0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kib() -> int:
    """This process's peak resident set size, KiB (``getrusage``'s ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def to_device(batch: dict, device, dtype: torch.dtype) -> dict:
    """The tensors of ``batch`` on ``device``, floating-point ones in ``dtype``."""
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
            for k, v in batch.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------- FLOPs, MFU
# Dense bf16 peak FLOP/s of the GPUs the GPU scripts ran on, matched by substring of
# ``torch.cuda.get_device_name()`` in this order (an H100 PCIe is not an SXM H100)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "H800": 989.0}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a device by name (``PEAK_TFLOPS``), None if unknown (then no
    MFU is reported)."""
    key = next((k for k in PEAK_TFLOPS if k in device_name), None)
    return PEAK_TFLOPS[key] if key else None


def require_module(name: str, install: str) -> None:
    """Exit in one line when ``name`` does not import (``install``: how to get it), before a
    child process fails on it with a traceback."""
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise SystemExit(f"{name} is not installed: {install}")


def pick_device(cpu: bool, peak: float | None, hint: str = "run with --dry-run"
                ) -> tuple[str, torch.dtype, float | None]:
    """``(device, dtype, peak TFLOP/s)`` of a GPU script: the CPU dry run in fp32 (CPU bf16
    kernels are slow; same code path) with no peak unless ``peak`` is given (no MFU: a CPU
    figure against an invented peak means nothing), else the CUDA device in bf16 with ``peak``
    or the device's (``peak_tflops``). No CUDA device: an error saying ``hint``."""
    if cpu:
        return "cpu", torch.float32, peak
    if not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device: {hint}, or on a GPU machine")
    return "cuda", torch.bfloat16, peak or peak_tflops(torch.cuda.get_device_name())


def qwen_flop_terms(model, seq_lens: list[int], patches: int, targets: int,
                    vision_factor: float = 6.0, projector_factor: float = 6.0,
                    text_factor: float = 6.0, lm_head_factor: float = 6.0) -> dict:
    """Model FLOPs of one training pass over a Qwen2.5-VL micro-batch, by term: ``seq_lens``
    the real (non-padding) length of each sample (attention within each sample), ``patches``
    the vision patches of its images, ``targets`` its target tokens.

    text_linear ``f N_text sum(n)`` (decoder without the embedding); text_attention
    ``6 layers d sum(n^2)`` (causal scores and values, d = heads x head_dim: half of PaLM's
    ``12 L T^2 d``; no weights, so its backward is input gradients only and stays 2 x the
    forward whenever anything trains); vision_linear ``f N_blocks patches`` (patch embedding
    and blocks; their attention, < 0.1 %, is left out); projector_linear
    ``f N_merger patches / merge^2`` (the merger runs on merged tokens); lm_head_targets
    ``f V H targets`` (all the chunked objective computes).

    f per part, 2 per product of a [tokens, in] x [in, out] weight: the forward (2), the input
    gradient (2, needed when a trained part lies before it or inside it), the weight gradient
    (2, when its weights train). So f = 6 for a trained part that needs input gradients (the
    default: everything trained), 4 for a trained part with nothing trained before it (the
    merger under ``model.freeze: [vision]``: forward + weight gradients) and for a frozen part
    with a trained part before or inside it (forward + input gradients: a frozen language
    model after a trained merger, or LoRA, where only the adapters train and the base weights
    pass gradients on; the adapters' own products, rank r << width, are not counted), 2 for a
    frozen part with nothing trained before it (forward only: the vision tower under
    ``freeze: [vision]``). ``vldft_step.flop_factors`` derives them from a config's
    ``model.freeze`` and ``model.lora``. Recomputation by gradient checkpointing is not
    counted, so MFU stays comparable with and without it."""
    tc = model.config.text_config
    vc = model.config.vision_config
    lm = model.model.language_model
    n_text = sum(p.numel() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    visual = model.model.visual
    n_merger = sum(p.numel() for p in visual.merger.parameters())
    n_vision = sum(p.numel() for p in visual.parameters()) - n_merger
    d = tc.num_attention_heads * (tc.hidden_size // tc.num_attention_heads)
    terms = {"text_linear": text_factor * n_text * sum(seq_lens),
             "text_attention": 6.0 * tc.num_hidden_layers * d * sum(n * n for n in seq_lens),
             "vision_linear": vision_factor * n_vision * patches,
             "projector_linear": projector_factor * n_merger * patches
             / vc.spatial_merge_size**2,
             "lm_head_targets": lm_head_factor * tc.vocab_size * tc.hidden_size * targets}
    return {**terms, "total": sum(terms.values()), "n_text": n_text, "n_vision": n_vision,
            "n_merger": n_merger}


def mfu(flops: float, seconds: float, peak: float | None, digits: int | None = 4
        ) -> float | None:
    """Model FLOPs utilisation: ``flops`` done in ``seconds`` against ``peak`` TFLOP/s, rounded
    to ``digits`` (None: not rounded); None without a peak."""
    if not peak or seconds <= 0:
        return None
    value = flops / seconds / 1e12 / peak
    return value if digits is None else round(value, digits)


# ----------------------------------------------------------------------------- child processes
RESULT_MARKER = "@@RESULT@@"  # prefixes a child's result line (libraries print to stdout too)


def child_result(obj: dict) -> None:
    """Print a child process's result for ``run_child``."""
    print(RESULT_MARKER + json.dumps(obj), flush=True)


class ChildFailed(RuntimeError):
    """A child process exited non-zero or printed no result; the message ends with its
    standard error's tail."""


def run_child(cmd: list[str], env: dict | None = None, timeout: float | None = None,
              tail: int = 3000) -> dict:
    """Run ``cmd`` (a fresh process: its peak RSS is its own) from the repository root and return
    the result it printed with ``child_result``, plus ``wall_s``."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         env=env)
    lines = [x for x in res.stdout.splitlines() if x.startswith(RESULT_MARKER)]
    if res.returncode != 0 or not lines:
        raise ChildFailed(f"exit {res.returncode}: {res.stderr.strip()[-tail:]}")
    out = json.loads(lines[-1][len(RESULT_MARKER):])
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a launched process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- tables
def markdown_table(headers: list[str], rows: list, cells) -> str:
    """``rows`` as a Markdown table: ``cells(row)`` gives the row's cells (strings, or values
    printed with ``str``; fewer than ``headers`` are padded with empty cells, e.g. a failed
    row's name and its error)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        values = [str(v) for v in cells(row)]
        lines.append("| " + " | ".join(values + [""] * (len(headers) - len(values))) + " |")
    return "\n".join(lines)


def fmt_mfu(row: dict) -> str:
    """A result row's MFU as a percentage, or "-" where the peak FLOP/s is unknown."""
    return f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
