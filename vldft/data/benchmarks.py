"""The multimodal-math benchmarks vldft scores, and how their local copies are read and made.

Each :class:`Benchmark` names the lmms-eval task a paper reports (rule-scored: no judge, no API
key), the hub dataset behind it, and the local layouts accepted under ``--data-dir DIR``:

- ``DIR/<name>/<split>.parquet``: the hub split as ``datasets`` writes it
  (``Dataset.to_parquet``, images embedded). ``python -m vldft.eval download`` writes this.
- ``DIR/<name>/<split>/``: a ``Dataset.save_to_disk`` folder (or a ``DatasetDict`` with that
  split).
- ``DIR/<name>/<upstream file>``: the benchmark's own files as published (JSON / JSONL with image
  paths), e.g. a clone of its GitHub repository at ``DIR/<name>`` (``DIR/wemath/data/testmini.json``
  + ``DIR/wemath/data/2steps/image/``) or its hub repository's raw files; each benchmark lists
  the layouts it accepts (``upstream`` + ``clones``, see :func:`upstream_layouts`). They are
  converted to the hub's columns so lmms-eval's own prompt and scoring functions read them
  unchanged.

Pure data code: no lmms-eval import (the task side lives in ``vldft.eval.local_tasks``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vldft.data import DataError, iter_jsonl

if TYPE_CHECKING:  # imported where used: `vldft-eval --help` and the CLIs load without it
    import datasets

LETTERS = "ABCDEFGHIJ"


class LocalDataError(ValueError):
    """A local benchmark copy is missing or malformed; the message names the file, row or key."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its lmms-eval task, hub source and local layouts.

    ``convert`` maps one upstream record (with its key or position in ``"_key"``) to a row in
    the hub's schema whose image columns hold paths; ``images`` names those columns (True: a
    list of images). ``required`` are the upstream keys that must be present. ``upstream`` is
    the first upstream layout (``notes`` starts with where it comes from, up to the first
    ``;``), ``clones`` the others as (path under ``DIR/<name>``, where it comes from)."""

    name: str
    task: str
    hub: str
    split: str
    headline: str  # the metric a paper reports (compare's column)
    upstream: str  # the upstream split file, relative to DIR/<name>
    convert: Callable[[dict], dict]
    images: dict[str, bool]
    required: tuple[str, ...]
    config: str | None = None  # the hub dataset's config name (lmms-eval's dataset_name)
    hub_split: str | None = None  # the hub split to download, when it differs from ``split``
    hub_keep: tuple[str, str] | None = None  # (column, value) rows kept from ``hub_split``
    notes: str = ""
    percent: bool = False  # the headline metric is reported in percent (0-100)
    image_roots: tuple[str, ...] = field(default=("", "images", "data", "data/images"))
    question: str = "question"  # the column with the question text (``data.decontaminate``)
    id_column: str | None = None  # the column with the test row's id (None: the row number)
    clones: tuple[tuple[str, str], ...] = ()  # more upstream layouts: (path, where it is from)


def _same(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "_key"}


def _mathvision(row: dict) -> dict:
    return {**_same(row), "decoded_image": row["image"]}


def _mathvista(row: dict) -> dict:
    return {**_same(row), "pid": str(row.get("pid", row["_key"])), "decoded_image": row["image"]}


def _wemath(row: dict) -> dict:
    return _same(row)


def _dynamath(row: dict) -> dict:
    key = str(row["_key"])
    return {"id": key, "question_id": key, "question": row["question"],
            "ground_truth": str(row["answer"]), "decoded_image": row["image"],
            "answer_type": row.get("answer_type"), "subject": row.get("subject"),
            "knowledge_level": row.get("level")}


def _logicvista(row: dict) -> dict:
    # the repository's dataset.json names it broad_capability (its data/README.md: capability)
    return {"id": str(row["_key"]), "question": row["question"], "answer": row["answer"],
            "image": row["imagename"], "skill": row.get("skill"),
            "capability": row.get("capability", row.get("broad_capability"))}


def _geometry3k(row: dict) -> dict:
    return {"id": row.get("id", row["_key"]), "problem": row["problem_text"],
            "choices": [str(c) for c in row["choices"]], "ground_truth": row["answer"],
            "images": [f"{row['_key']}/img_diagram.png"]}  # relative to the test/ folder


def _geoqa(row: dict) -> dict:
    return _same(row)


# Where each benchmark's own files come from (read from the repositories, docs/evaluation.md):
# the GitHub repositories of MATH-V, We-Math, DynaMath and LogicVista hold the test split with its
# images; MathVerse's and MathVista's hold the annotations (the images are the hub's images.zip);
# InterGPS's (Geometry3K) holds test.zip; GeoQA's holds no data.
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("mathverse", "mathverse_testmini_reasoning", "CaraJ/MathVerse-lmmseval", "testmini",
              "acc_score", "testmini.json", _same, {"image": False},
              ("question", "image", "answer", "question_type", "query_wo", "query_cot",
               "problem_version"), config="testmini", id_column="sample_index",
              notes="hub repository AI4Math/MathVerse: testmini.json + images.zip extracted "
                    "(images/images_version_*/); github.com/ZrrSkywalker/MathVerse holds "
                    "data/testmini.json but not the images",
              clones=(("data/testmini.json", "clone of github.com/ZrrSkywalker/MathVerse + the "
                                             "hub's images.zip extracted in data/"),)),
    Benchmark("mathvision", "mathvision_testmini", "MathLLMs/MathVision", "testmini",
              "mathvision_standard_eval", "data/testmini.jsonl", _mathvision,
              {"decoded_image": False}, ("question", "options", "answer", "image"),
              notes="clone of github.com/mathllm/MATH-V (data/testmini.jsonl + images/)",
              percent=True, id_column="id"),
    Benchmark("wemath", "wemath_testmini_reasoning", "We-Math/We-Math", "testmini", "acc_score",
              "testmini.json", _wemath, {"image_path": False},
              ("ID", "question", "option", "answer", "image_path", "key"),
              notes="hub repository We-Math/We-Math: testmini.json + testmini.zip extracted",
              id_column="ID",
              clones=(("data/testmini.json", "clone of github.com/We-Math/We-Math: "
                                             "data/testmini.json + data/2steps|3steps/image/"),)),
    Benchmark("mathvista", "mathvista_testmini_cot_reasoning", "AI4Math/MathVista", "testmini",
              "acc_score", "data/testmini.json", _mathvista, {"decoded_image": False},
              ("question", "image", "choices", "answer", "question_type", "answer_type"),
              notes="clone of github.com/lupantech/MathVista + the hub's images.zip extracted in "
                    "data/ (data/images/<pid>.jpg); the repository holds the annotations, not "
                    "the images", id_column="pid"),
    Benchmark("dynamath", "dynamath_reasoning", "kcz358/DynaMath", "test", "dynamath_average",
              "dataset/dataset.json", _dynamath, {"decoded_image": False},
              ("question", "answer", "image"),
              notes="clone of github.com/DynaMath/DynaMath (dataset/dataset.json + "
                    "dataset/image/); the 501 seed questions only (the hub split holds sampled "
                    "variants, so scores differ)", id_column="id"),
    Benchmark("logicvista", "logicvista_reasoning", "lscpku/LogicVista", "test", "acc_score",
              "data/dataset.json", _logicvista, {"image": False},
              ("imagename", "question", "answer"),
              notes="clone of github.com/Yijia-Xiao/LogicVista (data/dataset.json + "
                    "data/images/)", id_column="id"),
    Benchmark("geometry3k", "geometry3k", "Yang130/geometry3k_4choices_mixed", "test",
              "exact_match", "test", _geometry3k, {"images": True},
              ("problem_text", "choices", "answer"),
              notes="InterGPS's test folder, test/<id>/data.json + img_diagram.png (its "
                    "data/geometry3k/test.zip extracted); the hub copy may order the choices "
                    "differently", question="problem", id_column="id",
              clones=(("data/geometry3k/test", "clone of github.com/lupantech/InterGPS after "
                                               "`. data/unzip_data.sh`"),)),
    Benchmark("geoqa", "geoqa", "hz2475/geoQA", "test", "accuracy", "test.jsonl", _geoqa,
              {"image": False}, ("subject", "choices", "label", "image"), hub_split="train",
              hub_keep=("original_split", "test"),
              notes="GeoQA's test split exported to JSONL by hand (github.com/chen-judge/GeoQA "
                    "holds no data: its data.zip of pickles is on Google Drive); the task is "
                    "vldft's own, lmms-eval has none; the hub port keeps GeoQA's split in "
                    "original_split", question="subject"),
)}

# benchmark suites by benchmark name (``vldft.eval``'s --suite adds its bundled "local" suite;
# ``data.decontaminate`` takes these names too)
SUITES = {
    "geo": list(BENCHMARKS),  # all eight
    # the DFT paper's multimodal benchmarks (MathVerse, MathVision, WeMath) plus geometry
    "paper": ["mathverse", "mathvision", "wemath", "geometry3k", "geoqa"],
}

# headline metric per task (compare's column); tasks not listed use their first metric
HEADLINE = {b.task: b.headline for b in BENCHMARKS.values()} | {"vldft_geo_heldout": "accuracy"}
PERCENT_TASKS = {b.task for b in BENCHMARKS.values() if b.percent}  # compare shows fractions
BY_TASK = {b.task: b for b in BENCHMARKS.values()}


# -- reading a local copy ---------------------------------------------------------------------
def upstream_layouts(bench: Benchmark) -> list[tuple[str, str]]:
    """(path under ``DIR/<name>``, where those files come from) of each upstream layout."""
    return [(bench.upstream, bench.notes.split(";")[0]), *bench.clones]


def layouts(bench: Benchmark, root: Path) -> list[Path]:
    """The paths a local copy of ``bench`` may have under ``root`` (= --data-dir), in order: the
    hub split as parquet, a ``save_to_disk`` folder, then each upstream layout."""
    base = root / bench.name
    return [base / f"{bench.split}.parquet", base / bench.split,
            *[base / path for path, _ in upstream_layouts(bench)]]


def geo_heldout_root(data_dir: str | Path | None) -> str | None:
    """The folder ``vldft_geo_heldout`` reads for ``--data-dir``: ``data_dir`` when it holds
    ``geo_demo/heldout.jsonl``, else None (the bundled file)."""
    if data_dir is not None and (Path(data_dir) / "geo_demo" / "heldout.jsonl").is_file():
        return str(data_dir)
    return None


def geo_heldout_path(root: str | Path | None = None) -> Path:
    """The file ``vldft_geo_heldout`` reads: ``$VLDFT_GEO_HELDOUT``, else
    ``<root>/geo_demo/heldout.jsonl`` (see :func:`geo_heldout_root`), else the bundled
    ``data/geo_demo/heldout.jsonl``."""
    from vldft.resources import resource

    if os.environ.get("VLDFT_GEO_HELDOUT"):
        return Path(os.environ["VLDFT_GEO_HELDOUT"])
    if root and str(root) != "local":
        return Path(root) / "geo_demo" / "heldout.jsonl"
    return resource("data") / "geo_demo" / "heldout.jsonl"


def find_local(bench: Benchmark, root: str | Path) -> Path:
    """The first layout present under ``root``; a one-line error naming all of them if none."""
    candidates = layouts(bench, Path(root))
    for path in candidates:
        if path.exists():
            return path
    upstream = [f"{candidates[2 + i]} ({what})" for i, (_, what) in
                enumerate(upstream_layouts(bench))]
    archives = [str(p.with_suffix(".zip")) for p in candidates[2:]
                if p.with_suffix(".zip").is_file()]
    hint = f"; found {', '.join(archives)}: extract it there" if archives else ""
    raise LocalDataError(
        f"{bench.name}: no local copy under {Path(root) / bench.name}: looked for "
        f"{candidates[0]} (python -m vldft.eval download), {candidates[1]}/ (save_to_disk), "
        f"{', '.join(upstream)}{hint}")


def load_local(bench: Benchmark, root: str | Path, check_images: bool = True
               ) -> datasets.Dataset:
    """The test split of ``bench`` from its local copy under ``root``, in the hub's schema.
    ``check_images``: an upstream copy's image files must open as images (evaluation shows
    them; decontamination, which reads what it can, passes False)."""
    import datasets

    path = find_local(bench, root)
    base = Path(root) / bench.name
    saved = path.is_dir() and any((path / f).is_file() for f in ("state.json",
                                                                 "dataset_dict.json"))
    upstream = {base / p for p, _ in upstream_layouts(bench)}
    if path.suffix == ".parquet":
        ds = datasets.Dataset.from_parquet(str(path))
    elif saved:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if bench.split not in ds:
                raise LocalDataError(f"{path}: saved DatasetDict has splits {list(ds)}, "
                                     f"not {bench.split!r}")
            ds = ds[bench.split]
    elif path.is_dir() and path not in upstream:
        raise LocalDataError(f"{path}: not a save_to_disk folder (no state.json or "
                             f"dataset_dict.json)")
    else:
        ds = _from_upstream(bench, path, base, check_images)
    if len(ds) == 0:
        raise LocalDataError(f"{path}: no rows")
    return ds


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LocalDataError(f"{path}: invalid JSON at line {e.lineno} ({e.msg})") from None


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, record) from a JSON list, a JSON object keyed by id, or JSONL; ``where`` names
    the file and line / key / position for error messages."""
    if path.suffix == ".jsonl":
        out = []
        for n, record in iter_jsonl(path):
            if isinstance(record, DataError):  # "file:line: invalid JSON (...)" / not UTF-8
                raise LocalDataError(str(record)) from None
            out.append((f"{path}:{n}", {"_key": n - 1, **record}))
        return out
    data = _json(path)
    if isinstance(data, dict):
        return [(f"{path}[{k!r}]", {"_key": k, **v}) for k, v in data.items()]
    return [(f"{path}[{i}]", {"_key": i, **v}) for i, v in enumerate(data)]


