#!/usr/bin/env bash
# GPU checks and benchmarks in one call, no network needed (nothing is downloaded), ~5 minutes plus
# recipe_gpu.py (capped at 330 s; not yet run on a GPU, so its time is an estimate)
# (each step capped; every step writes what it measured even if a later one fails):
#   0. tests/test_gpu.py: the CUDA varlen kernel equals the SDPA loop; the chunked objective on
#      CUDA equals the naive one; a packed tiny Qwen2.5-VL on CUDA equals each sample alone.
#   R. bench/recipe_gpu.py (run right after the tests, so a short window measures it first):
#      the shipped recipe configs/qwen25vl_geo.yaml as it runs (fp32 master weights + bf16
#      autocast, vision frozen, gradient checkpointing, packed 8k rows, grad_accum 2) on the
#      3B architecture, side by side with the same samples padded (same tokens per optimizer
#      step) and with the bf16 set-up of the earlier figures; interleaved rounds. The bf16
#      set-up needs ~90 GiB at 8k packed: on an 80 GB H100 its row says out of memory.
#   1. bench/objectives_gpu.py: the loss head alone (3B shape, bf16) at 2k / 4k / 8k targets:
#      chunked (one block per chunk, the CUDA default), chunked_rb128 (128-row blocks, the
#      setting before), chunked_c4096 (4,096-row chunks) and naive full logits.
#   2. bench/gpu_train.py: Qwen2.5-VL-3B architecture with random weights, bf16, sdpa, fused
#      AdamW, one 448x448 image per sample, sequence 2k / 4k / 8k: tokens/s, MFU, peak memory
#      for chunked, chunked_rb128 and naive DFT (issue 14: chunked not slower at 2k-8k).
#   3. bench/packing_gpu.py: the same architecture on a Geometry3K-like length mix, packed rows
#      of 8k / 16k / 32k tokens (vldft.packing, varlen attention) vs padded micro-batches of 4:
#      tokens/s, useful tokens/s, MFU, peak memory, CUDA kernels per step.
# Usage on a GPU machine, from the repository root (needs torch, transformers >= 5.20,
# accelerate, pillow, pyyaml, qwen-vl-utils; vldft is used from this working tree):
#   OUT=/some/dir bash bench/gpu.sh          # figures under $OUT (10 files)
#   RECIPE_ONLY=1 bash bench/gpu.sh          # GPU facts, tests and recipe_gpu.py only (~5 min)
#   bash bench/gpu.sh                        # figures under runs/bench/gpu/ (gitignored)
#   SEARCH=1 bash bench/gpu.sh               # also gpu_train's longest-sequence search (+ ~4 min)
#   PYTHON=python TRAIN_TIMEOUT=200 PACKING_TIMEOUT=270 bash bench/gpu.sh   # interpreter, caps
#   TRL=1 bash bench/gpu.sh                  # also bench/trl_gpu.py: TRL's SFTTrainer(loss_type=
#                                            # "dft") on the same model and batches (needs trl +
#                                            # datasets, e.g. carried wheels; + ~2 min)
set -uo pipefail
OUT=${OUT:-runs/bench/gpu}
mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_info.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu_info.txt"
timeout "${TEST_TIMEOUT:-80}" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 \
  | tee "$OUT/test_gpu.log"
timeout "${RECIPE_TIMEOUT:-330}" "$PY" bench/recipe_gpu.py --config configs/qwen25vl_geo.yaml \
  --steps 3 --rounds 2 --out "$OUT" 2>&1 | tee "$OUT/recipe_gpu.log"
if [ "${RECIPE_ONLY:-0}" = 1 ]; then echo "gpu.sh done (RECIPE_ONLY); files under $OUT"; exit 0; fi
timeout "${OBJECTIVES_TIMEOUT:-50}" "$PY" bench/objectives_gpu.py --shapes 3b \
  --tokens 2048,4096,8192 --reps 3 --methods chunked,chunked_rb128,chunked_c4096,naive \
  --out "$OUT/objectives_gpu.json" 2>&1 | tee "$OUT/objectives_gpu.md"
SEARCH_ARGS="--no-search"
if [ "${SEARCH:-0}" = 1 ]; then SEARCH_ARGS=""; fi
# each JSON is rewritten after every measurement: a timeout keeps what was measured
timeout "${TRAIN_TIMEOUT:-120}" "$PY" bench/gpu_train.py --fused-adamw $SEARCH_ARGS \
  --methods chunked,chunked_rb128,naive --out "$OUT" 2>&1 | tee "$OUT/gpu_train.log"
timeout "${PACKING_TIMEOUT:-200}" "$PY" bench/packing_gpu.py --out "$OUT" 2>&1 \
  | tee "$OUT/packing_gpu.log"
if [ "${TRL:-0}" = 1 ]; then
  timeout "${TRL_TIMEOUT:-240}" "$PY" bench/trl_gpu.py --out "$OUT" 2>&1 | tee "$OUT/trl_gpu.log"
fi
echo "gpu.sh done; files under $OUT"
