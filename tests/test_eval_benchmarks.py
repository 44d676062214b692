"""Every benchmark scores offline, in the kit's own environment: the math packages import, each
suite task's own lmms-eval functions score hand-made documents in the hub schema, local copies in
every layout give the task the same documents as the hub route, ``download`` writes them, and an
unreachable hub fails in seconds naming the local alternative. No network, no API key."""

import json
import os
import shutil
import time
from pathlib import Path

import datasets
import pytest
from conftest import ROOT

pytest.importorskip("lmms_eval", reason="needs the eval extra: pip install -e '.[eval]'")

from bench_docs import (  # noqa: E402
    CLONES,
    RESPONSES,
    hub_dataset,
    write_clone_copy,
    write_hub_copy,
    write_upstream_copy,
)

from vldft.data.benchmarks import (  # noqa: E402
    BENCHMARKS,
    LocalDataError,
    download,
    find_local,
    load_local,
)
from vldft.eval.run import (  # noqa: E402
    SUITES,
    TASK_DIR,
    EvalSetupError,
    evaluate,
    prepare_environment,
    task_manager,
)

NAMES = list(BENCHMARKS)


pytestmark = pytest.mark.usefixtures("hf_offline")


@pytest.fixture(scope="module")
def manager():
    prepare_environment()
    return task_manager("ERROR", include_path=[str(TASK_DIR)])  # the index evaluate() reuses


def _config(manager, task: str) -> dict:
    from lmms_eval import utils

    return utils.load_yaml_config(manager.task_index[task]["yaml_path"], mode="full")


def _headline(config: dict, bench, value) -> float:
    from lmms_eval.api.registry import get_aggregation

    metric = next(m for m in config["metric_list"] if m["metric"] == bench.headline)
    agg = metric["aggregation"]
    return (get_aggregation(agg) if isinstance(agg, str) else agg)([value])


def test_math_packages_import_and_parse():
    """The pins of eval/pins.txt: lmms-eval's reasoning tasks need math_verify, its mathvision
    task latex2sympy2; both import and parse side by side."""
    import latex2sympy2
    from math_verify import parse, verify

    assert verify(parse("$2\\sqrt{3}$"), parse("$\\sqrt{12}$"))
    assert not verify(parse("$2\\sqrt{3}$"), parse("$\\sqrt{13}$"))
    assert str(latex2sympy2.latex2sympy("\\frac{1}{2}")) == "1/2"


def test_a_missing_eval_extra_says_make_eval_env_and_missing_pins_say_pins_txt(tmp_path,
                                                                                monkeypatch):
    """After `make demo` (no eval extra), the pins alone cannot help: the line names `make
    eval-env` and the pip route. With lmms-eval present but math_verify broken: pins.txt."""
    import sys

    from vldft.eval.__main__ import main

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    argv = ["--model", str(ckpt), "--tasks", "vldft_geo_heldout", "--out", str(tmp_path / "o")]
    pins = f"pip install --no-deps -r {TASK_DIR / 'pins.txt'}"
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "lmms_eval", None)  # not installed
        m.setitem(sys.modules, "math_verify", None)
        # as in a fresh process: vldft's lmms-eval task module not imported by an earlier test
        m.delitem(sys.modules, "vldft.eval.local_tasks", raising=False)
        with pytest.raises(SystemExit) as e:
            main(argv)
    said = str(e.value.code)
    assert "lmms-eval is not installed" in said and "make eval-env" in said, said
    assert 'pip install -e ".[eval]"' in said and pins in said and "\n" not in said, said
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "math_verify", None)  # lmms-eval is, the pins are not
        with pytest.raises(SystemExit) as e:
            main(argv)
    said = str(e.value.code)
    assert "math_verify / latex2sympy2 do not import" in said and pins in said, said
    assert "eval-env" not in said and ".[eval]" not in said, said


