"""Every input format -> Sample: one tiny fixture per format written here, read with
``read_source``, checked field by field, and encoded by the tiny Qwen2.5-VL collator. Plus the
real public samples in ../shared/realdata (skipped when that folder is absent)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from vldft.adapters import load_adapter
from vldft.collate import Collator, Encoded
from vldft.config import ModelConfig, SourceConfig
from vldft.data import DataError, ImageBytes, Sample
from vldft.data.formats import detect_format, read_source
from vldft.scoring import reference_answer

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


# -- helpers -----------------------------------------------------------------------------------
def png(path: Path, color=(200, 30, 30), size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def png_bytes(color=(0, 90, 200)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def roles(s: Sample) -> list[str]:
    return [m["role"] for m in s.messages]


def texts(s: Sample) -> list[str]:
    return ["".join(p.get("text", "<image>") for p in m["content"]) for m in s.messages]


@pytest.fixture(scope="module")
def collator():
    adapter = load_adapter(ModelConfig(family="qwen2_5_vl", tiny=True))
    assert adapter.load_image(ImageBytes(png_bytes())).mode == "RGB"  # encoded bytes open
    return Collator(adapter, 512)


def encode_all(collator, samples):
    for s in samples:
        enc = collator.encode(s)
        assert isinstance(enc, Encoded), (s.id, enc)
        n_img = int((enc.input_ids == collator.adapter.image_token_id).sum())
        assert (n_img > 0) == bool(s.images)


def read(path, fmt="auto", base=None, **kw):
    return read_source(SourceConfig(path=str(path), format=fmt, **kw), base or Path(path).parent)


# -- one fixture per format --------------------------------------------------------------------
def test_normalized(tmp_path, collator):
    png(tmp_path / "img" / "a.png")
    f = write_jsonl(tmp_path / "n.jsonl", [
        {"id": "n1", "kind": "shape", "answer": "circle", "images": ["img/a.png"],
         "messages": [{"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": "Shape?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "circle"}]}]},
        {"messages": [{"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}]}])
    assert detect_format(f) == "normalized"
    s = read(f, name="norm")
    assert [x.id for x in s] == ["n1", "n.jsonl:2"]
    assert s[0].images == [tmp_path / "img" / "a.png"] and s[0].answer == "circle"
    assert s[0].kind == "shape" and s[0].source == "norm" and s[0].origin == f"{f}:1"
    assert texts(s[1]) == ["2+2?", "4"] and s[1].images == []
    encode_all(collator, s)


def test_llava(tmp_path, collator):
    png(tmp_path / "coco" / "1.png")
    png(tmp_path / "coco" / "2.png", (0, 200, 0))
    f = tmp_path / "llava.json"
    f.write_text(json.dumps([
        {"id": "l1", "image": "coco/1.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "l2", "image": ["coco/1.png", "coco/2.png"], "conversations": [
            {"from": "human", "value": "<image> vs <image>: same?"},
            {"from": "gpt", "value": "No."}]},
        {"id": "l3", "conversations": [{"from": "system", "value": "Be brief."},
                                       {"from": "human", "value": "Hi"},
                                       {"from": "gpt", "value": "Hello."}]}]))
    assert detect_format(f) == "llava"
    s = read(f, image_root=str(tmp_path))
    assert [x.id for x in s] == ["l1", "l2", "l3"]
    assert roles(s[0]) == ["user", "assistant", "user", "assistant"]
    assert texts(s[0]) == ["<image>\nWhat color?", "Red.", "Sure?", "Yes."]
    assert s[1].images == [tmp_path / "coco/1.png", tmp_path / "coco/2.png"]
    assert texts(s[1])[0] == "<image> vs <image>: same?"
    assert roles(s[2]) == ["system", "user", "assistant"] and s[2].images == []
    encode_all(collator, s)


def test_messages(tmp_path, collator):
    a, b = png(tmp_path / "a.png"), png(tmp_path / "b.png", (1, 2, 3))
    f = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "typed", "images": ["a.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A1"}]}]},
        {"id": "inline", "messages": [
            {"role": "user", "content": [{"type": "image", "image": "a.png"},
                                         {"type": "image_url", "image_url": {"url": f"file://{b}"}},
                                         {"type": "text", "text": "Compare"}]},
            {"role": "assistant", "content": "Different."}]},
        {"id": "swift", "images": ["b.png"], "messages": [
            {"role": "system", "content": "Sys"}, {"role": "user", "content": "<image>Q"},
            {"role": "assistant", "content": "A"}]},
        {"id": "v1", "messages": [
            {"role": "user", "content": [{"type": "image_url", "value": "a.png"},
                                         {"type": "text", "value": "Who?"}]},
            {"role": "assistant", "content": [{"type": "text", "value": "Nobody."}]}]}])
    assert detect_format(f) == "messages"
    s = read(f)
    assert [len(x.images) for x in s] == [1, 2, 1, 1]
    assert s[1].images == [a, b] and texts(s[1]) == ["<image><image>Compare", "Different."]
    assert roles(s[2]) == ["system", "user", "assistant"] and texts(s[2])[1] == "<image>Q"
    assert texts(s[3]) == ["<image>Who?", "Nobody."]
    encode_all(collator, s)


def test_sharegpt(tmp_path, collator):
    png(tmp_path / "data" / "1.jpg")
    f = tmp_path / "sg.json"
    f.write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "<image>Who?"},
                           {"from": "gpt", "value": "A cat."}],
         "system": "You see images.", "images": ["data/1.jpg"]},
        {"messages": [{"role": "user", "content": "Why?<image>"},
                      {"role": "assistant", "content": "Because."}], "images": ["data/1.jpg"]}]))
    assert detect_format(f) == "sharegpt"
    s = read(f, fmt="sharegpt")
    assert roles(s[0]) == ["system", "user", "assistant"]
    assert texts(s[0]) == ["You see images.", "<image>Who?", "A cat."]
    assert texts(s[1]) == ["Why?<image>", "Because."] and s[1].id == "sg.json[1]"
    encode_all(collator, s)


def test_sharegpt_tool_turn_is_unknown_role(tmp_path):
    f = tmp_path / "tool.json"
    f.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "x"}, {"from": "function_call", "value": "{}"},
        {"from": "observation", "value": "1"}, {"from": "gpt", "value": "y"}]}]))
    with pytest.raises(DataError, match=r"tool\.json item 0 .*unknown role 'function_call'.*"
                                        r"tool turns are not supported") as e:
        read(f, fmt="sharegpt")
    assert e.value.reason == "unknown_role"


def _geo_dataset():
    from datasets import Dataset, Features, List, Value
    from datasets import Image as HFImage

    rows = {"images": [[{"bytes": png_bytes(), "path": None}],
                       [{"bytes": png_bytes((9, 9, 9)), "path": None}] * 2, []],
            "problem": ["<image>Find x.", "<image> and <image>: equal?", "What is 3+4?"],
            "answer": ["\\boxed{12}", "yes", "7"]}
    feats = Features({"images": List(HFImage()), "problem": Value("string"),
                      "answer": Value("string")})
    return Dataset.from_dict(rows, features=feats)


def test_hf_parquet_easyr1_layout(tmp_path, collator):
    path = tmp_path / "geo3k.parquet"
    _geo_dataset().to_parquet(str(path))
    assert detect_format(path) == "hf"
    s = read(path)
    assert [len(x.images) for x in s] == [1, 2, 0]
    assert all(isinstance(i, ImageBytes) for x in s for i in x.images)  # not decoded
    assert texts(s[0]) == ["<image>Find x.", "\\boxed{12}"] and s[0].answer == "\\boxed{12}"
    assert s[0].id == "geo3k.parquet:0" and s[2].answer == "7"
    assert s[0].images[0].open().getpixel((0, 0)) == (0, 90, 200)
    encode_all(collator, s)


def test_hf_save_to_disk_with_template_and_single_image(tmp_path, collator):
    from datasets import Dataset, DatasetDict, Features, List, Value
    from datasets import Image as HFImage

    feats = Features({"id": Value("string"), "question": Value("string"),
                      "solution": Value("string"), "image": HFImage(),
                      "options": List(Value("string"))})
    ds = Dataset.from_dict({"id": ["q1"], "question": ["Which is red?"],
                            "solution": ["Red is A. The answer is: A"],
                            "image": [{"bytes": png_bytes((255, 0, 0)), "path": None}],
                            "options": [["red", "blue"]]}, features=feats)
    DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    assert detect_format(tmp_path / "saved") == "hf"
    s = read(tmp_path / "saved", base=tmp_path,
             prompt_template="{question}\nOptions: {choices}", columns={"choices": "options"})
    assert s[0].id == "q1" and s[0].answer == "A"
    assert texts(s[0]) == ["<image>Which is red?\nOptions: A. red B. blue",
                           "Red is A. The answer is: A"]
    encode_all(collator, s)
    with pytest.raises(DataError, match="no split 'test'"):
        read(tmp_path / "saved", base=tmp_path, split="test")


def test_hf_messages_column(tmp_path, collator):
    from datasets import Dataset

    ds = Dataset.from_dict({"messages": [[{"role": "user", "content": "<image>Describe"},
                                          {"role": "assistant", "content": "Blue square."}]],
                            "images": [[{"bytes": png_bytes(), "path": None}]]})
    path = tmp_path / "msgs.parquet"
    ds.to_parquet(str(path))
    s = read(path, fmt="hf")
    assert texts(s[0]) == ["<image>Describe", "Blue square."] and len(s[0].images) == 1
    encode_all(collator, s)


def test_hf_wrong_column_suggests_closest(tmp_path):
    from datasets import Dataset

    path = tmp_path / "typo.parquet"
    Dataset.from_dict({"probelm": ["1+1?"], "answer": ["2"]}).to_parquet(str(path))
    with pytest.raises(DataError, match=r"did you mean columns: question=probelm") as e:
        read(path, fmt="hf")
    assert e.value.reason == "missing_column"
    with pytest.raises(DataError, match=r"column 'problm' \(columns.question\) not found "
                                        r"\(did you mean 'probelm'\?\)"):
        read(path, fmt="hf", columns={"question": "problm"})


def test_hf_hub_offline_fails_fast(monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    t = time.time()
    with pytest.raises(DataError, match=r"no-such-user/no-such-set.*unreachable or "
                                        r"HF_HUB_OFFLINE") as e:
        read_source(SourceConfig(path="no-such-user/no-such-set"), Path("/nonexistent"))
    assert time.time() - t < 20 and e.value.reason == "bad_source"


def _geometry3k(root: Path) -> Path:
    problems = [
        {"id": 0, "problem_text": "Find x.", "annotat_text": "Find $x$.",
         "choices": ["3", "4", "5", "6"], "answer": "C", "problem_type_goal": ["Length"]},
        {"id": 1, "problem_text": "Find the area.", "annotat_text": "Find the area.",
         "choices": ["10", "20", "30", "40"], "answer": "A"}]
    for p in problems:
        d = root / "train" / str(p["id"])
        d.mkdir(parents=True)
        (d / "data.json").write_text(json.dumps(p))
        png(d / "img_diagram.png", (255, 255, 255))
    return root


def test_geometry3k(tmp_path, collator):
    root = _geometry3k(tmp_path / "geometry3k")
    assert detect_format(root) == "geometry3k"
    s = read(root, base=tmp_path)
    assert [x.id for x in s] == ["0", "1"] and [x.answer for x in s] == ["C", "A"]
    assert texts(s[0]) == ["<image>Find x.\nChoices: A. 3 B. 4 C. 5 D. 6", "Answer: C"]
    assert s[0].images == [root / "train/0/img_diagram.png"]
    encode_all(collator, s)
    s = read(root, base=tmp_path, columns={"question": "annotat_text"})
    assert texts(s[0])[0].startswith("<image>Find $x$.")


def test_text_math_layouts(tmp_path, collator):
    f1 = write_jsonl(tmp_path / "numina.jsonl", [
        {"problem": "Compute 1+2.", "solution": "We add: $\\boxed{\\frac{6}{2}}$."}])
    f2 = write_jsonl(tmp_path / "metamath.jsonl", [
        {"query": "What is 2*3?", "response": "2*3=6.\nThe answer is: 6"}])
    f3 = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Tom has 2 apples and buys 3.", "answer": "2+3=<<2+3=5>>5\n#### 5"}])
    f4 = tmp_path / "custom.parquet"
    from datasets import Dataset

    Dataset.from_dict({"q": ["Say hi"], "a": ["hi"]}).to_parquet(str(f4))
    got = []
    for f in (f1, f2, f3):
        assert detect_format(f) == "text_math"
        got += read(f)
    got += read(f4, fmt="text_math", columns={"question": "q", "answer": "a"})
    assert [x.answer for x in got] == ["\\frac{6}{2}", "6", "5", "hi"]
    assert texts(got[2]) == ["Tom has 2 apples and buys 3.", "2+3=<<2+3=5>>5\n#### 5"]
    assert all(x.images == [] and roles(x) == ["user", "assistant"] for x in got)
    encode_all(collator, got)


def test_reference_answer_of_worked_solutions():
    """The reference answer text_math / hf rows get from a solution (vldft.scoring's rule for
    datasets' own solutions): GSM8K ####, NuminaMath's last box, MetaMathQA's closing line."""
    assert reference_answer("so \\boxed{x^{2}} and \\boxed{3}") == "3"
    assert reference_answer("#### 1,000") == "1,000" and reference_answer("no answer") is None
    assert reference_answer("x = 4, so 2x = 8.\nThe answer is: 8") == "8"
    assert reference_answer("The answer is: 3.5") == "3.5"
    assert reference_answer("The final answer is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert reference_answer("Then \\boxed{7}.\nThe answer is: 7") == "7"
    # a markdown heading in a NuminaMath solution is not GSM8K's final "#### N" line
    numina = ("#### Step 1: Divide\nx = 1/2\n#### Step 2: Conclude\n"
              "Thus $x = \\boxed{\\frac{1}{2}}$.")
    assert reference_answer(numina) == "\\frac{1}{2}"
    assert reference_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"


def test_system_prompt_from_source(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "a"}])
    s = read(f, system="Think step by step.")
    assert roles(s[0]) == ["system", "user", "assistant"]
    assert texts(s[0])[0] == "Think step by step."


