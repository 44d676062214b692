"""Training faults end in one line saying what was kept: a disk that fills during a checkpoint
save (then the rerun resumes), the stop after consecutive non-finite steps; and the free-space
pre-flight counts the checkpoint being written beside the kept ones and final/."""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from conftest import DEMO_DATA, TINY_CONFIG

import vldft.train as train
from vldft.adapters import load_adapter
from vldft.adapters.base import Adapter
from vldft.checkpoint import STATE_FILE, CheckpointSaveError, save, save_final
from vldft.config import TrainConfig
from vldft.run_dir import check_disk_space, checkpoint_bytes, disk_needed

pytestmark = pytest.mark.usefixtures("one_thread")


def small(out: Path, *extra: str) -> list[str]:
    """``vldft-train`` arguments: 8 SFT steps of a tiny model on 16 demo rows."""
    return [str(TINY_CONFIG), "data.train_files=[]",
            f"data.sources=[{{path: {DEMO_DATA}, max_samples: 16}}]", "data.heldout_file=null",
            "train.max_steps=8", "loss.sft_warmup_steps=0", "loss.name=sft",
            "train.micro_batch_size=4", "train.log_every=4", "train.eval_max_samples=0",
            f"train.output_dir={out}", "train.save_every=2", *extra]


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text.startswith("error: "), text
    return text


def test_disk_full_during_a_save_is_one_line_then_the_rerun_resumes(tmp_path, monkeypatch):
    real_save, calls = Adapter.save, {"n": 0}

    def fill_the_disk(self, out_dir, state_dict=None):  # the 2nd save fails halfway through
        calls["n"] += 1
        real_save(self, out_dir, state_dict)
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Adapter, "save", fill_the_disk)
        with pytest.raises(SystemExit) as e:
            train.cli(small(out))
    text = one_line(e)
    assert "disk full while writing checkpoint-4" in text and "No space left" in text
    assert "kept: checkpoint-2 (intact)" in text and "rerun the same command" in text
    assert not (out / "checkpoint-4.tmp").exists() and (out / "checkpoint-2" / STATE_FILE).is_file()
    train.cli(small(out))  # the same command, space freed: resumes from checkpoint-2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 8


def test_non_finite_stop_is_one_line_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    def load(cfg):  # from the 3rd forward on, every embedding output is NaN
        adapter, calls = load_adapter(cfg), {"n": 0}

        def hook(module, args, output):
            calls["n"] += 1
            return output * float("nan") if calls["n"] >= 3 else output

        adapter.model.get_input_embeddings().register_forward_hook(hook)
        return adapter

    monkeypatch.setattr(train, "load_adapter", load)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        train.cli(small(out, "train.max_nonfinite_steps=2"))
    text = one_line(e)
    assert "stopped at step 4: 2 consecutive steps had a non-finite loss" in text
    assert "kept: checkpoint-2 (last good checkpoint)" in text
    assert f"train.resume={out / 'checkpoint-2'}" in text