def test_suites_cover_every_benchmark(manager):
    assert set(SUITES["geo"]) == {b.task for b in BENCHMARKS.values()}
    assert set(SUITES["paper"]) <= set(SUITES["geo"])
    for names in SUITES.values():
        assert set(names) <= set(manager.all_tasks), set(names) - set(manager.all_tasks)


TASK_YAML = "task: {name}\ntest_split: test\noutput_type: generate_until\n"


def test_the_task_index_is_kept_until_a_task_yaml_changes(manager, tmp_path, monkeypatch):
    """``task_manager`` (what ``evaluate`` and ``train.eval_tasks`` use) indexes each task folder
    once per process: a second manager re-reads no folder, a folder whose YAMLs are edited or
    added to is indexed again (only that one), and a caller editing its index leaves the kept
    one as it was."""
    from lmms_eval.tasks import TaskManager

    user = tmp_path / "tasks"
    user.mkdir()
    (user / "one.yaml").write_text(TASK_YAML.format(name="my_task_one"))
    first = task_manager("ERROR", include_path=[str(TASK_DIR), str(user)])
    indexed, original = [], TaskManager._get_task_and_group

    def spy(self, task_dir):
        indexed.append(task_dir)
        return original(self, task_dir)

    monkeypatch.setattr(TaskManager, "_get_task_and_group", spy)
    second = task_manager("ERROR", include_path=[str(TASK_DIR), str(user)])
    assert indexed == [] and second.task_index == first.task_index
    assert "my_task_one" in second.all_tasks and set(manager.all_tasks) < set(second.all_tasks)
    assert second.task_index["my_task_one"] == {"type": "task",
                                                "yaml_path": str(user / "one.yaml")}
    second.task_index["my_task_one"]["type"] = "edited"
    assert task_manager("ERROR", include_path=[str(user)]).task_index["my_task_one"][
        "type"] == "task"
    assert indexed == []

    (user / "two.yaml").write_text(TASK_YAML.format(name="my_task_two"))
    (user / "one.yaml").write_text(TASK_YAML.format(name="my_task_renamed"))
    third = task_manager("ERROR", include_path=[str(TASK_DIR), str(user)])
    assert indexed == [str(user)]
    assert {"my_task_two", "my_task_renamed"} <= set(third.all_tasks)
    assert "my_task_one" not in third.all_tasks
    plain = TaskManager("ERROR", include_path=[str(user)], include_defaults=False)  # no cache
    assert third.task_index == plain.task_index | manager.task_index


