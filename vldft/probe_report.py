"""What the prior-strength probe concludes and shows: the objective advice (:func:`recommend`,
its thresholds and the sources they come from), the printed table (:func:`format_report`) and the
files (:func:`write_outputs`: ``probe.json``, ``probe_probs.png``). The measurement itself is
``vldft.probe``'s; everything here is a function of its report dict.
"""

from __future__ import annotations

import json
from pathlib import Path

from vldft.plotting import pyplot

# vldft.objectives.LOW_P (the p < 0.1 threshold of the training diagnostics' low_p_frac) and
# vldft.diagnostics.BINS are imported where used: those modules load torch, --help does not

# Documented heuristics (see recommend()): mean target p bands and end-of-turn threshold.
STRONG_P, WEAK_P = 0.7, 0.5
LOW_EOT_P = 0.5
ANSWER_LOW_FRAC = 0.2  # answer tokens with p < LOW_P above this: not learned yet
FLOOR = 0.1  # a DFT weight floor (loss.min_weight / sft_mix) this high learned the demo's answers
NO_PRIOR_P = 0.1  # mean target p below this: no prior at all (random init ~0.004); untested
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
    "vldft-demo": "vldft docs/design.md#the-demo-fine-tunes-a-shipped-prior: from a small "
                  "pre-trained prior whose answer tokens were mostly at p < 0.1, plain DFT "
                  "collapsed and DFT with loss.min_weight=0.1 learned the task",
}


def recommend(report: dict) -> dict:
    """Objective advice from the probe's numbers; returns {"objective", "settings", "reasons"}.

    Documented heuristics (not facts; they come from the sources in ``SOURCES``):
    - mean target p >= 0.7 (STRONG_P): strong prior, where "Beyond Log-Likelihood" saw
      probability-based objectives win (~0.76-0.81): DFT.
    - mean target p < 0.5 (WEAK_P): weak prior, where they lost (~0.01-0.5), and where vldft's
      own tiny model collapsed under DFT: SFT, or an SFT warm-up first (loss.sft_warmup_steps)
      until the training mean_p is high, then DFT; or, to keep DFT from the start, its weights
      floored (loss.min_weight=0.1), which learned the demo from the shipped prior.
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
      (then DFT once a re-probe shows them learned), or DFT with its weights floored
      (``loss.min_weight=0.1``, a tenth of SFT's weight at least: what learned the demo), never
      plain DFT: DFT weights each answer token by its own small p while the surrounding text
      gets full weight.
    - the config that was probed (``report["loss"]``, :func:`_given_config`): where the advice
      is SFT and the config already floors DFT's weights at >= 0.1 (FLOOR; the shipped demo),
      the advice is that config's floored DFT, unless the model has no prior at all (mean p <
      0.1, NO_PRIOR_P); otherwise one line says how the config differs from the advice.
    """
    from vldft.objectives import LOW_P

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
                       "checkpoint again to check. To keep DFT from the start, floor its "
                       "weights (loss.min_weight=0.1): from vldft's shipped prior (mean p ~0.36, "
                       "answer tokens ~0.18) that reached 94% held-out where plain DFT stayed "
                       "below 1% [vldft-demo].")
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
                "checkpoint again), then DFT; or keep DFT with its weights floored "
                "(loss.min_weight=0.1), which gives answers at p < "
                f"{LOW_P} a tenth of SFT's gradient [dft] and learned the demo's answers from "
                "a start like this [vldft-demo]: watch held-out accuracy.")
        elif weak_answers:
            reasons.append(f"{numbers}: not learned yet either, one more reason not to train "
                           "plain DFT.")
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
    if objective == "sft" and report.get("loss"):
        objective, settings = _given_config(report["loss"], mp, settings, reasons)
    if objective == "dft" and "loss.name" not in settings:
        settings["loss.name"] = "dft"
    return {"objective": objective, "settings": settings, "reasons": reasons,
            "thresholds": {"strong_mean_p": STRONG_P, "weak_mean_p": WEAK_P,
                           "low_end_of_turn_p": LOW_EOT_P, "low_p": LOW_P,
                           "answer_low_p_frac": ANSWER_LOW_FRAC, "dft_floor": FLOOR,
                           "no_prior_mean_p": NO_PRIOR_P},
            "note": "heuristics, not facts: the bands come from the sources cited; check a "
                    "choice with python -m vldft.compare on a small budget"}


def _given_config(loss: dict, mp: float, settings: dict, reasons: list[str]
                  ) -> tuple[str, dict]:
    """The advice "sft" against the ``loss`` section of the config that was probed (``name``,
    ``min_weight``, ``sft_mix``, ``sft_warmup_steps``): a config that already floors DFT's
    weights at >= FLOOR keeps DFT (what the demo does: from a prior at mean p ~0.36, answer
    tokens ~0.18, it reached 94% held-out where plain DFT stayed below 1%), unless the model
    has no prior at all (mean p < NO_PRIOR_P: untested); a config with an SFT warm-up is told
    so. Appends one reason line; returns (objective, settings)."""
    name = loss.get("name", "dft")
    if name == "sft":
        reasons.append("your config trains SFT (loss.name=sft): that is this advice.")
        return "sft", settings
    floor = max(loss.get("min_weight", 0.0) if name in ("dft", "asft") else 0.0,
                loss.get("sft_mix", 0.0))
    key = "loss.min_weight" if floor == loss.get("min_weight") else "loss.sft_mix"
    if loss.get("sft_warmup_steps"):
        reasons.append(f"your config starts with {loss['sft_warmup_steps']} SFT steps "
                       f"(loss.sft_warmup_steps) before {name}: that is the warm-up advised "
                       "here; probe the checkpoint at the switch to check its answers are "
                       "learned by then.")
        return "sft", settings
    if floor >= FLOOR and mp >= NO_PRIOR_P:
        reasons.append(f"your config trains {name} with its weights floored at {floor:g} "
                       f"({key}), as vldft's demo does from its prior (mean p ~0.36, answer "
                       "tokens ~0.18: 94% held-out, where plain DFT stayed below 1%) "
                       "[vldft-demo]: keep it, and watch held-out accuracy; SFT is the other "
                       "safe choice, plain DFT is not.")
        return name, {"loss.name": name, key: floor}
    if floor >= FLOOR:
        reasons.append(f"your config floors {name}'s weights at {floor:g} ({key}), which "
                       "learned the demo from a prior, but this model has none (mean p "
                       f"< {NO_PRIOR_P}), where that is untested: SFT first.")
    elif floor > 0:
        reasons.append(f"your config floors {name}'s weights at {floor:g} ({key}), below the "
                       f"{FLOOR} that learned the demo's answers [vldft-demo]: raise it to "
                       f"{FLOOR}, or use SFT.")
    else:
        reasons.append(f"your config trains plain {name} (loss.min_weight=0): this advice "
                       "differs from it; see above.")
    return "sft", settings


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
    if report.get("truncated"):
        lines.append(f"  truncated to data.max_length: {report['truncated']} of the probed "
                     "samples (their cut-off tokens are not in these figures)")
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
    from vldft.diagnostics import BINS

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "probe.json"]
    paths[0].write_text(json.dumps(report, indent=2))
    plt = pyplot(skip="probe_probs.png")
    if plt is None:
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
