"""Every evaluation route gives the same responses, and an interrupted evaluation resumes.

One trained tiny checkpoint (the shipped prior, trained by vldft's loop) answers the
bundled held-out questions through: vldft's lmms-eval class, lmms-eval's stock `qwen2_5_vl`
class (as `vldft.eval --model-class qwen2_5_vl --device cpu` runs it: the checkpoint's pixel
limits handed over, nothing else), plain transformers `generate` and transformers' pipeline.
The stock class loads bfloat16 weights whatever it is told, so every route runs in bfloat16 here
(`--model-args dtype=bfloat16` for vldft's class); the responses must be identical, text for
text. Then an evaluation is killed mid-run (SIGTERM, kill -9) and rerun: only the missing
responses are generated and the outputs equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, free_port

pytest.importorskip("lmms_eval")
pytestmark = pytest.mark.usefixtures("hf_offline", "one_thread")

N = 8  # held-out questions per route
MAX_NEW = 96  # vldft_geo_heldout's generation budget


@pytest.fixture(scope="module")
def ckpt() -> Path:
    """A trained tiny checkpoint as vldft saves it: the shipped prior (``make prior``). Its
    answers to the held-out questions are varied and often broken text, which makes any
    difference between the routes show."""
    return ROOT / "priors" / "tiny-qwen25vl-geo"


def docs() -> list[dict]:
    from vldft.eval.local_tasks import load_geo_heldout

    return [load_geo_heldout()[i] for i in range(N)]


def responses(written: dict) -> list[str]:
    rows = [json.loads(line) for line in Path(written["samples"][0]).read_text().splitlines()]
    return [r["response"] for r in sorted(rows, key=lambda r: r["doc_id"])]


def plain_messages(doc: dict) -> list[dict]:
    from vldft.eval.local_tasks import geo_doc_to_text

    return [{"role": "user", "content": [{"type": "image", "image": doc["image"].convert("RGB")},
                                         {"type": "text", "text": geo_doc_to_text(doc)}]}]


def test_every_route_gives_the_same_responses(ckpt, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    from vldft.eval.run import evaluate

    ours = responses(evaluate(str(ckpt), ["vldft_geo_heldout"], tmp_path / "vldft", limit=N,
                              batch_size=1, device="cpu", model_args="dtype=bfloat16"))
    stock_run = evaluate(str(ckpt), ["vldft_geo_heldout"], tmp_path / "stock", limit=N,
                         batch_size=1, device="cpu", model_class="qwen2_5_vl")
    stock = responses(stock_run)
    meta = json.loads(Path(stock_run["results"]).read_text())["vldft"]
    assert "min_pixels=12544" in meta["model_args"] and "device_map=cpu" in meta["model_args"]

    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.bfloat16).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    plain = []
    for doc in docs():
        msgs = plain_messages(doc)
        inputs = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
        plain.append(processor.decode(out[0, inputs["input_ids"].shape[1]:],
                                      skip_special_tokens=True))
    pipe = pipeline("image-text-to-text", model=str(ckpt), dtype=torch.bfloat16, device="cpu")
    piped = [pipe(text=plain_messages(doc), max_new_tokens=MAX_NEW, do_sample=False,
                  return_full_text=False)[0]["generated_text"] for doc in docs()]

    assert ours == stock == plain == piped, list(zip(ours, stock, plain, piped, strict=True))
    assert len(set(ours)) > 1  # not one constant answer: a real comparison


def test_a_class_without_the_image_policy_is_refused(ckpt):
    from vldft.eval.run import EvalSetupError, stock_model_args

    with pytest.raises(EvalSetupError, match="image policy"):
        stock_model_args(str(ckpt), "internvl2", "cpu")
    assert stock_model_args(str(ckpt), "qwen2_5_vl", "cpu", "min_pixels=1,max_pixels=2,"
                            "max_num_frames=8") == "device_map=cpu"


def test_stock_classes_get_the_frame_cap_the_checkpoint_trained_with(ckpt, tmp_path):
    """Their default is 32 frames a clip: a run trained on 4 (its config.yaml beside the
    checkpoint) is scored with 4; without a saved config, data.video's default (32)."""
    from vldft.eval.run import EvalSetupError, stock_model_args

    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (ckpt / name).is_file():
            shutil.copy(ckpt / name, final / name)
    (tmp_path / "run" / "config.yaml").write_text("data:\n  video:\n    max_frames: 4\n")
    assert "max_num_frames=4" in stock_model_args(str(final), "qwen2_5_vl", "cpu").split(",")
    assert "max_num_frames=4" in stock_model_args(str(final), "qwen3_vl", "cpu").split(",")
    assert "max_frames_num=4" in stock_model_args(str(final), "llava_hf", "cpu").split(",")
    # data.video's default, 32, is the classes' own: not passed (the arguments, and so the
    # identity of evaluations made before, stay as they were); qwen3_5's own default is 768
    assert "max_num_frames" not in stock_model_args(str(ckpt), "qwen2_vl", "cpu")
    assert "max_num_frames=32" in stock_model_args(str(ckpt), "qwen3_5", "cpu").split(",")
    (tmp_path / "run" / "config.yaml").write_text("data:\n  video:\n    max_frames: 1\n")
    with pytest.raises(EvalSetupError, match="max_frames"):
        stock_model_args(str(final), "qwen2_5_vl", "cpu")


