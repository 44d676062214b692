"""Output directories have one owner: ``run.json`` fingerprints the run; another run, a finished
run or ``train.resume=none`` there is refused in one line before the model loads
(``train.overwrite=true`` replaces it), a finished run re-run is a no-op, an interrupted run with
the same settings resumes."""

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, TINY_CONFIG, demo_config, tiny_demo_rows, write_tiny_data

import vldft.run_dir
import vldft.train
from vldft.config import config_to_dict, load_config
from vldft.run_dir import fingerprint, remove_run
from vldft.state import data_changes
from vldft.train import main as train_main

STEPS = 6


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data") / "train.jsonl", 48)


def config(data: Path, out: Path, *extra: str):
    return demo_config(
        f"data.train_files=[{data}]", "data.heldout_file=null", f"train.output_dir={out}",
        f"train.max_steps={STEPS}", "train.micro_batch_size=8", "train.log_every=2",
        "loss.sft_warmup_steps=2", "train.eval_max_samples=0", "train.save_every=2",
        "train.keep_checkpoints=0", "train.lr=2e-3", "loss.name=dft", *extra)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_file) -> Path:
    """A finished 6-step run with checkpoint-2 and checkpoint-4 kept."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train_main(config(data_file, out))
    return out


@pytest.fixture
def no_model(monkeypatch):
    """A refusal must come before any model loads."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(vldft.train, "load_adapter", refuse)


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def snapshot(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("record", ["run.json", "legacy: checkpoint config", "legacy: no ckpt"])
def test_different_lr_into_a_used_dir_is_refused(finished, data_file, tmp_path, no_model,
                                                 record):
    out = copy_run(finished, tmp_path)
    assert (out / "run.json").is_file()
    if record != "run.json":  # a directory written before run.json existed
        (out / "run.json").unlink()
    if record == "legacy: no ckpt":  # a finished run without checkpoint-*: config.yaml says
        for p in out.glob("checkpoint-*"):
            shutil.rmtree(p)
    before = snapshot(out)
    with pytest.raises(SystemExit) as e:
        train_main(config(data_file, out, "train.lr=5e-4", "loss.name=sft"))
    msg = str(e.value)
    assert "\n" not in msg and "train.lr: 0.002 -> 0.0005" in msg, msg
    assert 'loss.name: "dft" -> "sft"' in msg and "train.overwrite=true" in msg, msg
    assert snapshot(out) == before  # nothing was written


def test_finished_run_rerun_is_a_noop(finished, data_file, tmp_path, no_model, capsys):
    out = copy_run(finished, tmp_path)
    before = snapshot(out)
    final_mtime = (out / "final").stat().st_mtime_ns
    # logging / saving keys are not part of the fingerprint
    summary = train_main(config(data_file, out, "train.log_every=3", "train.keep_checkpoints=1"))
    assert "already holds this run, finished" in capsys.readouterr().out
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS
    assert snapshot(out) == before and (out / "final").stat().st_mtime_ns == final_mtime


def test_resume_none_in_a_used_dir_is_refused_then_overwrite_starts_over(finished, data_file,
                                                                         tmp_path, monkeypatch):
    out = copy_run(finished, tmp_path)
    (out / "notes.txt").write_text("mine")  # a user's file: kept
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (out / "eval").mkdir()
    (out / "eval" / "step-2").symlink_to(outside, target_is_directory=True)  # never followed
    with monkeypatch.context() as m:
        m.setattr(vldft.train, "load_adapter", lambda *a, **k: pytest.fail("model loaded"))
        with pytest.raises(SystemExit) as e:
            train_main(config(data_file, out, "train.resume=none"))
    msg = str(e.value)
    assert "\n" not in msg and "train.resume=none" in msg and "train.overwrite=true" in msg
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    summary = train_main(config(data_file, out, "train.resume=none", "train.overwrite=true",
                                "train.save_every=0"))
    assert summary["resumed_from"] is None and summary["steps"] == STEPS
    assert not list(out.glob("checkpoint-*"))  # the old checkpoints are gone
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [2, 4, 6]  # from step 0, once
    assert (out / "notes.txt").read_text() == "mine"
    assert (outside / "keep.txt").is_file() and not (out / "eval").exists()
    assert json.loads((out / "run.json").read_text())["fingerprint"] == fingerprint(
        config_to_dict(config(data_file, out)))


def test_llava_config_into_a_qwen_run_dir_gets_one_line(finished, data_file, tmp_path,
                                                        no_model):
    out = copy_run(finished, tmp_path)
    with pytest.raises(SystemExit) as e:
        train_main(config(data_file, out, "model.family=llava", "model.min_pixels=null",
                          "model.max_pixels=null"))
    msg = str(e.value)
    assert "\n" not in msg and 'model.family: "qwen2_5_vl" -> "llava"' in msg, msg
    assert "load_state_dict" not in msg and "train.overwrite=true" in msg


def test_interrupted_run_with_the_same_settings_resumes(finished, data_file, tmp_path):
    out = copy_run(finished, tmp_path)
    shutil.rmtree(out / "final")  # as a kill -9 after checkpoint-4 leaves it
    (out / "summary.json").unlink()
    run_json = (out / "run.json").read_text()
    summary = train_main(config(data_file, out, "train.log_every=3"))  # not fingerprinted
    assert summary["resumed_from"] == str(out / "checkpoint-4")
    assert summary["steps"] == STEPS and (out / "final/config.json").is_file()
    assert (out / "run.json").read_text() == run_json


def killed_after_checkpoint_4(tmp_path: Path) -> tuple[Path, Path]:
    """(data file, run directory) of a run on 48 tiny rows as a kill -9 after checkpoint-4
    leaves it."""
    data = write_tiny_data(tmp_path / "d.jsonl", 48)
    out = tmp_path / "run"
    train_main(config(data, out))
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    return data, out


def refused_over_changed_data(data: Path, out: Path) -> str:
    """The one-line refusal of rerunning the same command over changed ``data``, which names
    the checkpoint to continue from."""
    with pytest.raises(SystemExit) as e:
        train_main(config(data, out))
    msg = str(e.value)
    assert "\n" not in msg and "the training data changed since" in msg, msg
    assert f"train.resume={out / 'checkpoint-4'}" in msg, msg
    return msg


def test_resuming_over_changed_data_is_refused_unless_the_checkpoint_is_named(tmp_path,
                                                                              capsys):
    """Rows appended to the training file between a kill and the rerun: the same command no
    longer resumes silently over other samples in another order (it did); naming the checkpoint
    continues from it on the new data, with a warning."""
    data, out = killed_after_checkpoint_4(tmp_path)
    with open(data, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in tiny_demo_rows(56)[48:]))
    capsys.readouterr()
    msg = refused_over_changed_data(data, out)
    assert "source d: rows read / used [48, 48] -> [56, 56]" in msg, msg
    summary = train_main(config(data, out, f"train.resume={out / 'checkpoint-4'}"))
    assert summary["resumed_from"] == str(out / "checkpoint-4") and summary["steps"] == STEPS
    said = capsys.readouterr().out
    assert "warning: the training data differs from the checkpoint's (source d" in said, said


