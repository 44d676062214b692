#!/usr/bin/env bash
# GPU benchmarks in one script, no network needed (nothing is downloaded):
#   bench/gpu_train.py: Qwen2.5-VL-3B architecture with random weights, bf16, sdpa, one 448x448
#   image per sample, sequence 2k / 4k / 8k: tokens/s, MFU, peak memory for chunked vs naive
#   DFT, then the longest sequence that trains for each (gradient checkpointing on).
# Usage on a GPU machine, from the repository root (needs torch + transformers >= 5; vldft is
# used from this working tree, not installed):
#   OUT=/some/dir bash bench/gpu.sh          # ~5-8 min on one H100; figures under $OUT
#   bash bench/gpu.sh                        # figures under runs/bench/gpu/ (gitignored)
#   OBJECTIVES=1 bash bench/gpu.sh           # also the loss-head micro-benchmark (+ ~4 min)
#   PYTHON=python TRAIN_TIMEOUT=600 bash bench/gpu.sh   # interpreter (default python3), time cap
set -euo pipefail
OUT=${OUT:-runs/bench/gpu}
mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu_info.txt"
# gpu_train.json is rewritten after every measurement: a timeout keeps what was measured
timeout "${TRAIN_TIMEOUT:-450}" "$PY" bench/gpu_train.py --out "$OUT" 2>&1 | tee "$OUT/gpu_train.log" || true
if [ "${OBJECTIVES:-0}" = 1 ]; then
  timeout 240 "$PY" bench/objectives_gpu.py --shapes 3b --tokens 2048,8192,16384 --reps 3 \
    --out "$OUT/results_objectives_gpu.json" | tee "$OUT/objectives_gpu.md" || true
fi
