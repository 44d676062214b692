"""lmms-eval's own command line finds vldft's tasks with no include path, from the checkout (the
editable install) and from an installed wheel, with the working directory outside the checkout;
``python -m vldft.eval`` stops non-zero on a task nobody knows.

lmms-eval has no entry-point group for tasks: vldft's ``lmms_eval.models`` entry point
(``vldft.eval.plugin``), which lmms-eval loads with its model registry, adds vldft's task folder
to every ``TaskManager``. Each command line takes ~30 s on 2 busy cores, most of it lmms-eval's
import and task index; the shipped prior is the checkpoint. The wheel's run is in ``make
test-slow``: the default run checks the wheel's entry point in tests/test_package.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, copy_sources

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")

from vldft.eval.plugin import register_tasks, task_dir  # noqa: E402

PRIOR = "priors/tiny-qwen25vl-geo"
TIMEOUT = 420


def _env(site: Path | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for k in ("PYTHONPATH", "WORLD_SIZE", "RANK", "LOCAL_RANK", "VLDFT_EVAL_DATA",
              "VLDFT_GEO_HELDOUT"):
        env.pop(k, None)
    if site is not None:  # the installed copy first, never the checkout
        env["PYTHONPATH"] = str(site)
    return env


def _wheel_site(tmp: Path) -> Path:
    """vldft built as a wheel from a copy of the sources (no network, no build isolation) and
    installed with ``pip install --no-deps --target``: a non-checkout copy."""
    src = copy_sources(tmp / "src")
    build = "from setuptools import build_meta as b; import sys; print(b.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", build, str(tmp / "dist")], cwd=src, text=True,
                          capture_output=True, env=_env(None), timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = tmp / "dist" / done.stdout.strip().splitlines()[-1]
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--target", str(site), str(wheel)], check=True, env=_env(None),
                   timeout=TIMEOUT)
    return site


def _lmms_eval(ckpt: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lmms_eval", "--model", "vldft", "--model_args",
            f"pretrained={ckpt}", "--tasks", "vldft_geo_heldout", "--limit", "2", "--device",
            "cpu", "--batch_size", "2", "--output_path", str(out), "--log_samples"]


def _results(out: Path) -> dict:
    (path,) = out.glob("*/*_results.json")  # lmms-eval: OUT/<model>/<date>_results.json
    return json.loads(path.read_text())


def _check_lmms_run(name: str, log: str, code: int, out: Path) -> None:
    assert code == 0 and "Tasks not found" not in log, f"{name}:\n{log[-4000:]}"
    results = _results(out)
    assert "accuracy,none" in results["results"]["vldft_geo_heldout"], results["results"]
    assert results["n-samples"]["vldft_geo_heldout"]["effective"] == 2
    (samples,) = out.glob("*/*_samples_vldft_geo_heldout.jsonl")
    assert len(samples.read_text().splitlines()) == 2


def test_lmms_eval_cli_finds_vldft_tasks_from_the_checkout(tmp_path):
    work = tmp_path / "work"  # outside the checkout
    work.mkdir()
    runs = {
        "checkout": subprocess.Popen(_lmms_eval(ROOT / PRIOR, work / "checkout"), cwd=work,
                                     env=_env(None), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True),
        # vldft's own CLI: any unknown task is a one-line error and a non-zero exit
        "unknown": subprocess.Popen(
            [sys.executable, "-m", "vldft.eval", "--model", str(ROOT / PRIOR), "--tasks",
             "vldft_geo_heldout,nosuchtask", "--out", str(work / "unknown")], cwd=work,
            env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    done = {k: (p.communicate(timeout=TIMEOUT), p.returncode) for k, p in runs.items()}
    (log, _), code = done["checkout"]
    _check_lmms_run("checkout", log, code, work / "checkout")
    (_, err), code = done["unknown"]
    last = err.strip().splitlines()[-1]
    assert code != 0 and last.startswith("[vldft] error: task 'nosuchtask' is not known"), err
    assert not (work / "unknown" / "results.json").exists()


# covered in parts by the default run: the checkout test above (lmms-eval's CLI through the
# entry point) and test_package.py::test_installed_copy_evaluates_the_bundled_task_and_has_help
# (a wheel's entry point and task folder are its own; it evaluates the bundled task)
@pytest.mark.slow
def test_lmms_eval_cli_finds_vldft_tasks_from_a_wheel(tmp_path):
    site = _wheel_site(tmp_path / "wheel")
    work = tmp_path / "work"  # outside the checkout
    work.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import vldft, importlib.metadata as m; from vldft.eval.plugin "
         "import task_dir; print(vldft.__file__); print(task_dir()); print([e.dist.locate_file("
         "'') for e in m.entry_points(group='lmms_eval.models') if e.name == 'vldft'][0])"],
        cwd=work, env=_env(site), capture_output=True, text=True, timeout=TIMEOUT)
    assert where.returncode == 0, where.stderr[-3000:]
    for path in where.stdout.split("\n")[:3]:  # module, task folder, entry point: the wheel's
        assert Path(path).resolve().is_relative_to(site.resolve()), where.stdout
    done = subprocess.run(_lmms_eval(site / "vldft/_bundled" / PRIOR, work / "wheel"), cwd=work,
                          env=_env(site), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=TIMEOUT)
    _check_lmms_run("wheel", done.stdout, done.returncode, work / "wheel")


def test_every_task_manager_indexes_vldft_tasks_once_and_user_folders_win(tmp_path):
    """The registration the entry point makes: lmms-eval's ``TaskManager`` (with or without an
    include path) indexes vldft's folder once; a user's task of the same name wins."""
    import lmms_eval.models  # noqa: F401 - building lmms-eval's registry calls the entry point
    from lmms_eval.tasks import TaskManager

    assert register_tasks() and register_tasks()  # registered (idempotent)
    assert Path(task_dir()) == ROOT / "eval"  # the checkout's folder here
    tm = TaskManager("ERROR", include_defaults=False)
    assert {"geoqa", "vldft_geo_heldout"} <= set(tm.all_tasks)
    assert Path(tm.task_index["geoqa"]["yaml_path"]).parent == ROOT / "eval"
    same = TaskManager("ERROR", include_path=str(ROOT / "eval"), include_defaults=False)
    assert same.all_tasks == tm.all_tasks
    (tmp_path / "geoqa.yaml").write_text("task: geoqa\ndataset_path: mine\ntest_split: test\n"
                                         "output_type: generate_until\ndoc_to_text: q\n")
    mine = TaskManager("ERROR", include_path=[str(tmp_path)], include_defaults=False)
    assert mine.task_index["geoqa"]["yaml_path"] == str(tmp_path / "geoqa.yaml")
    assert "vldft_geo_heldout" in mine.all_tasks