def test_resuming_with_another_number_of_processes_is_refused(tmp_path):
    """A checkpoint records how many processes wrote it: its data position counts micro-batches
    per rank, and the global batch and packing bins follow the process count, so a resume on 1
    process of a 2-process checkpoint retrained 4 steps' data and skipped as much, silently.
    Auto and named resumes are refused in one line that says how to go on; a checkpoint from
    before the count was recorded resumes as it did."""
    data, out = killed_after_checkpoint_4(tmp_path)
    state = out / "checkpoint-4/trainer_state.json"
    record = json.loads(state.read_text())
    assert record["world_size"] == 1
    state.write_text(json.dumps({**record, "world_size": 2}))
    for extra in ((), (f"train.resume={out / 'checkpoint-4'}",)):
        with pytest.raises(SystemExit) as e:
            train_main(config(data, out, *extra))
        msg = str(e.value)
        assert "\n" not in msg and "written by 2 processes; this run has 1" in msg, msg
        assert "--nproc_per_node 2" in msg and f"model.name_or_path={out / 'checkpoint-4'}" in msg
    # at the last step nothing is left to train: final/ is written whatever the count
    from vldft.state import RunState
    state.write_text(json.dumps({**record, "world_size": 2}))
    assert RunState.resume(out / "checkpoint-4", 4, record["config"], out / "final", print,
                           world_size=1).step == 4
    del record["world_size"]
    state.write_text(json.dumps(record))
    assert train_main(config(data, out))["resumed_from"] == str(out / "checkpoint-4")