@pytest.mark.parametrize("name", NAMES)
def test_task_functions_score_a_hub_schema_document(name, manager, tmp_path, monkeypatch):
    """The task's own process_results + aggregation, on a document as the task reads it: the
    correct response scores full marks, the wrong one zero. No OPENAI_API_KEY is set."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    prepare_environment()
    bench = BENCHMARKS[name]
    write_hub_copy(name, tmp_path / "data", tmp_path)
    doc = load_local(bench, tmp_path / "data")[0]
    config = _config(manager, bench.task)
    right, wrong = RESPONSES[name]
    full = 100.0 if bench.percent else 1.0
    assert _headline(config, bench, config["process_results"](doc, [right])[bench.headline]) \
        == full
    assert _headline(config, bench, config["process_results"](doc, [wrong])[bench.headline]) \
        == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_upstream_and_hub_layouts_give_the_task_the_same_documents(name, manager, tmp_path):
    """The prompt, the image pixels and the target lmms-eval derives from each row are the same
    whether the copy is the hub split (parquet), a save_to_disk folder or the upstream repo."""
    bench = BENCHMARKS[name]
    write_hub_copy(name, tmp_path / "hub", tmp_path)
    write_upstream_copy(name, tmp_path / "up")
    saved = tmp_path / "saved" / name / bench.split
    hub_dataset(name, tmp_path / "img2").save_to_disk(str(saved))
    assert find_local(bench, tmp_path / "up").name == Path(bench.upstream).name
    config = _config(manager, bench.task)
    kwargs = (config.get("lmms_eval_specific_kwargs") or {}).get("default")

    def view(doc):
        text = config["doc_to_text"](doc, kwargs)
        pixels = [img.tobytes() for img in config["doc_to_visual"](doc)]
        target = config["doc_to_target"]
        target = target(doc) if callable(target) else doc[target]
        return text, pixels, str(target)

    hub = [view(d) for d in load_local(bench, tmp_path / "hub")]
    assert len(hub) == 2 and all(v[1] for v in hub)  # every row has an image
    assert [view(d) for d in load_local(bench, tmp_path / "up")] == hub
    assert [view(d) for d in load_local(bench, tmp_path / "saved")] == hub
    if name in CLONES:  # a clone of the benchmark's GitHub repository
        write_clone_copy(name, tmp_path / "clone")
        assert [view(d) for d in load_local(bench, tmp_path / "clone")] == hub


ANSWER = {"mathverse": "answer", "mathvision": "answer", "wemath": "answer",
          "mathvista": "answer", "dynamath": "ground_truth", "logicvista": "answer",
          "geometry3k": "ground_truth"}


@pytest.mark.parametrize("name", list(CLONES))
def test_a_clone_of_the_repository_reads_row_by_row_as_the_hub_copy(name, tmp_path,
                                                                    monkeypatch):
    """``git clone`` of the benchmark's repository into DIR/<name> (e.g. We-Math's
    data/testmini.json + data/2steps/image/) is found and read as the hub split: same ids,
    questions, answers and every other shared column, images decoded to the same pixels. The
    data dir is given relative to the working directory."""
    bench = BENCHMARKS[name]
    write_hub_copy(name, tmp_path / "hub", tmp_path)
    path = write_clone_copy(name, tmp_path / "clone")
    monkeypatch.chdir(tmp_path)
    assert find_local(bench, "clone") == Path("clone") / path.relative_to(tmp_path / "clone")
    hub, clone = load_local(bench, "hub"), load_local(bench, Path("clone"))
    shared = set(hub.column_names) & set(clone.column_names)
    assert {bench.question, ANSWER[name], *bench.images, bench.id_column} <= shared
    assert len(hub) == len(clone) == 2
    def pixels(value, is_list: bool) -> list[bytes]:
        return [img.convert("RGB").tobytes() for img in (value if is_list else [value])]

    for a, b in zip(hub, clone, strict=True):
        for col in sorted(shared):
            if col in bench.images:
                is_list = bench.images[col]
                assert pixels(a[col], is_list) == pixels(b[col], is_list), (name, col)
            else:
                assert a[col] == b[col], (name, col)


def test_missing_and_malformed_local_copies_are_named(tmp_path):
    bench = BENCHMARKS["mathvision"]
    with pytest.raises(LocalDataError) as e:
        find_local(bench, tmp_path)
    msg = str(e.value)
    assert "mathvision/testmini.parquet" in msg and "data/testmini.jsonl" in msg
    assert "\n" not in msg
    path = write_upstream_copy("mathvision", tmp_path)
    rows = path.read_text().splitlines()
    bad = json.loads(rows[1])
    del bad["options"]
    path.write_text("\n".join([rows[0], json.dumps(bad)]) + "\n")
    with pytest.raises(LocalDataError, match=r"testmini\.jsonl:2: missing key\(s\) \['options'\]"):
        load_local(bench, tmp_path)
    path.write_text(rows[0].replace("images/4.jpg", "images/absent.jpg") + "\n")
    with pytest.raises(LocalDataError, match=r"testmini\.jsonl:1: image 'images/absent\.jpg' not "
                                             r"found"):
        load_local(bench, tmp_path)
    path.write_text(rows[0] + "\n")  # an image that is not one: named before any model runs
    image = next((tmp_path / "mathvision").rglob("4.jpg"))
    image.write_bytes(b"not an image")
    with pytest.raises(LocalDataError, match=r"testmini\.jsonl:1: image .*4\.jpg cannot be "
                                             r"read \(cannot identify image file"):
        load_local(bench, tmp_path)
    (tmp_path / "geoqa" / "test").mkdir(parents=True)
    with pytest.raises(LocalDataError, match="not a save_to_disk folder"):
        load_local(BENCHMARKS["geoqa"], tmp_path)


def test_a_missing_copy_names_every_path_looked_for_and_unextracted_archives(tmp_path):
    with pytest.raises(LocalDataError) as e:
        find_local(BENCHMARKS["wemath"], tmp_path)
    msg = str(e.value)
    for path in ("wemath/testmini.parquet", "wemath/testmini/", "wemath/testmini.json",
                 "wemath/data/testmini.json", "github.com/We-Math/We-Math"):
        assert path in msg, msg
    assert "\n" not in msg
    # a clone of InterGPS whose test.zip was not extracted: the archive is named
    write_clone_copy("geometry3k", tmp_path)
    data = tmp_path / "geometry3k/data/geometry3k"
    shutil.rmtree(data / "test")
    with pytest.raises(LocalDataError) as e:
        find_local(BENCHMARKS["geometry3k"], tmp_path)
    msg = str(e.value)
    assert "geometry3k/test.parquet" in msg and "geometry3k/data/geometry3k/test (" in msg
    assert f"found {data / 'test.zip'}: extract it" in msg, msg
    # We-Math's hub repository (testmini.json + testmini.zip) with the zip not extracted
    write_upstream_copy("wemath", tmp_path)
    shutil.rmtree(tmp_path / "wemath/2steps")
    (tmp_path / "wemath/testmini.zip").write_bytes(b"PK")
    with pytest.raises(LocalDataError, match=r"testmini\.json\[0\]: image '2steps/image/1-1\.png' "
                                             r"not found .*not yet extracted\? .*testmini\.zip"):
        load_local(BENCHMARKS["wemath"], tmp_path)


def _datasets_repo(root: Path, name: str, tmp: Path) -> Path:
    """A local datasets repository in the hub's layout (data/<split>-*.parquet and a README
    that declares the config and split), which ``datasets.load_dataset(path)`` reads as it
    reads the hub repository."""
    bench = BENCHMARKS[name]
    split = bench.hub_split or bench.split
    ds = hub_dataset(name, tmp / f"img_{name}")
    if bench.hub_keep:  # the hub port holds every split: add a train row that must be dropped
        extra = ds.select([0]).map(lambda r: {**r, "original_split": "train", "id": 99})
        ds = datasets.concatenate_datasets([ds, extra])
    (root / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    config = bench.config or "default"
    (root / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: {split}\n"
        f"    path: data/{split}-*\n---\n")
    return root


def test_download_writes_the_local_layout_from_a_datasets_repository(tmp_path, monkeypatch,
                                                                     manager):
    """``download`` through the real ``datasets.load_dataset`` (a local repository in the hub
    layout stands in for the hub); the stock task's own download of that repository and the
    local copy give lmms-eval the same documents."""
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    names = ["mathverse", "mathvision", "geoqa"]
    sources = {n: str(_datasets_repo(tmp_path / f"repo_{n}", n, tmp_path)) for n in names}
    log: list[str] = []
    written = download(names, tmp_path / "data", sources, log=log.append)
    assert [p.relative_to(tmp_path / "data").as_posix() for p in written] == [
        "mathverse/testmini.parquet", "mathvision/testmini.parquet", "geoqa/test.parquet"]
    assert any("2 rows" in line for line in log)
    again = download(["geoqa"], tmp_path / "data", sources, log=log.append)
    assert again == written[2:] and "kept" in log[-1]
    # a local repository without the benchmark's split: one line naming both (a traceback)
    with pytest.raises(LocalDataError, match=r"geoqa: .*repo_mathverse \(split train\) "
                                             r"cannot be read: Unknown split"):
        download(["geoqa"], tmp_path / "other", {"geoqa": sources["mathverse"]}, log=log.append)

    from vldft.eval.local_tasks import LOCAL_KEY, VldftTask

    for name in names:
        bench = BENCHMARKS[name]
        config = _config(manager, bench.task)
        hub_task = VldftTask(config={**config, "dataset_path": sources[name]})
        local_task = VldftTask(config={**config, "dataset_path": str(tmp_path / "data"),
                                       "dataset_kwargs": {LOCAL_KEY: name}})
        hub_docs, local_docs = list(hub_task.test_docs()), list(local_task.test_docs())
        assert len(hub_docs) == len(local_docs) == 2
        for a, b in zip(hub_docs, local_docs, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                same = (a[k].tobytes() == b[k].tobytes()) if hasattr(a[k], "tobytes") else \
                    a[k] == b[k]
                assert same or isinstance(a[k], list), (name, k)


def test_unreachable_hub_fails_in_seconds_naming_the_local_alternative(tmp_path):
    start = time.perf_counter()
    with pytest.raises(EvalSetupError) as e:
        evaluate("no-model-is-loaded-before-this-check", ["mathvision_testmini"], tmp_path / "o")
    took = time.perf_counter() - start
    msg = str(e.value)
    assert "MathLLMs/MathVision" in msg and "download" in msg and "--data-dir" in msg, msg
    assert "\n" not in msg and took < 30, took
    with pytest.raises(EvalSetupError, match=r"geometry3k/test\.parquet"):
        evaluate("no-model", ["geometry3k"], tmp_path / "o", data_dir=tmp_path)
    with pytest.raises(EvalSetupError) as e:  # every missing copy in one message
        evaluate("no-model", [], tmp_path / "o", suites=["paper"], data_dir=tmp_path)
    assert str(e.value).startswith("5 benchmark(s) without a local copy") and "geoqa" in str(
        e.value) and "\n" not in str(e.value)


def check_model_in(folder: Path, model: str) -> None:
    from vldft.eval.run import check_model

    here = os.getcwd()
    os.chdir(folder)
    try:
        check_model(model)
    finally:
        os.chdir(here)


def test_a_wrong_model_path_is_one_line(tmp_path):
    from vldft.eval.run import check_model

    with pytest.raises(EvalSetupError, match="no such checkpoint directory"):
        check_model(str(tmp_path / "runs/nope/final"))
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    with pytest.raises(EvalSetupError, match=r"did you mean .*run/final\?"):
        check_model(str(tmp_path / "run"))
    check_model("Qwen/Qwen2.5-VL-3B-Instruct")  # a hub id is left to the hub
    # owner/name whose owner is a local folder: a path, not a hub id (it was looked up there)
    with pytest.raises(EvalSetupError, match=r"no such checkpoint directory \(.*run/ is a "
                                             r"local folder"):
        (tmp_path / "run" / "run.json").write_text("{}")  # a vldft run directory
        check_model_in(tmp_path, "run/nope")
    (tmp_path / "Qwen" / "Qwen2.5-VL-7B").mkdir(parents=True)  # not runs: still a hub id
    check_model_in(tmp_path, "Qwen/Qwen2.5-VL-3B-Instruct")
    check_model(str(tmp_path / "run" / "final"))
    (tmp_path / "run" / "final" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(EvalSetupError, match=r"model.safetensors: a file; pass the checkpoint "
                                             r"folder"):
        check_model(str(tmp_path / "run" / "final" / "model.safetensors"))
    # a LoRA run's adapter folder: the merged model beside it is the checkpoint to evaluate
    (tmp_path / "run" / "final" / "adapter").mkdir()
    (tmp_path / "run" / "final" / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(EvalSetupError, match=r"a LoRA adapter: vldft saves the merged model "
                                             rf"beside it, {tmp_path / 'run' / 'final'}, which"):
        check_model(str(tmp_path / "run" / "final" / "adapter"))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")
    with pytest.raises(EvalSetupError, match="names no model_type"):
        check_model(str(tmp_path / "bare"))


def test_command_line_mistakes_are_one_line_before_lmms_eval_loads(tmp_path, capsys):
    """--model-args without KEY=VALUE, a stock class for another family's checkpoint, the
    vllm backend without vllm, and model-args on a missing folder: one line each (they were
    tracebacks from inside lmms-eval or the class)."""
    import importlib.util

    from vldft.eval.__main__ import main

    ckpt = str(ROOT / "priors" / "tiny-qwen25vl-geo")
    cases = [(["--model-args", "foo"], "'foo' is not KEY=VALUE"),
             (["--limit", "1.5"], "--limit 1.5: a count of samples per task (a whole number)"),
             (["--model-class", "qwen3_vl"], "loads qwen3_vl checkpoints, and "
                                             f"{ckpt} is qwen2_5_vl; use the default vldft "
                                             "class or --model-class qwen2_5_vl"),
             (["--model-class", "llava_hf"], "loads llava checkpoints")]
    if importlib.util.find_spec("vllm") is None:
        cases.append((["--backend", "vllm"], "the vllm package is not installed"))
    for extra, said in cases:
        with pytest.raises(SystemExit) as e:
            main(["--model", ckpt, "--tasks", "vldft_geo_heldout", "--out",
                  str(tmp_path / "o"), *extra])
        assert said in str(e.value.code) and "\n" not in str(e.value.code), (extra, e.value)
    with pytest.raises(SystemExit) as e:
        main(["model-args", str(tmp_path / "runs/nope/final"), "--model-class", "qwen2_5_vl"])
    assert "no such checkpoint directory" in str(e.value.code)
    bare = tmp_path / "bare"  # no processor config: model-args names lmms-eval's own flag
    bare.mkdir()
    (bare / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    with pytest.raises(SystemExit) as e:
        main(["model-args", str(bare), "--model-class", "qwen2_5_vl"])
    assert "pass lmms-eval's --model_args min_pixels=N,max_pixels=M" in str(e.value.code)


def test_wemath_all_wrong_reports_zero_instead_of_crashing(manager):
    """lmms-eval's WeMath aggregation divides by the number of right multi-step answers."""
    from vldft.eval.local_tasks import guard_aggregation

    config = _config(manager, "wemath_testmini_reasoning")
    agg = next(m for m in config["metric_list"] if m["metric"] == "wemath_loose")["aggregation"]
    doc = {"ID": "2steps_1", "split": "testmini", "knowledge concept": "Angles",
           "question": "q", "option": "A. 1;B. 2", "answer": "B", "key": "2steps_1",
           "question number": 1, "knowledge concept description": "d"}
    item = config["process_results"](doc, ["<answer>A</answer>"])["wemath_loose"]
    with pytest.raises(ZeroDivisionError):
        agg([item])
    assert guard_aggregation(agg, "wemath_testmini_reasoning", "wemath_loose")([item]) == 0.0


