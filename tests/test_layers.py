"""The one-way layers of docs/architecture.md, as pyproject.toml's import-linter contract."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _lint_imports() -> str | None:
    exe = Path(sys.executable).with_name("lint-imports")
    return str(exe) if exe.exists() else shutil.which("lint-imports")


def test_import_layers_kept():
    exe = _lint_imports()
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    r = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_module_has_a_layer():
    """import-linter's layers contract cannot be exhaustive without containers: check here that
    every top-level module / package of vldft/ is placed in a layer."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in cfg["contracts"] if c["type"] == "layers"]
    placed = {m.strip() for layer in layers for m in layer.split("|")}
    pkg = ROOT / "vldft"
    modules = {f"vldft.{p.stem}" for p in pkg.glob("*.py") if p.stem != "__init__"}
    modules |= {f"vldft.{p.parent.name}" for p in pkg.glob("*/__init__.py")}
    assert modules - placed == set(), "add these to a layer in pyproject.toml"
