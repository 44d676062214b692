"""A downloaded copy records where it came from, and a copy of something else is never kept.

``vldft-data download`` keys a source's local copy by its ``name`` (``DIR/<name>/``); a rerun
with another ``subset`` (the one-line overrides of docs/data.md and configs/recipes/) used to
print "exists, kept" and train on the old rows. Local folders stand in for the hub repositories
(no network): a datasets repository with two subsets, an upstream-files repository, and a
benchmark's hub layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from bench_docs import hub_dataset

from vldft.config import ConfigError, load_config
from vldft.data import DataError
from vldft.data.benchmarks import BENCHMARKS, ORIGIN, LocalDataError
from vldft.data.benchmarks import download as download_benchmarks
from vldft.data.download import download, require_data
from vldft.datatool import main

SUBSETS = ("algebra", "geometry")


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """A stray hub request fails instead of hanging."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def subsets_repo(folder: Path) -> Path:
    """A datasets repository with two subsets (configs) whose rows differ: ``load_dataset(folder,
    subset)`` reads it as it reads the hub."""
    card = ["---", "configs:"]
    for subset in SUBSETS:
        rows = [{"question": f"{subset} question {i}?", "answer": f"{subset} {i}"}
                for i in range(3)]
        rel = f"{subset}/train-00000-of-00001.parquet"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows).to_parquet(str(folder / rel))
        card += [f"- config_name: {subset}", "  data_files:", "  - split: train",
                 f"    path: {rel}"]
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))
    return folder


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path, Path]:
    """(config file, stand-in repository, data dir)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model: {family: qwen2_5_vl, tiny: true}\n"
        "data:\n  sources:\n"
        "    - {name: mathqa, hub: org/mathqa, subset: algebra, format: text_math}\n"
        f"train: {{output_dir: {tmp_path / 'run'}}}\n")
    return cfg, subsets_repo(tmp_path / "repo"), tmp_path / "data"


def cli(setup, *extra: str) -> int:
    cfg, repo, data = setup
    return main(["download", str(cfg), *extra, "--data-dir", str(data),
                 "--source", f"mathqa={repo}"])


def answers(data: Path) -> set[str]:
    return {a.split()[0] for a in pq.read_table(data / "mathqa" / "train.parquet")["answer"]
            .to_pylist()}


def origin(data: Path) -> dict:
    return json.loads((data / "mathqa" / ORIGIN).read_text())


def test_another_subset_over_a_copy_is_refused(setup, capsys):
    """The new user's case: the same source name, another subset: an error, the copy untouched."""
    data = setup[2]
    assert cli(setup) == 0 and answers(data) == {"algebra"}
    rec = origin(data)
    assert (rec["hub"], rec["subset"], rec["split"], rec["local"]) == (
        "org/mathqa", "algebra", "train", str(setup[1]))
    capsys.readouterr()
    stamp = (data / "mathqa" / "train.parquet").stat().st_mtime_ns
    assert cli(setup, "data.sources[0].subset=geometry") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "exists, kept" not in err
    assert str(data / "mathqa") in err and "subset algebra" in err and "subset geometry" in err
    assert "--force" in err and "--data-dir" in err and "name" in err
    assert (data / "mathqa" / "train.parquet").stat().st_mtime_ns == stamp
    assert answers(data) == {"algebra"}


def test_the_same_source_again_is_kept(setup, capsys):
    data = setup[2]
    assert cli(setup) == 0
    stamp = (data / "mathqa" / "train.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert cli(setup) == 0
    out = capsys.readouterr().out
    assert "exists, kept" in out and "unknown" not in out
    assert (data / "mathqa" / "train.parquet").stat().st_mtime_ns == stamp


def test_a_copy_without_a_record_is_kept_with_a_note(setup, capsys):
    """Copies made before records existed (or by hand) keep working."""
    data = setup[2]
    assert cli(setup) == 0
    (data / "mathqa" / ORIGIN).unlink()
    capsys.readouterr()
    assert cli(setup, "data.sources[0].subset=geometry") == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "unknown" in line]
    assert len(notes) == 1 and "kept" in notes[0] and "--force" in notes[0]
    assert answers(data) == {"algebra"} and not (data / "mathqa" / ORIGIN).exists()
    cfg = load_config(setup[0], [f"data.data_dir={data}", "data.sources[0].subset=geometry"])
    require_data(cfg)  # no record: training reads it as before