def test_detect_format_unsure_names_file(tmp_path):
    f = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    with pytest.raises(DataError, match=r"odd\.jsonl:1: cannot tell the format.*\['foo'\]"):
        detect_format(f)
    for missing in ("missing.jsonl", "sub/missing.jsonl"):  # not taken for a hub id
        with pytest.raises(DataError, match="not found") as e:
            read_source(SourceConfig(path=missing), tmp_path)
        assert e.value.reason == "missing_file"


def test_skip_needs_a_report(tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match="SkipReport"):
        read_source(SourceConfig(path=str(f)), tmp_path, on_error="skip")


# -- the real public samples -------------------------------------------------------------------
def _realdata(sub: str) -> Path:
    path = REALDATA / sub
    if not path.exists():
        pytest.skip(f"real data samples not available ({path} does not exist)")
    return path


def test_real_llamafactory_mllm_demo(collator):
    f = _realdata("llamafactory_mllm_demo/mllm_demo.json")
    assert detect_format(f) == "sharegpt"
    s = read(f)
    assert len(s) == 6 and [len(x.images) for x in s] == [2, 1, 1, 2, 1, 1]
    assert texts(s[0])[2] == "What are they doing?<image>"
    assert roles(s[1]) == ["user", "assistant", "user", "assistant"]
    assert s[1].images[0].name == "2.jpg" and s[1].images[0].is_file()
    encode_all(collator, s)