def test_compare_flags_runs_that_are_not_comparable(tmp_path, capsys):
    """Different sample counts (--limit) or task versions are flagged under the table; the
    average column needs every benchmark; MathVision's percentage becomes a fraction."""
    from vldft.eval.report import compare

    def run(name: str, rows: list[tuple[str, str, float, int]], version: float = 1.0) -> Path:
        d = tmp_path / name
        d.mkdir()
        metrics = [{"task": t, "metric": m, "value": v, "n": n, "stderr": None}
                   for t, m, v, n in rows]
        tasks = {r[0] for r in rows}
        d.joinpath("results.json").write_text(json.dumps({
            "vldft": {"lmms_eval_version": "0.7.3"}, "metrics": metrics,
            "lmms_eval": {"versions": {t: version for t in tasks}}}))
        return d

    base = run("base", [("mathvision_testmini", "mathvision_standard_eval", 20.0, 304),
                        ("geometry3k", "exact_match", 0.5, 601)])
    full = run("sft", [("mathvision_testmini", "mathvision_standard_eval", 30.0, 304),
                       ("geometry3k", "exact_match", 0.6, 64)], version=2.0)
    part = run("dft", [("geometry3k", "exact_match", 0.7, 601)])
    table = compare([base, full, part], tmp_path / "cmp")
    lines = table.splitlines()
    assert lines[0] == "| run | mathvision_testmini | geometry3k | avg |"
    assert lines[2] == "| base | 0.2000 | 0.5000 | 0.3500 |"
    assert lines[3] == "| sft | 0.3000 (+0.1000) | 0.6000 (+0.1000) | 0.4500 (+0.1000) |"
    assert lines[4] == "| dft | - | 0.7000 (+0.2000) | - |"
    assert "geometry3k: runs scored different sample counts: base n=601, sft n=64" in table
    assert "mathvision_testmini: runs used different versions" in table
    csv_text = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    assert csv_text[0] == ("run,mathvision_testmini,geometry3k,avg,mathvision_testmini_n,"
                           "geometry3k_n")
    assert capsys.readouterr().out.startswith(table)


