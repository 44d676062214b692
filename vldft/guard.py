"""Collapse guard: warn when a probability-weighted objective falls while the model gets worse.

DFT weights each token's loss by the token's own detached probability. Without a prior (a random
model, new knowledge, format tokens the model has never seen) it can drive its own loss towards
zero by becoming certain about the tokens it already gets right and abandoning the rest: on the
tiny Qwen2.5-VL of docs/design.md#measured-on-a-tiny-qwen25-vl-on-a-cpu, DFT from random init
at lr 2e-3 on the shape task takes the objective from 0.15 to 0.006 within 40 steps while
plain CE on the same tokens rises from 3.2 to 4.1 and held-out accuracy is 0%.
The falling loss alone looks like progress.

``CollapseGuard.observe(rec)`` is fed the metrics records of ``vldft.report.log_record`` (one per
``train.log_every`` steps) and returns a warning message, or None. Over the last ``window``
records of one non-SFT objective it fires when

1. **objective down, CE up**: plain CE rose from its lowest value in the window by at least
   ``ce_rise`` (relative) and ``ce_rise_abs`` nats per token, while the objective at the last
   record is below its value at that CE minimum; or
2. **entropy collapse**: the mean entropy of the predictions at target positions fell by at
   least ``entropy_drop`` (relative) over the window and is now below ``entropy_ratio`` x plain
   CE: the model is far more certain than it is right. A model trained with CE is roughly
   calibrated (entropy close to CE: 0.07 vs 0.05 nats at the end of the demo's SFT phase, 0.04
   vs 0.05 after its healthy DFT phase); the collapsing run above reaches 0.06 vs 4.1; or
3. the objective or CE is not finite.

The thresholds are heuristics measured on the tiny model (a healthy DFT phase moves CE by
< 8% between records, well under 0.05 nats), not facts about large models; tune them with the
constructor's keyword arguments. The guard fires once per episode: after a warning it stays
quiet until ``window`` consecutive records show none of the conditions, or the objective
changes (e.g. at the end of an SFT warm-up, which also starts a fresh window). SFT records are
not judged (their objective *is* CE, so condition 1 cannot hold) unless ``judge_sft=True``, a
control that tests use to show an SFT run that learns passes every condition.

    guard = CollapseGuard(window=5)
    for rec in records:          # e.g. json lines of metrics.jsonl that have "loss"
        msg = guard.observe(rec)
        if msg:
            print(msg)
"""

from __future__ import annotations

import math
from collections import deque

REQUIRED = ("step", "objective", "loss", "ce", "entropy")


