"""Every input format trains for a few steps on the tiny model, mixed with a text-only set."""

import json
from pathlib import Path

import pytest
from conftest import demo_config
from PIL import Image

from vldft.train import main

Q = ["What is 2 + 3?", "Find x if x + 1 = 4.", "How many sides has a square?", "Halve 10."]
A = ["2 + 3 = 5. Answer: 5", "x = 4 - 1 = 3. Answer: 3", "A square has 4 sides. Answer: 4",
     "10 / 2 = 5. Answer: 5"]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def _png(path: Path, i: int) -> str:
    Image.new("RGB", (56 + 8 * i, 56), (40 * i, 90, 200)).save(path)
    return path.name


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build(fmt: str, d: Path) -> Path:
    """A 4-row source in ``fmt`` under ``d``; returns the path to configure."""
    imgs = [_png(d / f"img{i}.png", i) for i in range(4)]
    if fmt == "normalized":
        return _jsonl(d / "n.jsonl", [
            {"id": f"n{i}", "images": [imgs[i]], "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q[i]}]},
                {"role": "assistant", "content": [{"type": "text", "text": A[i]}]}]}
            for i in range(4)])
    if fmt == "llava":
        rows = [{"id": f"l{i}", "image": imgs[i], "conversations": [
            {"from": "human", "value": f"<image>\n{Q[i]}"}, {"from": "gpt", "value": A[i]}]}
            for i in range(4)]
        (d / "l.json").write_text(json.dumps(rows))
        return d / "l.json"
    if fmt == "messages":
        return _jsonl(d / "m.jsonl", [{"messages": [
            {"role": "user", "content": f"<image>{Q[i]}"},
            {"role": "assistant", "content": A[i]}], "images": [imgs[i]]} for i in range(4)])
    if fmt == "sharegpt":
        rows = [{"conversations": [{"from": "human", "value": f"<image>{Q[i]}"},
                                   {"from": "gpt", "value": A[i]}], "images": [imgs[i]],
                 "system": "Be brief."} for i in range(4)]
        (d / "s.json").write_text(json.dumps(rows))
        return d / "s.json"
    if fmt == "hf":
        import datasets

        ds = datasets.Dataset.from_dict(
            {"images": [[{"bytes": (d / imgs[i]).read_bytes(), "path": None}] for i in range(4)],
             "problem": Q, "answer": [a.split("Answer: ")[1] for a in A]},
            features=datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                        "problem": datasets.Value("string"),
                                        "answer": datasets.Value("string")}))
        ds.to_parquet(str(d / "h.parquet"))
        return d / "h.parquet"
    if fmt == "geometry3k":
        for i in range(4):
            p = d / "g3k" / str(i)
            p.mkdir(parents=True)
            (p / "data.json").write_text(json.dumps({
                "id": i, "problem_text": Q[i], "annotat_text": Q[i],
                "choices": ["1", "3", "4", "5"], "answer": "ABCD"[i]}))
            _png(p / "img_diagram.png", i)
        return d / "g3k"
    raise ValueError(fmt)


@pytest.mark.parametrize("fmt", ["normalized", "llava", "messages", "sharegpt", "hf",
                                 "geometry3k"])
def test_format_mixed_with_text_only_trains(tmp_path, fmt):
    src = build(fmt, tmp_path)
    text = _jsonl(tmp_path / "math.jsonl", [{"problem": q, "solution": a}
                                            for q, a in zip(Q, A, strict=True)])
    sources = (f"[{{path: {src}, format: {fmt}, name: img}}, "
               f"{{path: {text}, format: text_math, name: text}}]")
    out = tmp_path / "run"
    cfg = demo_config(
        f"data.sources={sources}", "data.train_files=[]", "data.heldout_file=null",
        f"train.output_dir={out}", "train.max_steps=3", "train.micro_batch_size=4",
        "train.log_every=1", "loss.sft_warmup_steps=1", "data.group_by_length=true")
    summary = main(cfg)
    table = {r["source"]: r for r in
             json.loads((out / "data_summary.json").read_text())["sources"]}
    assert table["img"]["used"] == 4 and table["img"]["images"] == 4
    assert table["text"]["used"] == 4 and table["text"]["text_only"] == 4
    assert table["text"]["tokens"] > 0 and table["img"]["tokens"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert summary["skipped"] == {} and (out / "final" / "config.json").is_file()
    # group_by_length: each micro-batch is one modality, so no padding between modalities
    assert all(0 <= r["pad_frac"] < 0.5 for r in lines)