def test_force_replaces_the_copy_and_its_record(setup):
    data = setup[2]
    assert cli(setup) == 0
    assert cli(setup, "data.sources[0].subset=geometry", "--force") == 0
    assert answers(data) == {"geometry"} and origin(data)["subset"] == "geometry"
    assert cli(setup, "data.sources[0].subset=geometry") == 0  # now the same: kept


def test_the_record_is_written_only_after_the_copy(setup, monkeypatch):
    import vldft.data.benchmarks as benchmarks

    def broken(ds):
        raise OSError("disk full")

    monkeypatch.setattr(benchmarks, "embed_images", broken)
    cfg = load_config(setup[0], [f"data.data_dir={setup[2]}"])
    with pytest.raises(OSError):
        download(cfg, {"mathqa": str(setup[1])}, log=lambda s: None)
    folder = setup[2] / "mathqa"
    assert not (folder / ORIGIN).exists() and not (folder / "train.parquet").exists()


def test_training_refuses_a_copy_of_another_subset(setup):
    """The check before any model loads: one line naming the key, the folder and the way out."""
    cfg_file, repo, data = setup
    assert cli(setup) == 0
    require_data(load_config(cfg_file, [f"data.data_dir={data}"]))
    for override, key in [("data.sources[0].subset=geometry", "data.sources[0].subset"),
                          ("data.sources[0].split=test", "data.sources[0].split"),
                          ("data.sources[0].hub=org/other", "data.sources[0].hub")]:
        cfg = load_config(cfg_file, [f"data.data_dir={data}", override])
        with pytest.raises(ConfigError) as err:
            require_data(cfg)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(key), msg
        assert str(data / "mathqa") in msg and "subset algebra" in msg
        assert "--force" in msg and "vldft-data download" in msg and "name" in msg


def test_a_pinned_revision_is_recorded_and_a_copy_of_another_is_refused(setup, capsys):
    """``data.sources[i].revision``: the record keeps the revision asked for (a hub download
    also the commit it resolved to); training asking another one is refused, one asking none
    or a prefix of the recorded commit reads the copy."""
    cfg_file, repo, data = setup
    assert cli(setup, "data.sources[0].revision=v1") == 0
    assert origin(data)["revision"] == "v1"
    require_data(load_config(cfg_file, [f"data.data_dir={data}", "data.sources[0].revision=v1"]))
    require_data(load_config(cfg_file, [f"data.data_dir={data}"]))
    with pytest.raises(ConfigError) as err:
        require_data(load_config(cfg_file, [f"data.data_dir={data}",
                                            "data.sources[0].revision=v2"]))
    msg = str(err.value)
    assert msg.startswith("data.sources[0].revision='v2'") and "\n" not in msg
    assert "at revision v1" in msg and "at revision v2" in msg and "--force" in msg
    capsys.readouterr()
    assert cli(setup, "data.sources[0].revision=v2") == 2
    assert "at revision v1" in capsys.readouterr().err
    rec = {**origin(data), "revision": None, "commit": "0123456789abcdef" * 2 + "01234567"}
    (data / "mathqa" / ORIGIN).write_text(json.dumps(rec))
    require_data(load_config(cfg_file, [f"data.data_dir={data}",
                                        "data.sources[0].revision=0123456789ab"]))
    with pytest.raises(ConfigError, match="revision"):
        require_data(load_config(cfg_file, [f"data.data_dir={data}",
                                            "data.sources[0].revision=fedcba9876"]))
    with pytest.raises(ConfigError, match=r"subset/hub_files/revision: only with"):
        load_config(cfg_file, ["data.sources[0].hub=null", "data.sources[0].path=x.jsonl",
                               "data.sources[0].revision=v1"])


