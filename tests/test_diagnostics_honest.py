"""Diagnostics that do not mislead: log records never mix objectives, plots mark the switch,
held-out evaluations and collapse warnings, the end-of-run summary lists collapse warnings, and
the probe does not recommend DFT when the answer tokens are not learned yet."""

import json
from pathlib import Path

import matplotlib
import pytest
from conftest import demo_config, write_tiny_data

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# -- 1. the logging window at the SFT -> DFT switch ------------------------------------------
def test_no_log_record_mixes_objectives_and_plots_get_the_markers(tmp_path, monkeypatch):
    """log_every=2 does not divide the switch step 3: the record ending at step 4 used to
    average SFT step 3 with DFT step 4 and call it "dft". The plot call receives the switch,
    the held-out evaluations and the collapse warnings."""
    import vldft.report
    import vldft.train as train

    seen = {}
    real = vldft.report.write_plots

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(vldft.report, "write_plots", spy)
    data = write_tiny_data(tmp_path / "mixed_16.jsonl", 16)
    out = tmp_path / "run"
    summary = train.main(demo_config(
        f"data.train_files=[{data}]", f"data.heldout_file={data}", f"train.output_dir={out}",
        "train.max_steps=7", "loss.name=dft", "loss.sft_warmup_steps=3", "train.log_every=2",
        "train.micro_batch_size=4", "train.eval_max_samples=4", "train.eval_max_new_tokens=4",
        "train.eval_batch_size=4"))
    lines = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in lines] == [2, 3, 4, 6, 7]
    prev = 0
    for r in lines:
        covered = {"sft" if s <= 3 else "dft" for s in range(prev + 1, r["step"] + 1)}
        assert covered == {r["objective"]}, (r["step"], covered, r["objective"])
        prev = r["step"]
    assert seen["switch_step"] == 3
    assert [e["step"] for e in seen["evals"]] == [3, 7]
    assert seen["warnings"] == summary["collapse_warnings"]
    assert (out / "training_curves.png").is_file()


# -- 2. the plots ----------------------------------------------------------------------------
def _history():
    hist = []
    for step in range(5, 65, 5):
        obj = "sft" if step <= 20 else "dft"
        hist.append({"step": step, "objective": obj, "loss": 1.0 / step, "ce": 2.0 / step,
                     "mean_p": 0.5, "low_p_frac": 0.2, "entropy": 1.0})
    return hist


def _labels(fig) -> set[str]:
    return {line.get_label() for ax in fig.axes for line in ax.get_lines()}


def test_curves_mark_switch_evaluations_and_collapse_warnings():
    from vldft.diagnostics import curve_figure

    evals = [{"step": 20, "accuracy": 0.9, "ce": 0.1}, {"step": 60, "accuracy": 0.3, "ce": 0.4}]
    warnings = [{"step": 45, "message": "possible collapse"}]
    fig = curve_figure(_history(), 20, evals, warnings)
    labels = _labels(fig)
    for want in ("switch sft -> dft (step 20)", "held-out evaluation", "collapse warning",
                 "held-out CE", "held-out accuracy", "sft loss", "dft loss"):
        assert want in labels, (want, labels)
    loss_ax = next(ax for ax in fig.axes if ax.get_title() == "objective")
    legend = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert "collapse warning" in legend and "switch sft -> dft (step 20)" in legend
    xs = {line.get_label(): list(line.get_xdata()) for line in loss_ax.get_lines()}
    assert xs["collapse warning"][0] == 45 and xs["switch sft -> dft (step 20)"][0] == 20
    assert max(xs["sft loss"]) <= 20 < min(xs["dft loss"]), "one line per objective"
    # without an explicit step, the switch is read from the records
    assert "switch sft -> dft (step 20)" in _labels(curve_figure(_history()))
    matplotlib.pyplot.close("all")


# -- 3. the end-of-run summary ---------------------------------------------------------------
def test_review_catches_a_slow_ce_rise_the_window_misses():
    from vldft.guard import review, scan

    hist = [{"step": s, "objective": "sft", "loss": 1.0, "ce": 1.0, "entropy": 1.0}
            for s in (10, 20)]
    # DFT: the objective falls while CE creeps up by 2% per record, too slowly for a window
    hist += [{"step": 20 + 10 * i, "objective": "dft", "loss": 0.3 - 0.01 * i,
              "ce": 0.5 * 1.02 ** i, "entropy": 0.5} for i in range(1, 15)]
    assert scan(hist, window=5) == []
    found = review(hist)
    assert len(found) == 1 and found[0]["when"] == "end of run"
    assert "CE rose" in found[0]["message"] and "steps 21-160" in found[0]["message"]
    evals = [{"step": 20, "accuracy": 0.9}, {"step": 160, "accuracy": 0.4}]
    assert "held-out accuracy fell 90.0%" in review(hist, evals)[0]["message"]
    assert review(hist[:2]) == [], "an SFT phase is not judged"
    # what to compare with: the end of the run's SFT phase, or (none) an SFT run
    assert "the model at the end of its SFT phase (step 20" in found[0]["message"]
    alone = review(hist[2:])[0]["message"]
    assert "an SFT run of the same data" in alone and "SFT phase" not in alone, alone