class CollapseGuard:
    """Watches metrics records for the DFT collapse (see the module docstring)."""

    def __init__(self, window: int = 5, *, ce_rise: float = 0.10, ce_rise_abs: float = 0.05,
                 entropy_ratio: float = 0.2, entropy_drop: float = 0.5,
                 judge_sft: bool = False, loss=None) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"train.collapse_window: must be an integer >= 2 (records), "
                             f"got {window!r}")
        for key, value, lo, hi in (("ce_rise", ce_rise, 0.0, math.inf),
                                   ("ce_rise_abs", ce_rise_abs, 0.0, math.inf),
                                   ("entropy_ratio", entropy_ratio, 0.0, 1.0),
                                   ("entropy_drop", entropy_drop, 0.0, 1.0)):
            if not (isinstance(value, (int, float)) and lo <= value <= hi):
                raise ValueError(f"CollapseGuard {key}: must be a number in [{lo}, {hi}], "
                                 f"got {value!r}")
        self.window = window
        self.ce_rise, self.ce_rise_abs = float(ce_rise), float(ce_rise_abs)
        self.entropy_ratio, self.entropy_drop = float(entropy_ratio), float(entropy_drop)
        self.judge_sft = judge_sft
        self.loss = loss  # the run's loss section: the advice offers what it does not use yet
        self.records: deque[dict] = deque(maxlen=window)
        self.objective: str | None = None
        self.fired = False  # a warning was given in the current episode
        self.quiet = 0  # consecutive records without any condition since the warning
        self.warnings: list[dict] = []  # {"step", "message"} of every warning given

    def replay(self, history: list[dict], said: list[dict] = ()) -> None:
        """Observe a resumed run's restored metrics records, saying nothing: the guard's window
        and episode state are then the uninterrupted run's (a fresh guard warned again for an
        episode it had already warned about, and stopped a run with on_collapse=stop at a step
        the uninterrupted run went past). ``said``: the warnings the run gave (its
        ``collapse_warnings``); one the replay finds that was never given (the guard was off
        before the resume) is left to be given by the next record."""
        given = {w["step"] for w in said}
        for rec in history:
            if self.observe(rec) and rec["step"] not in given:
                self.fired = False
                self.warnings.pop()

    def observe(self, rec: dict) -> str | None:
        """Feed one metrics record; returns a warning message when a collapse is seen."""
        if not all(k in rec for k in REQUIRED):
            return None  # a held-out line, a warning line, ...: nothing to judge
        if rec["objective"] != self.objective:
            self.objective = rec["objective"]
            self.records.clear()
            self.fired, self.quiet = False, 0
        if rec["objective"] == "sft" and not self.judge_sft:
            return None
        self.records.append(rec)
        found = self._check()
        if found is None:
            self.quiet += 1
            if self.fired and self.quiet >= self.window:
                self.fired = False
            return None
        self.quiet = 0
        if self.fired:
            return None
        self.fired = True
        message = self._message(found)
        self.warnings.append({"step": rec["step"], "message": message})
        return message

    # -- conditions ------------------------------------------------------------------------
    def _check(self) -> list[str] | None:
        """What was seen, one clause per condition that holds; None when nothing holds."""
        recs = list(self.records)
        last = recs[-1]
        if not (math.isfinite(last["loss"]) and math.isfinite(last["ce"])):
            return [f"the objective ({last['loss']}) or plain CE ({last['ce']}) is not finite"]
        if len(recs) < self.window:
            return None
        seen = []
        i_min = min(range(len(recs)), key=lambda i: recs[i]["ce"])
        low = recs[i_min]
        rise = last["ce"] - low["ce"]
        if (i_min < len(recs) - 1 and last["loss"] < low["loss"]
                and rise >= self.ce_rise_abs and rise >= self.ce_rise * low["ce"]):
            seen.append(f"the {last['objective']} objective fell {low['loss']:.4g} -> "
                        f"{last['loss']:.4g} while plain CE on the same tokens rose "
                        f"{low['ce']:.4g} -> {last['ce']:.4g} (+{rise / low['ce']:.0%}) "
                        f"between steps {low['step']} and {last['step']}")
        first_h, last_h = recs[0]["entropy"], last["entropy"]
        if (last_h <= (1.0 - self.entropy_drop) * first_h
                and last_h < self.entropy_ratio * last["ce"]):
            seen.append(f"the entropy of the predictions at target positions collapsed "
                        f"{first_h:.4g} -> {last_h:.4g} nats between steps {recs[0]['step']} "
                        f"and {last['step']}, now {last_h / max(last['ce'], 1e-12):.0%} of plain "
                        f"CE ({last['ce']:.4g}): the model is far more certain than it is right")
        return seen or None

    def _message(self, seen: list[str]) -> str:
        last = self.records[-1]
        lr = f" (now {last['lr']:.2g})" if isinstance(last.get("lr"), (int, float)) else ""
        extra = ""
        if "mean_p" in last and "low_p_frac" in last:
            extra = (f" Mean target p is {last['mean_p']:.3f} and {last['low_p_frac']:.0%} of "
                     "target tokens have p < 0.1: tokens the model does not already predict get "
                     "almost no weight and are being abandoned.")
        return (f"possible collapse at step {last['step']} ({last['objective']}): "
                + "; ".join(seen) + "." + extra
                + " This is the probability-weighted objective collapsing"
                " (docs/design.md#measured-on-a-tiny-qwen25-vl-on-a-cpu),"
                " not progress; check held-out accuracy. Try: a lower train.lr" + lr
                + ", " + remedies(self.loss) + ".")