def _intergps_records(folder: Path) -> list[tuple[str, dict]]:
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        f = d / "data.json"
        if not f.is_file():
            raise LocalDataError(f"{d}: no data.json (InterGPS layout: test/<id>/data.json)")
        out.append((str(f), {"_key": d.name, **_json(f)}))
    return out


def readable_image(path: Path, where: str) -> str:
    """``path`` if it opens as an image (its header only: the pixels are read when the task
    shows it), else a LocalDataError naming the row (it stopped an evaluation mid-way)."""
    from PIL import Image

    try:
        with Image.open(path):
            return str(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # (UnidentifiedImageError is an OSError)
        raise LocalDataError(f"{where}: image {path} cannot be read "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                             ) from None


def _resolve(value: str, bench: Benchmark, base: Path, file_dir: Path, where: str,
             check: bool = True) -> str:
    p = Path(value)
    if p.is_absolute() and p.is_file():
        return readable_image(p, where) if check else str(p)
    tried = [file_dir / value] + [base / r / value for r in bench.image_roots]
    for candidate in tried:
        if candidate.is_file():
            return readable_image(candidate, where) if check else str(candidate)
    archives = sorted({str(z) for d in (file_dir, base) for z in d.glob("*.zip")})
    hint = f"; not yet extracted? {', '.join(archives)}" if archives else ""
    raise LocalDataError(f"{where}: image {value!r} not found (looked in "
                         f"{', '.join(sorted({str(c.parent) for c in tried}))}){hint}")


def _from_upstream(bench: Benchmark, path: Path, base: Path, check_images: bool = True
                   ) -> datasets.Dataset:
    import datasets

    records = _intergps_records(path) if path.is_dir() else _records(path)
    rows = []
    for where, rec in records:
        missing = [k for k in bench.required if k not in rec]
        if missing:
            raise LocalDataError(f"{where}: missing key(s) {missing} (the {bench.name} upstream "
                                 f"layout has {list(bench.required)})")
        row = bench.convert(rec)
        for col, is_list in bench.images.items():
            value = row.get(col)
            if value in (None, "") or (is_list and not value):
                raise LocalDataError(f"{where}: no image in {col!r}")
            values = value if is_list else [value]
            file_dir = path if path.is_dir() else path.parent
            resolved = [_resolve(str(v), bench, base, file_dir, where, check_images)
                        for v in values]
            row[col] = resolved if is_list else resolved[0]
        rows.append(row)
    ds = datasets.Dataset.from_list(rows)
    for col, is_list in bench.images.items():
        ds = ds.cast_column(col, datasets.Sequence(datasets.Image()) if is_list
                            else datasets.Image())
    return ds


# -- making a local copy ----------------------------------------------------------------------
ORIGIN = ".vldft-origin.json"  # in DIR/<name>/: where the download there came from


def origin_record(hub: str, subset: str | None, split: str, hub_files=(), local=None,
                  keep: tuple[str, str] | None = None, revision: str | None = None) -> dict:
    """The record of a download: hub repository, subset (config name), split, ``hub_files``,
    the rows kept (``keep``: column, value), the local folder that stood in for the hub and the
    revision asked for (the download adds the ``commit`` it resolved to)."""
    rec = {"hub": hub, "subset": subset or None, "split": split, "hub_files": list(hub_files),
           "keep": list(keep) if keep else None, "local": str(local) if local else None}
    return {**rec, "revision": revision} if revision else rec


def hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit ``revision`` (None: main) of the hub dataset ``repo`` is at now, so that every
    file of a download comes from that one commit and its record names it; None when the hub
    cannot be asked (offline, no such repository, no access: the download then says so). A
    revision the repository does not have is a ``LookupError``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        return HfApi().dataset_info(repo, revision=revision).sha
    except RevisionNotFoundError:
        raise LookupError(f"{repo} has no revision {revision!r}") from None
    except Exception:  # noqa: BLE001 - the download that follows fails with the reason
        return None


def read_origin(folder: str | Path) -> dict | None:
    """The record in ``folder`` (``ORIGIN``); None without one (a copy made by hand or by an
    older vldft). An unreadable record reads as ``{"unreadable": why}``, which matches nothing."""
    path = Path(folder) / ORIGIN
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"unreadable": str(e)}
    return rec if isinstance(rec, dict) and "hub" in rec else {"unreadable": "no 'hub' key"}