class Main:
    """The one process of a run (what ``checkpoint.save`` asks of accelerate)."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, path: str, safe_serialization: bool = False) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "optimizer.bin").write_bytes(b"0" * 64)


def test_writers_that_do_not_raise_oserror_are_recognised(tmp_path):
    """safetensors reports a full disk as SafetensorError (not an OSError), torch.save as a
    RuntimeError; a bug keeps its own traceback."""
    save(tmp_path / "checkpoint-2", Main(), lambda d: (d / "model.bin").write_text("w"), {})

    def safetensors_full(d: Path) -> None:
        d.mkdir(exist_ok=True)
        (d / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                           'message: "No space left on device" })')

    with pytest.raises(CheckpointSaveError, match=r"disk full while writing checkpoint-4 .*"
                                                  r"kept: checkpoint-2 \(intact\)"):
        save(tmp_path / "checkpoint-4", Main(), safetensors_full, {})
    assert not (tmp_path / "checkpoint-4.tmp").exists()
    with pytest.raises(CheckpointSaveError, match=r"disk full while writing final/ .*kept: "
                                                  r"checkpoint-2"):
        save_final(safetensors_full, Main(), tmp_path / "final")
    assert not (tmp_path / "final.tmp").exists() and not (tmp_path / "final").exists()

    def denied(d: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(CheckpointSaveError, match="could not write checkpoint-6"):
        save(tmp_path / "checkpoint-6", Main(), denied, {})

    def bug(d: Path) -> None:
        raise TypeError("not a write failure")

    with pytest.raises(TypeError, match="not a write failure"):
        save(tmp_path / "checkpoint-8", Main(), bug, {})
    assert not (tmp_path / "checkpoint-8.tmp").exists()


def test_disk_needed_counts_the_checkpoint_being_written_and_final():
    C, F = 100, 40
    assert disk_needed(C, F, keep=3, saves=10)[0] == 4 * C  # 3 kept + the one being written
    assert disk_needed(C, F, keep=1, saves=10)[0] == 2 * C  # the case: not one
    assert disk_needed(C, 150, keep=1, saves=10)[0] == C + 150  # final/ beside the kept one
    assert disk_needed(C, F, keep=0, saves=4)[0] == 4 * C + F  # all kept, then final/
    assert disk_needed(C, F, keep=3, saves=0)[0] == F  # no periodic checkpoint
    assert disk_needed(C, F, keep=3, saves=10, present=[C, C])[0] == 2 * C  # resumed
    assert disk_needed(C, F, keep=0, saves=4, present=[C] * 4)[0] == F


def test_preflight_refuses_a_disk_without_room_for_kept_plus_one(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    one = checkpoint_bytes(1000, 500, 4, resumable=True)
    assert one == 12000
    train_cfg = TrainConfig(save_every=10, keep_checkpoints=1)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, 2 * one - 1))
    with pytest.raises(SystemExit, match=r"1 kept checkpoint\(s\) \+ the one being written"):
        check_disk_space(tmp_path, 1000, 500, 4, train_cfg, 100)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, 2 * one))
    check_disk_space(tmp_path, 1000, 500, 4, train_cfg, 100)  # exactly enough
    kept = tmp_path / "checkpoint-10"  # a resumed run: that checkpoint is on the disk already
    (kept / "state").mkdir(parents=True)
    (kept / STATE_FILE).write_text("{}")
    (kept / "model.safetensors").write_bytes(b"0" * one)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, one))
    check_disk_space(tmp_path, 1000, 500, 4, train_cfg, 100)


def test_every_sample_skipped_is_one_data_error_naming_rows_and_the_key(tmp_path):
    """data.max_length shorter than every sample's image block: each one is skipped while
    encoding, and the run stops in one line with the counts, rows and the key to raise (it was
    a RuntimeError traceback)."""
    with pytest.raises(SystemExit) as e:
        train.cli(small(tmp_path / "run", "data.max_length=16"))
    text = str(e.value)
    assert "\n" not in text and text.startswith("data error: a whole pass"), text
    assert "16 " in text and "/image_cut" in text and "raise it" in text, text
    assert re.search(rf"{re.escape(str(DEMO_DATA))}:\d+ \(id geo-train-\d+\) image_cut: ", text)
    assert text.endswith("; and 13 more"), text


def test_epochs_with_samples_skipped_while_encoding_says_how_many_passes_it_made(tmp_path,
                                                                                 capsys):
    """train.epochs plans its steps from the micro-batches before encoding: with half the
    samples skipped while encoding (and one sample a micro-batch), one epoch runs into a second
    pass over the data. It said nothing; the summary now counts the empty micro-batches and the
    passes, and the console says what happened."""
    from conftest import tiny_demo_rows

    text = [{"id": f"t{i}", "messages": [{"role": "user", "content": "What is 2+2?"},
                                         {"role": "assistant", "content": "4"}]}
            for i in range(4)]
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in tiny_demo_rows(4) + text))
    out = tmp_path / "run"
    train.cli([str(TINY_CONFIG), "data.train_files=[]", f"data.sources=[{{path: {data}}}]",
               "data.heldout_file=null", "data.max_length=100", "train.max_steps=0",
               "train.epochs=1", "train.micro_batch_size=1", "train.log_every=1",
               "loss.name=sft", "loss.sft_warmup_steps=0", "train.eval_max_samples=0",
               f"train.output_dir={out}"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 8 and sum(summary["skipped"].values()) == 4, summary
    empty, passes = summary["empty_micro_batches"], summary["data_passes"]
    assert empty >= 4 and passes == (8 + empty) / 8, summary  # 8 micro-batches a pass
    said = capsys.readouterr().out
    assert f"train.epochs=1 planned 8 steps from the data's micro-batches before encoding; " \
        f"{empty} of them had every sample skipped" in said, said
    assert f"went on to {passes:g} passes over the data" in said, said


def test_an_overlong_sample_with_overlong_error_names_the_overlong_key(tmp_path):
    """data.overlong=error stops on the first sample over data.max_length, naming the key that
    handles it (it pointed at data.on_error, which only skips such samples as errors)."""
    with pytest.raises(SystemExit) as e:
        train.cli(small(tmp_path / "run", "data.max_length=100", "data.overlong=error"))
    text = str(e.value)
    assert "\n" not in text and text.startswith("data error: ") and "(id geo-train-" in text
    assert "tokens > data.max_length=100 (data.overlong=truncate or skip, or a larger " \
        "data.max_length, takes such samples)" in text, text