REALDATA = ROOT.parent / "shared" / "realdata"


def test_real_mathverse_website_sample_is_refused_naming_the_missing_keys(tmp_path):
    """MathVerse's public website sample (a MathVista-like schema without the query_wo /
    query_cot prompts lmms-eval's task reads) is not the release layout: the error says which
    keys are missing and where, instead of a crash inside lmms-eval."""
    src = REALDATA / "mathverse_visualizer_subset"
    if not src.is_dir():
        pytest.skip(f"{src} is absent (real public samples live outside the repository)")
    (tmp_path / "mathverse").mkdir()
    rows = json.loads((src / "plane_geometry_subset.json").read_text())
    (tmp_path / "mathverse" / "testmini.json").write_text(json.dumps(rows))
    with pytest.raises(LocalDataError) as e:
        load_local(BENCHMARKS["mathverse"], tmp_path)
    msg = str(e.value)
    assert "testmini.json[" in msg and "'query_wo'" in msg and "'problem_version'" in msg, msg


def test_default_eval_output_names_cannot_collide(tmp_path, monkeypatch):
    """runs/a/final and runs/b/final used to both write runs/eval/final."""
    from vldft.eval.__main__ import _eval_parser
    from vldft.eval.run import default_out

    for run in ("a", "b"):
        (tmp_path / "runs" / run / "final").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    a, b = default_out("runs/a/final"), default_out("runs/b/final/")
    assert a != b and (a.name, b.name) == ("a_final", "b_final")
    assert default_out("Qwen/Qwen2.5-VL-3B-Instruct").name == "Qwen__Qwen2.5-VL-3B-Instruct"
    # two evaluations of one checkpoint on different tasks do not collide either
    assert default_out("runs/a/final", ["vldft_geo_heldout"]).name == "a_final-vldft_geo_heldout"
    assert default_out("runs/a/final", [], ["paper"]).name == "a_final-paper"
    long = default_out("runs/a/final", [b.task for b in BENCHMARKS.values()])
    assert len(long.name) < 70 and long != default_out("runs/a/final", ["geoqa"])
    # a stock class's evaluation of the same checkpoint and tasks goes elsewhere
    assert default_out("runs/a/final", ["geoqa"], [], "qwen2_5_vl").name == \
        "a_final-geoqa-qwen2_5_vl"
    assert _eval_parser().parse_args(["--model", "m"]).batch_size == 8