def write_origin(folder: str | Path, rec: dict) -> None:
    """Write ``rec`` as ``folder``'s record, whole (tmp + rename); call it once the copy is."""
    path = Path(folder) / ORIGIN
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(tmp, path)


def origin_differences(have: dict, want: dict) -> list[str]:
    """The keys in which a recorded copy differs from the one asked for; empty: the same.
    Rows saved as parquet are told apart by hub, subset, split and the rows kept; files fetched
    as they are by hub alone (more files of the same repository join the copy). The stand-in
    folder is not compared: it stands in for the same repository."""
    if "unreadable" in have:
        return ["record"]
    diff = ["hub"] if have.get("hub") != want["hub"] else []
    if bool(have.get("hub_files")) != bool(want["hub_files"]):
        return [*diff, "hub_files"]
    if not want["hub_files"]:
        diff += [k for k in ("subset", "split", "keep") if have.get(k) != want.get(k)]
    rev = want.get("revision")  # asked for: the copy's (none recorded: main), or a prefix
    # of its commit
    if rev and rev != (have.get("revision") or "main") and not (
            len(rev) >= 7 and str(have.get("commit") or "").startswith(rev)):
        diff.append("revision")
    return diff


# said of a copy kept without a record
UNKNOWN_ORIGIN = (f"its origin is unknown (no {ORIGIN}: an older vldft or made by hand), "
                  "--force downloads it again and records it")