def test_summary_lists_collapse_warnings(tmp_path, capsys, monkeypatch):
    """A warning the guard gives during training is listed in summary.json and in the printed
    end-of-run summary (which used to omit it). The guard is a stub that fires at the first DFT
    record: a real collapse is tests/test_guard.py's (60 steps)."""
    import vldft.train as train
    from vldft.guard import CollapseGuard

    class FiresOnce(CollapseGuard):
        def observe(self, rec):
            if rec.get("objective") != "dft" or self.warnings:
                return None
            msg = f"possible collapse at step {rec['step']} (dft): stub"
            self.warnings.append({"step": rec["step"], "message": msg})
            return msg

    monkeypatch.setattr(train, "CollapseGuard", FiresOnce)
    out = tmp_path / "dft"
    data = write_tiny_data(tmp_path / "mixed_8.jsonl", 8)
    summary = train.main(demo_config(
        f"data.train_files=[{data}]", "data.heldout_file=null",
        f"train.output_dir={out}", "train.micro_batch_size=4", "train.log_every=2",
        "loss.name=dft", "loss.sft_warmup_steps=0", "train.max_steps=4"))
    printed = capsys.readouterr().out
    assert [w["step"] for w in summary["collapse_warnings"]] == [2]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["collapse_warnings"] == summary["collapse_warnings"]
    tail = printed[printed.index("loss curve"):]
    assert "1 collapse warning(s)" in tail
    assert "step 2: possible collapse at step 2 (dft): stub" in tail


def test_printed_summary_says_when_there_are_no_warnings(capsys):
    from vldft.report import print_summary

    rec = {"step": 5, "objective": "dft", "loss": 0.1, "ce": 0.2, "mean_p": 0.9}
    summary = {"first_log": rec, "last_log": rec, "steps": 5, "train_seconds": 1.0,
               "skipped": {}, "truncated": 0, "objective": "dft", "checkpoint": "x",
               "collapse_warnings": []}
    print_summary(summary, [rec])
    assert "collapse guard: no warnings" in capsys.readouterr().out
    print_summary({**summary, "collapse_warnings": [{"step": 5, "message": "boom",
                                                      "when": "end of run"}]}, [rec])
    assert "step 5 (end of run): boom" in capsys.readouterr().out


# -- 4. the probe weighs the answer tokens ---------------------------------------------------
def _report(mean_p=0.85, low=0.1, answer=None):
    st = {"n_tokens": 400, "mean_p": mean_p, "low_p_frac": low}
    rep = {"overall": st, "end_of_turn_token": "<|im_end|>",
           "by_kind": {"end_of_turn": {"n_tokens": 40, "mean_p": 0.95},
                       "digits": {"n_tokens": 60, "mean_p": 0.9}},
           "by_source": {"geo": st}}
    if answer:
        rep["answer_tokens"] = {"n_tokens": 60, "n_samples_with_answer": 40,
                                "n_samples_located": 40, **answer}
    return rep


@pytest.mark.parametrize("answer", [{"mean_p": 0.38, "low_p_frac": 0.33},
                                    {"mean_p": 0.6, "low_p_frac": 0.3},
                                    {"mean_p": 0.45, "low_p_frac": 0.1}])
def test_probe_does_not_recommend_dft_when_answer_tokens_are_unlearned(answer):
    from vldft.probe_report import recommend

    assert recommend(_report())["objective"] == "dft", "the same numbers without answers"
    rec = recommend(_report(answer=answer))
    assert rec["objective"] != "dft" and rec["settings"].get("loss.name") != "dft"
    text = " ".join(rec["reasons"])
    assert f"mean p {answer['mean_p']:.3f}" in text and "SFT first" in text
    # never plain DFT; floored DFT is the alternative that learned the demo from such a start
    assert "Not plain DFT" in text and "loss.min_weight=0.1" in text
    ok = recommend(_report(answer={"mean_p": 0.9, "low_p_frac": 0.02}))
    assert ok["objective"] == "dft" and any("answer tokens" in r for r in ok["reasons"])


def test_answer_positions_find_the_final_answer_span():
    from vldft.adapters import load_adapter
    from vldft.config import ModelConfig
    from vldft.probe import answer_positions

    adapter = load_adapter(ModelConfig(tiny=True))
    tok, eot = adapter.tokenizer, adapter.eot_token_id

    def span(text, answer):
        ids = tok.encode(text, add_special_tokens=False) + [eot]
        return tok.decode([ids[i] for i in answer_positions(tok, ids, answer, eot)])

    assert span("d = 2r = 2 * 18 = 36. Answer: 36", "36") == "36"
    assert span("The figure is round. Answer: circle", "circle") == "circle"
    assert span("so x = 36", "6") == "", "not inside a longer number"
    assert span("It is 6, not 36", "6") == "6"
    assert span("no answer here", None) == ""


def test_probe_reports_answer_tokens_of_the_real_data(tmp_path):
    from vldft.probe import probe
    from vldft.probe_report import format_report

    data = write_tiny_data(tmp_path / "mixed_12.jsonl", 12)
    report = probe(demo_config(
        f"data.train_files=[{data}]", "data.heldout_file=null",
        f"train.output_dir={tmp_path / 'out'}"), n_samples=8, show=False)
    ans = report["answer_tokens"]
    assert ans["n_samples_with_answer"] == ans["n_samples_located"] == 8
    assert 8 <= ans["n_tokens"] < report["overall"]["n_tokens"]
    assert "answer tokens" in format_report(report)
