"""Faults that must cost nothing: non-finite steps, unwritable or full output directories."""

import errno
import json
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DATA, demo_config

import vldft.train as train
from vldft.adapters import load_adapter
from vldft.adapters.base import Adapter
from vldft.checkpoint import STATE_FILE
from vldft.run_dir import check_free_space

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def small(out: Path, *extra: str):
    return demo_config(
        "data.train_files=[]", f"data.sources=[{{path: {DEMO_DATA}, max_samples: 16}}]",
        "data.heldout_file=null", "train.max_steps=8", "loss.sft_warmup_steps=0",
        "loss.name=sft", "train.micro_batch_size=4", "train.log_every=1",
        "train.eval_max_samples=0", f"train.output_dir={out}", *extra)


def poison(monkeypatch, bad_calls: set[int] | None, seen: list):
    """Real model, plus a forward hook that turns the token embeddings into NaN on the given
    forward calls (1-based; None: every call), and records the embedding weight each call."""
    def load(cfg):
        adapter = load_adapter(cfg)
        embed = adapter.model.get_input_embeddings()
        calls = {"n": 0}

        def hook(module, args, output):
            calls["n"] += 1
            seen.append(module.weight.detach().clone())
            if bad_calls is None or calls["n"] in bad_calls:
                return output * float("nan")
            return output

        embed.register_forward_hook(hook)
        return adapter

    monkeypatch.setattr(train, "load_adapter", load)


def test_non_finite_steps_are_skipped_counted_and_logged(tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    poison(monkeypatch, {3, 4}, seen)
    summary = train.main(small(tmp_path / "run", "train.max_nonfinite_steps=3"))
    assert summary["nonfinite_steps"] == 2 and summary["steps"] == 8
    # one forward per step: the weights seen by steps 4 and 5 are those of step 3 (no update
    # in steps 3 and 4), and step 6 sees an update again
    assert torch.equal(seen[2], seen[3]) and torch.equal(seen[3], seen[4])
    assert not torch.equal(seen[1], seen[2]) and not torch.equal(seen[4], seen[5])
    recs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "nonfinite" in r] == [3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs if "loss" in r)


def test_consecutive_non_finite_steps_abort_with_a_clear_message(tmp_path, monkeypatch):
    poison(monkeypatch, None, [])
    with pytest.raises(RuntimeError, match="3 consecutive steps had a non-finite loss"):
        train.main(small(tmp_path / "run", "train.max_nonfinite_steps=3"))


def test_unwritable_output_dir_fails_before_the_model_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(train, "load_adapter", lambda cfg: pytest.fail("model was loaded"))
    with pytest.raises(SystemExit, match="train.output_dir: cannot write to"):
        train.main(small(blocker / "run"))


def test_too_little_free_space_fails_with_the_sizes(tmp_path):
    with pytest.raises(SystemExit, match="GiB free but one checkpoint needs about"):
        check_free_space(tmp_path, 10**18, "one checkpoint")


def test_disk_full_at_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save, calls = Adapter.save, {"n": 0}

    def save(self, out_dir, state_dict=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint hits a full disk halfway through
            real_save(self, out_dir, state_dict)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, out_dir, state_dict)

    monkeypatch.setattr(Adapter, "save", save)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"disk full while writing checkpoint-4 .*No space "
                                           r"left.*kept: checkpoint-2 \(intact\)"):
        train.main(small(out, "train.save_every=2"))
    assert (out / "checkpoint-2" / STATE_FILE).is_file()
    assert not (out / "checkpoint-4").exists() and not (out / "checkpoint-4.tmp").exists()
    # and the run resumes from it
    summary = train.main(small(out, "train.save_every=0"))
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 8
