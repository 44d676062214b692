"""Prior-strength probe: how well does the starting model already predict the training targets?

    python -m vldft.probe configs/demo.yaml                          # the shipped prior
    python -m vldft.probe configs/demo.yaml model.name_or_path=runs/demo/final
    python -m vldft.probe configs/qwen25vl_geo.yaml --samples 512 --out runs/probe_geo

Runs the model of CONFIG (no training) teacher-forced over a seeded sample (``--samples``,
default 256; seed ``train.seed``) of the configured training mixture, built by the training
pipeline itself (``build_training_set`` + ``Collator``: the same masking, so exactly the tokens
training would learn are measured), and reports per source, per token kind (digits / words /
special / other, end-of-turn separately) and overall: mean target-token probability p, the
fraction of target tokens with p < 0.1, mean entropy of the prediction, plain CE, greedy top-1
accuracy, the end-of-turn token's probability, and the same for the answer tokens (each
sample's final-answer span, located from its ``answer`` field). It prints a recommendation
with its reasoning (``vldft.probe_report.recommend``; thresholds are heuristics from the sources
cited there) and writes ``probe.json`` and ``probe_probs.png`` (histograms of p; needs
matplotlib) to ``--out`` (default: ``train.output_dir/probe-<model>``).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vldft.collate import IGNORE, Collator, Encoded, SampleError
from vldft.config import Config, ConfigError
from vldft.data import DataError
from vldft.data.download import require_data
from vldft.probe_report import SOURCES, format_report, recommend, write_outputs
from vldft.progress import prog_name, quiet_if_logging
from vldft.study import load_base_config

if TYPE_CHECKING:  # torch is imported by the functions that measure (not for --help)
    import torch

KINDS = ("end_of_turn", "special", "digits", "words", "other")


def token_kinds(tokenizer, ids: list[int], eot_id: int) -> dict[int, str]:
    """Kind of each distinct token id: end_of_turn, special, digits, words or other."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    kinds = {}
    for i in set(ids):
        if i == eot_id:
            kinds[i] = "end_of_turn"
        elif i in special:
            kinds[i] = "special"
        else:
            text = tokenizer.decode([i]).strip()
            if text and any(c.isdigit() for c in text) and not any(c.isalpha() for c in text):
                kinds[i] = "digits"
            elif any(c.isalpha() for c in text):
                kinds[i] = "words"
            else:
                kinds[i] = "other"  # punctuation, whitespace, partial bytes
    return kinds


def answer_positions(tokenizer, ids: list[int], answer: str | None, eot_id: int) -> list[int]:
    """Indices into ``ids`` (one sample's target tokens, in order) of its final answer: the
    tokens that spell the LAST occurrence of ``answer`` (the sample's reference answer, e.g.
    "36", "C", "circle") in the decoded target, not inside a longer word or number ("6" is not
    found in "36"). ``[]`` when the sample has no answer or its text does not contain it (e.g.
    an answer normalised differently from the response). Character offsets come from decoding
    suffixes, from the end back to the answer only: a few decodes per sample."""
    answer = (answer or "").strip()
    end = len(ids)
    while end and ids[end - 1] == eot_id:
        end -= 1
    if not answer or not end:
        return []
    edge_l = r"(?<![0-9A-Za-z])" if answer[0].isalnum() else ""
    edge_r = r"(?![0-9A-Za-z])" if answer[-1].isalnum() else ""
    text = tokenizer.decode(ids[:end])
    found = list(re.finditer(edge_l + re.escape(answer) + edge_r, text))
    if not found:
        return []
    a, b = found[-1].span()
    positions, right = [], len(text)  # token k covers text[left:right]
    for k in range(end - 1, -1, -1):
        left = len(text) - len(tokenizer.decode(ids[k:end]))
        if left < b and right > a:
            positions.append(k)
        if left <= a:
            break
        right = left
    return sorted(positions)


