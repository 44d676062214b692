"""Hand-made documents for every benchmark of ``vldft.data.benchmarks``, written here (never
downloaded), in three layouts: the hub schema that lmms-eval's task functions read, the
benchmark's upstream files (JSON / JSONL with image paths; the hub repository's raw files where
there are some), and a clone of the benchmark's GitHub repository exactly as ``git clone`` lays
it out (``write_clone_copy``; paths, file names and record keys as in the repositories read for
docs/evaluation.md, plus sibling files a reader must not pick up instead).

Each benchmark has two rows with a correct and a wrong model response for the first; the
schemas follow the hub datasets' cards and the upstream files (see docs/evaluation.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

from vldft.data.benchmarks import BENCHMARKS, embed_images

META = {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"}
VISTA_META = {"category": "math-targeted-vqa", "context": "geometry diagram",
              "grade": "high school", "img_height": 64, "img_width": 80, "language": "english",
              "skills": ["geometry reasoning"], "source": "GeoQA+", "split": "testmini",
              "task": "geometry problem solving"}


def _image(path: Path, i: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (80, 64), "white")
    ImageDraw.Draw(img).polygon([(10, 54), (70, 54), (10 + 12 * i, 10)], outline="black")
    img.save(path)
    return str(path)


def hub_rows(name: str, img_dir: Path) -> list[dict]:
    """Two rows in the hub schema of ``name``; image columns hold paths (cast by the caller)."""
    im = [_image(img_dir / f"{name}_{i}.png", i) for i in range(2)]
    if name == "mathverse":
        return [{"sample_index": str(i + 1), "problem_index": str(i + 1),
                 "problem_version": "Vision Intensive",
                 "question": f"As shown, angle A = {40 + i}°. Find angle B.\nChoices:\n"
                             "A:40°\nB:50°",
                 "image": im[i], "answer": "B" if i == 0 else "A",
                 "question_type": "multi-choice", "metadata": META,
                 "query_wo": "Please directly answer the question and provide the correct "
                             f"option letter, e.g., A, B, C, D.\nQuestion: angle {i}",
                 "query_cot": f"Please first conduct reasoning.\nQuestion: angle {i}",
                 "question_for_eval": f"angle {i}"} for i in range(2)]
    if name == "mathvision":
        return [{"id": str(i + 4), "question": f"How many sides does the shape have? {i}\n<image1>",
                 "options": [] if i == 0 else ["2", "3", "4", "5", "6"],
                 "image": f"images/{i + 4}.jpg", "decoded_image": im[i],
                 "answer": "3" if i == 0 else "B", "solution": None, "level": 1,
                 "subject": "counting"} for i in range(2)]
    if name == "wemath":
        return [{"ID": f"2steps_{i + 1}", "split": "testmini", "knowledge concept": "Angles",
                 "question": f"Find the angle ( ) {i}", "option": "A. 30;B. 60;C. 90;D. 120",
                 "answer": "B", "image_path": im[i], "key": f"2steps_{i + 1}",
                 "question number": i + 1, "knowledge concept description": "angles"}
                for i in range(2)]
    if name == "mathvista":
        return [{"pid": str(i + 1), "question": f"What is the value of x? {i}",
                 "image": f"images/{i + 1}.jpg", "decoded_image": im[i], "choices": None,
                 "unit": None, "precision": None, "answer": "12" if i == 0 else "7",
                 "question_type": "free_form", "answer_type": "integer",
                 "query": f"Question: value {i}", "metadata": VISTA_META} for i in range(2)]
    if name == "dynamath":
        return [{"id": str(i + 1), "question_id": str(i + 1),
                 "question": f"What is the slope of the line? {i}", "decoded_image": im[i],
                 "ground_truth": "2" if i == 0 else "-1", "answer_type": "float",
                 "subject": "analytic geometry", "knowledge_level": "high school"}
                for i in range(2)]
    if name == "logicvista":
        return [{"id": f"v1_{i}", "question": f"Which choice (A, B, C, or D) fits? {i}",
                 "answer": "C" if i == 0 else "A", "image": im[i], "skill": ["inductive"],
                 "capability": ["diagram"]} for i in range(2)]
    if name == "geometry3k":
        return [{"id": i + 2401, "problem": f"Find x. {i}", "choices": ["30", "45", "60", "90"],
                 "ground_truth": "C" if i == 0 else "A", "images": [im[i]]} for i in range(2)]
    if name == "geoqa":
        return [{"id": i, "subject": f"As shown, AB ∥ CD, angle 1 = {50 + i}°. Find angle 2.",
                 "choices": ["40°", "50°", "130°", "140°"], "label": 2 if i == 0 else 1,
                 "answer": "130°", "comment": "", "formal_point": [], "original_split": "test",
                 "image": im[i]} for i in range(2)]
    raise KeyError(name)


# (correct, wrong) responses for the first row, in each task's expected answer style
RESPONSES = {
    "mathverse": ("<think>The angles sum to 90.</think><answer>B</answer>",
                  "<think>Guess.</think><answer>A</answer>"),
    "mathvision": ("Counting the sides, the answer is 3", "Counting the sides, the answer is 4"),
    "wemath": ("<think>Right angle minus 30.</think><answer>B</answer>",
               "<think>Guess.</think><answer>D</answer>"),
    "mathvista": ("<think>x = 3 * 4.</think><answer>12</answer>",
                  "<think>x = 3 + 4.</think><answer>7</answer>"),
    "dynamath": ("<think>Rise over run is 2.</think><answer>2</answer>",
                 "<think>Rise over run.</think><answer>0.5</answer>"),
    "logicvista": ("<think>The pattern rotates.</think><answer>C</answer>",
                   "<think>Guess.</think><answer>B</answer>"),
    "geometry3k": ("Answer: C", "Answer: B"),
    "geoqa": ("Co-interior angles sum to 180°, so angle 2 = 130°. Answer: C", "Answer: D"),
}


def hub_dataset(name: str, img_dir: Path) -> datasets.Dataset:
    """The two rows as a ``datasets.Dataset`` with the hub's image features, bytes embedded."""
    ds = datasets.Dataset.from_list(hub_rows(name, img_dir))
    for col, is_list in BENCHMARKS[name].images.items():
        ds = ds.cast_column(col, datasets.Sequence(datasets.Image()) if is_list
                            else datasets.Image())
    return embed_images(ds)


