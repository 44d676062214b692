"""A non-editable install is complete: the sdist and the wheel built from it carry the files the
commands read (eval/ task YAMLs + pins.txt, the demo data, configs/; ``vldft.resources``), and
the installed copy, imported from outside the checkout, evaluates the bundled task and trains'
``--help``. Builds with the running interpreter's setuptools (no network, no build isolation)."""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, copy_sources

from vldft.resources import BUNDLE

TIMEOUT = 300  # seconds per subprocess (the whole module takes ~60-90 s on 2 CPU cores)


def bundled_files() -> set[str]:
    """Repository paths that must be in the package (``vldft.resources.BUNDLE``)."""
    files = {p.relative_to(ROOT).as_posix() for top, pats in BUNDLE.items() for pat in pats
             for p in (ROOT / top).glob(pat) if p.is_file()}
    assert {"eval/vldft_geo_heldout.yaml", "eval/geoqa.yaml", "eval/pins.txt",
            "configs/demo.yaml", "data/geo_demo/train.jsonl",
            "data/geo_demo/heldout.jsonl", "data/geo_demo/study.jsonl",
            "priors/tiny-qwen25vl-geo/model.safetensors",
            "priors/tiny-qwen25vl-geo/config.json"} <= files
    return files


def env(site: Path | None = None) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
         "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
              "VLDFT_EVAL_DATA", "VLDFT_GEO_HELDOUT"):
        e.pop(k, None)
    if site is not None:  # the installed copy first, never the checkout
        e["PYTHONPATH"] = str(site)
    return e


def run(cmd: list[str], cwd: Path, site: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(site), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, f"{cmd}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """sdist from a clean copy of the sources, the wheel from the unpacked sdist, installed
    with ``pip install --no-deps --target``."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = copy_sources(tmp / "src")
    dist = tmp / "dist"
    build = "from setuptools import build_meta as b; import sys; print(b.build_{}(sys.argv[1]))"
    sdist = dist / run([sys.executable, "-c", build.format("sdist"), str(dist)], src
                       ).strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = dist / run([sys.executable, "-c", build.format("wheel"), str(dist)], unpacked
                       ).strip().splitlines()[-1]
    site = tmp / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--target", str(site), str(wheel)], tmp)
    work = tmp / "work"  # a cwd outside the checkout
    work.mkdir()
    return {"sdist": sdist, "wheel": wheel, "site": site, "work": work}


def test_sdist_and_wheel_carry_the_bundled_files(built):
    want = bundled_files()
    with tarfile.open(built["sdist"]) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert want <= in_sdist, sorted(want - in_sdist)[:10]
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    assert {f"vldft/_bundled/{f}" for f in want} <= names
    # every package of the checkout is in the wheel
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "vldft").rglob(
        "__init__.py") if "__pycache__" not in p.parts}
    assert {f"{p}/__init__.py" for p in packages} <= names
    entry_points = zipfile.ZipFile(built["wheel"]).read(
        "vldft-0.1.0.dist-info/entry_points.txt").decode()
    for script in ("vldft-train", "vldft-eval", "vldft-data", "vldft-probe", "vldft-compare",
                   "vldft-collate"):
        assert f"{script} = " in entry_points


def test_installed_copy_evaluates_the_bundled_task_and_has_help(built):
    pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")
    site, work = built["site"], built["work"]
    # the installed copy is the one imported, and its resources are its own
    # and so is lmms-eval's entry point and the task folder it adds (tests/test_lmms_cli.py runs
    # lmms-eval's own command line through them)
    out = run([sys.executable, "-c",
               "import vldft, importlib.metadata as m; from vldft.resources import resource; "
               "from vldft.eval.run import TASK_DIR; from vldft.eval.plugin import task_dir; "
               "print(vldft.__file__); print(TASK_DIR); print(resource('configs/demo.yaml')); "
               "print(task_dir()); print([e.dist.locate_file('') for e in m.entry_points("
               "group='lmms_eval.models') if e.name == 'vldft'][0])"], work, site)
    module, task_dir, demo, plugin_dir, entry_point = out.strip().splitlines()
    for path in (module, task_dir, demo, plugin_dir, entry_point):
        assert Path(path).resolve().is_relative_to(site.resolve()), out
    assert (Path(task_dir) / "vldft_geo_heldout.yaml").is_file()
    # a tiny checkpoint from the installed demo config (its data paths resolve in the package)
    ckpt = work / "ckpt"
    run([sys.executable, "-c",
         "import sys; from vldft.adapters import load_adapter; from vldft.config import "
         "load_config; from vldft.resources import resource; "
         "load_adapter(load_config(resource('configs/demo.yaml')).model).save(sys.argv[1])",
         str(ckpt)], work, site)
    run([sys.executable, "-m", "vldft.eval", "--model", str(ckpt), "--tasks",
         "vldft_geo_heldout", "--limit", "2", "--out", str(work / "e"), "--max-new-tokens", "4",
         "--batch-size", "2"], work, site)
    assert (work / "e" / "results.json").is_file()
    assert len((work / "e" / "samples_vldft_geo_heldout.jsonl").read_text().splitlines()) == 2
    help_text = run([sys.executable, "-m", "vldft.train", "--help"], work, site)
    assert "--print-config" in help_text and "section.key=value" in help_text
