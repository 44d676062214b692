"""Objective study harness: run set-up, statistics over seeds, and a real tiny study end to end."""

import json
import statistics

import pytest
import yaml
from conftest import ROOT, TINY_CONFIG, write_tiny_data

from vldft.compare import aggregate, cli, markdown, run_config
from vldft.config import ConfigError
from vldft.study import build_study, load_base_config

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def _study_yaml(tmp_path, sweep=None, **train):
    data = write_tiny_data(tmp_path / "train.jsonl", 16)
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["data"].update(train_files=[str(data)], heldout_file=str(data))
    cfg["loss"]["sft_warmup_steps"] = 0
    cfg["train"].update(output_dir=str(tmp_path / "out"), max_steps=6, micro_batch_size=4,
                        log_every=2, eval_every=3, eval_max_samples=4, eval_max_new_tokens=8,
                        eval_batch_size=4, **train)
    if sweep is not None:
        cfg["sweep"] = sweep
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_runs_from_grid_variants_and_yaml(tmp_path):
    path = _study_yaml(tmp_path, {"variants": {"sft": {"loss.name": "sft"},
                                               "warm": {"loss.name": "dft",
                                                        "loss.sft_warmup_steps": 3}},
                                  "grid": {"train.seed": [0, 1]}})
    study = build_study(path)
    assert [r.name for r in study.runs] == ["sft_seed0", "sft_seed1", "warm_seed0",
                                            "warm_seed1"]
    assert study.out == tmp_path / "out_compare"
    assert {r.group for r in study.runs} == {"sft", "warm"}
    # a grid over objectives adds its own runs; a variant is not crossed with the axes it sets
    with pytest.raises(ConfigError, match="sft_seed0.*trained twice"):  # variant sft = grid sft
        build_study(path, grid=["loss.name=sft,dft"])
    study = build_study(_study_yaml(tmp_path, {"grid": {"train.seed": [0, 1]}}),
                        grid=["loss.name=sft,dft", "train.lr=1e-3,2e-3"],
                        variants=[["warm", "loss.name=dft", "loss.sft_warmup_steps=2"]],
                        out=tmp_path / "s")
    names = [r.name for r in study.runs]
    assert names[:4] == ["sft_lr1e-3_seed0", "sft_lr1e-3_seed1", "sft_lr2e-3_seed0",
                         "sft_lr2e-3_seed1"]
    assert len(names) == 2 * 2 * 2 + 2 * 2  # the grid, and warm x (lr x seed)
    assert "warm_lr2e-3_seed1" in names and "warm_dft_lr2e-3_seed1" not in names
    warm = next(r for r in study.runs if r.name == "warm_lr2e-3_seed1")
    assert warm.overrides[-1] == "train.seed=1" and "loss.sft_warmup_steps=2" in warm.overrides


def test_invalid_runs_fail_before_training_naming_the_key(tmp_path):
    path = _study_yaml(tmp_path)
    with pytest.raises(ConfigError, match="run lr-1: train.lr: must be > 0"):
        build_study(path, grid=["train.lr=-1"])
    with pytest.raises(ConfigError, match="train.nope: unknown key"):
        build_study(path, grid=["train.nope=1,2"])
    with pytest.raises(ConfigError, match=r"--grid 'train.lr=\[1': value"):  # not YAML
        build_study(path, grid=["train.lr=[1"])
    with pytest.raises(ConfigError, match="loss.sft_warmup_steps"):
        build_study(path, variants=[["w", "loss.sft_warmup_steps=6"]])
    with pytest.raises(ConfigError, match="data.heldout_file"):
        build_study(path, overrides=["data.heldout_file=null"])
    with pytest.raises(ConfigError, match="sweep"):
        build_study(_study_yaml(tmp_path, {"grids": {}}))
    with pytest.raises(SystemExit, match="config error"):
        cli([str(path), "--grid", "train.seed"])