def write_hub_copy(name: str, root: Path, tmp: Path) -> Path:
    """``root/<name>/<split>.parquet``, as ``python -m vldft.eval download`` writes it."""
    bench = BENCHMARKS[name]
    path = root / name / f"{bench.split}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    hub_dataset(name, tmp / f"img_{name}").to_parquet(str(path))
    return path


def write_upstream_copy(name: str, root: Path) -> Path:
    """The same rows in the benchmark's upstream repository layout under ``root/<name>``."""
    base = root / name
    rows = hub_rows(name, base / "_src")
    if name == "mathverse":  # testmini.json (list) + images/
        out = []
        for i, r in enumerate(rows):
            rel = f"images_version_1-4/image_{i + 1}.png"
            Path(r["image"]).rename(_mk(base / "images" / rel))
            out.append({k: v for k, v in r.items() if k != "question_for_eval"} | {"image": rel})
        return _dump(base / "testmini.json", out)
    if name == "mathvision":  # data/testmini.jsonl + images/<id>.jpg (repository root)
        for r in rows:
            shutil.copy(r["decoded_image"], _mk(base / r["image"]))
        lines = [json.dumps({k: v for k, v in r.items() if k != "decoded_image"}) for r in rows]
        path = _mk(base / "data/testmini.jsonl")
        path.write_text("\n".join(lines) + "\n")
        return path
    if name == "wemath":  # testmini.json (list) + 2steps/image/*.png from testmini.zip
        out = []
        for i, r in enumerate(rows):
            rel = f"2steps/image/1-{i + 1}.png"
            Path(r["image_path"]).rename(_mk(base / rel))
            out.append(r | {"image_path": rel})
        return _dump(base / "testmini.json", out)
    if name == "mathvista":  # data/testmini.json keyed by pid, images relative to data/
        out = {}
        for r in rows:
            shutil.copy(r["decoded_image"], _mk(base / "data" / r["image"]))
            out[r["pid"]] = {k: v for k, v in r.items() if k not in ("decoded_image", "query")}
        return _dump(base / "data/testmini.json", out)
    if name == "dynamath":  # dataset/dataset.json keyed by seed id, images under dataset/
        out = {}
        for r in rows:
            rel = f"image/image{r['id']}.png"
            Path(r["decoded_image"]).rename(_mk(base / "dataset" / rel))
            out[r["id"]] = {"question": r["question"], "answer": r["ground_truth"],
                            "image": rel, "answer_type": r["answer_type"],
                            "subject": r["subject"], "level": r["knowledge_level"]}
        return _dump(base / "dataset/dataset.json", out)
    if name == "logicvista":  # data/dataset.json keyed by id, data/images/<imagename>
        out = {}
        for r in rows:
            Path(r["image"]).rename(_mk(base / "data/images" / f"{r['id']}.png"))
            out[r["id"]] = {"imagename": f"{r['id']}.png", "question": r["question"],
                            "answer": r["answer"], "reasoning": "", "skill": r["skill"],
                            "capability": r["capability"]}
        return _dump(base / "data/dataset.json", out)
    if name == "geometry3k":  # InterGPS: test/<id>/data.json + img_diagram.png
        for r in rows:
            d = base / "test" / str(r["id"])
            Path(r["images"][0]).rename(_mk(d / "img_diagram.png"))
            _dump(d / "data.json", {"id": r["id"], "problem_text": r["problem"],
                                    "choices": r["choices"], "answer": r["ground_truth"]})
        return base / "test"
    if name == "geoqa":  # test.jsonl with image paths relative to it
        lines = []
        for r in rows:
            rel = f"images/{r['id']}.png"
            Path(r["image"]).rename(_mk(base / rel))
            lines.append(json.dumps(r | {"image": rel}, ensure_ascii=False))
        path = base / "test.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    raise KeyError(name)