def remedies(loss=None) -> str:
    """The settings to try after a collapse warning, from the run's ``loss`` section (a
    ``LossConfig``; None: the defaults): what it already uses is offered stronger."""
    mw = getattr(loss, "min_weight", 0.0) or 0.0
    warm = getattr(loss, "sft_warmup_steps", 0) or 0
    floor = (f"a higher loss.min_weight (now {mw:g}, e.g. {min(1.0, 3 * mw):g})" if mw > 0
             else "loss.min_weight=0.1 (tokens keep a minimum weight)")
    start = (f"a longer SFT warm-up (loss.sft_warmup_steps, now {warm})" if warm else
             "an SFT warm-up first (loss.sft_warmup_steps=N; or run `python -m vldft.probe` to "
             "see how strong the model's prior is)")
    anchor = (f"a larger loss.kl_lambda (now {loss.kl_lambda:g}: a stronger KL anchor)"
              if getattr(loss, "name", None) == "asft"
              else "loss.name=asft (KL anchor to the starting model)")
    return f"{floor}, {start}, or {anchor}"


def review(history: list[dict], evals: list[dict] | None = None,
           warnings: list[dict] | None = None, *, ce_rise: float = 0.10,
           ce_rise_abs: float = 0.05, acc_drop: float = 0.10, loss=None) -> list[dict]:
    """End-of-run look at the final probability-weighted phase as a whole; returns
    ``[{"step", "message", "when": "end of run"}, ...]`` for what the windowed guard cannot see.

    ``history``: the run's metrics records; ``evals``: held-out results ``{"step", "accuracy",
    "ce"}`` (``summary["heldout_history"]``); ``warnings``: the guard's in-run warnings. The
    final phase is the last run of records with one objective; an SFT phase is not judged.

    1. **CE rose over the phase**: plain CE at the last record is above the phase's lowest CE by
       at least ``ce_rise`` (relative) and ``ce_rise_abs`` nats while the objective is below
       its value there: a drift too slow for any ``window`` of records (each step of it under
       the guard's threshold) still adds up. Skipped when the guard already warned in the phase.
    2. **held-out accuracy fell**: the last held-out accuracy is ``acc_drop`` or more below the
       best one from the phase's start (including the evaluation at the switch step).
    """
    recs = [r for r in history if all(k in r for k in REQUIRED)]
    if not recs or recs[-1]["objective"] == "sft":
        return []
    name = recs[-1]["objective"]
    i0 = len(recs) - 1
    while i0 > 0 and recs[i0 - 1]["objective"] == name:
        i0 -= 1
    phase, last = recs[i0:], recs[-1]
    start = recs[i0 - 1]["step"] if i0 > 0 else 0  # the step the phase starts after
    found = []
    low = min(phase, key=lambda r: r["ce"])
    rise = last["ce"] - low["ce"]
    warned = any(w["step"] > start for w in warnings or [])
    if (not warned and low is not last and last["loss"] < low["loss"]
            and rise >= ce_rise_abs and rise >= ce_rise * low["ce"]):
        found.append(f"over the whole {name} phase (steps {start + 1}-{last['step']}) the "
                     f"objective fell {low['loss']:.4g} -> {last['loss']:.4g} while plain CE "
                     f"rose {low['ce']:.4g} -> {last['ce']:.4g} (+{rise / low['ce']:.0%}) from "
                     f"step {low['step']}")
    scored = [e for e in evals or [] if e.get("accuracy") is not None and e["step"] >= start]
    if len(scored) >= 2:
        best = max(scored[:-1], key=lambda e: e["accuracy"])
        end = scored[-1]
        if end["accuracy"] <= best["accuracy"] - acc_drop:
            found.append(f"held-out accuracy fell {best['accuracy']:.1%} (step {best['step']}) "
                         f"-> {end['accuracy']:.1%} (step {end['step']}) during the {name} "
                         "phase")
    if not found:
        return []
    compare = (f"compare with the model at the end of its SFT phase (step {start}, held-out "
               "evaluated there)" if start else "compare with an SFT run of the same data")
    message = (f"possible collapse (end-of-run review, {name}): " + "; ".join(found) + ". A "
               "falling probability-weighted loss is not progress here"
               f" (docs/design.md#measured-on-a-tiny-qwen25-vl-on-a-cpu); {compare}, and try "
               "a lower train.lr, " + remedies(loss) + ".")
    return [{"step": last["step"], "message": message, "when": "end of run"}]


def scan(records: list[dict], window: int = 5, **kwargs) -> list[dict]:
    """Run a fresh guard over ``records`` (e.g. a finished run's metrics.jsonl lines); returns
    ``[{"step", "message"}, ...]``, the warnings it would have given."""
    guard = CollapseGuard(window, **kwargs)
    for rec in records:
        guard.observe(rec)
    return guard.warnings