def test_aggregate_mean_std_range_over_seeds():
    def row(group, seed, acc, ce):
        return {"group": group, "seed": seed, "accuracy": acc, "heldout_ce": ce,
                "train_ce": ce, "objective": ce and ce / 2, "mean_p": 0.5,
                "collapse_warnings": seed, "train_seconds": 1.0, "accuracy_by_kind": {"shape": acc},
                "accuracy_strict": acc / 2, "accuracy_strict_by_kind": {"shape": acc / 2}}

    rows = [row("sft", 0, 0.5, 1.0), row("sft", 1, 0.7, 2.0), row("sft", 2, 0.9, 3.0),
            row("dft", 0, 0.25, None)]
    table = aggregate(rows)
    sft, dft = table
    assert sft["accuracy"]["mean"] == pytest.approx(0.7)
    assert sft["accuracy"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert (sft["accuracy"]["min"], sft["accuracy"]["max"]) == (0.5, 0.9)
    assert sft["runs_with_collapse_warning"] == 2 and dft["heldout_ce"] == {"n": 0}
    md = markdown(table)
    assert "| sft (3) | 70.0 ± 20.0 [50.0, 90.0] | 35.0 ± 10.0 [25.0, 45.0] |" in md
    assert "| dft (1) | 25.0 | 12.5 | n/a |" in md
    lenient, strict = md.split("Held-out accuracy by kind")[1:]
    assert "| sft | 70.0 ± 20.0 |" in lenient and "| sft | 35.0 ± 10.0 |" in strict
    # runs scored before strict scoring existed: n/a there, no empty table
    old = [{k: v for k, v in r.items() if "strict" not in k} for r in rows]
    md_old = markdown(aggregate(old))
    assert "stated answers only (%" not in md_old and "| dft (1) | 25.0 | n/a | n/a |" in md_old


def test_tiny_study_end_to_end_resume_and_array_index(tmp_path, monkeypatch):
    path = _study_yaml(tmp_path, {"variants": {"sft": {"loss.name": "sft"},
                                               "dft": {"loss.name": "dft"}},
                                  "grid": {"train.seed": [0, 1]}, "out": str(tmp_path / "st")})
    study = cli([str(path)])
    out = tmp_path / "st"
    res = json.loads((out / "results.json").read_text())
    assert [g["group"] for g in res["groups"]] == ["sft", "dft"]
    assert all(g["runs"] == 2 and g["seeds"] == [0, 1] for g in res["groups"])
    for run in res["runs"]:
        assert [h["step"] for h in run["curves"]["heldout"]] == [3, 6]
        assert [c["step"] for c in run["curves"]["logs"]] == [2, 4, 6]
        assert run["accuracy"] is not None and run["heldout_ce"] > 0
        assert 0 <= run["accuracy_strict"] <= run["accuracy"]
    # the same seed gives the same run; different seeds differ
    by = {r["name"]: r for r in res["runs"]}
    assert by["sft_seed0"]["train_ce"] != by["sft_seed1"]["train_ce"]
    assert by["sft_seed0"]["objective"] == pytest.approx(by["sft_seed0"]["train_ce"])
    assert by["dft_seed0"]["objective"] < by["dft_seed0"]["train_ce"]
    assert (out / "compare.png").is_file() and (out / "results.md").is_file()
    assert "sft (2)" in (out / "results.md").read_text()
    assert len((out / "results.csv").read_text().splitlines()) == 5

    # finished runs are not retrained
    summary = out / "runs" / "sft_seed0" / "summary.json"
    before = summary.stat().st_mtime_ns
    cli([str(path)])
    assert summary.stat().st_mtime_ns == before

    # the same study folder with another base setting: its finished runs are other runs
    # (they were reported as this study's numbers)
    for extra in ([], ["--report"]):
        with pytest.raises(SystemExit, match=r"holds run sft_seed0 trained with other settings "
                                             r"\(train.max_steps: 6 -> 4\); --force"):
            cli([str(path), "train.max_steps=4", *extra])

    # --force retrains a run through train.overwrite, under the run directory's lock: while
    # another process holds the directory nothing of it is removed
    from vldft.run_dir import lock_output_dir, release_output_dirs

    lock_output_dir(summary.parent)
    try:
        with pytest.raises(SystemExit, match="is in use"):
            cli([str(path), "train.max_steps=4", "--force", "--index", "0"])
    finally:
        release_output_dirs()
    assert summary.stat().st_mtime_ns == before
    cli([str(path), "train.max_steps=4", "--force", "--index", "0"])
    assert json.loads(summary.read_text())["steps"] == 4

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    cli([str(path), "--out", str(tmp_path / "arr")])
    done = sorted(p.parent.name for p in (tmp_path / "arr").glob("runs/*/summary.json"))
    assert done == [study.runs[2].name] == ["dft_seed0"]
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    cli([str(path), "--out", str(tmp_path / "arr"), "--report"])
    res = json.loads((tmp_path / "arr" / "results.json").read_text())
    assert res["missing"] == ["sft_seed0", "sft_seed1", "dft_seed1"]
    with pytest.raises(SystemExit, match="--index 9"):
        cli([str(path), "--index", "9"])


def test_shipped_study_config_and_its_command_line():
    """configs/study_geo.yaml: its sweep section gives the 5 objectives x 3 seeds from the
    shipped prior, scored on the study split; its header's command is the sweep alone, and the
    file loads as a training config without the sweep section."""
    path = ROOT / "configs/study_geo.yaml"
    header = " ".join(line.lstrip("# ").rstrip("\\ ") for line in path.read_text().splitlines()
                      if line.startswith("#"))
    cmd = header.split("python -m vldft.compare ", 1)[1].split(" (add", 1)[0].split()
    assert cmd == ["configs/study_geo.yaml"]
    study = cli([str(path), "--list"])
    assert [r.group for r in study.runs][::3] == ["sft", "dft", "dft_minw", "asft", "chord"]
    assert {r.settings["train.seed"] for r in study.runs} == {0, 1, 2}
    cfg = load_base_config(path, ["train.lr=1e-3"])
    assert cfg.train.lr == 1e-3 and cfg.data.heldout_file.endswith("study.jsonl")
    assert cfg.model.name_or_path.endswith("tiny-qwen25vl-geo") and not cfg.model.tiny


def test_a_signal_stops_the_study_and_the_rerun_continues_the_run(tmp_path, monkeypatch,
                                                                   capsys):
    """SIGTERM in a study's first run: the study stops there (exit 0; the next run was
    started, so a scheduler's signal never stopped it), the stopped run is not tabulated nor
    'already done', and the same command continues it from its checkpoint."""
    import vldft.state

    path = _study_yaml(tmp_path, {"grid": {"train.seed": [0, 1]}, "out": str(tmp_path / "st")},
                       save_every=2)
    calls, real = {"n": 0}, vldft.state.StopRequest.agreed

    def agreed(self, accelerator):
        calls["n"] += 1
        return "SIGTERM" if calls["n"] == 3 else None

    monkeypatch.setattr(vldft.state.StopRequest, "agreed", agreed)
    with pytest.raises(SystemExit) as e:
        cli([str(path)])
    assert e.value.code == 0
    runs = tmp_path / "st" / "runs"
    (first,) = [p.parent.name for p in runs.glob("*/summary.json")]
    summary = json.loads((runs / first / "summary.json").read_text())
    assert summary["stopped"] == "SIGTERM" and summary["steps"] == 3
    assert "stopped (SIGTERM) in" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=rf"no finished run .* \(interrupted: {first};"):
        cli([str(path), "--report"])
    monkeypatch.setattr(vldft.state.StopRequest, "agreed", real)
    cli([str(path)])
    said = capsys.readouterr().out
    assert f"{first} was stopped at step 3 (SIGTERM): continuing it" in said
    assert json.loads((runs / first / "summary.json").read_text())["steps"] == 6
    res = json.loads((tmp_path / "st" / "results.json").read_text())
    assert len(res["runs"]) == 2 and res["interrupted"] == [] and res["missing"] == []