# benchmarks whose GitHub repository holds the test split (GeoQA's holds no data): name -> repo
CLONES = {"mathverse": "ZrrSkywalker/MathVerse", "mathvision": "mathllm/MATH-V",
          "wemath": "We-Math/We-Math", "mathvista": "lupantech/MathVista",
          "dynamath": "DynaMath/DynaMath", "logicvista": "Yijia-Xiao/LogicVista",
          "geometry3k": "lupantech/InterGPS"}


def write_clone_copy(name: str, root: Path) -> Path:
    """The same rows as a clone of the benchmark's GitHub repository at ``root/<name>`` (with the
    hub's images.zip extracted where the repository's README says, for MathVerse and MathVista,
    and InterGPS's test.zip extracted by its ``data/unzip_data.sh``); returns the file read."""
    if name not in CLONES:
        raise KeyError(f"{name}: its repository holds no data (no clone layout)")
    path = _write_clone(name, root / name)
    shutil.rmtree(root / name / "_src", ignore_errors=True)  # the images' first place
    return path


def _write_clone(name: str, base: Path) -> Path:
    rows = hub_rows(name, base / "_src")
    if name == "mathverse":  # data/testmini.json; images.zip extracted in data/ -> data/images/
        out = []
        for i, r in enumerate(rows):
            rel = f"images_version_{'1-4' if i == 0 else '5'}/image_{i + 1}.png"
            Path(r["image"]).rename(_mk(base / "data" / "images" / rel))
            out.append({k: v for k, v in r.items() if k != "question_for_eval"} | {"image": rel})
        text_only = [dict(out[0], problem_version="Text Only", image="", question="decoy")]
        _dump(base / "data/testmini_text_only.json", text_only)
        _mk(base / "evaluation/utils.py").write_text("")
        return _dump(base / "data/testmini.json", out)
    if name in ("mathvision", "dynamath"):  # the repository is the upstream layout itself
        path = write_upstream_copy(name, base.parent)
        if name == "mathvision":  # data/test.jsonl: the full test split, not testmini
            (base / "data/test.jsonl").write_text(json.dumps({"id": "1", "question": "decoy",
                                                              "options": [], "answer": "0",
                                                              "image": "images/1.jpg"}) + "\n")
        return path
    if name == "wemath":  # data/testmini.json; data/2steps/image/, data/3steps/image/
        out = []
        for r in rows:
            rel = f"2steps/image/{r['question number']}-1.png"
            Path(r["image_path"]).rename(_mk(base / "data" / rel))
            out.append(r | {"image_path": rel})
        _image(base / "data/3steps/image/1-1.png", 0)
        _dump(base / "data/knowledge_structure_nodes.json", [{"id": 1, "name": "decoy"}])
        return _dump(base / "data/testmini.json", out)
    if name == "mathvista":  # data/testmini.json keyed by pid; images.zip extracted in data/
        out = {}
        for r in rows:
            shutil.copy(r["decoded_image"], _mk(base / "data" / r["image"]))
            out[r["pid"]] = {k: v for k, v in r.items() if k not in ("decoded_image", "query")}
        _dump(base / "data/query.json", {r["pid"]: r["query"] for r in rows})
        _dump(base / "data/annot_testmini.json", {"1": {"decoy": True}})
        return _dump(base / "data/testmini.json", out)
    if name == "logicvista":  # data/dataset.json keyed by id, data/images/<imagename>
        out = {}
        for r in rows:
            Path(r["image"]).rename(_mk(base / "data/images" / f"{r['id']}.png"))
            out[r["id"]] = {"imagename": f"{r['id']}.png", "question": r["question"],
                            "answer": r["answer"], "reasoning": "", "skill": r["skill"],
                            "broad_capability": r["capability"],
                            "specific_capability": ["sequence pattern"],
                            "imagesource": "aptitudetests", "sourcelink": "", "liscenced": True}
        _mk(base / "data/README.md").write_text("# LogicVista Dataset\n")
        return _dump(base / "data/dataset.json", out)
    if name == "geometry3k":  # InterGPS: data/geometry3k/*.zip, test.zip extracted next to it
        data = base / "data" / "geometry3k"
        for r in rows:
            d = data / "test" / str(r["id"])
            Path(r["images"][0]).rename(_mk(d / "img_diagram.png"))
            _dump(d / "data.json", {"id": r["id"], "problem_text": r["problem"],
                                    "choices": r["choices"], "answer": r["ground_truth"],
                                    "precise_value": [30.0, 45.0, 60.0, 90.0],
                                    "compact_text": r["problem"], "comment": ""})
        shutil.make_archive(str(data / "test"), "zip", data, "test")
        (base / "data/unzip_data.sh").write_text(
            "unzip -d data/geometry3k data/geometry3k/test.zip\n")
        return data / "test"
    raise KeyError(name)


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _dump(path: Path, obj) -> Path:
    _mk(path).write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return path
