"""The real recipes (configs/*_geo.yaml + configs/recipes/geo_math.yaml), offline.

Hand-made copies of each public source the recipes name (LLaVA-OneVision-Data's parquet with
embedded images, NuminaMath-CoT's parquet, Geo170K's and MathV360K's upstream JSON + image zip,
MetaMathQA's JSON, GSM8K's parquet) are written here as local folders that stand in for their
hub repositories (a README with the hub's `configs:` card metadata, so `datasets.load_dataset`
reads them as it reads the hub). `vldft-data download CONFIG --data-dir DIR --source NAME=FOLDER`
fetches from them exactly what it would fetch from the hub; then the shipped config trains on
`DIR` offline with `model.tiny=true`, decontaminated against hand-made benchmark copies.
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import datasets
import pytest
from bench_docs import hub_dataset
from conftest import ROOT
from PIL import Image, ImageDraw

from vldft.config import ConfigError, load_config
from vldft.data.benchmarks import BENCHMARKS, SUITES

pytest.importorskip("lmms_eval")  # the real recipes score a benchmark slice (eval extra)

HEADLINE = ROOT / "configs/qwen25vl_geo.yaml"
RECIPE = ROOT / "configs/recipes/geo_math.yaml"
REAL = ["qwen25vl_geo", "qwen2vl_geo", "qwen3vl_geo", "qwen3vl_moe_geo", "qwen3_5_geo",
        "llava_geo", "llava_onevision_geo"]
OV_SUBSETS = ["geo170k(qa)", "GeoQA+(MathV360K)", "Geometry3K(MathV360K)", "mavis_math_metagen"]


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def diagram(seed: int, size=(160, 120)) -> bytes:
    """A line diagram unlike the benchmark copies' triangles (PNG bytes)."""
    rng = random.Random(seed)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    for _ in range(4):
        d.line([(rng.randrange(size[0]), rng.randrange(size[1])) for _ in range(2)],
               fill="black", width=2)
    x, y = rng.randrange(20, size[0] - 20), rng.randrange(20, size[1] - 20)
    d.ellipse([x - 15, y - 12, x + 15, y + 12], outline="black", width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def hub_repo(folder: Path, configs: dict[str, tuple[str, datasets.Dataset]]) -> Path:
    """A local folder laid out like a hub dataset repository: one parquet per config and split
    and the card's `configs:` metadata, which `datasets.load_dataset(folder, config)` reads."""
    card = ["---", "configs:"]
    for i, (name, (split, ds)) in enumerate(configs.items()):
        rel = f"part{i}/{split}-00000-of-00001.parquet"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(folder / rel))
        card += [f'- config_name: "{name}"', "  data_files:", f"  - split: {split}",
                 f"    path: {rel}"]
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))
    return folder


def ov_rows(n: int, seed: int, planted: bytes | None = None) -> datasets.Dataset:
    """LLaVA-OneVision-Data rows (id, image, conversations, data_source); row 1 has no <image>
    placeholder (such rows exist: the image goes first), ``planted`` replaces row 0's image."""
    rows = []
    for i in range(n):
        human = f"Circle O has radius {i + 2} cm and chord AB of length {i + 3} cm; find angle AOB."
        rows.append({"id": f"geo_{seed}_{i}",
                     "image": {"bytes": planted if i == 0 and planted else diagram(seed * 100 + i),
                               "path": None},
                     "conversations": [{"from": "human",
                                        "value": human if i == 1 else "<image>\n" + human},
                                       {"from": "gpt", "value": f"Since OA = OB, ... Answer: {i}"}],
                     "data_source": "geo170k(qa)"})
    ds = datasets.Dataset.from_list(rows)
    return ds.cast_column("image", datasets.Image())