def test_real_llamafactory_v1_jsonl(tmp_path, collator):
    folder = _realdata("llamafactory_mllm_demo")
    (tmp_path / "data").symlink_to(folder)  # its image paths start at the LLaMA-Factory root
    s = read(folder / "v1_multimodal_demo.jsonl", image_root=str(tmp_path))
    assert len(s) == 24 and all(len(x.images) >= 1 for x in s)
    assert texts(s[0])[:2] == ["<image>Who are they?",
                               "They're Kane and Gretzka from Bayern Munich."]
    encode_all(collator, s[:3])


def test_real_gsm8k(collator):
    f = _realdata("gsm8k/gsm8k_train_first300.jsonl")
    s = read(f)
    assert len(s) == 300 and s[0].answer == "72" and s[0].images == []
    assert texts(s[0])[1].endswith("#### 72")
    encode_all(collator, s[:5])


def test_real_mathverse_as_hf_json(collator):
    folder = _realdata("mathverse_visualizer_subset")
    s = read(folder / "plane_geometry_subset.json", image_root=str(folder / "images"))
    assert len(s) == 306 and sum(bool(x.images) for x in s) == 255
    vision_only = next(x for x in s if texts(x)[0] == "<image>")  # empty question, image only
    assert vision_only.answer
    encode_all(collator, [s[0], vision_only])


