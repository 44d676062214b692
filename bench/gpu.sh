#!/usr/bin/env bash
# GPU checks and benchmarks for the lent GPU machine (no network: nothing is downloaded), in four
# phases, each one device call of < 10 minutes. Every step is capped with `timeout` and writes
# its raw JSON under $OUT after each measurement, so a step cut short or failing keeps what it
# measured and the next step still runs. All output also goes to $OUT/gpu.log. At most 8 files
# come back from $OUT: phase 1 writes 5 files, phase 2 writes 5, phase 3 and 4 write 2 each.
#
# Wheels: the machine's image has torch 2.11 + CUDA, transformers 5.17, accelerate, but not
# transformers >= 5.20, qwen-vl-utils, trl, datasets, liger-kernel, DeepSpeed, lmms-eval, ...
# Once, here (where PyPI is reachable): `bash bench/wheels.sh` fills .whl/ (git-ignored, 38 MiB);
# name `.whl` in the device call's `carry`. Each phase installs what it needs from .whl/ into
# /tmp/site (--no-index --no-deps) and puts it on PYTHONPATH; without .whl/ nothing is installed.
#
# Device time: a session is lent at most 15 minutes of it in all, machine start included, so the
# four phases below (each one call of up to 10 minutes) do not fit one session. PHASE=window is
# the plan for such a session: ONE call (timeout_s 600) running the items issue 25 is closed on,
# most needed first, each capped to what is left of WINDOW_BUDGET (default 540 s) and skipped
# when under 30 s are left, raw JSON written after each:
#   1. GPU facts; tests/test_gpu.py (cap 80 s): the CUDA varlen kernel forward and backward, a
#      planted leak, packed = one at a time, every fused lever against the plain path.
#   2. bench/recipe_gpu.py (cap 240 s): the recipe as shipped beside the same samples padded and
#      the bf16 set-up, 2 rounds x 2 steps, the profiled step (kernels per step).
#   3. the levers (WINDOW_LEVERS, default "liger compile selective pack16k_selective all"; names
#      from VARIANTS, phase 3's list), one recipe_gpu.py run each (cap 75 s, compile 150 s).
#   4. bench/trl_gpu.py (cap 160 s): the TRL rows against vldft packed / padded.
#   Files: gpu.log, recipe_gpu.json, levers_gpu.json, trl_gpu.json. Installs every wheel of
#   .whl/ (+ transformers 5.22.2 for the Liger variants and TRL). What it leaves undone is for
#   phases 1-4 in a later session: PHASE=window first in every session that gets a GPU.
#
# PHASE=1 (default; ~5-7 min typical; its caps add up to more than a 600 s device call, so a slow
# recipe_gpu.py leaves packing_gpu.py cut short, its JSON holding the rows it measured):
#   0. GPU facts; tests/test_gpu.py: the CUDA varlen kernel equals the SDPA loop; the chunked
#      objective on CUDA equals the naive one; a packed tiny Qwen2.5-VL on CUDA equals each
#      sample alone.
#   R. bench/recipe_gpu.py (first, so a short window measures it): the shipped recipe
#      configs/qwen25vl_geo.yaml as it runs (fp32 master weights + bf16 autocast, vision frozen,
#      gradient checkpointing, packed 8k rows, grad_accum 2) on the 3B architecture, side by side
#      with the same samples padded (same tokens per optimizer step) and with the bf16 set-up of
#      the earlier figures; interleaved rounds (the bf16 set-up may say out of memory on 80 GB).
#   Then, unless RECIPE_ONLY=1:
#   1. bench/objectives_gpu.py: the loss head alone (3B shape, bf16) at 2k / 4k / 8k targets:
#      chunked, chunked_rb128, chunked_c4096 and naive full logits.
#   2. bench/gpu_train.py: 3B architecture, random weights, bf16, sdpa, fused AdamW, one 448x448
#      image per sample, sequence 2k / 4k / 8k: tokens/s, MFU, peak memory per DFT method.
#   3. bench/packing_gpu.py: packed rows of 8k / 16k / 32k tokens vs padded micro-batches of 4.
#   Files: gpu.log, recipe_gpu.json, objectives_gpu.json, gpu_train.json, packing_gpu.json.
#   Installs from .whl/: transformers 5.24.0 and qwen-vl-utils only.
#
# PHASE=2 (~6 min typical, 580 s at most; installs every wheel of .whl/):
#   a. bench/trl_gpu.py (issue 25 item 4): TRL's SFTTrainer(loss_type="dft") plain and with
#      use_liger_kernel=True vs vldft packed and vldft padded, same 3B model, samples, device and
#      tokens per optimizer step: useful tokens/s, peak memory, the 3x / 0.7x goal check. Runs
#      under transformers 5.22.2 (.whl/t522/): liger-kernel 0.8.5's Qwen2.5-VL patch imports
#      Qwen2_5_VLCausalLMOutputWithPast, which transformers 5.23 removed.      -> trl_gpu.json
#   b. bench/objectives_gpu.py with the Liger DFT head (fused linear cross-entropy with token
#      scaling) beside vldft's chunked head, same shapes; first its loss and gradients checked
#      against vldft's DFT on CUDA (liger_check in the JSON).             -> objectives_liger.json
#   c. bench/eval_throughput.py --gpu (item 7): vldft.eval's model class samples/s on the 3B
#      architecture at the recipe's budget (batch 8, 1,024 new tokens; random weights: every
#      sample runs to the budget, the worst case), one in-training evaluation (train.eval_tasks,
#      lmms-eval's evaluator) and the recipe's evaluation cost estimated from them. -> eval_gpu.json
#   d. bench/engines_gpu.py --models tiny: plain / FSDP2 / DeepSpeed ZeRO-2 / ZeRO-3 through
#      vldft's training loop on the tiny model (PHASE=4: with the 3B architecture too)
#                                                                         -> engines_gpu.json
#   Caps (seconds): install 60 + 60, a 160, b 60, c 140, d 100: 580 s at most (one device call
#   of timeout_s 600); typically ~6 min (install ~0.5, a ~2, b ~0.5, c ~2, d ~1; estimates: none
#   of it has run on a GPU yet).
#
# PHASE=3 (issue 25 item 2, the levers; ~6-8 min; installs transformers, qwen-vl-utils,
# liger-kernel and transformers 5.22.2): bench/recipe_gpu.py on the shipped recipe once per
# variant, in this order: as shipped; without precomputed segments; without the frozen tower's
# no-grad pass; without both; selective checkpointing; 16k packs with full and with selective
# checkpointing (the fit); Liger (under transformers 5.22.2); regional compile; compile + Liger
# (all together: compile is refused with selective checkpointing); selective + Liger.
# Each capped (LEVER_TIMEOUT 75 s, COMPILE_TIMEOUT 150 s), no new variant after PHASE3_BUDGET
# (480 s). Files: gpu.log, levers_gpu.json ({variant: recipe_gpu.json's content}, rewritten after
# each variant).
#
# PHASE=4 (issue 25 item 6; ~4-6 min, installs every wheel of .whl/): bench/engines_gpu.py for the
# tiny model and the 3B architecture: plain / FSDP2 / ZeRO-2 / ZeRO-3 on one GPU (world size 1)
# through vldft.train.main, losses and weights against plain, checkpoint resume, the Hugging
# Face export loaded with transformers, FSDP units counted. Files: gpu.log, engines_gpu.json.
#
# Usage on the GPU machine, from the repository root (vldft is used from this working tree):
#   OUT=/some/dir bash bench/gpu.sh          # phase 1; figures under $OUT
#   PHASE=2 OUT=/some/dir bash bench/gpu.sh  # phase 2
#   PHASE=3 OUT=/some/dir bash bench/gpu.sh  # phase 3 (the levers)
#   PHASE=4 OUT=/some/dir bash bench/gpu.sh  # phase 4 (the engines)
#   PHASE=window OUT=/some/dir bash bench/gpu.sh   # a 15-minute session's one call (above)
#   RECIPE_ONLY=1 bash bench/gpu.sh          # phase 1: GPU facts, tests, recipe_gpu.py only
#   bash bench/gpu.sh                        # figures under runs/bench/gpu/ (gitignored)
#   SEARCH=1 bash bench/gpu.sh               # also gpu_train's longest-sequence search (+ ~4 min)
#   PYTHON=python TRAIN_TIMEOUT=200 PACKING_TIMEOUT=270 bash bench/gpu.sh   # interpreter, caps
#   (every cap: TEST_ / RECIPE_ / OBJECTIVES_ / TRAIN_ / PACKING_ / INSTALL_ / TRL_ / LIGER_ /
#    EVAL_ / ENGINES_TIMEOUT)
#   DRY_RUN=1 [PHASE=2] bash bench/gpu.sh    # the phase's flow on the CPU: each script's dry run
#                                            # (recipe_gpu.py --tiny), no wheels installed
# CPU dry runs of every script: tests/test_bench_gpu.py (each script's --dry-run).
set -uo pipefail
PHASE=${PHASE:-1}
OUT=${OUT:-runs/bench/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
pip_into() {  # TARGET WHEEL...
  local target=$1
  shift
  timeout "${INSTALL_TIMEOUT:-60}" "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$target" "$@" 2>&1 | tee -a "$LOG"
}
install_wheels() {  # TARGET WHEEL...: the carried wheels into TARGET (no network, no deps); a
  # missing or broken wheel fails pip's whole call, so then each wheel is tried on its own
  local target=$1 w
  shift
  local found=()
  for w in "$@"; do
    if [ -f "$w" ]; then found+=("$w"); else step "missing wheel: $w (skipped)"; fi
  done
  [ ${#found[@]} -eq 0 ] && return 0
  pip_into "$target" "${found[@]}" && return 0
  step "installing the wheels one by one (the joint install failed)"
  for w in "${found[@]}"; do pip_into "$target" "$w" || step "could not install $w"; done
}
case "$PHASE" in
  1|2|3|4|window) ;;
  *) echo "gpu.sh: PHASE=$PHASE: expected 1, 2, 3, 4 or window" >&2; exit 2 ;;
esac
DRY=""
if [ "${DRY_RUN:-0}" = 1 ]; then DRY="--dry-run"; fi
if [ -d .whl ] && [ -z "$DRY" ]; then
  if [ "$PHASE" = 1 ]; then
    step "install transformers + qwen-vl-utils from .whl/"
    install_wheels /tmp/site .whl/transformers-*.whl .whl/qwen_vl_utils-*.whl
  elif [ "$PHASE" = 3 ]; then
    step "install transformers + qwen-vl-utils + liger-kernel (+ transformers 5.22.2) from .whl/"
    install_wheels /tmp/site .whl/transformers-*.whl .whl/qwen_vl_utils-*.whl \
      .whl/liger_kernel-*.whl
    [ -d .whl/t522 ] && install_wheels /tmp/site_t522 .whl/t522/*.whl
  else
    step "install .whl/*.whl (+ transformers 5.22.2 for trl_gpu.py)"
    install_wheels /tmp/site .whl/*.whl
    [ -d .whl/t522 ] && install_wheels /tmp/site_t522 .whl/t522/*.whl
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
step "phase $PHASE: GPU facts"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, 'transformers', transformers.__version__)" 2>&1 | tee -a "$LOG"

# the levers (issue 25 item 2): each a recipe_gpu.py run of the shipped recipe with overrides,
# NAME:OVERRIDES; phase 3 runs them all in this order, PHASE=window those of WINDOW_LEVERS
VARIANTS=(
  "shipped:"
  "no_precompute:model.precompute_segments=false"
  "no_vision_no_grad:model.vision_no_grad=false"
  "none:model.precompute_segments=false model.vision_no_grad=false"
  "selective:model.gradient_checkpointing=selective"
  "pack16k_full:data.pack_tokens=16384 data.max_length=16384"
  "pack16k_selective:data.pack_tokens=16384 data.max_length=16384 model.gradient_checkpointing=selective"
  "liger:train.liger=true"
  "compile:train.compile=regional"
  "all:train.compile=regional train.liger=true"
  "selective_liger:model.gradient_checkpointing=selective train.liger=true"
)
T522=""
[ -d /tmp/site_t522 ] && T522=/tmp/site_t522:
LEVER_ARGS="--setups recipe --steps 2 --rounds 2 --no-kernels"
if [ -n "$DRY" ]; then LEVER_ARGS="--setups recipe --tiny --steps 1 --rounds 1 --no-kernels"; fi
LEVER_DIR=$(mktemp -d)
run_lever() {  # NAME [CAP]: one variant (a recipe_gpu.py run); $OUT/levers_gpu.json rewritten
  local name=$1 v="" x
  for x in "${VARIANTS[@]}"; do [ "${x%%:*}" = "$name" ] && v=$x; done
  if [ -z "$v" ]; then step "levers: no variant named $name"; return; fi
  local sets=() kv
  for kv in ${v#*:}; do sets+=(--set "$kv"); done
  # liger-kernel 0.8.5 patches Qwen2.5-VL only under transformers <= 5.22 (carried in t522)
  local pp=${PYTHONPATH:-} cap=${2:-${LEVER_TIMEOUT:-75}}
  case "$v" in *liger*) pp="$T522$pp" ;; esac
  if [ -z "${2:-}" ]; then case "$v" in *compile*) cap=${COMPILE_TIMEOUT:-150} ;; esac; fi
  step "levers: $name ${v#*:} (cap $cap s)"
  mkdir -p "$LEVER_DIR/$name"
  PYTHONPATH="$pp" timeout "$cap" "$PY" bench/recipe_gpu.py \
    --config configs/qwen25vl_geo.yaml $LEVER_ARGS "${sets[@]}" --out "$LEVER_DIR/$name" \
    2>&1 | tee -a "$LOG" "$LEVER_DIR/$name/log.txt"
  "$PY" - "$LEVER_DIR" "$OUT/levers_gpu.json" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
merged = {}
for d in sorted(src.iterdir()):
    f = d / "recipe_gpu.json"
    log = d / "log.txt"
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    merged[d.name] = (json.loads(f.read_text()) if f.exists()
                      else {"error": "no result: failed or timed out (see gpu.log)",
                            "log_tail": tail})
dst.write_text(json.dumps(merged, indent=1))
print("levers_gpu.json:", ", ".join(merged))
PYEOF
}

if [ "$PHASE" = window ]; then
  BUDGET=${WINDOW_BUDGET:-540}
  left_cap() {  # CAP: CAP, or what is left of the budget when less; nothing under 30 s left
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then echo ""; elif [ "$left" -lt "$1" ]; then echo "$left"
    else echo "$1"; fi
  }
  cap=$(left_cap "${TEST_TIMEOUT:-80}")
  if [ -z "$cap" ]; then step "window 1. tests/test_gpu.py not run (budget $BUDGET s spent)"
  else
    step "window 1. tests/test_gpu.py (cap $cap s)"
    timeout "$cap" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee -a "$LOG"
  fi
  RECIPE_STEPS="--steps 2 --rounds 2"
  if [ -n "$DRY" ]; then RECIPE_STEPS="--tiny --steps 1 --rounds 1"; fi
  cap=$(left_cap "${RECIPE_TIMEOUT:-240}")
  if [ -z "$cap" ]; then step "window 2. recipe_gpu.py not run (budget $BUDGET s spent)"
  else
    step "window 2. recipe_gpu.py (cap $cap s)"
    timeout "$cap" "$PY" bench/recipe_gpu.py --config configs/qwen25vl_geo.yaml $RECIPE_STEPS \
      --out "$OUT" 2>&1 | tee -a "$LOG"
  fi
  for name in ${WINDOW_LEVERS:-liger compile selective pack16k_selective all}; do
    want=${LEVER_TIMEOUT:-75}
    case "$name" in *compile*|all) want=${COMPILE_TIMEOUT:-150} ;; esac
    cap=$(left_cap "$want")
    if [ -z "$cap" ]; then step "window 3. levers: $name not run (budget $BUDGET s spent)"
    else run_lever "$name" "$cap"; fi
  done
  cap=$(left_cap "${TRL_TIMEOUT:-160}")
  if [ -z "$cap" ]; then step "window 4. trl_gpu.py not run (budget $BUDGET s spent)"; else
    step "window 4. trl_gpu.py (cap $cap s)"
    PYTHONPATH="$T522${PYTHONPATH:-}" timeout "$cap" "$PY" bench/trl_gpu.py $DRY --out "$OUT" \
      2>&1 | tee -a "$LOG"
  fi
  step "gpu.sh window done in $SECONDS s; files under $OUT"
  exit 0
fi

if [ "$PHASE" = 1 ]; then
  step "tests/test_gpu.py"
  timeout "${TEST_TIMEOUT:-80}" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 \
    | tee -a "$LOG"
  step "recipe_gpu.py"
  RECIPE_STEPS="--steps 3 --rounds 2"
  if [ -n "$DRY" ]; then RECIPE_STEPS="--tiny --steps 2 --rounds 1"; fi
  timeout "${RECIPE_TIMEOUT:-330}" "$PY" bench/recipe_gpu.py --config configs/qwen25vl_geo.yaml \
    $RECIPE_STEPS --out "$OUT" 2>&1 | tee -a "$LOG"
  if [ "${RECIPE_ONLY:-0}" = 1 ]; then
    step "gpu.sh done (RECIPE_ONLY); files under $OUT"
    exit 0
  fi
  step "objectives_gpu.py"
  timeout "${OBJECTIVES_TIMEOUT:-50}" "$PY" bench/objectives_gpu.py --shapes 3b \
    --tokens 2048,4096,8192 --reps 3 --methods chunked,chunked_rb128,chunked_c4096,naive $DRY \
    --out "$OUT/objectives_gpu.json" 2>&1 | tee -a "$LOG"
  SEARCH_ARGS="--no-search"
  if [ "${SEARCH:-0}" = 1 ]; then SEARCH_ARGS=""; fi
  step "gpu_train.py"
  timeout "${TRAIN_TIMEOUT:-120}" "$PY" bench/gpu_train.py --fused-adamw $SEARCH_ARGS $DRY \
    --methods chunked,chunked_rb128,naive --out "$OUT" 2>&1 | tee -a "$LOG"
  step "packing_gpu.py"
  timeout "${PACKING_TIMEOUT:-200}" "$PY" bench/packing_gpu.py $DRY --out "$OUT" 2>&1 \
    | tee -a "$LOG"
  step "gpu.sh phase 1 done; files under $OUT"
  exit 0
fi

if [ "$PHASE" = 4 ]; then
  step "engines_gpu.py: the tiny model and the 3B architecture"
  timeout "${ENGINES_TIMEOUT:-540}" "$PY" bench/engines_gpu.py ${DRY:+--cpu-dry-run} \
    --out "$OUT" 2>&1 | tee -a "$LOG"
  step "gpu.sh phase 4 done; files under $OUT"
  exit 0
fi

if [ "$PHASE" = 3 ]; then
  # each lever alone against the recipe as shipped, then together, and the 16k fit (the
  # recipe set-up only, 2 rounds x 2 steps, no profiled step), each capped (LEVER_TIMEOUT;
  # compile variants COMPILE_TIMEOUT), in VARIANTS' order until PHASE3_BUDGET seconds are spent
  for v in "${VARIANTS[@]}"; do
    name=${v%%:*}
    if [ "$SECONDS" -gt "${PHASE3_BUDGET:-480}" ]; then
      step "levers: $name not run (PHASE3_BUDGET ${PHASE3_BUDGET:-480} s spent)"
      continue
    fi
    run_lever "$name"
  done
  step "gpu.sh phase 3 done; files under $OUT"
  exit 0
fi

step "a. trl_gpu.py (transformers 5.22.2 if carried)"
PYTHONPATH="$T522${PYTHONPATH:-}" timeout "${TRL_TIMEOUT:-160}" "$PY" bench/trl_gpu.py $DRY \
  --out "$OUT" 2>&1 | tee -a "$LOG"
step "b. objectives_gpu.py with the Liger DFT head"
timeout "${LIGER_TIMEOUT:-60}" "$PY" bench/objectives_gpu.py --shapes 3b \
  --tokens 2048,4096,8192 --reps 3 --methods chunked,naive,liger $DRY \
  --out "$OUT/objectives_liger.json" 2>&1 | tee -a "$LOG"
step "c. eval_throughput.py --gpu"
timeout "${EVAL_TIMEOUT:-140}" "$PY" bench/eval_throughput.py --gpu $DRY --out "$OUT" 2>&1 \
  | tee -a "$LOG"
if [ -f bench/engines_gpu.py ]; then
  step "d. engines_gpu.py"
  timeout "${ENGINES_TIMEOUT:-100}" "$PY" bench/engines_gpu.py ${DRY:+--cpu-dry-run} \
    --models tiny --out "$OUT" 2>&1 | tee -a "$LOG"
else
  step "d. bench/engines_gpu.py is not in this tree: skipped"
fi
step "gpu.sh phase 2 done; files under $OUT"