def test_a_run_with_one_logged_point_is_drawn(tmp_path):
    """A run shorter than train.log_every logs one point: drawn as a marker (a line of one
    point drew nothing), and no held-out accuracy gives no empty-legend warning."""
    import warnings

    pytest.importorskip("matplotlib")
    from vldft.compare import plot

    rows = [{"group": "a", "seed": 0, "name": "a0", "curves": {
        "heldout": [], "logs": [{"step": 2, "ce": 1.0, "loss": 0.5, "mean_p": 0.3}]}}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot(rows, tmp_path / "c.png") == tmp_path / "c.png"


def test_a_shipped_study_writes_to_the_working_directory(tmp_path, monkeypatch):
    """The shipped study file run from another directory (or from an installed package, whose
    copy lies in site-packages) puts its study under the working directory: its sweep.out, a
    --out, and the runs' folders; a --out given beside a user's study file outside the working
    directory is taken from the working directory too, as any command-line path."""
    monkeypatch.chdir(tmp_path)
    study = build_study(ROOT / "configs/study_geo.yaml")
    assert study.out == tmp_path / "runs/study_geo"
    # the command line's folders too (they resolved in the bundle: site-packages)
    study = build_study(ROOT / "configs/study_geo.yaml", ["data.data_dir=dl"])
    assert run_config(study, study.runs[0]).data_root() == tmp_path / "dl"
    assert build_study(ROOT / "configs/study_geo.yaml", out="x").out == tmp_path / "x"
    (tmp_path / "team").mkdir()
    path = _study_yaml(tmp_path / "team")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert build_study(path, out="mine").out == tmp_path / "work/mine"
    assert build_study(path).out == tmp_path / "team/out_compare"