def test_a_normalised_part_naming_its_own_source_is_refused(tmp_path):
    """A normalised row takes images / videos from its lists; a part that names its own
    ({"type": "video", "video": "a.mp4"}) was accepted and the list's entry trained instead.
    The same part in the messages format is read where it stands."""
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "b.png")
    row = {"id": "r", "images": ["b.png"], "messages": [
        {"role": "user", "content": [{"type": "image", "image": "a.png"},
                                     {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "red"}]}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"image part names its own source \('image': 'a\.png'\)"
                                        r", which a normalised row does not read") as e:
        read_source(SourceConfig(path=str(path), format="normalized"), tmp_path)
    assert e.value.reason == "bad_content" and "rows.jsonl:1" in str(e.value)
    (tmp_path / "inline.jsonl").write_text(json.dumps({**row, "images": []}) + "\n")
    (sample,) = read_source(SourceConfig(path=str(tmp_path / "inline.jsonl"),
                                         format="messages"), tmp_path)
    assert [Path(p).name for p in sample.images] == ["a.png"]


def test_detection_looks_past_a_text_only_or_broken_first_row(tmp_path):
    """A ShareGPT file whose first row is text only (no `images` key) was read as llava and
    every row's images dropped; a JSONL file whose first line is broken failed as a whole,
    even with on_error: skip (the same line elsewhere is a counted skip)."""
    from vldft.data.skips import SkipReport

    Image.new("RGB", (8, 8), "red").save(tmp_path / "1.png")
    rows = [{"conversations": [{"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello"}]},
            {"conversations": [{"from": "human", "value": "<image>Colour?"},
                               {"from": "gpt", "value": "Red"}], "images": ["1.png"]}]
    sg = tmp_path / "sg.json"
    sg.write_text(json.dumps(rows))
    assert detect_format(sg) == "sharegpt"
    samples = read_source(SourceConfig(path=str(sg)), tmp_path)
    assert [len(s.images) for s in samples] == [0, 1]
    msgs = tmp_path / "m.jsonl"
    good = {"messages": [{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4"}]}
    msgs.write_text('{"messages": [\n' + json.dumps(good) + "\n" + json.dumps(good) + "\n")
    assert detect_format(msgs) in ("normalized", "messages")
    report = SkipReport()
    kept = read_source(SourceConfig(path=str(msgs)), tmp_path, on_error="skip", report=report)
    assert len(kept) == 2 and report.total == 1
    (tmp_path / "bad.jsonl").write_text('{"messages": [\n')
    with pytest.raises(DataError, match="invalid JSON"):
        detect_format(tmp_path / "bad.jsonl")


def test_a_row_without_choices_loses_the_templates_choices_line(tmp_path):
    """docs/data.md: a row without choices loses the template's {choices} line. A GSM8K row
    under "{question}\\nChoices: {choices}" was dropped as missing_column instead (every row of
    a file without a choices column)."""
    rows = [{"question": "What is 2 + 2?", "answer": "4"},
            {"question": "Pick one.", "answer": "A", "choices": ["3", "4"]}]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = SourceConfig(path=str(path), format="text_math",
                       prompt_template="{question}\nChoices: {choices}")
    plain, listed = read_source(src, tmp_path)
    user = [m for m in plain.messages if m["role"] == "user"][0]["content"]
    text = user if isinstance(user, str) else "".join(p.get("text", "") for p in user)
    assert text == "What is 2 + 2?"
    user = [m for m in listed.messages if m["role"] == "user"][0]["content"]
    text = user if isinstance(user, str) else "".join(p.get("text", "") for p in user)
    assert text == "Pick one.\nChoices: A. 3 B. 4"


def test_numinamath_jsonl_is_text_math_as_its_parquet_is(tmp_path):
    """NuminaMath-CoT rows (source, problem, solution, messages) in JSONL were read as
    normalised (every answer None); as parquet they are text_math with the boxed answer."""
    import datasets

    row = {"source": "amc", "problem": "Find x if 2x = 1.",
           "solution": "Divide: $x = \\boxed{\\frac{1}{2}}$.",
           "messages": [{"role": "user", "content": "Find x if 2x = 1."},
                        {"role": "assistant", "content": "Divide: $x = \\boxed{\\frac{1}{2}}$."}]}
    (tmp_path / "n.jsonl").write_text(json.dumps(row) + "\n")
    datasets.Dataset.from_list([row]).to_parquet(str(tmp_path / "n.parquet"))
    assert detect_format(tmp_path / "n.jsonl") == detect_format(tmp_path / "n.parquet") \
        == "text_math"
    (sample,) = read_source(SourceConfig(path=str(tmp_path / "n.jsonl")), tmp_path)
    assert sample.answer == "\\frac{1}{2}"
