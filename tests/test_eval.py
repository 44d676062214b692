"""The lmms-eval bridge end to end on CPU, offline, with lmms-eval's real evaluator.

A tiny model is trained for a few steps with ``vldft.train.main``, saved, and evaluated by
``lmms_eval.evaluator.simple_evaluate`` through vldft's registered model class on the local tasks
of ``eval/``; lmms-eval's stock ``qwen2_5_vl`` class loads the same checkpoint unchanged.
"""

import json
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")

from conftest import DEMO_HELDOUT, demo_config, write_tiny_data  # noqa: E402

from vldft.eval.report import compare  # noqa: E402
from vldft.eval.run import SUITES, EvalSetupError, evaluate, resolve_tasks  # noqa: E402
from vldft.scoring import score  # noqa: E402
from vldft.train import main as train_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("hf_offline", "one_thread")


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory):
    """The demo model (tiny Qwen2.5-VL) trained 8 steps on 48 demo samples, saved by vldft."""
    tmp = tmp_path_factory.mktemp("demo")
    data = write_tiny_data(tmp / "train.jsonl", 48)
    cfg = demo_config(*[
        f"data.train_files=[{data}]", "data.heldout_file=null", f"train.output_dir={tmp / 'run'}",
        "train.max_steps=8", "train.micro_batch_size=8", "train.log_every=4",
        "loss.sft_warmup_steps=4", "train.eval_max_samples=0"])
    train_main(cfg)
    return tmp / "run" / "final"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _rescored_accuracy(out: Path, task: str = "vldft_geo_heldout") -> float:
    """The task's accuracy recomputed from its logged responses with the shared scorer; each
    logged sample's extraction and score must agree with it."""
    logs = _read_jsonl(out / f"samples_{task}.jsonl")
    assert logs
    for r in logs:
        assert (r["extracted"], r["accuracy"]) == (lambda e, ok: (e, float(ok)))(
            *score(r["response"], r["target"])), r
    return sum(r["accuracy"] for r in logs) / len(logs)