def test_an_unreadable_results_json_is_never_a_finished_evaluation(tmp_path):
    """results.json without vldft's record (a hand-made or broken file) is another evaluation,
    for a hub id as for a folder (no older record to match either)."""
    from vldft.eval.run import finished_evaluation

    for text in ("{}", "not json", '{"vldft": {}, "metrics": []}'):
        (tmp_path / "results.json").write_text(text)
        with pytest.raises(EvalSetupError, match="results.json exists .another evaluation"):
            finished_evaluation(tmp_path, {"run": "fp", "tasks": ["geoqa"]}, None)


def test_a_bad_geo_heldout_file_is_one_line_before_any_model_runs(tmp_path):
    """vldft_geo_heldout's file: bad JSON, a missing image and a file that is not an image are
    LocalDataError naming file and row (the first two were a DataError traceback after the
    model had loaded, the last a PIL traceback in the middle of generation)."""
    from PIL import Image

    from vldft.eval.local_tasks import load_geo_heldout

    folder = tmp_path / "geo_demo"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    path = folder / "heldout.jsonl"

    def row(image: str) -> str:
        return json.dumps({"id": image, "answer": "2", "images": [image], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Answer: 2"}]}]}) + "\n"

    path.write_text(row("a.png"))
    assert len(load_geo_heldout(str(tmp_path))) == 1
    for text, said in ((row("a.png") + "{oops\n", r"heldout\.jsonl:2"),
                       (row("absent.png"), r"absent\.png"),
                       (row("b.png"), r"row b\.png: image .*b\.png cannot be read")):
        path.write_text(text)
        with pytest.raises(LocalDataError, match=said) as e:
            load_geo_heldout(str(tmp_path))
        assert "\n" not in str(e.value)


def test_geoqa_scores_a_bare_option_text_and_refuses_a_label_outside_its_choices():
    """A reply that is exactly the gold option's text is right (it was scored on its last
    number, "090", and wrong); another option's text is still wrong; a row whose label names no
    option is refused (its target letter could never be matched)."""
    import datasets

    from vldft.eval.local_tasks import geoqa_keep_test, geoqa_process_results

    doc = {"choices": ["090^\\circ T", "180^\\circ T", "45", "60"], "label": 0}
    for reply, right in (("090^\\circ T", 1.0), ("$090^\\circ T$", 1.0), ("Answer: A", 1.0),
                         ("Answer: 090^\\circ T", 1.0), ("180^\\circ T", 0.0), ("90", 0.0)):
        assert geoqa_process_results(doc, [reply])["accuracy"] == right, reply
    # option texts that are letters themselves (vertex names): the reply "B" names option B
    for reply in ("B", "b", "$B$"):
        assert geoqa_process_results({"choices": ["B", "C", "A", "D"], "label": 0}, [reply]
                                     )["accuracy"] == 0.0, reply
    assert geoqa_process_results({"choices": ["C", "A", "B", "D"], "label": 0}, ["C"]
                                 )["accuracy"] == 0.0  # the letter C, whose option is "B"
    rows = {"subject": ["q", "r"], "choices": [["1", "2"], ["1", "2"]], "label": [1, 0],
            "original_split": ["test", "test"]}
    assert len(geoqa_keep_test(datasets.Dataset.from_dict(rows))) == 2
    with pytest.raises(LocalDataError, match=r"geoqa test row 1: label 5 does not name one of "
                                             r"its 2 choices"):
        geoqa_keep_test(datasets.Dataset.from_dict({**rows, "label": [1, 5]}))


def test_a_held_out_video_row_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """vldft_geo_heldout takes one image per row: a row with a clip is refused, naming the
    command that scores clips, before the model is built (it came after a ~20 s load)."""
    from vldft.eval.run import evaluate

    (tmp_path / "clip").mkdir()
    row = {"id": "v1", "videos": ["clip"], "answer": "left", "messages": [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which way?"}]},
        {"role": "assistant", "content": "left"}]}
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 8), "red").save(tmp_path / "clip" / f"{i}.png")
    (tmp_path / "heldout.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("VLDFT_GEO_HELDOUT", str(tmp_path / "heldout.jsonl"))
    import lmms_eval.models

    real = lmms_eval.models.get_model

    class NotBuilt:
        is_simple = real("vldft").is_simple

        @classmethod
        def create_from_arg_string(cls, *a, **k):
            raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(lmms_eval.models, "get_model", lambda name: NotBuilt)
    with pytest.raises(LocalDataError, match=r"row v1: has a video; vldft_geo_heldout takes one "
                                             r"image per row .*python -m vldft\.heldout"):
        evaluate("no-model-is-loaded", ["vldft_geo_heldout"], tmp_path / "out")