def test_resuming_over_rows_edited_to_the_same_lengths_is_refused(tmp_path, capsys):
    """An answer's digit swapped, or a row's image replaced by another of the same size: every
    estimated length stays, so the record of rows and lengths saw no change and the run resumed
    over the edited rows; the samples' content is recorded too now. Naming the checkpoint
    continues with a warning; a checkpoint written before the content was recorded resumes as
    it did (its rows and lengths compared)."""
    data, out = killed_after_checkpoint_4(tmp_path)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    assert rows[1]["messages"][-1]["content"][0]["text"] == "I count 4 dots. Answer: 4"
    answer = copy.deepcopy(rows)
    answer[1]["messages"][-1]["content"][0]["text"] = "I count 4 dots. Answer: 3"
    answer[1]["answer"] = "3"
    image = copy.deepcopy(rows)
    image[0]["images"] = rows[7]["images"]  # another 112 x 112 diagram of the same kind
    for edited in (answer, image):
        data.write_text("".join(json.dumps(r) + "\n" for r in edited))
        msg = refused_over_changed_data(data, out)
        assert "the same row counts and estimated lengths, other sample content" in msg, msg
    old = copy_run(out, tmp_path / "old")  # a checkpoint of before the content was recorded
    for ckpt in old.glob("checkpoint-*"):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert set(state["data"]) == {"sources", "lengths", "content"}
        del state["data"]["content"]
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
    capsys.readouterr()
    summary = train_main(config(data, old))
    assert summary["resumed_from"] == str(old / "checkpoint-4"), summary
    assert "warning: the training data" not in capsys.readouterr().out
    summary = train_main(config(data, out, f"train.resume={out / 'checkpoint-4'}"))
    assert summary["resumed_from"] == str(out / "checkpoint-4") and summary["steps"] == STEPS
    said = capsys.readouterr().out
    assert ("warning: the training data differs from the checkpoint's (the same row counts and "
            "estimated lengths, other sample content") in said, said


def test_a_data_record_without_content_is_compared_as_before():
    old = {"sources": {"d": [48, 48]}, "lengths": "l1"}  # written before content was recorded
    new = {**old, "content": "c1"}
    assert data_changes(old, new) == "" and data_changes(new, new) == ""
    assert data_changes({}, new) == ""  # a checkpoint from before any record
    assert data_changes(old, {**new, "sources": {"d": [56, 56]}}) == \
        "source d: rows read / used [48, 48] -> [56, 56]"
    assert "other estimated sample lengths" in data_changes(old, {**new, "lengths": "l2"})
    assert "other estimated sample lengths" in data_changes(new, {**new, "lengths": "l2",
                                                                  "content": "c2"})
    assert "other sample content" in data_changes({**new, "content": "c0"}, new)


def test_overwrite_removes_only_the_kits_files(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-9.tmp").mkdir()
    (out / "final").mkdir()
    for name in ("metrics.jsonl", "summary.json", "run.json", "training_curves.png",
                 "my_metrics.jsonl", "checkpoint-notes.txt"):
        (out / name).write_text("x")
    (out / "eval" / "step-4").mkdir(parents=True)
    (out / "eval" / "my_task").mkdir()
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("keep")
    os.symlink(target, out / "histograms.jsonl")
    removed = {p.name for p in remove_run(out)}
    assert removed == {"checkpoint-3", "checkpoint-9.tmp", "final", "metrics.jsonl",
                       "summary.json", "run.json", "training_curves.png", "histograms.jsonl",
                       "step-4"}
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-notes.txt", "eval",
                                                     "my_metrics.jsonl"]
    assert [p.name for p in (out / "eval").iterdir()] == ["my_task"]
    assert target.read_text() == "keep"


# --- an explicit train.resume inside output_dir is a continuation, never deleted --------------

