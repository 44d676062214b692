"""Shared test pieces: repository paths, the demo config, the tiny demo data and env fixtures.

Test modules import the plain helpers (``from conftest import ROOT, demo_config, ...``; pytest
puts ``tests/`` on ``sys.path``) and request the fixtures by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs/demo.yaml"  # fine-tunes the shipped prior (priors/)
TINY_CONFIG = ROOT / "tests/tiny_demo.yaml"  # a tiny random model on the demo data
DEMO_DATA = ROOT / "data/geo_demo/train.jsonl"
DEMO_HELDOUT = ROOT / "data/geo_demo/heldout.jsonl"


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory):
    """The training-set cache (``vldft.data.cache``) and the default data dir of every test
    (and of the subprocesses they start) go to this session's temporary folder, never to the
    user's ``~/.cache/vldft``."""
    import os

    root = tmp_path_factory.mktemp("vldft_cache")
    saved = {k: os.environ.get(k) for k in ("VLDFT_CACHE_DIR", "VLDFT_DATA_DIR")}
    os.environ["VLDFT_CACHE_DIR"] = str(root / "sets")
    os.environ["VLDFT_DATA_DIR"] = str(root / "data")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# what a source distribution holds (setup.py / MANIFEST.in): copied for packaging tests
PACKAGE_SOURCES = ["vldft", "eval", "data", "configs", "priors", "pyproject.toml", "setup.py",
                   "MANIFEST.in", "README.md"]


def copy_sources(dst: Path) -> Path:
    """The package's sources (``PACKAGE_SOURCES``) copied to ``dst``, without caches, egg-info
    or a bundled copy: a clean tree to build an sdist or a wheel from. Returns ``dst``."""
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "_bundled")
    dst.mkdir(parents=True, exist_ok=True)
    for name in PACKAGE_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dst / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, dst / name)
    return dst


_PORTS: dict[str, object] = {}


def free_port() -> int:
    """A TCP port free on this machine now (for torchrun's --master_port in tests). Taken from
    a range of this pytest-xdist worker's own (gw0: 12000-15999, gw1: 16000-19999, ... up to 5
    workers), below the ephemeral ports the kernel hands out (32768 and up here), from a random
    start, and not the same again until the range has gone round: the other worker, or a gloo
    connection of a running test, is not given it between this check and the launch binding it
    (bind(0) would hand out an ephemeral port, free for anyone until torchrun binds it)."""
    import itertools
    import os
    import random
    import socket

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if worker not in _PORTS:
        base = 12000 + 4000 * (int(worker.removeprefix("gw") or 0) % 5)
        start = random.randrange(4000)  # then round the worker's range
        _PORTS[worker] = itertools.cycle([*range(base + start, base + 4000),
                                          *range(base, base + start)])
    for _ in range(4000):
        port = next(_PORTS[worker])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in this test worker's range ({worker})")


def torchrun_worker(script: str, *args: str, timeout: int = 400):
    """``tests/<script>`` under torchrun on 2 CPU processes (one thread each, the tests folder
    importable, no inherited rank variables); returns the JSON lines rank 0 printed, after
    asserting the launch succeeded."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), str(ROOT / "tests" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def demo_config(*overrides: str):
    """``tests/tiny_demo.yaml`` (a tiny random model on the demo data) loaded with dotted
    ``key=value`` overrides."""
    from vldft.config import load_config

    return load_config(TINY_CONFIG, list(overrides))


def tiny_demo_rows(n: int, kind: str | None = None) -> list[dict]:
    """The first ``n`` demo training rows (of one ``kind`` if given), image paths absolute."""
    rows = [json.loads(r) for r in DEMO_DATA.read_text().splitlines()]
    rows = [r for r in rows if kind is None or r["kind"] == kind][:n]
    for r in rows:
        r["images"] = [str(DEMO_DATA.parent / p) for p in r["images"]]
    return rows


def write_tiny_data(path: Path, n: int, kind: str | None = None) -> Path:
    """:func:`tiny_demo_rows` written as JSONL to ``path``; returns ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in tiny_demo_rows(n, kind)))
    return path


@pytest.fixture
def hf_offline(monkeypatch):
    """No hub access (a download attempt fails the test instead of hanging) and no eval-data
    environment overrides leaking in from the caller's shell."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    for var in ("VLDFT_EVAL_DATA", "VLDFT_GEO_HELDOUT", "VLDFT_GEOMETRY3K"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a shared, busy CPU two
    spinning OpenMP threads made training ~10x slower (measured: 134 s vs 14 s, 25 steps)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_weights(a: Path, b: Path, rtol: float = 1e-5) -> None:
    """The ``model.safetensors`` of two checkpoint dirs hold the same tensors: each within
    ``rtol`` relative and ``rtol x`` its largest entry absolute (DDP vs one process)."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        scale = float(wa[name].abs().max()) or 1.0
        assert torch.allclose(wb[name], wa[name], rtol=rtol, atol=rtol * scale), name


def record_generate(monkeypatch, model) -> list[dict]:
    """``model.generate`` replaced by a recorder: each call's keyword arguments (the processor's
    inputs) are appended to the returned list, and the prompt comes back as the output."""
    seen: list[dict] = []

    def fake_generate(**kw):
        seen.append(kw)
        return kw["input_ids"]

    monkeypatch.setattr(model, "generate", fake_generate)
    return seen
