"""Prior-strength probe: how well does the starting model already predict the training targets?

    python -m vldft.probe configs/demo.yaml                          # the tiny random model
    python -m vldft.probe configs/demo.yaml model.tiny=false model.name_or_path=runs/demo/final
    python -m vldft.probe configs/qwen25vl_geo.yaml --samples 512 --out runs/probe_geo

Runs the model of CONFIG (no training) teacher-forced over a seeded sample (``--samples``,
default 256; seed ``train.seed``) of the configured training mixture, built by the training
pipeline itself (``build_training_set`` + ``Collator``: the same masking, so exactly the tokens
training would learn are measured), and reports per source, per token kind (digits / words /
special / other, end-of-turn separately) and overall: mean target-token probability p, the
fraction of target tokens with p < 0.1, mean entropy of the prediction, plain CE, greedy top-1
accuracy, the end-of-turn token's probability, and the same for the answer tokens (each
sample's final-answer span, located from its ``answer`` field). It prints a recommendation
with its reasoning (:func:`recommend`; thresholds are heuristics from the sources cited there)
and writes ``probe.json`` and ``probe_probs.png`` (histograms of p; needs matplotlib) to ``--out``
(default: ``train.output_dir``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vldft.collate import IGNORE, Collator, Encoded, SampleError
from vldft.config import Config, ConfigError, load_config
from vldft.diagnostics import BINS
from vldft.progress import prog_name

LOW_P = 0.1  # same threshold as the training diagnostics' low_p_frac
KINDS = ("end_of_turn", "special", "digits", "words", "other")
# Documented heuristics (see recommend()): mean target p bands and end-of-turn threshold.
STRONG_P, WEAK_P = 0.7, 0.5
LOW_EOT_P = 0.5
ANSWER_LOW_FRAC = 0.2  # answer tokens with p < LOW_P above this: not learned yet
SOURCES = {
    "bll": "Beyond Log-Likelihood (arXiv 2510.00526): probability-based objectives (-p, DFT's "
           "gradient) beat NLL where the model's mean target probability is high (reported "
           "~0.76-0.81) and lose where it is low (~0.01-0.5); no clear winner in between",
    "dft": "Wu et al., On the Generalization of SFT (arXiv 2508.05629), DFT: tokens that start "
           "at low probability (EOS, format tokens) get little weight; a minimum weight (0.1) "
           "is the authors' suggested fix",
    "asft": "ASFT (arXiv 2509.23753): DFT's entropy collapse and drift; a KL anchor to the "
            "starting model (loss.name=asft)",
    "vldft": "vldft docs/design.md#measured-on-a-tiny-qwen25-vl-on-a-cpu: on a tiny "
             "Qwen2.5-VL, DFT from random init (mean p ~0.004) collapses to one answer while its "
             "loss goes to ~0; an SFT warm-up to mean p 0.93 and then DFT was harmless, a "
             "warm-up to lower p was not",
}


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


@torch.no_grad()
def token_stats(adapter, batch: dict, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Per target token of a collated batch (labels shifted as in training): ``p`` (target
    probability), ``entropy`` (nats, full vocabulary), ``top1`` (argmax == target), ``ids``
    (target ids) and ``row`` (sample index in the batch); 1-D tensors of length N. Logits are
    formed ``chunk`` rows at a time in fp32, never for the whole batch."""
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    labels = inputs.pop("labels")
    device = next(adapter.model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    hidden = adapter.hidden_states(inputs)  # [B, T, H]
    head = adapter.output_layer()
    targets = labels[:, 1:].to(device)
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
    from vldft.adapters import load_adapter
    from vldft.data.mix import build_training_set

    adapter = load_adapter(cfg.model)
    adapter.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    data = build_training_set(cfg, adapter)
    if not data.samples:
        raise SystemExit("probe: no training samples (every row was skipped or the sources "
                         "are empty)")
    rng = random.Random(cfg.train.seed)
    chosen = sorted(rng.sample(range(len(data.samples)), min(n_samples, len(data.samples))))
    samples = [data.samples[i] for i in chosen]
    collator = Collator(adapter, cfg.data.max_length, cfg.data.overlong, cfg.data.train_on,
                        data.pixels)
    bs = batch_size or cfg.train.eval_batch_size
    cols: dict[str, list[torch.Tensor]] = {"p": [], "entropy": [], "top1": [], "ids": []}
    src_of: list[str] = []
    is_answer: list[torch.Tensor] = []  # per target token: part of the sample's final answer
    answers = {"with_answer": 0, "located": 0}
    skipped: dict[str, int] = {}
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
        "model": cfg.model.name_or_path or f"tiny {cfg.model.family} (random init)",
        "family": cfg.model.family, "n_samples": len(samples), "seed": cfg.train.seed,
        "skipped": skipped, "overall": summarise(p, ent, top1),
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
    report["recommendation"] = recommend(report)
    report["sources_cited"] = SOURCES
    return report


def recommend(report: dict) -> dict:
    """Objective advice from the probe's numbers; returns {"objective", "settings", "reasons"}.

    Documented heuristics (not facts; they come from the sources in ``SOURCES``):
    - mean target p >= 0.7 (STRONG_P): strong prior, where "Beyond Log-Likelihood" saw
      probability-based objectives win (~0.76-0.81): DFT.
    - mean target p < 0.5 (WEAK_P): weak prior, where they lost (~0.01-0.5), and where vldft's
      own tiny model collapsed under DFT: SFT, or an SFT warm-up first (loss.sft_warmup_steps)
      until the training mean_p is high, then DFT.
    - in between: no clear winner in the paper: compare (python -m vldft.compare), or a soft
      objective (loss.alpha < 1, loss.sft_mix) / an SFT warm-up.
    - end-of-turn mean p < 0.5 (LOW_EOT_P): DFT would barely train the stop token (weight = p):
      loss.min_weight=0.1 (the DFT authors' fix). The same for special / format tokens.
    - a source whose mean p is < 0.5 while the mixture's is higher: that source is new to the
      model; DFT will under-train it (sft_mix, min_weight, or SFT for it).
    - the ANSWER tokens (``answer_tokens``: the final-answer span of each sample, located from
      its ``answer`` field) weigh more than their count: they decide accuracy, and a response's
      easy words can lift the mixture's mean far above them. When their mean p is < 0.5
      (WEAK_P) or more than 20% of them (ANSWER_LOW_FRAC) have p < 0.1, the advice is SFT first
      (then DFT once a re-probe shows them learned), never plain DFT: DFT weights each answer
      token by its own small p while the surrounding text gets full weight, and
      ``loss.min_weight=0.1`` only floors that weight at a tenth of SFT's.
    """
    o = report["overall"]
    mp, low = o["mean_p"], o["low_p_frac"]
    reasons, settings = [], {}
    ans = report.get("answer_tokens") or {}
    weak_answers = bool(ans.get("n_tokens")) and (ans["mean_p"] < WEAK_P
                                                  or ans["low_p_frac"] > ANSWER_LOW_FRAC)
    if mp >= STRONG_P and weak_answers:
        objective = "sft"  # decided by the answer tokens below
        reasons.append(f"mean target p {mp:.3f} >= {STRONG_P}: over all target tokens the "
                       "model looks like it has a strong prior, the regime where "
                       "probability-based objectives such as DFT beat SFT [bll]; but the "
                       "answer tokens, below, are not learned yet.")
    elif mp >= STRONG_P:
        objective = "dft"
        reasons.append(f"mean target p {mp:.3f} >= {STRONG_P}: the model already has a strong "
                       "prior for these targets, the regime where probability-based objectives "
                       "such as DFT beat SFT [bll]. Use loss.name=dft (optionally asft for a KL "
                       "anchor [asft]); watch held-out accuracy and plain CE, not the DFT loss.")
    elif mp < WEAK_P:
        objective = "sft"
        settings["loss.name"] = "sft"
        reasons.append(f"mean target p {mp:.3f} < {WEAK_P}: weak prior, the regime where "
                       "probability-based objectives lose to SFT [bll]; DFT gives each token "
                       f"weight p, so {low:.0%} of target tokens (p < {LOW_P}) would get almost "
                       "no gradient, and from such a start vldft's tiny model collapsed under "
                       "DFT [vldft]. Use SFT, or an SFT warm-up first (loss.sft_warmup_steps=N, "
                       "N large enough that the training mean_p is >= "
                       f"{STRONG_P} when DFT starts) and then DFT; probe the warmed-up "
                       "checkpoint again to check.")
    else:
        objective = "compare"
        reasons.append(f"mean target p {mp:.3f} is between {WEAK_P} and {STRONG_P}: the paper "
                       "finds no clear winner here [bll]. Compare SFT, DFT and an SFT warm-up "
                       "on your data (python -m vldft.compare), or soften DFT (loss.alpha=0.5 "
                       "or loss.sft_mix=0.3).")
    if ans.get("n_tokens"):
        where = (f"the final-answer span of {ans['n_samples_located']} of "
                 f"{ans['n_samples_with_answer']} samples with an answer"
                 if "n_samples_located" in ans else "the final-answer span")
        numbers = (f"answer tokens ({ans['n_tokens']}; {where}): mean p {ans['mean_p']:.3f}, "
                   f"{ans['low_p_frac']:.0%} with p < {LOW_P}")
        if weak_answers and (objective != "sft" or mp >= STRONG_P):
            objective = "sft"
            settings = {"loss.name": "sft"}
            reasons.append(
                f"{numbers}, against a mean of {mp:.3f} over all target tokens. These are the "
                "tokens that decide accuracy, and DFT weights each by its own p: the text the "
                "model already predicts keeps full weight while the answers get a fraction of "
                "it; vldft's tiny model, switched to DFT before its answers were learned, ended "
                "worse than with SFT alone [vldft]. "
                "Not plain DFT: train SFT first (loss.name=sft, or an SFT warm-up "
                "loss.sft_warmup_steps=N with N large enough that the answer tokens reach mean "
                f"p >= {STRONG_P} with < {ANSWER_LOW_FRAC:.0%} below {LOW_P}; probe that "
                "checkpoint again), then DFT. loss.min_weight=0.1 is not enough on its own: it "
                f"floors the weight at 0.1, so answers at p < {LOW_P} still get a tenth of "
                "SFT's gradient [dft].")
        elif weak_answers:
            reasons.append(f"{numbers}: not learned yet either, one more reason for SFT first.")
        else:
            reasons.append(f"{numbers}: the answers themselves are already predicted, so DFT's "
                           "weighting does not starve them.")
    if mp >= WEAK_P and low > 0.2 and objective != "sft":
        reasons.append(f"{low:.0%} of target tokens have p < {LOW_P} although the mean is "
                       f"{mp:.3f}: part of the data is new to the model, and DFT under-trains "
                       "exactly those tokens [dft]; consider loss.min_weight=0.1 or "
                       "loss.sft_mix=0.3.")
        settings.setdefault("loss.min_weight", 0.1)
    eot = report["by_kind"].get("end_of_turn", {})
    if eot.get("n_tokens") and objective != "sft":
        if eot["mean_p"] < LOW_EOT_P:
            settings["loss.min_weight"] = 0.1
            reasons.append(f"end-of-turn token {report['end_of_turn_token']!r}: mean p "
                           f"{eot['mean_p']:.3f} < {LOW_EOT_P}: under DFT its weight is its "
                           "own small p, so the model may never learn to stop; set "
                           "loss.min_weight=0.1 [dft].")
        else:
            reasons.append(f"end-of-turn token {report['end_of_turn_token']!r}: mean p "
                           f"{eot['mean_p']:.3f}, already learned; no minimum weight needed "
                           "for it.")
    special = report["by_kind"].get("special", {})
    if special.get("n_tokens") and special["mean_p"] < LOW_EOT_P and objective != "sft":
        settings["loss.min_weight"] = 0.1
        reasons.append(f"special tokens in the targets: mean p {special['mean_p']:.3f}: the "
                       "same low-weight problem as end-of-turn; loss.min_weight=0.1 [dft].")
    weak = {s: v["mean_p"] for s, v in report["by_source"].items()
            if v.get("n_tokens") and v["mean_p"] < WEAK_P}
    if weak and mp >= WEAK_P:
        reasons.append("sources with a weak prior (mean p < 0.5): "
                       + ", ".join(f"{s} {v:.3f}" for s, v in weak.items())
                       + "; the mixture's mean hides them, and DFT would learn them least: "
                         "loss.sft_mix, loss.min_weight, or SFT on them first.")
    if objective == "dft" and "loss.name" not in settings:
        settings["loss.name"] = "dft"
    return {"objective": objective, "settings": settings, "reasons": reasons,
            "thresholds": {"strong_mean_p": STRONG_P, "weak_mean_p": WEAK_P,
                           "low_end_of_turn_p": LOW_EOT_P, "low_p": LOW_P,
                           "answer_low_p_frac": ANSWER_LOW_FRAC},
            "note": "heuristics, not facts: the bands come from the sources cited; check a "
                    "choice with python -m vldft.compare on a small budget"}


def format_report(report: dict) -> str:
    cols = ("n_tokens", "mean_p", "median_p", "low_p_frac", "entropy", "ce", "top1")
    head = f"  {'group':<28}" + "".join(f"{c:>11}" for c in cols)

    def line(name: str, st: dict) -> str:
        if not st.get("n_tokens"):
            return f"  {name:<28}{0:>11}"
        return f"  {name:<28}{st['n_tokens']:>11}" + "".join(f"{st[c]:>11.3f}" for c in cols[1:])

    lines = [f"[vldft] probe of {report['model']} on {report['n_samples']} training samples "
             f"(seed {report['seed']}); end-of-turn token {report['end_of_turn_token']!r}",
             head, line("overall", report["overall"])]
    lines += [line(f"source {s}", st) for s, st in report["by_source"].items()]
    lines += [line(f"kind {k}", st) for k, st in report["by_kind"].items()]
    if report.get("answer_tokens", {}).get("n_tokens"):
        lines.append(line("answer tokens", report["answer_tokens"]))
    if len(report["by_source"]) > 1:
        lines += [line(f"{s}/{k}", st) for s, kinds in report["by_source_kind"].items()
                  for k, st in kinds.items()]
    if report["skipped"]:
        lines.append(f"  skipped samples: {report['skipped']}")
    rec = report["recommendation"]
    lines.append(f"\n[vldft] recommendation: {rec['objective']}"
                 + (f"  ({' '.join(f'{k}={v}' for k, v in rec['settings'].items())})"
                    if rec["settings"] else ""))
    lines += [f"  - {r}" for r in rec["reasons"]]
    lines.append(f"  ({rec['note']}; sources: "
                 + "; ".join(f"[{k}] {v.split(':')[0]}" for k, v in SOURCES.items()) + ")")
    return "\n".join(lines)


def write_outputs(report: dict, out_dir: Path) -> list[Path]:
    """probe.json, and probe_probs.png when matplotlib is installed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "probe.json"]
    paths[0].write_text(json.dumps(report, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('[vldft] matplotlib not installed: no probe_probs.png (pip install "vldft[plot]")')
        return paths
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 1.0 / BINS
    centers = [(i + 0.5) * width for i in range(BINS)]
    counts = report["histogram"]["counts"]
    axes[0].bar(centers, [c / max(sum(counts), 1) for c in counts], width=width * 0.9)
    o = report["overall"]
    axes[0].axvline(o["mean_p"], color="k", linestyle="--", label=f"mean p {o['mean_p']:.3f}")
    axes[0].set_title(f"target-token probability, all ({o['n_tokens']} tokens)")
    axes[0].set_xlabel("p(target)")
    axes[0].set_ylabel("fraction of target tokens")
    axes[0].legend()
    for kind, c in report["histogram_by_kind"].items():
        axes[1].plot(centers, [x / max(sum(c), 1) for x in c], marker="o",
                     label=f"{kind} ({sum(c)}; mean {report['by_kind'][kind]['mean_p']:.2f})")
    axes[1].set_title("by token kind")
    axes[1].set_xlabel("p(target)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"probe: {report['model']}", fontsize=9)
    fig.tight_layout()
    paths.append(out_dir / "probe_probs.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


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
                        help="output directory (default: train.output_dir)")
    args = parser.parse_intermixed_args(argv)
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    from vldft.progress import quiet_if_logging

    quiet_if_logging()  # a log file: no \r-redrawn progress bars
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        if "sweep: unknown key" not in str(e):
            raise SystemExit(f"config error: {e}") from None
        from vldft.compare import load_base_config  # a study config (python -m vldft.compare)

        try:
            cfg = load_base_config(args.config, args.overrides)
        except ConfigError as e2:
            raise SystemExit(f"config error: {e2}") from None
    except OSError as e:
        raise SystemExit(f"config error: {e}") from None
    report = probe(cfg, args.samples, args.batch_size, show=sys.stderr.isatty())
    print(format_report(report))
    out = args.out if args.out is not None else cfg.resolve(cfg.train.output_dir)
    for path in write_outputs(report, out):
        print(f"[vldft] wrote {path}")
    return report


def main(argv: list[str] | None = None) -> None:
    """The ``vldft-probe`` command (``cli`` returns the report, which is not an exit code)."""
    cli(argv)


if __name__ == "__main__":
    main()
