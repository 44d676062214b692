#!/usr/bin/env bash
# All GPU checks in one script (no network needed): the objectives benchmark in bf16.
# Usage on a GPU machine, from the repository root:  bash bench/gpu.sh  (figures under $OUT)
set -euo pipefail
OUT=${OUT:-bench}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu_info.txt"
timeout 480 python bench/objectives_gpu.py --out "$OUT/results_objectives_gpu.json" \
  | tee "$OUT/objectives_gpu.md"