def numina_rows(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_list([
        {"source": "synthetic_math", "problem": f"What is {i} + {i + 1}?",
         "solution": f"Add them: {i} + {i + 1} = {2 * i + 1}. \\boxed{{{2 * i + 1}}}",
         "messages": [{"role": "user", "content": f"What is {i} + {i + 1}?"},
                      {"role": "assistant", "content": f"\\boxed{{{2 * i + 1}}}"}]}
        for i in range(n)])


def upstream_repo(folder: Path, json_name: str, zip_name: str, image_dir: str, n: int) -> Path:
    """Geo170K / MathV360K upstream layout: a JSON list of LLaVA rows whose `image` paths are
    relative to ``image_dir``, and a zip holding ``image_dir/...``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"u{i}", "image": f"geoqa_plus/{i}.png",
             "conversations": [{"from": "human", "value": f"<image>\nFind the length of side {i}."},
                               {"from": "gpt", "value": f"By Pythagoras ... Answer: {i}"}]}
            for i in range(n)]
    (folder / json_name).write_text(json.dumps(rows))
    with zipfile.ZipFile(folder / zip_name, "w") as z:
        for i in range(n):
            z.writestr(f"{image_dir}/geoqa_plus/{i}.png", diagram(500 + i))
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, Path]:
    """Stand-ins for every hub repository the recipes and their documented alternatives name;
    a training row of geo170k(qa) carries the geoqa benchmark's first test image."""
    root = tmp_path_factory.mktemp("hub")
    imgs = root / "_bench_imgs"
    out = {name: hub_repo(root / name, {
        (BENCHMARKS[name].config or "default"): (BENCHMARKS[name].hub_split
                                                 or BENCHMARKS[name].split,
                                                 hub_dataset(name, imgs))})
        for name in SUITES["paper"]}
    planted = hub_dataset("geoqa", imgs).cast_column(
        "image", datasets.Image(decode=False))[0]["image"]["bytes"]
    out["ov"] = hub_repo(root / "ov", {s: ("train", ov_rows(6, k, planted if k == 0 else None))
                                       for k, s in enumerate(OV_SUBSETS)})
    out["numina"] = hub_repo(root / "numina", {"default": ("train", numina_rows(10))})
    out["gsm8k"] = hub_repo(root / "gsm8k", {"main": ("train", datasets.Dataset.from_list(
        [{"question": f"Tom has {i} apples and buys 2. How many?",
          "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"} for i in range(5)]))})
    out["geo170k"] = upstream_repo(root / "geo170k", "qa_tuning.json", "images.zip", "images", 4)
    out["mathv360k"] = upstream_repo(root / "mathv360k", "train_samples_all_tuning.json",
                                     "data_images.zip", "data_images", 3)
    (root / "metamath").mkdir()
    (root / "metamath" / "MetaMathQA-395K.json").write_text(json.dumps(
        [{"query": f"Compute {i} * 3.", "response": f"{i} * 3 = {3 * i}. The answer is: {3 * i}",
          "type": "GSM_Rephrased", "original_question": f"Compute {i} * 3."} for i in range(4)]))
    out["metamath"] = root / "metamath"
    return out


def stand_ins(hub: dict[str, Path], cfg) -> list[str]:
    """`--source NAME=FOLDER` arguments for every downloadable source and benchmark of cfg."""
    by_hub = {"lmms-lab/LLaVA-OneVision-Data": "ov", "AI-MO/NuminaMath-CoT": "numina",
              "openai/gsm8k": "gsm8k", "Luckyjhg/Geo170K": "geo170k",
              "Zhiqiang007/MathV360K": "mathv360k", "meta-math/MetaMathQA": "metamath"}
    from vldft.data.download import needed_benchmarks

    args = [f"{s.name}={hub[by_hub[s.hub]]}" for s in cfg.data.sources if s.hub]
    return [*args, *(f"{b}={hub[b]}" for b in needed_benchmarks(cfg))]


def download(config: Path, data_dir: Path, hub, *overrides: str) -> int:
    from vldft.datatool import main

    cfg = load_config(config, [f"data.data_dir={data_dir}", *overrides])
    argv = ["download", str(config), *overrides, "--data-dir", str(data_dir)]
    for item in stand_ins(hub, cfg):
        argv += ["--source", item]
    return main(argv)


def test_every_real_config_names_public_data_not_the_demo():
    for name in REAL:
        cfg = load_config(ROOT / f"configs/{name}.yaml")
        assert not cfg.data.train_files and cfg.data.heldout_file is None
        hubs = {s.hub for s in cfg.data.sources}
        assert hubs == {"lmms-lab/LLaVA-OneVision-Data", "AI-MO/NuminaMath-CoT"}, name
        assert cfg.data.decontaminate == "paper"
        assert set(cfg.train.eval_tasks) <= {BENCHMARKS[b].task for b in SUITES["paper"]}
        assert "geo_demo" not in (ROOT / f"configs/{name}.yaml").read_text()


def test_print_config_shows_the_mixture():
    out = subprocess.run([sys.executable, "-m", "vldft.train", str(HEADLINE), "--print-config"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "lmms-lab/LLaVA-OneVision-Data" in out and "geo170k(qa)" in out
    assert "AI-MO/NuminaMath-CoT" in out and "decontaminate: paper" in out


def test_without_the_data_training_stops_before_the_model_loads(tmp_path, monkeypatch):
    import vldft.train as train

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(train, "load_adapter", no_model)
    cfg = load_config(HEADLINE, [f"data.data_dir={tmp_path}", "model.tiny=true",
                                 f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError) as err:
        train.main(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "geo170k_qa" in msg and "numinamath_cot" in msg
    assert str(tmp_path / "geo170k_qa" / "train.parquet") in msg
    # the benchmark copies decontamination reads are missing too: named in the same line (they
    # used to come one run later), as the same download fetches them
    assert "benchmark copies for data.decontaminate=paper: " in msg and "mathverse" in msg
    assert "vldft-data download" in msg and str(HEADLINE) in msg
    assert not (tmp_path / "run").exists()  # nothing was claimed or written
    # the command line says it in one line too, fast
    proc = subprocess.run([sys.executable, "-m", "vldft.train", str(HEADLINE),
                           f"data.data_dir={tmp_path}", "model.tiny=true",
                           f"train.output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "data not downloaded" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # its download command keeps the run's overrides (they may name other sources), not the
    # data dir, which --data-dir sets
    assert (f"`vldft-data download {HEADLINE} model.tiny=true train.output_dir={tmp_path / 'run'}"
            " --data-dir DIR`") in proc.stderr, proc.stderr


def test_download_then_train_offline_decontaminated(tmp_path, hub, monkeypatch):
    data_dir = tmp_path / "data"
    assert download(HEADLINE, data_dir, hub) == 0
    assert (data_dir / "geo170k_qa" / "train.parquet").is_file()
    assert (data_dir / "numinamath_cot" / "train.parquet").is_file()
    for name in SUITES["paper"]:
        assert (data_dir / name / f"{BENCHMARKS[name].split}.parquet").is_file(), name
    # a second download keeps what is there
    stamp = (data_dir / "geo170k_qa" / "train.parquet").stat().st_mtime_ns
    assert download(HEADLINE, data_dir, hub) == 0
    assert (data_dir / "geo170k_qa" / "train.parquet").stat().st_mtime_ns == stamp

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from vldft.train import main

    out = tmp_path / "run"
    cfg = load_config(HEADLINE, [f"data.data_dir={data_dir}", "model.tiny=true",
                                 "train.max_steps=3", f"train.output_dir={out}",
                                 "train.eval_tasks_limit=1", "train.eval_tasks_max_new_tokens=4",
                                 "train.eval_batch_size=1", "train.save_every=0"])
    summary = main(cfg)
    assert summary["steps"] == 3 and Path(summary["checkpoint"]).is_dir()
    data = json.loads((out / "data_summary.json").read_text())
    dec = data["decontamination"]
    assert dec["benchmarks"] == SUITES["paper"]
    # (the hand-made benchmark copies share their drawings: the first benchmark holding the
    # planted bytes is named)
    assert [(e["source"], e["id"], e["reason"]) for e in dec["entries"]] == [
        ("geo170k_qa", "geo_0_0", "image_exact")]
    assert dec["entries"][0]["benchmark"] in SUITES["paper"] and dec["entries"][0]["test_id"]
    rows = {r["source"]: r for r in data["sources"]}
    assert rows["geo170k_qa"]["read"] == 6 and rows["geo170k_qa"]["decontaminated"] == 1
    # the mixture: 5 image rows + 10 text rows = 15 samples, weights 3 : 1
    assert rows["geo170k_qa"]["used"] == round(15 * 3 / 4)
    assert rows["numinamath_cot"]["used"] == round(15 * 1 / 4)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"benchmarks"' in line]
    assert evals and set(evals[-1]["benchmarks"]) == set(cfg.train.eval_tasks)


def documented_alternatives() -> list[str]:
    """The override lines of configs/recipes/geo_math.yaml's comments."""
    pattern = r"^[ \t]*#[ \t]+(data\.sources\[\d\]\S*?=\S.*?)(?:[ \t]{3,}.*)?$"
    lines = [m.group(1) for m in re.finditer(pattern, RECIPE.read_text(), re.M)]
    return [line.replace('="', "=", 1)[:-1] if '="' in line else line for line in lines]


def test_the_recipe_documents_its_alternatives():
    alts = documented_alternatives()
    assert len(alts) == 7
    assert any("Luckyjhg/Geo170K" in a for a in alts) and any("openai/gsm8k" in a for a in alts)


@pytest.mark.parametrize("override", documented_alternatives())
def test_each_documented_alternative_downloads_and_reads(tmp_path, hub, override):
    """Each alternative's one override line, fetched from its stand-in and read through the
    real readers into the mixture (decontamination off: it is tested above)."""
    from vldft.adapters import load_adapter
    from vldft.data.mix import build_training_set

    data_dir = tmp_path / "data"
    extra = [override, "data.decontaminate=off", "train.eval_tasks=[]", "train.eval_every=0"]
    assert download(HEADLINE, data_dir, hub, *extra) == 0
    assert not list(data_dir.rglob("*.zip")), "archives are deleted once extracted"
    cfg = load_config(HEADLINE, [f"data.data_dir={data_dir}", "model.tiny=true", *extra])
    data = build_training_set(cfg, load_adapter(cfg.model))
    rows = {r["source"]: r for r in data.table}
    changed = cfg.data.sources[int(override[len("data.sources[")])]
    assert rows[changed.name]["read"] >= 3
    image_source = next(s for s in cfg.data.sources if s.format == "llava")
    assert rows[image_source.name]["images"] == rows[image_source.name]["used"]
    assert all(s.images for s in data.samples if s.source == image_source.name)


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory, hub) -> Path:
    data_dir = tmp_path_factory.mktemp("data")
    assert download(HEADLINE, data_dir, hub) == 0
    return data_dir


@pytest.mark.parametrize("name", REAL)
def test_every_real_config_validates_against_the_copies(name, downloaded, tmp_path):
    """`vldft-data validate` on each shipped real-model config, tiny model of its family: every
    row of the downloaded copies reads and encodes (lengths, masks) without a finding."""
    from vldft.datatool import main

    rc = main(["validate", str(ROOT / f"configs/{name}.yaml"), f"data.data_dir={downloaded}",
               "model.tiny=true", f"train.output_dir={tmp_path}"])
    report = json.loads((tmp_path / "validation.json").read_text())
    assert rc == 0, report
    assert report["ok"]


def test_missing_benchmark_copies_stop_decontamination_in_one_line(downloaded, tmp_path,
                                                                   monkeypatch):
    import vldft.train as train

    monkeypatch.setattr(train, "load_adapter", lambda *a, **k: pytest.fail("model loaded"))
    empty = tmp_path / "bench"
    empty.mkdir()
    base = [f"data.data_dir={downloaded}", "model.tiny=true", f"train.eval_data_dir={empty}",
            f"train.output_dir={tmp_path / 'run'}"]
    with pytest.raises(ConfigError) as err:
        train.main(load_config(HEADLINE, base))
    msg = str(err.value)
    assert "\n" not in msg and "mathverse" in msg and "geoqa" in msg and str(empty) in msg
    assert "data.decontaminate=off" in msg and "vldft-data download" in msg
    with pytest.raises(ConfigError, match="unknown benchmark or task 'mathvistaa'"):
        train.main(load_config(HEADLINE, [*base, "data.decontaminate=[mathvistaa]"]))
