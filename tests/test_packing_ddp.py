"""Packing under two-process DDP (gloo, torchrun) equals one process with the same global batch:
the packing sampler makes every epoch a whole number of optimizer steps, so no rank repeats a
bin to fill the epoch's last round and both runs see the same bins in the same steps, across
epoch boundaries. Measured: identical losses and weights (the tolerance below is for other
machines' reduction orders). Two training runs: about a minute of CPU."""

import sys

import pytest
from conftest import TINY_CONFIG, assert_same_weights
from test_distributed import STEPS, free_port, overrides, records, run

from vldft.adapters import load_adapter
from vldft.config import load_config
from vldft.data.mix import build_training_set
from vldft.loader import PackingSampler


@pytest.mark.slow  # the even-epoch rule is checked in test_packing.py; this runs 2 processes
def test_two_rank_ddp_equals_one_rank_with_packing(tmp_path):
    cfg = load_config(str(TINY_CONFIG), overrides(tmp_path, "probe", 2))
    data = build_training_set(cfg, load_adapter(cfg.model))
    # a pack size whose plain first-fit-decreasing bin count is odd: without the fix-up, an
    # epoch would end in the middle of a step (and rank 1 would repeat a bin)
    pack_tokens = next(n for n in range(512, 2049, 32)
                       if len(PackingSampler(data.lengths, n, cfg.data.max_length)) % 2)
    plain = len(PackingSampler(data.lengths, pack_tokens, cfg.data.max_length))
    assert STEPS * 2 > plain  # the runs cross an epoch boundary
    assert len(PackingSampler(data.lengths, pack_tokens, cfg.data.max_length,
                              multiple_of=2)) == plain + 1
    packed = ["data.packing=true", f"data.pack_tokens={pack_tokens}",
              "data.group_by_length=false"]

    run([sys.executable, "-m", "vldft.train", str(TINY_CONFIG),
         *overrides(tmp_path, "one", 2), *packed])
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), "-m", "vldft.train", str(TINY_CONFIG),
         *overrides(tmp_path, "two", 1), *packed])

    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two, strict=True):
        assert a["target_tokens"] == b["target_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
    assert_same_weights(tmp_path / "one/final", tmp_path / "two/final")
