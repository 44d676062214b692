"""CUDA checks: the kernels the CPU suite cannot reach. Skipped without a CUDA device (CI has
none); ``bench/gpu.sh`` runs them first on a GPU machine (``python -m pytest tests/test_gpu.py``).

- the varlen kernel vldft picks on CUDA (flash-attn, else torch's ``varlen_attn``) equals the
  portable per-segment SDPA loop, with GQA, head sizes of the language model (128) and the
  Qwen2.5-VL vision tower (80), causal and not;
- the chunked objective on CUDA (whole-chunk blocks, the CUDA default, and 128-row blocks)
  equals the naive full-logits one in bf16;
- a tiny Qwen2.5-VL in bf16 on CUDA: a packed row through the varlen kernel gives every sample
  the hidden states it gets alone (sdpa, no packing), and a padded batch through it
  (``model.attn_implementation: varlen``) the hidden states sdpa gives.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(("hq", "hkv", "dim", "causal"),
                         [(16, 2, 128, True), (16, 16, 80, False), (4, 4, 64, True)])
def test_cuda_varlen_kernel_equals_the_sdpa_loop(hq, hkv, dim, causal):
    from vldft.attention import _sdpa_loop, kernel_name, varlen

    assert kernel_name("cuda", torch.bfloat16) in ("flash_attn", "torch_varlen")
    torch.manual_seed(0)
    lens = [5, 1, 300, 37, 1024, 64]
    total = sum(lens)
    q = torch.randn(total, hq, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(total, hkv, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(total, hkv, dim, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32,
                      device="cuda")
    scale = dim ** -0.5 * 0.9  # not the default: the scale must be passed through
    out = varlen(q, k, v, cu, max(lens), causal, scale)
    ref = _sdpa_loop(q.float(), k.float(), v.float(), cu, causal, scale)
    assert out.shape == ref.shape
    err = (out.float() - ref).abs().max().item()
    assert err < 2e-2, err  # bf16 inputs and output: ~1e-2 of unit-scale values


@pytest.mark.parametrize("row_block", [0, 128])
def test_chunked_objective_on_cuda_equals_naive(row_block, monkeypatch):
    import vldft.objectives as objectives

    monkeypatch.setattr(objectives, "CUDA_ROW_BLOCK", row_block)
    g = torch.Generator().manual_seed(0)
    n, hidden_size, vocab = 2500, 256, 50_000
    hidden = torch.randn(1, n + 1, hidden_size, generator=g).cuda().bfloat16().requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * 3 / hidden_size ** 0.5)
    weight = weight.cuda().bfloat16().requires_grad_()
    labels = torch.randint(0, vocab, (1, n + 1), generator=g).cuda()
    labels[0, :7] = -100
    res = {}
    for impl in ("chunked", "naive"):
        spec = dataclasses.replace(objectives.as_spec("dft"), implementation=impl)
        out = objectives.compute_objective(hidden, weight, labels, spec)
        gh, gw = torch.autograd.grad(out.loss_sum / out.n_tokens, (hidden, weight))
        res[impl] = out, gh.float(), gw.float()
    (c, ch, cw), (nv, nh, nw) = res["chunked"], res["naive"]
    assert c.n_tokens == nv.n_tokens == n - 6
    assert torch.isclose(c.loss_sum, nv.loss_sum, rtol=2e-3)
    for a, b in ((ch, nh), (cw, nw)):
        assert (a - b).norm() <= 2e-2 * b.norm(), (a - b).norm() / b.norm()


def test_tiny_model_on_cuda_packed_and_padded_varlen_equal_sdpa():
    from test_packing import _samples

    from vldft.adapters import load_adapter
    from vldft.attention import use_varlen
    from vldft.collate import Collator
    from vldft.config import ModelConfig
    from vldft.packing import pack, positions_for

    torch.manual_seed(0)
    adapter = load_adapter(ModelConfig(family="qwen2_5_vl", tiny=True, min_pixels=None,
                                       max_pixels=None))
    coll = Collator(adapter, max_length=1024)
    enc = [coll.encode(s) for s in _samples()]
    adapter.model.to("cuda", torch.bfloat16).eval()

    def hidden(batch):
        inputs = {k: (v.cuda().bfloat16() if v.is_floating_point() else v.cuda())
                  for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
        with torch.no_grad():
            return adapter.hidden_states(inputs).float()  # [B, T, H]

    adapter.model.config._attn_implementation = "sdpa"
    alone = [hidden(coll([e]))[0, :len(e.input_ids)] for e in enc]  # the collator may pad
    padded = coll(enc)
    padded_sdpa = hidden(padded)
    use_varlen(adapter.model)
    packed = hidden(pack(enc, positions_for(adapter)))[0]
    valid = padded["attention_mask"].bool().cuda()
    assert not valid.all()
    padded_varlen = hidden(padded)  # model.attn_implementation=varlen without packing
    err = (padded_varlen[valid] - padded_sdpa[valid]).abs().max().item()
    assert err <= 3e-2 * padded_sdpa.abs().max().item(), err
    start = 0
    for e, ref in zip(enc, alone, strict=True):
        part = packed[start:start + len(e.input_ids)]
        start += len(e.input_ids)
        err = (part - ref).abs().max().item()
        assert err <= 3e-2 * ref.abs().max().item(), (e.sample_id, err)
    assert start == packed.shape[0]