def upstream_repo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "qa.json").write_text(json.dumps([{"query": "1 + 1?", "response": "2"}]))
    (folder / "extra.json").write_text(json.dumps([{"query": "2 + 2?", "response": "4"}]))
    return folder


def test_hub_files_another_repository_is_refused_more_files_are_added(tmp_path):
    repo = upstream_repo(tmp_path / "repo")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "model: {family: qwen2_5_vl, tiny: true}\n"
        "data:\n  sources:\n"
        "    - {name: mm, hub: org/mm, hub_files: [qa.json], path: qa.json, format: text_math}\n")

    def run(*overrides: str, force: bool = False):
        cfg = load_config(cfg_file, [f"data.data_dir={tmp_path / 'data'}", *overrides])
        return download(cfg, {"mm": str(repo)}, force=force, log=lambda s: None)

    run()
    rec = json.loads((tmp_path / "data" / "mm" / ORIGIN).read_text())
    assert rec["hub"] == "org/mm" and rec["hub_files"] == ["qa.json"]
    # more files of the same repository: fetched next to the others, the record lists them all
    run("data.sources[0].hub_files=[qa.json, extra.json]")
    rec = json.loads((tmp_path / "data" / "mm" / ORIGIN).read_text())
    assert sorted(rec["hub_files"]) == ["extra.json", "qa.json"]
    with pytest.raises(ConfigError, match="org/mm.*org/elsewhere.*--force"):
        run("data.sources[0].hub=org/elsewhere")
    with pytest.raises(ConfigError, match=r"^data\.sources\[0\]\.hub"):
        require_data(load_config(cfg_file, [f"data.data_dir={tmp_path / 'data'}",
                                            "data.sources[0].hub=org/elsewhere"]))
    run("data.sources[0].hub=org/elsewhere", force=True)
    rec = json.loads((tmp_path / "data" / "mm" / ORIGIN).read_text())
    assert rec["hub"] == "org/elsewhere" and rec["hub_files"] == ["qa.json"]
    # an unreadable record vouches for nothing: refused, --force replaces it
    (tmp_path / "data" / "mm" / ORIGIN).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable.*--force"):
        run("data.sources[0].hub=org/elsewhere")
    run("data.sources[0].hub=org/elsewhere", force=True)
    assert json.loads((tmp_path / "data" / "mm" / ORIGIN).read_text())["hub"] == "org/elsewhere"
    # files of an older download (no record) are kept with a note, and no record is made up
    (tmp_path / "data" / "mm" / ORIGIN).unlink()
    log: list[str] = []
    cfg = load_config(cfg_file, [f"data.data_dir={tmp_path / 'data'}"])
    download(cfg, {"mm": str(repo)}, log=log.append)
    assert sum("unknown" in line for line in log) == 1
    assert not (tmp_path / "data" / "mm" / ORIGIN).exists()


def test_the_recorded_commit_is_the_one_every_file_came_from(tmp_path, monkeypatch):
    """A hub download records the commit it resolved to; once the hub's branch moves on, a
    rerun (nothing fetched) or more ``hub_files`` take that same commit, never re-stamp the
    record with the new one. Pinning ``main`` reads a copy downloaded without a revision."""
    import vldft.data.download as dl
    from vldft.data.benchmarks import origin_differences, origin_record

    hub = {"commit": "a" * 40}
    fetched: list[tuple[str, str | None]] = []

    def fetch(repo, filename, dest, local, revision=None):
        fetched.append((filename, revision))
        (dest / filename).write_text(f"{revision}\n")
        return dest / filename

    monkeypatch.setattr(dl, "dataset_commit", lambda repo, revision, key: hub["commit"])
    monkeypatch.setattr(dl, "_fetch_file", fetch)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "model: {family: qwen2_5_vl, tiny: true}\n"
        "data:\n  sources:\n"
        "    - {name: mm, hub: org/mm, hub_files: [qa.json], path: qa.json, format: text_math}\n")

    def run(*overrides: str) -> dict:
        download(load_config(cfg_file, [f"data.data_dir={tmp_path / 'data'}", *overrides]),
                 log=lambda s: None)
        return json.loads((tmp_path / "data" / "mm" / ORIGIN).read_text())

    assert run()["commit"] == "a" * 40
    hub["commit"] = "b" * 40  # main moved on
    assert run()["commit"] == "a" * 40 and fetched == [("qa.json", "a" * 40)]
    rec = run("data.sources[0].hub_files=[qa.json, extra.json]")
    assert rec["commit"] == "a" * 40 and fetched[-1] == ("extra.json", "a" * 40)
    have = {**origin_record("org/x", None, "train"), "commit": "c" * 40}
    assert origin_differences(have, origin_record("org/x", None, "train", revision="main")) == []
    assert origin_differences(have, origin_record("org/x", None, "train", revision="v2")) == [
        "revision"]