def interrupted(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run as a kill after checkpoint-4 leaves it."""
    out = copy_run(finished, tmp_path)
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    return out


def test_explicit_resume_with_overwrite_keeps_the_checkpoint_then_continues(
        finished, data_file, tmp_path, monkeypatch):
    out = interrupted(finished, tmp_path)
    ckpt = out / "checkpoint-4"
    before = snapshot(out)
    with monkeypatch.context() as m:
        m.setattr(vldft.train, "load_adapter", lambda *a, **k: pytest.fail("model loaded"))
        with pytest.raises(SystemExit) as e:  # the refusal names the way to continue
            train_main(config(data_file, out, "train.lr=1e-3"))
        assert f"train.resume={ckpt}" in str(e.value), e.value
        with pytest.raises(SystemExit) as e:  # overwrite would delete what resume names
            train_main(config(data_file, out, "train.lr=1e-3", f"train.resume={ckpt}",
                              "train.overwrite=true"))
    msg = str(e.value)
    assert "\n" not in msg and "would delete" in msg and str(ckpt) in msg, msg
    assert snapshot(out) == before  # nothing removed, nothing written

    # without overwrite: a deliberate continuation with a lower lr from checkpoint-4
    summary = train_main(config(data_file, out, "train.lr=1e-3", f"train.resume={ckpt}"))
    assert summary["resumed_from"] == str(ckpt) and summary["steps"] == STEPS
    assert (out / "final/config.json").is_file()
    run_fp = json.loads((out / "run.json").read_text())["fingerprint"]
    assert run_fp["train.lr"] == 1e-3  # the run now continues with these settings
    lrs = [r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if "loss" in r]
    assert len(lrs) == STEPS // 2  # steps 2, 4 kept, 6 logged once


def test_explicit_resume_with_newer_outputs_in_the_dir_is_refused(finished, data_file, tmp_path,
                                                                  no_model):
    out = copy_run(finished, tmp_path)
    before = snapshot(out)
    for ckpt, newer in (("checkpoint-2", "checkpoint-4"), ("checkpoint-4", "final")):
        with pytest.raises(SystemExit) as e:
            train_main(config(data_file, out, "train.lr=1e-3", f"train.resume={out / ckpt}"))
        msg = str(e.value)
        assert "\n" not in msg and "newer than" in msg and newer in msg, msg
    # a different model is refused before anything is touched, overwrite or not
    with pytest.raises(SystemExit, match="holds a different model"):
        train_main(config(data_file, out, "model.family=llava", "model.min_pixels=null",
                          "model.max_pixels=null", f"train.resume={out / 'checkpoint-4'}",
                          "train.overwrite=true"))
    assert snapshot(out) == before


# --- what counts as "this run": foreign, empty or broken records are unknown ------------------

@pytest.mark.parametrize("content", ["", "optimizer: {lr: 0.1}\ntrainer: {max_epochs: 3}\n",
                                     "a: [1, 2\n", "- 1\n- 2\n", "model: {family: [unclosed\n",
                                     "model: 3\n"])
def test_foreign_empty_or_broken_config_yaml_is_refused(data_file, tmp_path, no_model, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(content)
    (out / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.9}\n')  # another tool's
    before = snapshot(out)
    with pytest.raises(SystemExit) as e:
        train_main(config(data_file, out))
    msg = str(e.value)
    assert "\n" not in msg and "settings are unknown" in msg and "overwrite" in msg, msg
    assert snapshot(out) == before and not (out / "run.json").exists()


def test_overwrite_never_deletes_another_tools_checkpoint(data_file, tmp_path, no_model):
    """A checkpoint-<N> folder without vldft's state/ and trainer_state.json (a Hugging Face
    Trainer's) is another tool's: train.overwrite=true deleted it as the previous run's."""
    out = tmp_path / "run"
    (out / "checkpoint-500").mkdir(parents=True)
    (out / "checkpoint-500/trainer_state.json").write_text('{"global_step": 500}')
    (out / "config.yaml").write_text("trainer: {max_epochs: 3}\n")
    before = snapshot(out)
    with pytest.raises(SystemExit) as e:
        train_main(config(data_file, out, "train.overwrite=true"))
    msg = str(e.value)
    assert "\n" not in msg and f"{out / 'checkpoint-500'} is not a vldft checkpoint" in msg, msg
    assert snapshot(out) == before and not (out / "run.json").exists()


def test_overwrite_deletes_its_own_runs_checkpoint_without_state(finished, data_file, tmp_path):
    """A vldft run's folder (run.json) whose older checkpoint lost its state/ (deleted to save
    space): train.overwrite replaces the run, that checkpoint included."""
    out = copy_run(finished, tmp_path)
    shutil.rmtree(out / "checkpoint-2/state")
    summary = train_main(config(data_file, out, "train.overwrite=true", "train.seed=7"))
    assert summary["steps"] == STEPS and (out / "checkpoint-2/state").is_dir()


def test_a_failure_while_claiming_refuses_in_one_line(data_file, tmp_path, no_model,
                                                      monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")
    monkeypatch.setattr(vldft.run_dir, "claim_output_dir", boom)
    with pytest.raises(SystemExit) as e:  # (every rank gets this refusal, none hangs)
        train_main(config(data_file, tmp_path / "run"))
    msg = str(e.value)
    assert msg.startswith("[vldft] refused: train.output_dir:") and "disk on fire" in msg, msg
    assert "\n" not in msg


# --- a stop at the last step: rerunning writes final/ ----------------------------------------

def test_stop_at_the_last_step_then_rerun_writes_final(finished, data_file, tmp_path,
                                                       monkeypatch, capsys):
    out = interrupted(finished, tmp_path)

    class StopAtEnd:  # a collapse warning at the last log step
        def __init__(self, *a, **k):
            pass

        def replay(self, history, said=()):
            pass

        def observe(self, rec):
            return "forced collapse" if rec["step"] == STEPS else None

    with monkeypatch.context() as m:
        m.setattr(vldft.train, "CollapseGuard", StopAtEnd)
        summary = train_main(config(data_file, out, "train.on_collapse=stop"))
    assert summary["stopped"] == "collapse" and summary["steps"] == STEPS
    assert (out / f"checkpoint-{STEPS}").is_dir() and not (out / "final").exists()
    assert "Rerun the same command to write final/" in capsys.readouterr().out

    summary = train_main(config(data_file, out, "train.on_collapse=stop"))  # the same command
    assert summary["stopped"] is None and summary["steps"] == STEPS
    assert summary["resumed_from"] == str(out / f"checkpoint-{STEPS}")
    assert (out / "final/config.json").is_file()
    assert json.loads((out / "summary.json").read_text())["stopped"] is None
    assert f"at the last step ({STEPS})" in capsys.readouterr().out
    # and now it is a finished run: the same command is a no-op
    assert train_main(config(data_file, out, "train.on_collapse=stop"))["steps"] == STEPS
    assert "already holds this run, finished" in capsys.readouterr().out


# --- where relative paths go ------------------------------------------------------------------

def test_a_users_configs_folder_resolves_against_the_files_dir(tmp_path, monkeypatch):
    folder = tmp_path / "exp" / "configs"
    folder.mkdir(parents=True)
    text = TINY_CONFIG.read_text().replace("output_dir: runs/demo",
                                                            "output_dir: runs/a")
    assert "output_dir: runs/a" in text
    (folder / "a.yaml").write_text(text)
    (folder / "data/geo_demo").mkdir(parents=True)  # the config's data, next to it
    for name in ("train.jsonl", "heldout.jsonl"):
        (folder / "data/geo_demo" / name).write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(folder / "a.yaml")
    assert cfg.resolve(cfg.train.output_dir) == folder / "runs/a"  # as before: the file's dir
    assert cfg.resolve(cfg.data.train_files[0]) == folder / "data/geo_demo/train.jsonl"


@pytest.mark.parametrize("copy", ["checkout", "installed"])
def test_bundled_configs_read_the_bundle_but_write_to_the_cwd(tmp_path, monkeypatch, copy):
    import vldft.resources

    root = ROOT
    if copy == "installed":  # an installed wheel's vldft/_bundled/
        root = tmp_path / "site" / "vldft" / "_bundled"
        (root / "configs").mkdir(parents=True)
        shutil.copy(TINY_CONFIG, root / "configs/demo.yaml")
        (root / "data/geo_demo").mkdir(parents=True)
        for name in ("train.jsonl", "heldout.jsonl"):
            (root / "data/geo_demo" / name).write_text("")
        monkeypatch.setattr(vldft.resources, "BUNDLED", root)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(root / "configs/demo.yaml")
    assert cfg.resolve(cfg.data.train_files[0]) == root / "data/geo_demo/train.jsonl"
    assert cfg.resolve(cfg.train.output_dir) == work / "runs/demo"
    cfg = load_config(root / "configs/demo.yaml", ["train.output_dir=out/x"])
    assert cfg.resolve(cfg.train.output_dir) == work / "out/x"


def test_a_runs_config_yaml_reruns_the_same_run_from_any_directory(data_file, tmp_path,
                                                                    monkeypatch, capsys):
    """config.yaml names every local path absolutely, so it can be rerun from anywhere; rerun,
    it is the same run (an interrupted one resumes, a finished one is done), and a checkout moved
    with its relative config is too."""
    import yaml

    exp = tmp_path / "exp"
    (exp / "data").mkdir(parents=True)
    shutil.copy(data_file, exp / "data/train.jsonl")  # its image paths are absolute
    raw = config_to_dict(config(data_file, tmp_path / "unused"))
    raw["data"]["train_files"], raw["train"]["output_dir"] = ["data/train.jsonl"], "runs/a"
    (exp / "a.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(exp)
    train_main(load_config("a.yaml"))
    out = exp / "runs/a"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["train_files"] == [str(exp / "data/train.jsonl")]
    assert saved["train"]["output_dir"] == str(out)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    train_main(load_config(out / "config.yaml"))  # finished: nothing to do
    assert "already holds this run, finished" in capsys.readouterr().out
    shutil.rmtree(out / "final")  # interrupted after checkpoint-4
    (out / "summary.json").unlink()
    summary = train_main(load_config(out / "config.yaml"))
    assert summary["resumed_from"] == str(out / "checkpoint-4") and summary["steps"] == STEPS
    assert "config differs" not in capsys.readouterr().out  # the checkpoint's record: the same

    moved = tmp_path / "moved"  # the whole experiment folder moved: its relative config holds
    shutil.move(exp, moved)
    monkeypatch.chdir(moved)
    capsys.readouterr()
    train_main(load_config("a.yaml"))
    assert "already holds this run, finished" in capsys.readouterr().out
    (moved / "other").mkdir()
    shutil.copy(moved / "data/train.jsonl", moved / "other/train.jsonl")
    with pytest.raises(SystemExit) as e:  # another data file is still another run
        train_main(load_config("a.yaml", ["data.train_files=[other/train.jsonl]"]))
    assert "data.train_files" in str(e.value)


@pytest.mark.parametrize("where", ["a user's folder", "bundled"])
def test_paths_typed_on_the_command_line_resolve_against_the_cwd(tmp_path, monkeypatch, where):
    """The file's own relative paths resolve against its folder (or the bundle); a path that an
    override sets is taken from the directory the command runs in, as any command's is."""
    folder = tmp_path / "exp"
    (folder / "data/geo_demo").mkdir(parents=True)
    for name in ("train.jsonl", "heldout.jsonl"):
        (folder / "data/geo_demo" / name).write_text("")
    (folder / "a.yaml").write_text(TINY_CONFIG.read_text())
    config_file = folder / "a.yaml" if where == "a user's folder" else ROOT / "configs/demo.yaml"
    work = tmp_path / "work"
    (work / "mine/imgs").mkdir(parents=True)
    (work / "mine/train.jsonl").write_text("")
    (work / "ckpt").mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(config_file, [
        "data.train_files=[mine/train.jsonl]", "data.image_root=mine/imgs",
        "data.sources=[{name: m, path: mine/train.jsonl, format: normalized}, "
        "{name: g, hub: openai/gsm8k, path: train.parquet, format: text_math}]",
        "train.resume=ckpt", "model.name_or_path=Qwen/Qwen2.5-VL-3B-Instruct",
        "data.heldout_file=null", "train.eval_every=0"])
    assert cfg.resolve(cfg.data.train_files[0]) == work / "mine/train.jsonl"
    assert cfg.resolve(cfg.data.image_root) == work / "mine/imgs"
    assert cfg.resolve(cfg.data.sources[0].path) == work / "mine/train.jsonl"
    assert cfg.data.sources[1].path == "train.parquet"  # inside the hub source's download folder
    assert cfg.resolve(cfg.train.resume) == work / "ckpt"
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"  # a hub id stays one
    cfg = load_config(config_file, ["train.resume=auto", "train.lr=1e-3"])
    assert cfg.train.resume == "auto"
    bundle = folder if where == "a user's folder" else ROOT  # the file's own paths: as before
    assert cfg.resolve(cfg.data.train_files[0]) == bundle / "data/geo_demo/train.jsonl"


def test_an_override_of_one_list_entry_moves_that_entry_only(tmp_path, monkeypatch):
    import yaml

    proj, work = tmp_path / "proj", tmp_path / "work"
    for folder in (proj / "data", work / "data"):
        folder.mkdir(parents=True)
        for name in ("a.jsonl", "b.jsonl", "h.jsonl"):
            (folder / name).write_text("")
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["data"]["train_files"] = ["data/a.jsonl", "data/b.jsonl"]
    raw["data"]["heldout_file"] = "data/h.jsonl"
    (proj / "c.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(work)
    cfg = load_config(proj / "c.yaml", ["data.train_files[0]=data/a.jsonl",
                                        "data.heldout_file=data/h.jsonl"])
    assert [cfg.resolve(f) for f in cfg.data.train_files] == [work / "data/a.jsonl",
                                                              proj / "data/b.jsonl"]
    assert cfg.resolve(cfg.data.heldout_file) == work / "data/h.jsonl"  # typed: the cwd's


def test_a_torn_metrics_line_does_not_stop_the_resume(finished, data_file, tmp_path):
    """kill -9 during an append leaves half a JSON line (or NUL bytes) in metrics.jsonl: the
    resume drops it and rewrites its steps (it raised JSONDecodeError on every rerun)."""
    out = copy_run(finished, tmp_path)
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo\x00\x00')
    summary = train_main(config(data_file, out))
    assert summary["resumed_from"] == str(out / "checkpoint-4") and summary["steps"] == STEPS
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]


def test_a_second_process_training_into_the_same_directory_is_refused(data_file, tmp_path,
                                                                      no_model):
    """Two runs into one directory would resume from each other's checkpoints and write into
    one metrics file: while one holds the directory's lock, another is refused before any
    model loads; the lock goes with its holder."""
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from vldft.run_dir import lock_output_dir; lock_output_dir(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as e:
            train_main(config(data_file, out))
        msg = str(e.value)
        assert "\n" not in msg and "is in use: another process is training" in msg, msg
    finally:
        holder.kill()
        holder.wait()
    vldft.run_dir.lock_output_dir(out)  # free again once the holder is gone
    vldft.run_dir.release_output_dirs()


def test_packing_a_family_that_cannot_pack_is_refused_before_overwrite_removes_anything(
        finished, data_file, tmp_path, no_model):
    from vldft.config import ConfigError

    out = copy_run(finished, tmp_path)
    before = snapshot(out)
    with pytest.raises(ConfigError, match="data.packing: not supported for qwen3_5"):
        train_main(config(data_file, out, "model.family=qwen3_5", "data.packing=true",
                          "train.overwrite=true"))
    assert snapshot(out) == before  # the old run is still there


def test_a_bad_held_out_file_is_refused_before_overwrite_removes_anything(
        finished, data_file, tmp_path, no_model):
    """A held-out image that does not decode (or any other held-out refusal) stops the run
    before train.overwrite removes the previous run."""
    from vldft.data import DataError

    out = copy_run(finished, tmp_path)
    before = snapshot(out)
    rows = data_file.read_text().splitlines()[:3]
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows[2] = json.dumps({**json.loads(rows[2]), "images": [str(bad)]})
    heldout = tmp_path / "held.jsonl"
    heldout.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"held.jsonl:3 .*corrupt.png\) cannot be decoded"):
        train_main(config(data_file, out, f"data.heldout_file={heldout}",
                          "train.overwrite=true"))
    assert snapshot(out) == before  # the old run is still there


def test_a_stop_signal_says_how_to_abort_without_saving(capsys):
    """SIGTERM (a scheduler's stop) and Ctrl-C both save after the step; the line says how to
    abort instead, and a second Ctrl-C does."""
    import signal

    from vldft.state import StopRequest

    stop = StopRequest()
    try:
        stop._handle(signal.SIGTERM, None)
        said = capsys.readouterr().err
        assert stop.signal == "SIGTERM" and "SIGINT (Ctrl-C) to abort without saving" in said
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
        fresh = StopRequest()
        fresh._handle(signal.SIGINT, None)
        assert "(Ctrl-C again to abort without saving)" in capsys.readouterr().err
        fresh.close()
    finally:
        stop.close()


def test_a_run_stopped_before_its_first_step_does_not_own_the_folder(data_file, tmp_path):
    """data.overlong=error stops a run before step 1 (config.yaml, run.json, data_summary.json
    and empty metrics written); doing what the error says (data.overlong=skip) is then a fresh
    run there, not 'different settings; set train.overwrite'. Once a step is logged, the folder
    is the run's again."""
    from vldft.data import DataError
    from vldft.run_dir import claim_output_dir, run_artefacts, stopped_before_training

    out = tmp_path / "run"
    with pytest.raises((DataError, SystemExit), match="data.max_length"):
        train_main(config(data_file, out, "data.overlong=error", "data.max_length=140"))
    assert {p.name for p in run_artefacts(out)} >= {"run.json", "config.yaml", "metrics.jsonl"}
    assert stopped_before_training(out, run_artefacts(out))
    fixed = config(data_file, out, "data.overlong=skip", "data.max_length=140",
                   "train.max_steps=3", "loss.sft_warmup_steps=0")
    summary = train_main(fixed)
    assert summary["steps"] == 3
    assert json.loads((out / "run.json").read_text())["fingerprint"]["data.overlong"] == "skip"
    other = config_to_dict(config(data_file, out, "data.overlong=truncate", "data.max_length=140"))
    assert not stopped_before_training(out, run_artefacts(out))
    action, said = claim_output_dir(out, other, "auto", False)
    assert action == "refuse" and "data.overlong" in said


def test_a_refusal_names_the_source_key_that_differs():
    """Two data.sources lists that differ in one key of one source: the refusal names that
    key (both sides were cut at the same 77 characters, so the change never showed)."""
    from vldft.run_dir import fingerprint_diff

    src = {"path": "/data/" + "x" * 80 + ".jsonl", "format": "normalized", "name": "demo"}
    old = {"data.sources": [src, {"path": "b.jsonl"}], "train.lr": 1e-5}
    new = {"data.sources": [{**src, "image_root": "/x"}, {"path": "b.jsonl", "weight": 2.0}],
           "train.lr": 2e-5}
    assert fingerprint_diff(old, new) == [
        'data.sources[0].image_root: null -> "/x"', "data.sources[1].weight: null -> 2.0",
        "train.lr: 1e-05 -> 2e-05"]
    # the run's own config.yaml rerun (absolute paths) with one weight changed: the weight only
    rel = {"data.sources": [{"path": "data/x.jsonl"}, {"path": "b.jsonl"}]}
    absolute = {"data.sources": [{"path": "/w/data/x.jsonl"}, {"path": "/w/b.jsonl"}]}
    rerun = {"data.sources": [{"path": "/w/data/x.jsonl"}, {"path": "/w/b.jsonl", "weight": 2.0}]}
    assert fingerprint_diff(rel, rerun, absolute, {}) == ["data.sources[1].weight: null -> 2.0"]
    grown = {"data.sources": [src, {"path": "b.jsonl"}, {"path": "c.jsonl"}]}
    (line,) = fingerprint_diff({"data.sources": old["data.sources"]}, grown)
    assert line.startswith("data.sources: [")  # another length: the whole list, shortened


def test_a_moved_checkout_lists_only_the_key_that_changed():
    """Sources written relatively in a moved checkout (their absolute forms differ, their
    written forms do not) and one weight changed: the refusal names the weight alone."""
    from vldft.run_dir import fingerprint_diff

    old = {"data.sources": [{"path": "data/x.jsonl"}, {"path": "b.jsonl"}]}
    new = {"data.sources": [{"path": "data/x.jsonl"}, {"path": "b.jsonl", "weight": 2.0}]}
    old_abs = {"data.sources": [{"path": "/old/data/x.jsonl"}, {"path": "/old/b.jsonl"}]}
    new_abs = {"data.sources": [{"path": "/new/data/x.jsonl"},
                                {"path": "/new/b.jsonl", "weight": 2.0}]}
    assert fingerprint_diff(old, new, old_abs, new_abs) == [
        "data.sources[1].weight: null -> 2.0"]
    assert fingerprint_diff(old, old, old_abs, new_abs) == []  # moved, nothing changed