def kept_origin(folder: Path, want: dict, force: bool, log: Callable[[str], None], name: str,
                asks: str, elsewhere: str, error: type[Exception]) -> dict | None:
    """``folder``'s record when it matches ``want`` (None: no record). A record of something
    else is an ``error`` ("FOLDER holds X, but ``asks`` Y; ... or ``elsewhere``"), or with
    ``force`` is removed (the copy is being replaced: an interrupted download must not leave
    the old record)."""
    have = read_origin(folder)
    if have is None or not origin_differences(have, want):
        return have
    if not force:
        raise error(f"{folder} holds {describe_origin(have)} (recorded in {ORIGIN}), but {asks} "
                    f"{describe_origin(want)}; not kept, not replaced: pass --force to replace "
                    f"it, or {elsewhere}")
    log(f"[vldft] {name}: replacing {describe_origin(have)} in {folder}")
    (folder / ORIGIN).unlink()
    return None


def describe_origin(rec: dict) -> str:
    """``rec`` in words: "org/x, subset s, split train" or "org/x files a.json, b.zip"."""
    if "unreadable" in rec:
        return f"an unreadable {ORIGIN} ({rec['unreadable']})"
    text = str(rec.get("hub"))
    if rec.get("revision") or rec.get("commit"):
        text += f" at revision {rec.get('revision') or 'main'}" + (
            f" (commit {rec['commit'][:12]})" if rec.get("commit") else "")
    if rec.get("hub_files"):
        return f"{text} files {', '.join(rec['hub_files'])}"
    text += f", subset {rec['subset']}" if rec.get("subset") else ""
    text += f", split {rec.get('split')}"
    keep = rec.get("keep")
    return text + (f", rows with {keep[0]} == {keep[1]!r}" if keep else "")