def test_a_path_the_repository_lacks_is_named_after_the_download(tmp_path):
    """A source whose ``path`` names a file its hub_files do not bring: one line naming it
    where it was looked for (not the advice to download, just done)."""
    repo = upstream_repo(tmp_path / "repo")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "model: {family: qwen2_5_vl, tiny: true}\n"
        "data:\n  sources:\n"
        "    - {name: mm, hub: org/mm, hub_files: [qa.json], path: other.json, "
        "format: text_math}\n")
    cfg = load_config(cfg_file, [f"data.data_dir={tmp_path / 'data'}"])
    with pytest.raises(DataError) as err:
        download(cfg, {"mm": str(repo)}, log=lambda s: None)
    msg = str(err.value)
    assert msg.startswith("after the download, not there: source 'mm' (org/mm): looked for "
                          f"{tmp_path / 'data' / 'mm' / 'other.json'}") and "\n" not in msg
    assert "vldft-data download" not in msg


def test_benchmark_copies_are_recorded_and_checked(tmp_path, capsys):
    name = "mathverse"
    bench = BENCHMARKS[name]
    split = bench.hub_split or bench.split
    repo = benchmark_repo(name, tmp_path)
    root, log = tmp_path / "data", []
    sources = {name: str(repo)}
    [out] = download_benchmarks([name], root, sources, log=log.append)
    record = root / name / ORIGIN
    rec = json.loads(record.read_text())
    assert (rec["hub"], rec["subset"], rec["split"]) == (bench.hub, bench.config, split)
    download_benchmarks([name], root, sources, log=log.append)
    assert "kept" in log[-1] and "unknown" not in log[-1]
    # a copy of something else (another vldft's definition of the benchmark): refused
    record.write_text(json.dumps({**rec, "split": "train"}))
    with pytest.raises(LocalDataError, match="split train.*--force"):
        download_benchmarks([name], root, sources, log=log.append)
    download_benchmarks([name], root, sources, force=True, log=log.append)
    assert json.loads(record.read_text())["split"] == split
    record.unlink()  # an older copy: kept, with a note
    download_benchmarks([name], root, sources, log=log.append)
    assert "kept" in log[-1] and "unknown" in log[-1]


def benchmark_repo(name: str, tmp_path: Path) -> Path:
    """A local datasets repository laid out as benchmark ``name``'s hub repository."""
    bench = BENCHMARKS[name]
    split = bench.hub_split or bench.split
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    hub_dataset(name, tmp_path / "img").to_parquet(str(repo / "data" / f"{split}-0.parquet"))
    (repo / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {bench.config or 'default'}\n  data_files:\n"
        f"  - split: {split}\n    path: data/{split}-*\n---\n")
    return repo