# batch size 1: a response never depends on its batch-mates, so 1 and 2 processes (which deal
# the documents out differently) must give the same responses too
LIMIT = 12
EVAL_CMD = [sys.executable, "-m", "vldft.eval", "--tasks", "vldft_geo_heldout", "--limit",
            str(LIMIT), "--batch-size", "1", "--device", "cpu"]


def torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(free_port()), "-m", "vldft.eval", *EVAL_CMD[3:]]


def _run(cmd: list[str], ckpt: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*cmd, "--model", str(ckpt), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _kept(out: Path) -> int:
    files = out / "responses"
    return sum(len(f.read_text().splitlines()) for f in files.glob("rank*.jsonl")) \
        if files.is_dir() else 0


@pytest.fixture(scope="module")
def whole(ckpt, tmp_path_factory, one_thread) -> Path:
    """An uninterrupted evaluation (one process): what EVAL_CMD runs, run in this process (one
    thread, as the subprocesses have), which saves a start-up of lmms-eval."""
    from vldft.eval.run import evaluate

    out = tmp_path_factory.mktemp("whole")
    evaluate(str(ckpt), ["vldft_geo_heldout"], out, limit=LIMIT, batch_size=1, device="cpu")
    return out


@pytest.mark.parametrize("how", [
    # --overwrite over a finished evaluation: interrupted, it leaves no results.json (the old
    # one said "already done" on the rerun) and says to rerun without --overwrite, which resumes
    # (the same resume as a plain run's: the default run keeps this case only, ~40 s each)
    "SIGTERM, 1 process, --overwrite",
    pytest.param("SIGTERM, 1 process", marks=pytest.mark.slow),
    # covered in parts by the default run: the SIGTERM case (a real rerun resumes),
    # test_a_rerun_reads_every_ranks_file_and_skips_a_line_cut_by_kill_9 (every rank's file,
    # a cut line) and test_eval_distributed.py (2 processes equal 1); two torchrun launches
    pytest.param("kill -9, 2 processes", marks=pytest.mark.slow)])
def test_killed_evaluation_resumes_to_the_uninterrupted_result(ckpt, whole, tmp_path, how):
    cmd = torchrun() if "2 processes" in how else EVAL_CMD
    cut = tmp_path / "cut"
    if "--overwrite" in how:
        shutil.copytree(whole, cut)
    proc = _run([*cmd, "--overwrite"] if "--overwrite" in how else cmd, ckpt, cut)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (
            3 <= _kept(cut) < LIMIT and not (cut / "results.json").exists()):
        time.sleep(0.1)  # (--overwrite: the old run's responses are removed first)
    assert proc.poll() is None, f"ended before it could be interrupted: {proc.communicate()}"
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:  # the launcher and both workers (they run in sessions of their own), no handler
        subprocess.run(["pkill", "-9", "-f", "--", f"--out {cut}"], check=False)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (cut / "results.json").exists()
    if how.startswith("SIGTERM"):
        last = err.strip().splitlines()[-1]
        again = "the same command without --overwrite" if "--overwrite" in how else \
            "the same command to continue"
        assert "interrupted (SIGTERM)" in last and f"rerun {again}" in last, err
    kept = _kept(cut)
    assert 0 < kept < LIMIT
    rerun = _run(torchrun() if "2 processes" in how else EVAL_CMD, ckpt, cut)  # a fresh port
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"resuming: {kept} responses stored" in out + err
    assert _kept(cut) == LIMIT  # only the missing ones were generated
    assert json.loads((cut / "results.json").read_text())["vldft"]["resumed_responses"] == kept
    name = "samples_vldft_geo_heldout.jsonl"
    assert (cut / name).read_text() == (whole / name).read_text()
    a = json.loads((whole / "results.json").read_text())
    b = json.loads((cut / "results.json").read_text())
    assert a["metrics"] == b["metrics"]
    assert a["lmms_eval"]["results"] == b["lmms_eval"]["results"]


def test_a_rerun_reads_every_ranks_file_and_skips_a_line_cut_by_kill_9(tmp_path):
    """The store behind resuming, without a model: two ranks write their blocks, rank 1 is
    killed mid-line; on the rerun every rank reads every rank's file, the cut line is dropped
    and only the missing blocks are generated, giving an uninterrupted run's responses."""
    from types import SimpleNamespace

    from vldft.eval.resume import ResponseStore, make_resumable

    def requests(rank: int) -> list:  # lmms-eval deals the documents out by rank
        return [SimpleNamespace(args=(f"q{d}", {"max_new_tokens": 4}), task_name="t", doc_id=d,
                                idx=0) for d in range(rank, 8, 2)]

    def lm(rank: int, generated: list, stop_after: int | None = None):
        def generate_until(reqs: list) -> list:
            if stop_after is not None and len(generated) >= stop_after:
                raise KeyboardInterrupt
            generated.extend(r.doc_id for r in reqs)
            return [f"answer {r.doc_id}" for r in reqs]
        return SimpleNamespace(generate_until=generate_until)

    root, whole = tmp_path / "responses", {}
    for rank in (0, 1):  # the uninterrupted run, blocks of 2 (batch size 2)
        model = lm(rank, [])
        make_resumable(model, ResponseStore(tmp_path / "whole", rank), "fp", block=2)
        whole[rank] = model.generate_until(requests(rank))
    first: list = []
    model = lm(0, first)
    make_resumable(model, ResponseStore(root, 0), "fp", block=2)
    assert model.generate_until(requests(0)) == whole[0] and first == [0, 2, 4, 6]
    cut: list = []
    model = lm(1, cut, stop_after=2)  # rank 1: one block done, then killed
    make_resumable(model, ResponseStore(root, 1), "fp", block=2)
    with pytest.raises(KeyboardInterrupt):
        model.generate_until(requests(1))
    assert cut == [1, 3]
    with open(root / "rank1.jsonl", "a") as f:  # kill -9 in the middle of a line
        f.write('{"key": "')
    for rank, missing in ((0, []), (1, [5, 7])):
        store = ResponseStore(root, rank)
        assert store.found == 6  # both ranks' files, the cut line skipped
        again: list = []
        model = lm(rank, again)
        make_resumable(model, store, "fp", block=2)
        assert model.generate_until(requests(rank)) == whole[rank] and again == missing
    other: list = []  # another fingerprint (checkpoint, arguments): nothing is reused
    model = lm(1, other)
    make_resumable(model, ResponseStore(root, 1), "other", block=2)
    model.generate_until(requests(1))
    assert other == [1, 3, 5, 7]


def test_model_args_prints_what_lmms_evals_own_cli_needs(ckpt):
    out = subprocess.run([sys.executable, "-m", "vldft.eval", "model-args", str(ckpt),
                          "--model-class", "qwen2_5_vl", "--device", "cpu"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert out == f"pretrained={ckpt},min_pixels=12544,max_pixels=12544,device_map=cpu"


def test_max_new_tokens_with_a_stock_class_is_refused(ckpt, tmp_path):
    """A stock class takes no generation cap from vldft (it was dropped without a word: full
    responses where 8 tokens were asked for): refused in one line."""
    from vldft.eval.run import EvalSetupError, evaluate

    with pytest.raises(EvalSetupError, match="--max-new-tokens applies to vldft's own model"):
        evaluate(str(ckpt), ["vldft_geo_heldout"], tmp_path / "o", model_class="qwen2_5_vl",
                 max_new_tokens=8, device="cpu")
    with pytest.raises(EvalSetupError, match="--backend vllm generates up to the larger"):
        evaluate(str(ckpt), ["vldft_geo_heldout"], tmp_path / "o", model_class="vllm",
                 max_new_tokens=8, device="cpu")
    assert not (tmp_path / "o").exists()


def test_overwrite_removes_the_files_of_ranks_a_smaller_run_does_not_have(tmp_path):
    """--overwrite with 2 processes after a 4-process run: rank 0 removes rank2 / rank3's
    files (a later resume would read their responses as this run's), each rank its own."""
    from vldft.eval.resume import ResponseStore

    root = tmp_path / "responses"
    root.mkdir()
    for r in range(4):
        (root / f"rank{r}.jsonl").write_text(json.dumps({"key": f"k{r}", "response": "x"}) + "\n")
    ResponseStore(root, 1, fresh=True, world=2)
    assert sorted(p.name for p in root.iterdir()) == ["rank0.jsonl", "rank2.jsonl",
                                                      "rank3.jsonl"]
    store = ResponseStore(root, 0, fresh=True, world=2)
    assert store.found == 0 and not list(root.iterdir())
    assert ResponseStore(root, 0).found == 0


def test_stored_responses_are_reused_only_for_the_same_pictures(tmp_path):
    """A request's key covers its images' pixels: the same prompts over other pictures (another
    data folder, an image edited in place) are generated again; ``fresh`` (--overwrite) reuses
    nothing."""
    from types import SimpleNamespace

    from PIL import Image

    from vldft.eval.resume import ResponseStore, make_resumable

    def visual(doc):
        return [Image.open(doc["image"]).convert("RGB")]

    def run(pictures: dict, fresh: bool = False) -> list:
        generated: list = []

        def generate_until(reqs):
            generated.extend(r.doc_id for r in reqs)
            return [f"answer {r.doc_id}" for r in reqs]
        lm = SimpleNamespace(generate_until=generate_until,
                             task_dict={"t": {"test": [{"image": p} for p in pictures]}})
        store = ResponseStore(tmp_path / "responses", 0, fresh=fresh)
        make_resumable(lm, store, "fp", block=1)
        reqs = [SimpleNamespace(args=(f"q{d}", {"max_new_tokens": 4}, visual, d, "t", "test"),
                                task_name="t", doc_id=d, idx=0) for d in range(len(pictures))]
        lm.generate_until(reqs)
        # what results.json's resumed_responses says: the stored responses served, not all
        # those stored (responses of other pictures or settings are stored but not reused)
        assert store.reused == len(pictures) - len(generated)
        return generated

    real, blank = tmp_path / "real", tmp_path / "blank"
    for folder, colours in ((real, ("red", "blue")), (blank, ("white", "white"))):
        folder.mkdir()
        for i, c in enumerate(colours):
            Image.new("RGB", (8, 8), c).save(folder / f"{i}.png")
    pics = [real / "0.png", real / "1.png"]
    assert run(pics) == [0, 1]
    assert run(pics) == []  # the same pictures: every response is reused
    assert run([blank / "0.png", blank / "1.png"]) == [0, 1]  # other pictures, same prompts
    Image.new("RGB", (8, 8), "green").save(real / "1.png")  # edited in place
    assert run(pics) == [1]
    assert run(pics, fresh=True) == [0, 1]


def test_overwrite_and_already_done_follow_the_data_not_only_its_folder_name(
        ckpt, whole, tmp_path, monkeypatch):
    """A finished evaluation of the bundled held-out set, then the same command over blank
    copies of its pictures ($VLDFT_GEO_HELDOUT): not "already done" (it said so, with the real
    pictures' score), and with --overwrite every response is generated again (the stored ones
    were reused: 93 % for blank pictures), equal to a fresh evaluation's."""
    from PIL import Image

    from vldft.data.benchmarks import geo_heldout_path
    from vldft.eval.run import EvalSetupError, evaluate

    out = tmp_path / "eval"
    shutil.copytree(whole, out)
    kw = {"limit": LIMIT, "batch_size": 1, "device": "cpu"}
    assert evaluate(str(ckpt), ["vldft_geo_heldout"], out, **kw).get("done")
    folder = tmp_path / "blank" / "geo_demo"
    folder.mkdir(parents=True)
    Image.new("RGB", (112, 112), "white").save(folder / "white.png")
    rows = [json.loads(line) for line in geo_heldout_path().read_text().splitlines()]
    (folder / "heldout.jsonl").write_text("".join(
        json.dumps({**r, "images": [str(folder / "white.png")]}) + "\n" for r in rows))
    monkeypatch.setenv("VLDFT_GEO_HELDOUT", str(folder / "heldout.jsonl"))
    with pytest.raises(EvalSetupError, match="different in: data files"):
        evaluate(str(ckpt), ["vldft_geo_heldout"], out, **kw)
    (out / "samples_geoqa.jsonl").write_text("{}\n")  # a task the earlier evaluation ran
    again = evaluate(str(ckpt), ["vldft_geo_heldout"], out, overwrite=True, **kw)
    assert not (out / "samples_geoqa.jsonl").exists()  # --overwrite leaves none of its files
    evaluate(str(ckpt), ["vldft_geo_heldout"], tmp_path / "fresh", **kw)
    meta = json.loads(Path(again["results"]).read_text())["vldft"]
    assert meta["resumed_responses"] == 0 and _kept(out) == LIMIT
    name = "samples_vldft_geo_heldout.jsonl"
    assert (out / name).read_text() == (tmp_path / "fresh" / name).read_text()
    assert (out / name).read_text() != (whole / name).read_text()


def test_the_same_checkpoint_written_another_way_is_the_same_evaluation(
        ckpt, whole, tmp_path, monkeypatch):
    """A checkpoint counts by its files: a trailing slash, a relative path or a copy elsewhere
    is "already done" (each was refused as another evaluation, or regenerated every response
    after an interruption); an evaluation recorded with the path in its fingerprint (an older
    vldft) is too."""
    from vldft.eval.resume import run_fingerprint
    from vldft.eval.run import EvalSetupError, evaluate

    out = tmp_path / "eval"
    shutil.copytree(whole, out)
    copy = tmp_path / "copy" / "final"
    shutil.copytree(ckpt, copy)
    kw = {"limit": LIMIT, "batch_size": 1, "device": "cpu"}
    monkeypatch.chdir(ckpt.parent)
    for path in (f"{ckpt}/", ckpt.name, f"./{ckpt.name}", str(copy)):
        assert evaluate(path, ["vldft_geo_heldout"], out, **kw).get("done"), path
    results = json.loads((out / "results.json").read_text())
    results["vldft"]["identity"]["run"] = run_fingerprint(str(ckpt), "vldft",
                                                          f"pretrained={ckpt}", 1)
    (out / "results.json").write_text(json.dumps(results))
    assert evaluate(str(ckpt), ["vldft_geo_heldout"], out, **kw).get("done")
    # another setting is named (it said "checkpoint files or model settings")
    with pytest.raises(EvalSetupError, match=r"different in: model arguments \(--model-args / "
                                             r"--max-new-tokens: pretrained=<checkpoint> -> "
                                             r"pretrained=<checkpoint>,max_new_tokens=8\)"):
        evaluate(str(ckpt), ["vldft_geo_heldout"], out, max_new_tokens=8, **kw)
    with pytest.raises(EvalSetupError, match=r"different in: --batch-size \(1 -> 2\)\)"):
        evaluate(str(ckpt), ["vldft_geo_heldout"], out, **{**kw, "batch_size": 2})
    (copy / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(EvalSetupError, match=r"different in: checkpoint files\)"):
        evaluate(str(copy), ["vldft_geo_heldout"], out, **kw)
    with pytest.raises(EvalSetupError, match=r"unknown model_args \['bogus_key'\]"):
        evaluate(str(ckpt), ["vldft_geo_heldout"], tmp_path / "b", model_args="bogus_key=3",
                 **kw)  # one line from the CLI (a traceback)
    with pytest.raises(EvalSetupError, match=f"--out {tmp_path / 'file'}: a file, not a folder"):
        (tmp_path / "file").write_text("x")
        evaluate(str(ckpt), ["vldft_geo_heldout"], tmp_path / "file", **kw)


def test_data_identity_follows_contents_not_the_folder_around_them(tmp_path, monkeypatch):
    """The held-out data's digest covers its file and the images and videos its rows name, by
    content: an evaluation written next to it, a copy elsewhere or a touched file leave the
    digest alone; an edited image (named alone or in a list) or clip frame changes it. The
    identity also records where the data is: a copy elsewhere is another evaluation's data.
    Image bytes and tensors are keyed by content too."""
    import hashlib

    import torch
    from PIL import Image

    from vldft.eval.resume import _feed
    from vldft.eval.run import data_identity

    a = tmp_path / "a"
    a.mkdir()
    Image.new("RGB", (8, 8), "red").save(a / "x.png")
    (a / "heldout.jsonl").write_text(json.dumps({"id": "1", "answer": "2", "images": ["x.png"],
                                                "messages": []}) + "\n")

    def files(folder):
        monkeypatch.setenv("VLDFT_GEO_HELDOUT", str(folder / "heldout.jsonl"))
        return data_identity(["vldft_geo_heldout"], None, folder / "runs")[
            "vldft_geo_heldout"]["files"]

    first = files(a)
    (a / "runs" / "eval").mkdir(parents=True)  # the evaluation's own output beside the data
    (a / "runs" / "eval" / "results.json").write_text("{}")
    (a / "notes.txt").write_text("not data")
    assert files(a) == first
    shutil.copytree(a, tmp_path / "b")  # new modification times, same contents
    assert files(tmp_path / "b") == first
    monkeypatch.setenv("VLDFT_GEO_HELDOUT", str(tmp_path / "b" / "heldout.jsonl"))
    assert data_identity(["vldft_geo_heldout"], None)["vldft_geo_heldout"]["file"] == str(
        (tmp_path / "b" / "heldout.jsonl").resolve())  # where it is: recorded as well
    Image.new("RGB", (8, 8), "blue").save(a / "x.png")
    assert files(a) != first
    # one image named alone (not in a list), a clip's frame folder and a frame list
    (a / "clip").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), "red").save(a / "clip" / f"{i}.png")
    rows = [{"id": "2", "answer": "3", "images": "y.png", "messages": []},
            {"id": "3", "answer": "4", "videos": ["clip"], "messages": []},
            {"id": "4", "answer": "5", "videos": [{"video": ["clip/0.png", "clip/1.png"]}],
             "messages": []}]
    Image.new("RGB", (8, 8), "red").save(a / "y.png")
    (a / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = files(a)
    Image.new("RGB", (8, 8), "blue").save(a / "y.png")
    after_image = files(a)
    Image.new("RGB", (8, 8), "blue").save(a / "clip" / "1.png")
    assert len({before, after_image, files(a)}) == 3
    # a --data-dir without geo_demo/: the task reads the bundled file, and so does the identity
    # (it named <data-dir>/geo_demo/heldout.jsonl, a file that does not exist: edits of the
    # bundled file then went unseen)
    from vldft.data.benchmarks import geo_heldout_path

    monkeypatch.delenv("VLDFT_GEO_HELDOUT")
    found = data_identity(["vldft_geo_heldout"], tmp_path / "b")["vldft_geo_heldout"]
    assert found["file"] == str(geo_heldout_path().resolve())
    shutil.copytree(a, tmp_path / "dd" / "geo_demo")  # one that has it: that file
    found = data_identity(["vldft_geo_heldout"], tmp_path / "dd")["vldft_geo_heldout"]
    assert found["file"] == str((tmp_path / "dd" / "geo_demo" / "heldout.jsonl").resolve())

    def digest(value):
        h = hashlib.sha256()
        _feed(h, value)
        return h.hexdigest()
    assert digest(b"png-1") != digest(b"png-2")
    assert digest({"bytes": b"1", "path": None}) != digest({"bytes": b"2", "path": None})
    assert digest(torch.zeros(2, 2)) != digest(torch.ones(2, 2))
    assert digest(torch.zeros(2, 2, dtype=torch.bfloat16)) != digest(torch.zeros(2, 2))


def test_a_benchmark_folder_digest_enters_linked_folders(tmp_path):
    """A benchmark copy whose images/ is a link to a folder elsewhere (an extracted archive):
    an image edited there changes the data identity (rglob did not enter the link, so the
    old results came back as 'already done'); a link cycle ends."""
    from PIL import Image

    from vldft.eval.run import data_identity

    elsewhere = tmp_path / "extracted"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8), "red").save(elsewhere / "1.png")
    (elsewhere / "loop").symlink_to(elsewhere)  # a cycle
    folder = tmp_path / "data" / "geoqa"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text('{"id": 1}\n')
    (folder / "images").symlink_to(elsewhere)

    def digest() -> str:
        return data_identity(["geoqa"], tmp_path / "data")["geoqa"]["files"]

    first = digest()
    Image.new("RGB", (8, 8), "blue").save(elsewhere / "1.png")
    assert digest() != first
    # a named pipe beside the data is not data (opening it to digest it blocked for ever)
    import os
    import threading

    second = digest()
    os.mkfifo(folder / "pipe")
    found: list = []
    worker = threading.Thread(target=lambda: found.append(digest()), daemon=True)
    worker.start()
    worker.join(30)
    assert found == [second]


def test_a_weight_file_retrained_in_the_middle_gets_another_digest(tmp_path, monkeypatch):
    """A large safetensors file is digested by every tensor (start, middle, end), not by the
    file's ends: a merged LoRA checkpoint keeps its first and last tensors (embeddings, frozen
    vision tower), so two different checkpoints had one fingerprint and a rerun reused the
    other's responses. A large other file is sampled at 16 places."""
    from safetensors.torch import save_file

    from vldft.eval import resume

    monkeypatch.setattr(resume, "WHOLE_BYTES", 1 << 16)  # "large" from 64 KiB on, here
    g = torch.Generator().manual_seed(0)
    tensors = {"model.embed_tokens.weight": torch.randn(256, 256, generator=g),
               "model.layers.0.mlp.down_proj.weight": torch.randn(256, 256, generator=g),
               "visual.blocks.0.qkv.weight": torch.randn(256, 256, generator=g)}
    save_file(tensors, tmp_path / "a.safetensors")
    tensors["model.layers.0.mlp.down_proj.weight"] += 1e-3 * torch.randn(256, 256, generator=g)
    # (training changes a tensor throughout; this one lies between the file's first and last)
    save_file(tensors, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").stat().st_size == (tmp_path / "b.safetensors").stat(
        ).st_size > resume.WHOLE_BYTES
    digest = resume.file_digest
    assert digest(tmp_path / "a.safetensors") != digest(tmp_path / "b.safetensors")
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    assert digest(tmp_path / "a.safetensors") == digest(tmp_path / "c.safetensors")
    (tmp_path / "d.safetensors").write_bytes(b"\xff" * (1 << 17))  # no header: sampled
    assert digest(tmp_path / "d.safetensors") != digest(tmp_path / "a.safetensors")