def token_stats(adapter, batch: dict, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Per target token of a collated batch (labels shifted as in training): ``p`` (target
    probability), ``entropy`` (nats, full vocabulary), ``top1`` (argmax == target), ``ids``
    (target ids) and ``row`` (sample index in the batch); 1-D tensors of length N. Logits are
    formed ``chunk`` rows at a time in fp32, never for the whole batch (no gradients)."""
    import torch

    with torch.no_grad():
        return _token_stats(adapter, batch, chunk)


def _token_stats(adapter, batch: dict, chunk: int) -> dict[str, torch.Tensor]:
    import torch

    from vldft.device import model_device, to_device

    inputs = to_device(batch, model_device(adapter.model))
    labels = inputs.pop("labels")  # [B, T]
    hidden = adapter.hidden_states(inputs)  # [B, T, H]
    head = adapter.output_layer()
    targets = labels[:, 1:]
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    h = hidden[:, :-1][rows, cols]  # [N, H]
    y = targets[rows, cols]
    out = {"p": [], "entropy": [], "top1": []}
    for s in range(0, len(y), chunk):
        z = head(h[s: s + chunk]).float()  # [C, V]
        logp = torch.log_softmax(z, dim=-1)
        yc = y[s: s + chunk]
        out["p"].append(logp.gather(1, yc[:, None]).squeeze(1).exp())
        out["entropy"].append(-(logp.exp() * logp).sum(-1))
        out["top1"].append(z.argmax(-1) == yc)
    res = {k: (torch.cat(v) if v else torch.zeros(0)).cpu() for k, v in out.items()}
    res["ids"], res["row"] = y.cpu(), rows.cpu()
    return res


def summarise(p: torch.Tensor, entropy: torch.Tensor, top1: torch.Tensor) -> dict:
    """Statistics of one group of target tokens."""
    from vldft.objectives import LOW_P

    n = len(p)
    if n == 0:
        return {"n_tokens": 0}
    return {"n_tokens": n, "mean_p": float(p.mean()), "median_p": float(p.median()),
            "low_p_frac": float((p < LOW_P).float().mean()),
            "entropy": float(entropy.mean()), "ce": float(-p.clamp_min(1e-30).log().mean()),
            "top1": float(top1.float().mean())}


def probe(cfg: Config, n_samples: int = 256, batch_size: int | None = None,
          show: bool = True) -> dict:
    """Measure the starting model on a seeded sample of the training data; returns the report
    (``overall``, ``by_source``, ``by_kind``, ``by_source_kind``, ``histogram``,
    ``recommendation``, ...)."""
    import torch
    from tqdm.auto import tqdm

    from vldft.adapters import load_adapter
    from vldft.data.mix import build_training_set
    from vldft.diagnostics import BINS

    adapter = load_adapter(cfg.model)
    adapter.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    data = build_training_set(cfg, adapter)
    if not data.samples:
        raise SystemExit("probe: no training samples (every row was skipped or the sources "
                         "are empty)")
    rng = random.Random(cfg.train.seed)
    chosen = sorted(rng.sample(range(len(data.samples)), min(n_samples, len(data.samples))))
    samples = [data.samples[i] for i in chosen]
    collator = Collator.from_config(adapter, cfg)
    bs = batch_size or cfg.train.eval_batch_size
    cols: dict[str, list[torch.Tensor]] = {"p": [], "entropy": [], "top1": [], "ids": []}
    src_of: list[str] = []
    is_answer: list[torch.Tensor] = []  # per target token: part of the sample's final answer
    answers = {"with_answer": 0, "located": 0}
    skipped: dict[str, int] = {}
    truncated = 0  # encoded samples cut to data.max_length (their tail is not probed)
    for i in tqdm(range(0, len(samples), bs), desc="probe", unit="batch", disable=not show):
        chunk = samples[i: i + bs]
        items = []
        for s in chunk:
            try:
                items.append(collator.encode(s))
            except SampleError as e:
                if cfg.data.on_error == "raise":
                    raise
                items.append(e)
        kept = [(s, it) for s, it in zip(chunk, items, strict=True) if isinstance(it, Encoded)]
        for s, it in zip(chunk, items, strict=True):
            if not isinstance(it, Encoded):
                key = f"{s.source or 'data'}/{getattr(it, 'reason', 'encode_error')}"
                skipped[key] = skipped.get(key, 0) + 1
        truncated += sum(bool(it.truncated) for _, it in kept)
        if not kept:
            continue
        st = token_stats(adapter, collator([it for _, it in kept]))
        for k in cols:
            cols[k].append(st[k])
        mask = torch.zeros(len(st["ids"]), dtype=torch.bool)
        for r, (s, _) in enumerate(kept):
            where = (st["row"] == r).nonzero().flatten()
            pos = answer_positions(adapter.tokenizer, st["ids"][where].tolist(), s.answer,
                                   adapter.eot_token_id)
            answers["with_answer"] += s.answer is not None
            answers["located"] += bool(pos)
            mask[where[pos]] = True
        is_answer.append(mask)
        src_of += [kept[r][0].source or "data" for r in st["row"].tolist()]
    if not src_of:
        raise SystemExit(f"probe: no sample could be encoded (skipped: {skipped})")
    p, ent, top1, ids = (torch.cat(cols[k]) for k in ("p", "entropy", "top1", "ids"))
    kind_of = token_kinds(adapter.tokenizer, ids.tolist(), adapter.eot_token_id)
    kinds = [kind_of[i] for i in ids.tolist()]

    def group(mask: list[bool]) -> dict:
        m = torch.tensor(mask, dtype=torch.bool)
        return summarise(p[m], ent[m], top1[m])

    sources = list(dict.fromkeys(src_of))
    report = {
        "model": (f"tiny {cfg.model.family} (random init)" if cfg.model.tiny
                  else cfg.model.name_or_path),
        "family": cfg.model.family, "n_samples": len(samples), "seed": cfg.train.seed,
        "skipped": skipped, "truncated": truncated, "overall": summarise(p, ent, top1),
        "by_source": {s: group([x == s for x in src_of]) for s in sources},
        "by_kind": {k: group([x == k for x in kinds]) for k in KINDS if k in kinds},
        "by_source_kind": {s: {k: group([a == s and b == k for a, b in zip(src_of, kinds,
                                                                          strict=True)])
                               for k in KINDS if k in kinds} for s in sources},
        "end_of_turn_token": adapter.tokenizer.convert_ids_to_tokens(adapter.eot_token_id),
        "histogram": {"bins": BINS, "counts": [int(c) for c in
                                               torch.histc(p, BINS, 0.0, 1.0).tolist()]},
        "histogram_by_kind": {k: [int(c) for c in torch.histc(
            p[torch.tensor([x == k for x in kinds])], BINS, 0.0, 1.0).tolist()]
            for k in KINDS if k in kinds},
    }
    ans = torch.cat(is_answer)
    report["answer_tokens"] = {**summarise(p[ans], ent[ans], top1[ans]),
                               "n_samples_with_answer": answers["with_answer"],
                               "n_samples_located": answers["located"]}
    lo = cfg.loss  # the advice is read against the config's own objective
    report["loss"] = {"name": lo.name, "min_weight": lo.min_weight, "sft_mix": lo.sft_mix,
                      "sft_warmup_steps": lo.sft_warmup_steps}
    report["recommendation"] = recommend(report)
    report["sources_cited"] = SOURCES
    return report


def cli(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog=prog_name("vldft.probe", "vldft-probe"), description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="overrides: section.key=value (value read as YAML), as for python -m vldft.train "
               "(its --help lists the config keys)")
    parser.add_argument("config", help="YAML config (the one you would train with)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                        help="optional overrides of the config's values")
    parser.add_argument("--samples", type=int, default=256, help="samples to probe (seeded)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: train.eval_batch_size")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: train.output_dir/probe-<model>, one "
                             "folder per model probed)")
    args = parser.parse_intermixed_args(argv)
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    quiet_if_logging()  # a log file: no \r-redrawn progress bars
    try:  # a study config (python -m vldft.compare) works too: its sweep section is ignored
        cfg = load_base_config(args.config, args.overrides)
    except (ConfigError, OSError) as e:
        raise SystemExit(f"config error: {e}") from None
    try:
        require_data(cfg, args.overrides)  # missing downloads: one line, before the model
        report = probe(cfg, args.samples, args.batch_size, show=sys.stderr.isatty())
    except ConfigError as e:  # e.g. a hub model that cannot load offline
        raise SystemExit(f"config error: {e}") from None
    except DataError as e:  # a bad row with data.on_error=raise: file, line, id
        raise SystemExit(f"data error: {e}") from None
    print(format_report(report))
    out = args.out if args.out is not None else default_out(cfg)
    for path in write_outputs(report, out):
        print(f"[vldft] wrote {path}")
    return report


def default_out(cfg) -> Path:
    """``train.output_dir/probe-<model>``: the base model's probe and the fine-tuned
    checkpoint's (the docs' two commands, one config) no longer overwrite each other, nor the
    training run's own files."""
    model = f"tiny-{cfg.model.family}" if cfg.model.tiny else cfg.model.name_or_path
    parts = [p for p in Path(str(model)).parts if p not in ("/", ".", "..")][-2:]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts)).strip("._") or "model"
    return cfg.resolve(cfg.train.output_dir) / f"probe-{slug}"


def main(argv: list[str] | None = None) -> None:
    """The ``vldft-probe`` command (``cli`` returns the report, which is not an exit code)."""
    cli(argv)


if __name__ == "__main__":
    main()
