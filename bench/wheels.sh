#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels bench/gpu.sh installs on the lent GPU machine, which has
# no network. Run here, where PyPI is reachable, from the repository root:
#   bash bench/wheels.sh                 # -> .whl/*.whl, prints the total size
#   DS_WHEEL=/tmp/dswheel/deepspeed-0.19.8-py3-none-any.whl bash bench/wheels.sh  # reuse a build
# The GPU image (Python 3.12, torch 2.11 + CUDA, transformers 5.17, accelerate, numpy, pandas,
# pyarrow, msgpack, ninja, py-cpuinfo, einops, psutil, ...: its package list) lacks:
#   phase 1  transformers >= 5.20 (vldft's floor; 5.24.0 ran there before), qwen-vl-utils
#   phase 2  trl 1.16 + datasets / dill / multiprocess; liger-kernel 0.8.5; DeepSpeed 0.19.8
#            built without its compiled ops (pure Python; ops JIT-build there with ninja if one
#            is asked for) + hjson and pydantic (+ pydantic-core, annotated-types,
#            typing-inspection, typing-extensions >= 4.16); lmms-eval 0.7.3 (vldft.eval's model
#            class and train.eval_tasks) + what its evaluator imports that is not there
#            (evaluate, loguru, tenacity, pytablewriter and its helpers, eval/pins.txt).
# Each wheel is installed there with --no-deps: every requirement missing there is named here.
# The whole working tree travels with each call (64 MiB at most): keep .whl/ under ~40 MiB.
# Then `bash bench/gpu.sh` there (PHASE=1 to 4) installs what each phase needs: see its header.
set -euo pipefail
WHL=${WHL:-.whl}
PY=${PYTHON:-.venv/bin/python}
rm -rf "$WHL"
mkdir -p "$WHL"
PKGS=(
  transformers==5.24.0 qwen-vl-utils==0.0.14
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  liger-kernel==0.8.5
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0
  lmms-eval==0.7.3 evaluate==0.4.6 loguru==0.7.3 tenacity==9.2.1 math-verify==0.9.0
  latex2sympy2==1.9.1 latex2sympy2-extended==1.11.0 pytablewriter==1.2.1 dataproperty==1.1.1
  mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5
  chardet==6.0.0.post1
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$WHL" "${PKGS[@]}"
# sdist only (pure Python): eval/pins.txt's antlr4 4.9.3, with which latex2sympy2 and
# math-verify both import (docs/evaluation.md)
"$PY" -m pip wheel -q --no-deps -w "$WHL" antlr4-python3-runtime==4.9.3
if [ -n "${DS_WHEEL:-}" ]; then
  cp "$DS_WHEEL" "$WHL/"
else  # needs torch in this interpreter (--no-build-isolation); DS_BUILD_OPS=0: no C++/CUDA ops
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHL" deepspeed==0.19.8
fi
# trl_gpu.py's own transformers (gpu.sh phase 2 puts it first on its PYTHONPATH): liger-kernel
# 0.8.5's Qwen2.5-VL patch (TRL's use_liger_kernel=True, vldft's train.liger) imports
# Qwen2_5_VLCausalLMOutputWithPast, which transformers 5.23 removed; 5.22.2 still has it
mkdir -p "$WHL/t522"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform any -d "$WHL/t522" transformers==5.22.2
# one version of each: two stop the whole install there
dups=$(ls "$WHL" | sed 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dups" ]; then echo "two versions of: $dups" >&2; exit 1; fi
ls -l "$WHL" "$WHL/t522"
whl=$(du -cb "$WHL"/*.whl "$WHL"/t522/*.whl | tail -1 | cut -f1)
repo=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "wheels: $(ls "$WHL"/*.whl "$WHL"/t522/*.whl | wc -l) files, $whl bytes" \
  "($((whl / 1048576)) MiB); repository files: $repo bytes; together $(((whl + repo) / 1048576))" \
  "MiB of the 64 MiB a device call carries"