USER_TASK = """task: my_geoqa_copy
class: !function vldft.eval.local_tasks.VldftTask
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
doc_to_visual: !function vldft.eval.local_tasks.geoqa_doc_to_visual
doc_to_text: !function vldft.eval.local_tasks.geoqa_doc_to_text
doc_to_target: !function vldft.eval.local_tasks.geoqa_doc_to_target
process_results: !function vldft.eval.local_tasks.geoqa_process_results
generation_kwargs:
  max_new_tokens: 8
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""


def test_every_suite_task_scores_the_checkpoint_offline(demo_ckpt, tmp_path, monkeypatch, capsys):
    """The whole geo suite (8 benchmarks) + the bundled held-out task + a user's own task
    (--include-path) through lmms-eval's real evaluator, from local copies in both layouts,
    offline, with no API key; then the paper-style comparison of two runs."""
    from bench_docs import write_hub_copy, write_upstream_copy

    from vldft.data.benchmarks import BENCHMARKS, HEADLINE

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = tmp_path / "bench"
    for i, name in enumerate(BENCHMARKS):
        (write_hub_copy if i % 2 else write_upstream_copy)(name, data, *(
            [tmp_path] if i % 2 else []))
    user = tmp_path / "my_tasks"
    user.mkdir()
    (user / "my_geoqa.yaml").write_text(USER_TASK.format(path=data / "geoqa" / "test.parquet"))
    out = tmp_path / "eval"
    written = evaluate(str(demo_ckpt), ["vldft_geo_heldout", "my_geoqa_copy"], out,
                       suites=["geo"], limit=2, batch_size=2, data_dir=data,
                       max_new_tokens=8, include_paths=[user])

    results = json.loads((out / "results.json").read_text())
    tasks = [*SUITES["geo"], "vldft_geo_heldout", "my_geoqa_copy"]
    assert sorted(results["lmms_eval"]["results"]) == sorted(tasks)
    for task in tasks:
        assert results["lmms_eval"]["n-samples"][task]["effective"] == 2
        metric = HEADLINE.get(task, "accuracy")
        row = next(r for r in written["rows"] if r["task"] == task and r["metric"] == metric)
        assert 0.0 <= row["value"] <= 100.0 and row["n"] == 2
        if task in ("vldft_geo_heldout", "my_geoqa_copy"):
            reported = results["lmms_eval"]["results"][task][f"{metric},none"]
            assert row["value"] == pytest.approx(reported)
        assert len(_read_jsonl(out / f"samples_{task}.jsonl")) == 2
    assert results["lmms_eval"]["results"]["vldft_geo_heldout"]["accuracy,none"] == \
        pytest.approx(_rescored_accuracy(out))
    assert results["vldft"]["environment"]["OPENAI_API_KEY"].startswith("placeholder")
    assert results["vldft"]["data_dir"] == str(data.resolve())
    logs = _read_jsonl(out / "samples_vldft_geo_heldout.jsonl")
    assert [r["target"] for r in logs] == [json.loads(x)["answer"] for x in
                                           DEMO_HELDOUT.read_text().splitlines()[:2]]
    assert "| vldft_geo_heldout | accuracy |" in (out / "summary.md").read_text()
    with pytest.raises(EvalSetupError, match="--overwrite"):
        evaluate(str(demo_ckpt), ["vldft_geo_heldout"], out)

    # compare: benchmarks as columns, an average column, deltas against the first run
    other = tmp_path / "other"
    other.mkdir()
    edited = dict(results, metrics=[dict(r, value=r["value"] + 0.25) for r in results["metrics"]])
    (other / "results.json").write_text(json.dumps(edited))
    table = compare([out, other], tmp_path / "cmp")
    head = table.splitlines()[0]
    assert head.startswith("| run | ") and head.endswith(" | avg |") and "geoqa" in head
    assert "(+0.2500)" in table and table in capsys.readouterr().out
    assert (tmp_path / "cmp" / "comparison.md").read_text() == table
    assert (tmp_path / "cmp" / "comparison.csv").read_text().startswith("run,")
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "different settings" not in capsys.readouterr().out
    # runs generated with other settings, or over other data, are flagged (only the sample
    # count was: --max-new-tokens 8 against the default compared without a word)
    vmeta = results["vldft"]
    identity = vmeta["identity"]
    task = "vldft_geo_heldout"
    changed = dict(edited, vldft=dict(vmeta, model_args=vmeta["model_args"] + ",max_new_tokens=8",
                                      identity=dict(identity, data={**identity["data"], task: {
                                          **identity["data"][task], "files": "0123"}})))
    (other / "results.json").write_text(json.dumps(changed))
    compare([out, other], tmp_path / "cmp2")
    said = capsys.readouterr().out
    assert "runs generated with different settings" in said and "max_new_tokens=8" in said
    assert f"{task}: runs read different data" in said


def test_rerunning_a_finished_evaluation_is_already_done(demo_ckpt, tmp_path, capsys):
    """The same command again reports the results.json it wrote and exits 0 (as training's
    "nothing to do"), without running lmms-eval; other settings, or a retrained checkpoint,
    are another evaluation: still refused without --overwrite."""
    from vldft.eval.__main__ import main

    out = tmp_path / "eval"
    argv = ["--model", str(demo_ckpt), "--tasks", "vldft_geo_heldout", "--limit", "2",
            "--batch-size", "2", "--max-new-tokens", "4", "--out", str(out)]
    main(argv)
    results = out / "results.json"
    written, stamp = results.read_text(), results.stat().st_mtime_ns
    capsys.readouterr()
    main(argv)  # returns: status 0
    said = capsys.readouterr().out
    assert "already done" in said and "--overwrite" in said and str(results) in said, said
    assert "| vldft_geo_heldout | accuracy |" in said, said
    assert results.read_text() == written and results.stat().st_mtime_ns == stamp
    again = evaluate(str(demo_ckpt), ["vldft_geo_heldout"], out, limit=2, batch_size=2,
                     max_new_tokens=4)
    assert again["done"] and again["rows"] == json.loads(written)["metrics"]
    for other in (["--limit", "1"], ["--max-new-tokens", "8"], ["--batch-size", "1"]):
        with pytest.raises(SystemExit) as e:
            main([*argv, *other])
        assert "another evaluation" in str(e.value.code), (other, e.value.code)
    import shutil

    ckpt = Path(shutil.copytree(demo_ckpt, tmp_path / "ckpt"))
    evaluate(str(ckpt), ["vldft_geo_heldout"], out / "copy", limit=1, batch_size=1)
    assert evaluate(str(ckpt), ["vldft_geo_heldout"], out / "copy", limit=1, batch_size=1)["done"]
    config = json.loads((ckpt / "config.json").read_text())  # retrained, in effect
    (ckpt / "config.json").write_text(json.dumps({**config, "vldft_note": "retrained"}))
    with pytest.raises(EvalSetupError, match="another evaluation"):
        evaluate(str(ckpt), ["vldft_geo_heldout"], out / "copy", limit=1, batch_size=1)


def test_a_fraction_limit_is_refused_for_several_tasks(demo_ckpt, tmp_path):
    """lmms-eval 0.7.3 turns --limit 0.1 into the first task's count and takes it for every
    task (and the last task's count when scoring): with two tasks vldft refuses the fraction
    before any model loads, naming the task it would have miscounted."""
    with pytest.raises(EvalSetupError, match=r"--limit 0\.1: .*one task.*geoqa"):
        evaluate(str(demo_ckpt), ["vldft_geo_heldout", "geoqa"], tmp_path / "e", limit=0.1)
    assert not (tmp_path / "e").exists()


def test_stock_qwen2_5_vl_class_loads_vldft_checkpoint(demo_ckpt, tmp_path):
    """lmms-eval's own qwen2_5_vl class (not ours) loads the vldft checkpoint unchanged and
    generates through the real evaluator."""
    import lmms_eval.models as models

    cls = models.get_model("qwen2_5_vl")
    assert cls.__module__.startswith("lmms_eval.models.")
    out = tmp_path / "stock"
    evaluate(str(demo_ckpt), ["vldft_geo_heldout"], out, limit=1, model_class="qwen2_5_vl",
             model_args="device_map=cpu,min_pixels=12544,max_pixels=12544", device="cpu")
    results = json.loads((out / "results.json").read_text())
    assert results["vldft"]["model_class"] == "qwen2_5_vl"
    reported = results["lmms_eval"]["results"]["vldft_geo_heldout"]["accuracy,none"]
    assert reported == pytest.approx(_rescored_accuracy(out))
    assert len(_read_jsonl(out / "samples_vldft_geo_heldout.jsonl")) == 1


def test_task_names_and_suites_are_checked():
    known = {"geometry3k", "vldft_geo_heldout"}
    assert resolve_tasks(["vldft_geo_heldout"], [], known) == ["vldft_geo_heldout"]
    with pytest.raises(ValueError, match="geometry3k"):
        resolve_tasks(["geometry3"], [], known)
    with pytest.raises(ValueError, match="unknown suite"):
        resolve_tasks([], ["nope"], known)


def test_suite_names_exist_in_installed_lmms_eval():
    from vldft.eval.run import TASK_DIR, task_manager

    # the index evaluate() uses, kept per process (test_eval_benchmarks.py tests that cache)
    known = set(task_manager("ERROR", include_path=[str(TASK_DIR)]).all_tasks)
    for names in SUITES.values():
        assert set(names) <= known, set(names) - known


SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon")


def _code_task(root: Path, split: str, n: int, seed: int) -> Path:
    """An easy task whose answer follows from the question text (code k -> SHAPES[k]); the
    image is a blank 56x56 square. 5 balanced classes: chance (or any constant answer) = 20%."""
    import random

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    blank = root / "images" / "blank.png"
    Image.new("RGB", (56, 56), "white").save(blank)
    lines = []
    for i in range(n):
        k = i % len(SHAPES)
        q = f"Item {rng.randint(100, 999)}: the shape code is {k}. Name the shape."
        lines.append(json.dumps({
            "id": f"code-{split}-{i}", "kind": "code",
            "messages": [{"role": "user", "content": [{"type": "image"},
                                                      {"type": "text", "text": q}]},
                         {"role": "assistant", "content": [{"type": "text",
                                                            "text": f"Answer: {SHAPES[k]}"}]}],
            "images": ["images/blank.png"], "answer": SHAPES[k]}))
    path = root / f"{split}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# covered by test_demo_sees.py::test_lmms_eval_scores_the_saved_checkpoint_as_the_run_did (its
# already trained checkpoint, an image-only question, through lmms-eval): 200 steps here
@pytest.mark.slow
def test_learning_is_visible_through_generation_extraction_and_scoring(tmp_path):
    """SFT on the easy code task for 200 steps (~1 min on a CPU core), then lmms-eval accuracy on
    40 unseen held-out rows must be far above chance (20%). Measured: CE 0.012 by step 100,
    held-out accuracy 1.0; at 120 steps the model still answers one class (0.2)."""
    data = tmp_path / "data" / "geo_demo"
    train = _code_task(data, "train", 200, seed=1)
    _code_task(data, "heldout", 40, seed=2)
    cfg = demo_config(*[
        f"data.train_files=[{train}]", "data.heldout_file=null", "model.min_pixels=3136",
        "model.max_pixels=3136", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=200",
        "train.micro_batch_size=16", "train.log_every=50", "loss.name=sft",
        "loss.sft_warmup_steps=0", "train.eval_max_samples=0", "train.lr=3e-3"])
    train_main(cfg)
    out = tmp_path / "eval"
    evaluate(str(tmp_path / "run" / "final"), ["vldft_geo_heldout"], out,
             data_dir=tmp_path / "data", batch_size=20, max_new_tokens=16)
    acc = json.loads((out / "results.json").read_text())["metrics"][0]["value"]
    logs = _read_jsonl(out / "samples_vldft_geo_heldout.jsonl")
    assert len(logs) == 40
    print(f"held-out accuracy {acc:.3f} (chance 0.20); e.g. {logs[0]['response']!r}")
    assert acc >= 0.6, logs[:5]
    assert acc == pytest.approx(_rescored_accuracy(out))