def test_a_benchmark_copy_records_its_commit_and_a_pinned_revision(tmp_path, monkeypatch, capsys):
    """A benchmark read from the hub is read at one commit, which its record names; a revision
    asked for (`python -m vldft.eval download --revision BENCH=REV`) is recorded, and a copy of
    another revision is refused unless --force."""
    import vldft.data.benchmarks as benchmarks
    from vldft.eval.__main__ import main as eval_main

    name, sha = "mathverse", "0123456789abcdef" * 2 + "01234567"
    bench = BENCHMARKS[name]
    repo, root = benchmark_repo(name, tmp_path), tmp_path / "data"
    asked, loads = [], []
    real_load = datasets.load_dataset

    def commit(repo_id, revision):
        asked.append((repo_id, revision))
        if revision == "nope":
            raise LookupError(f"{repo_id} has no revision 'nope'")
        return sha

    def load(path, *args, **kwargs):  # the hub id read from the stand-in repository
        loads.append((path, kwargs.get("revision")))
        return real_load(str(repo), *args, split=kwargs["split"])

    monkeypatch.setattr(benchmarks, "hub_commit", commit)
    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setattr("vldft.eval.__main__.hub_unreachable", lambda timeout: None)  # (above)
    log = []
    download_benchmarks([name], root, log=log.append, revisions={name: "v1"})
    assert asked == [(bench.hub, "v1")] and loads == [(bench.hub, sha)]
    rec = json.loads((root / name / ORIGIN).read_text())
    assert (rec["revision"], rec["commit"]) == ("v1", sha)
    assert any(f"commit {sha[:12]}" in line for line in log), log
    download_benchmarks([name], root, log=log.append)  # no revision asked: the copy is kept
    assert "kept" in log[-1] and len(loads) == 1
    with pytest.raises(LocalDataError, match="at revision v1.*at revision v2.*--force"):
        download_benchmarks([name], root, log=log.append, revisions={name: "v2"})
    with pytest.raises(LocalDataError, match="mathverse: .* has no revision 'nope'"):
        download_benchmarks([name], tmp_path / "other", log=log.append, revisions={name: "nope"})
    with pytest.raises(LocalDataError, match="revision for mathvista, which is not downloaded"):
        download_benchmarks([name], root, revisions={"mathvista": "v1"})
    with pytest.raises(LocalDataError, match=f"a revision .v9. applies to a hub repository; "
                                             f"{repo} is a local folder"):  # not recorded
        download_benchmarks([name], tmp_path / "third", {name: str(repo)}, revisions={name: "v9"})
    assert not (tmp_path / "third" / name / ORIGIN).exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # the command line: one line naming the revisions
        eval_main(["download", "--benchmarks", name, "--data-dir", str(root),
                   "--revision", f"{name}=v2"])
    assert "at revision v1" in str(stop.value) and "\n" not in str(stop.value)
    with pytest.raises(SystemExit) as stop:
        eval_main(["download", "--benchmarks", name, "--data-dir", str(root), "--revision", name])
    assert stop.value.code == 2 and "expected BENCH=VALUE" in capsys.readouterr().err
    eval_main(["download", "--benchmarks", name, "--data-dir", str(root),
               "--revision", f"{name}=v2", "--force"])
    assert json.loads((root / name / ORIGIN).read_text())["revision"] == "v2"
    assert loads[-1] == (bench.hub, sha)
    # the hub out of reach: a copy to fetch is one line at once (the datasets client retried
    # for ~25 s first); a copy kept needs no hub
    monkeypatch.setattr("vldft.eval.__main__.hub_unreachable", lambda timeout: "offline")
    eval_main(["download", "--benchmarks", name, "--data-dir", str(root)])
    with pytest.raises(SystemExit) as stop:
        eval_main(["download", "--benchmarks", f"{name},geoqa", "--data-dir", str(root)])
    assert str(stop.value).startswith("[vldft] error: geoqa: download needs the Hugging Face "
                                      "hub, which cannot be reached (offline)")
    with pytest.raises(SystemExit) as stop:
        eval_main(["download", "--benchmarks", "geoqa", "--data-dir", str(root), "--source",
                   "geoqa=/nonexistent/folder"])
    assert "--source geoqa=/nonexistent/folder: no such folder" in str(stop.value)


def test_validate_and_inspect_refuse_a_copy_of_another_subset(setup, capsys):
    """`vldft-data validate` / `inspect` read the copy as training does: the same refusal."""
    cfg_file, repo, data = setup
    assert cli(setup) == 0
    for command in ("validate", "inspect"):
        capsys.readouterr()
        code = main([command, str(cfg_file), f"data.data_dir={data}",
                     "data.sources[0].subset=geometry"])
        err = capsys.readouterr().err
        assert code != 0 and "data.sources[0].subset='geometry'" in err, (command, code, err)
        # the way out keeps the command line's overrides (the subset asked for)
        assert (f"`vldft-data download {cfg_file} 'data.sources[0].subset=geometry' --data-dir "
                f"{data} --force`") in err, err


def test_a_copy_of_one_split_is_not_read_as_another(tmp_path):
    """A hand-made (no record) folder holding train.parquet: the folder-itself fallback would
    read it as split test; the source is missing instead, naming test.parquet."""
    folder = tmp_path / "data" / "mathqa"
    folder.mkdir(parents=True)
    datasets.Dataset.from_list([{"question": "q?", "answer": "1"}]).to_parquet(
        str(folder / "train.parquet"))
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("model: {family: qwen2_5_vl, tiny: true}\ndata:\n  sources:\n"
                        "    - {name: mathqa, hub: org/mathqa, format: text_math}\n")
    train = load_config(cfg_file, [f"data.data_dir={tmp_path / 'data'}"])
    assert train.missing_sources() is None
    assert train.local_source(train.data.sources[0]).path == str(folder / "train.parquet")
    test = load_config(cfg_file, [f"data.data_dir={tmp_path / 'data'}",
                                  "data.sources[0].split=test"])
    assert str(folder / "test.parquet") in (test.missing_sources() or "")
    # a folder of other parquet files (no split's name) is still read as the source
    (folder / "train.parquet").rename(folder / "part-0.parquet")
    assert test.missing_sources() is None
    assert test.local_source(test.data.sources[0]).path == str(folder)


def test_a_failed_first_download_leaves_no_empty_folder(tmp_path):
    """The stand-in lacks the file: the error names it, and DIR/<name>/ is not left behind
    empty (it was: training then found a folder with nothing of the source in it)."""
    empty = tmp_path / "repo"
    empty.mkdir()
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        "model: {family: qwen2_5_vl, tiny: true}\n"
        "data:\n  sources:\n"
        "    - {name: mm, hub: org/mm, hub_files: [qa.json], path: qa.json, format: text_math}\n")
    cfg = load_config(cfg_file, [f"data.data_dir={tmp_path / 'data'}"])
    with pytest.raises(DataError, match="no file qa.json"):
        download(cfg, {"mm": str(empty)}, log=lambda s: None)
    assert not (tmp_path / "data" / "mm").exists()


def test_a_local_repository_without_the_subset_is_one_line(setup, capsys):
    """--source NAME=FOLDER whose card has no such subset: one error line naming the source,
    the folder and the subset (it was datasets' "BuilderConfig 'x' not found" alone)."""
    assert cli(setup, "data.sources[0].subset=calculus") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: mathqa: {setup[1]} (subset calculus, split train) cannot be "
                          "read: "), err
    assert "\n" not in err and "calculus" in err.split("read: ", 1)[1]
    assert not (setup[2] / "mathqa" / "train.parquet").exists()


def test_a_benchmark_revision_reaches_the_benchmark_download(tmp_path, capsys):
    """vldft-data download CONFIG --revision BENCH=REV: the benchmark copies a config reads
    take a revision as vldft.eval download's do (the config-driven command had none); one for
    a benchmark the config does not read is refused before anything is fetched."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {family: qwen2_5_vl, tiny: true}\n"
                   "data: {train_files: [x.jsonl], decontaminate: [geoqa]}\n")
    (tmp_path / "x.jsonl").write_text("")
    here = tmp_path / "geoqa_repo"
    here.mkdir()
    base = ["download", str(cfg), "--data-dir", str(tmp_path / "data")]
    assert main([*base, "--revision", "mathverse=v1"]) == 2
    err = capsys.readouterr().err
    assert "--revision: ['mathverse'] is not a benchmark this config reads" in err, err
    assert main([*base, "--revision", "geoqa"]) == 2
    assert "expected BENCH=REV" in capsys.readouterr().err
    # a local stand-in is read as it is: the revision reached benchmarks.download, which says so
    assert main([*base, "--revision", "geoqa=v1", "--source", f"geoqa={here}"]) == 2
    err = capsys.readouterr().err
    assert "geoqa: a revision (v1) applies to a hub repository" in err, err