def embed_images(ds: datasets.Dataset) -> datasets.Dataset:
    """Image bytes stored in the table (``to_parquet`` alone keeps paths to the files)."""
    from datasets.table import embed_table_storage

    return ds.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)


def load_split(name: str, source: str, config: str | None, split: str,
               revision: str | None = None, config_word: str = "config") -> datasets.Dataset:
    """``datasets.load_dataset(source, config, split=split)`` (at ``revision``); a repository
    without that config or split (``ValueError``) is one ``LocalDataError`` line naming
    ``name``, the source, the config (called ``config_word``) and the split."""
    import datasets

    try:
        return datasets.load_dataset(source, config, split=split,
                                     **({"revision": revision} if revision else {}))
    except ValueError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        which = f"{config_word} {config}, " if config else ""
        raise LocalDataError(f"{name}: {source} ({which}split {split}) cannot be read: "
                             f"{first}") from None


def download(names: list[str], data_dir: str | Path, sources: dict[str, str] | None = None,
             force: bool = False, log: Callable[[str], None] = print,
             revisions: dict[str, str] | None = None) -> list[Path]:
    """Save each benchmark's test split from the hub (or ``sources[name]``: another dataset id or
    a local datasets repository) as ``data_dir/<name>/<split>.parquet`` with images embedded,
    and record where it came from (``ORIGIN``: with the hub commit it was read at, and the
    revision asked for in ``revisions[name]``, a branch, tag or commit). An existing file is
    kept unless ``force``, if its record matches (none: kept, with a note); a copy of something
    else, or of another revision, is refused. Files are written whole (tmp + rename), the
    record last."""

    revisions = revisions or {}
    unknown = sorted(set(revisions) - set(names))
    if unknown:
        raise LocalDataError(f"a revision for {', '.join(unknown)}, which is not downloaded here "
                             f"(downloading: {', '.join(names)})")
    written = []
    for name in names:
        if name not in BENCHMARKS:
            raise LocalDataError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
        bench = BENCHMARKS[name]
        out = Path(data_dir) / name / f"{bench.split}.parquet"
        source = (sources or {}).get(name, bench.hub)
        split = bench.hub_split or bench.split
        revision = revisions.get(name)
        if revision and Path(source).exists():
            raise LocalDataError(f"{name}: a revision ({revision}) applies to a hub repository; "
                                 f"{source} is a local folder, read as it is: drop the revision "
                                 "or check out that revision in the folder")
        want = origin_record(bench.hub, bench.config, split, keep=bench.hub_keep,
                             local=source if source != bench.hub else None, revision=revision)
        have = kept_origin(out.parent, want, force, log, name, f"benchmark {name} is",
                           "download into another --data-dir", LocalDataError)
        if out.exists() and not force:
            log(f"[vldft] {name}: {out} exists, kept"
                + (" (--force to download again)" if have else f"; {UNKNOWN_ORIGIN}"))
            written.append(out)
            continue
        local = Path(source).exists()  # a datasets repository on disk: no hub commit
        try:
            commit = None if local else hub_commit(source, revision)
        except LookupError as e:
            raise LocalDataError(f"{name}: {e}") from None
        if commit:
            want = {**want, "commit": commit}
        log(f"[vldft] {name}: loading {source} (config {bench.config}, split {split}"
            + (f", commit {commit[:12]}" if commit else "")
            + (f", revision {revision}" if revision and not commit else "") + ") ...")
        ds = load_split(name, source, bench.config, split,
                        None if local else commit or revision)
        if bench.hub_keep:
            col, value = bench.hub_keep
            ds = ds.filter(lambda r, c=col, v=value: r[c] == v)
            if len(ds) == 0:
                raise LocalDataError(f"{name}: {source} has no rows with {col} == {value!r}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".parquet.tmp")
        embed_images(ds).to_parquet(str(tmp))
        os.replace(tmp, out)
        write_origin(out.parent, want)
        log(f"[vldft] {name}: {len(ds)} rows -> {out}")
        written.append(out)
    return written
