#!/usr/bin/env bash
# GPU benchmarks in one call, no network needed (nothing is downloaded), under 8 minutes:
#   1. bench/gpu_train.py: Qwen2.5-VL-3B architecture with random weights, bf16, sdpa, fused
#      AdamW, one 448x448 image per sample, sequence 2k / 4k / 8k: tokens/s, MFU, peak memory
#      for chunked vs naive DFT (issue 14: the chunked loss must not be slower at 2k-8k).
#   2. bench/packing_gpu.py: the same architecture on a Geometry3K-like length mix, packed rows
#      of 8k / 16k / 32k tokens (vldft.packing, varlen attention) vs padded micro-batches of 4:
#      tokens/s, useful tokens/s, MFU, peak memory, CUDA kernels per step.
# Usage on a GPU machine, from the repository root (needs torch + transformers >= 5 only; vldft
# is used from this working tree, not installed):
#   OUT=/some/dir bash bench/gpu.sh          # ~5-7 min on one H100 / H200; figures under $OUT
#   bash bench/gpu.sh                        # figures under runs/bench/gpu/ (gitignored)
#   SEARCH=1 bash bench/gpu.sh               # also gpu_train's longest-sequence search (+ ~4 min)
#   OBJECTIVES=1 bash bench/gpu.sh           # also the loss-head micro-benchmark (+ ~4 min)
#   PYTHON=python TRAIN_TIMEOUT=200 PACKING_TIMEOUT=270 bash bench/gpu.sh   # interpreter, caps
# TRL's SFTTrainer(loss_type="dft") reference row: not scripted here (TRL is not on the GPU
# image and nothing can be installed there); see bench/RESULTS.md.
set -euo pipefail
OUT=${OUT:-runs/bench/gpu}
mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu_info.txt"
# each JSON is rewritten after every measurement: a timeout keeps what was measured
SEARCH_ARGS="--no-search"
if [ "${SEARCH:-0}" = 1 ]; then SEARCH_ARGS=""; fi
timeout "${TRAIN_TIMEOUT:-200}" "$PY" bench/gpu_train.py --fused-adamw $SEARCH_ARGS --out "$OUT" \
  2>&1 | tee "$OUT/gpu_train.log" || true
timeout "${PACKING_TIMEOUT:-270}" "$PY" bench/packing_gpu.py --out "$OUT" 2>&1 \
  | tee "$OUT/packing_gpu.log" || true
if [ "${OBJECTIVES:-0}" = 1 ]; then
  timeout 240 "$PY" bench/objectives_gpu.py --shapes 3b --tokens 2048,8192,16384 --reps 3 \
    --out "$OUT/results_objectives_gpu.json" | tee "$OUT/objectives_gpu.md" || true
fi
