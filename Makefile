# The two set-up commands of the README. Both create .venv on first use (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo video-demo prior test test-slow lint eval-env

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# the demo needs only vldft itself (+ matplotlib for its plots)
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[plot]"
	touch $@

# evaluation: the eval extra (lmms-eval, ...) plus eval/pins.txt, math-verify + antlr4 versions
# pip's resolver cannot pick (see that file); `make test` installs it too, to run the eval tests
$(VENV)/.eval-installed: pyproject.toml eval/pins.txt | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[eval,plot]"
	$(BIN)/pip install --quiet --no-deps -r eval/pins.txt
	touch $@

# DeepSpeed (the deepspeed extra; tests/test_deepspeed.py runs ZeRO-2 / ZeRO-3 on 2 CPU processes):
# PyPI has only its sdist, whose setup reads the installed torch, so it builds without isolation
# once torch is in the venv (setuptools for that build); DS_BUILD_OPS=0: no compiled ops
$(VENV)/.installed: pyproject.toml eval/pins.txt | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev,eval]"
	$(BIN)/pip install --quiet --no-deps -r eval/pins.txt
	$(BIN)/pip install --quiet "setuptools>=77"
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --no-build-isolation "deepspeed==0.19.8"
	touch $@ $(VENV)/.eval-installed $(VENV)/.demo-installed

# train, then score the held-out set again with blank and with shuffled images: the image-only
# kinds fall to chance there if the model reads the picture (equal figures: it does not)
demo: $(VENV)/.demo-installed
	$(BIN)/python -m vldft.train configs/demo.yaml
	$(BIN)/python -m vldft.heldout runs/demo/final data/geo_demo/heldout.jsonl --controls blank,shuffled

# does a model use time? generate clips whose answer needs several frames, train a tiny model
# from random init (~1-2 minutes), score it as is and with one frozen frame / shuffled frames
video-demo: $(VENV)/.demo-installed
	$(BIN)/python -m vldft.data.synth_video runs/video_data --train 640 --heldout 80 --seed 0
	$(BIN)/python -m vldft.train configs/video_demo.yaml
	$(BIN)/python -m vldft.heldout runs/video_demo/final runs/video_data/heldout.jsonl --controls frozen_frame,shuffled_frames

# rebuild the shipped prior (priors/tiny-qwen25vl-geo, what configs/demo.yaml fine-tunes):
# generate its pre-training data, train configs/prior.yaml from scratch (stage 1: SFT, 6,000
# steps, ~22 minutes), continue with configs/prior_shapes.yaml on a shape-heavier mix (stage 2:
# 2,000 steps, ~8 minutes), score it with and without its images, copy it over the shipped one.
# One thread per process: the floating-point path the shipped checkpoint was made on.
PRIOR_KINDS := name_shape,describe_shape,count_dots,describe_dots,colour
# a kind listed more than once is drawn more often: 5 of 8 draws are shapes
PRIOR_SHAPE_KINDS := name_shape,name_shape,name_shape,describe_shape,describe_shape,count_dots,describe_dots,colour
prior: $(VENV)/.demo-installed
	$(BIN)/python -m vldft.data.synth --out runs/prior_data --kinds $(PRIOR_KINDS) \
	  --n-train 128000 --n-heldout 300 --seed 1
	OMP_NUM_THREADS=1 $(BIN)/python -m vldft.train configs/prior.yaml train.overwrite=true
	$(BIN)/python -m vldft.data.synth --out runs/prior_data_shapes --kinds $(PRIOR_SHAPE_KINDS) \
	  --n-train 40000 --n-heldout 300 --seed 2
	OMP_NUM_THREADS=1 $(BIN)/python -m vldft.train configs/prior_shapes.yaml train.overwrite=true
	$(BIN)/python -m vldft.heldout runs/prior_shapes/final runs/prior_data/heldout.jsonl \
	  --controls blank,shuffled --max-new-tokens 48
	cp runs/prior_shapes/final/*.json runs/prior_shapes/final/*.jinja \
	  runs/prior_shapes/final/model.safetensors priors/tiny-qwen25vl-geo/

eval-env: $(VENV)/.eval-installed

# the default tests in TEST_WORKERS processes (pytest-xdist; whole files per worker, so a file's
# shared fixtures are built once). Much of the suite is single-threaded (one-thread fixtures,
# OMP_NUM_THREADS=1 subprocesses, start-up and I/O), so 2 workers on this 2-core box are much
# faster than one process (README has the measured runs); TEST_WORKERS=0: one process
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports  # the one-way layers of docs/architecture.md (pyproject.toml)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# end-to-end checks whose parts the default run covers (e.g. 2-process DDP with packing, ~70 s)
test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports
