"""Download once, train offline: fetch what a config's sources need into the data dir.

    vldft-data download configs/qwen25vl_geo.yaml --data-dir /data/vldft     # where the hub is
    python -m vldft.train configs/qwen25vl_geo.yaml data.data_dir=/data/vldft # offline, later

A source with a ``hub`` key (``data.sources[i].hub``) is fetched into ``DIR/<name>/``:

- without ``hub_files``: the ``split`` of the dataset (``subset`` = its config name) is loaded
  with ``datasets.load_dataset`` and written as ``DIR/<name>/<split>.parquet`` with the images
  embedded (the layout evaluation's local copies use);
- with ``hub_files``: those files of the dataset repository, as they are (the upstream layout,
  e.g. a JSON of rows with image paths plus an image archive); ``.zip`` / ``.tar`` / ``.tar.gz``
  archives are extracted into ``DIR/<name>/`` and then deleted, leaving a marker
  ``.<archive>.extracted`` so that a rerun skips them.

Benchmark copies needed by ``data.decontaminate`` and ``train.eval_tasks`` go to the benchmark
root (``train.eval_data_dir``, else ``DIR``) through ``vldft.data.benchmarks.download``.
Everything already present is kept (``force`` fetches again); every file is written whole (a
temporary name, then a rename), so an interrupted download leaves nothing that looks complete.
``sources`` maps a source or benchmark name to a local folder that stands in for its hub
repository (a mirror, or the tests' fixtures): rows are loaded from it with ``load_dataset``,
files copied from it.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from vldft.config import Config, ConfigError, SourceConfig
from vldft.data import DataError
from vldft.data.benchmarks import (
    BY_TASK,
    ORIGIN,
    UNKNOWN_ORIGIN,
    describe_origin,
    hub_commit,
    kept_origin,
    origin_differences,
    origin_record,
    read_origin,
    write_origin,
)
from vldft.data.benchmarks import download as download_benchmarks
from vldft.data.decontam import benchmarks_for

ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz")
Log = Callable[[str], None]


def needed_benchmarks(cfg: Config) -> list[str]:
    """Benchmarks whose local copies the run reads: ``data.decontaminate``'s and those behind
    ``train.eval_tasks`` (tasks without a benchmark, e.g. vldft_geo_heldout, need none)."""
    names = benchmarks_for(cfg.data.decontaminate)
    names += [BY_TASK[t].name for t in cfg.train.eval_tasks if t in BY_TASK]
    return list(dict.fromkeys(names))


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVES)


def _inside(root: Path, member: str) -> bool:
    target = (root / member).resolve()
    return target == root.resolve() or target.is_relative_to(root.resolve())


def extract(archive: Path, dest: Path, log: Log = print) -> int:
    """Unpack ``archive`` into ``dest`` with a progress bar; a member whose path would leave
    ``dest`` (absolute, ``..``, a link) stops it with an error naming the member. Returns the
    number of files written."""
    n = 0
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            members = z.infolist()
            for m in members:
                if not _inside(dest, m.filename):
                    raise DataError(f"{archive}: member {m.filename!r} would be written outside "
                                    f"{dest}; not extracted", "bad_source", str(archive))
            for m in tqdm(members, desc=f"extract {archive.name}", unit="file"):
                z.extract(m, dest)
                n += not m.is_dir()
    else:
        with tarfile.open(archive) as t:
            members = t.getmembers()
            for m in members:
                if not _inside(dest, m.name) or m.issym() or m.islnk() or m.isdev():
                    raise DataError(f"{archive}: member {m.name!r} is a link, a device or "
                                    f"would be written outside {dest}; not extracted",
                                    "bad_source", str(archive))
            for m in tqdm(members, desc=f"extract {archive.name}", unit="file"):
                t.extract(m, dest, filter="data")
                n += m.isfile()
    log(f"[vldft]   extracted {n} files from {archive.name} into {dest}")
    return n


def _fetch_file(repo: str, filename: str, dest: Path, local: Path | None,
                revision: str | None = None) -> Path:
    """One file of a dataset repository into ``dest/filename`` (whole or not at all)."""
    target = dest / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    if local is not None:
        src = local / filename
        if not src.is_file():
            raise DataError(f"{local}: no file {filename} (standing in for {repo})",
                            "missing_file", str(src))
        shutil.copyfile(src, tmp)
    else:
        from huggingface_hub import hf_hub_download

        got = hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset",
                              local_dir=str(dest / ".hub"), revision=revision)
        shutil.move(got, tmp)
    os.replace(tmp, target)
    return target


def source_origin(src: SourceConfig, local: Path | None = None) -> dict:
    """The record of ``src``'s download (``ORIGIN``): hub, subset, split, hub_files, stand-in."""
    assert src.hub is not None
    return origin_record(src.hub, src.subset, src.split, src.hub_files, local,
                         revision=src.revision)


def dataset_commit(repo: str, revision: str | None, key: str) -> str | None:
    """``hub_commit`` of ``repo`` at ``revision``; a revision the repository does not have is a
    ``ConfigError`` naming ``key``."""
    try:
        return hub_commit(repo, revision)
    except LookupError:
        raise ConfigError(f"{key}.revision: {repo} has no revision {revision!r}") from None


def download_source(src: SourceConfig, root: Path, local: Path | None = None,
                    force: bool = False, log: Log = print,
                    key: str = "data.sources[i]") -> Path:
    """Fetch one ``hub`` source into ``root/<name>/`` (see the module docstring) and record
    where it came from (``ORIGIN``, once the copy is complete); returns the folder. A copy
    recorded as coming from elsewhere is refused (``force``: replaced). ``local``: a folder
    standing in for the hub repository; ``key``: where the source sits (messages)."""
    assert src.hub is not None and src.name
    dest = root / src.name
    want = source_origin(src, local)
    have = kept_origin(dest, want, force, log, src.name, f"source {src.name!r} asks for",
                       "download into another --data-dir or under another source name "
                       f"({key}.name)", ConfigError)
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(src, dest, want, have, local, force, log, key)
    except BaseException:  # a failed first download leaves no empty folder behind
        shutil.rmtree(dest / ".hub", ignore_errors=True)  # the hub client's partial files
        if created and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        raise


def _download_into(src: SourceConfig, dest: Path, want: dict, have, local: Path | None,
                   force: bool, log: Log, key: str) -> Path:
    """``download_source``'s fetching, into the folder ``dest`` it made."""
    what = f"{src.hub}" + (f" (subset {src.subset})" if src.subset else "")
    # a copy recorded at a commit takes more files from that commit (its record stays true)
    pinned = None if force or local else (have or {}).get("commit")
    commit = None if local else pinned or dataset_commit(src.hub, src.revision, key)
    revision = commit or src.revision  # every file from one commit, which the record names
    if commit:
        want = {**want, "commit": commit}
        what += f" at commit {commit[:12]}"
    if not src.hub_files:
        out = dest / f"{src.split}.parquet"
        if out.exists() and not force:
            log(f"[vldft] {src.name}: {out} exists, kept"
                + (" (--force to download again)" if have else f"; {UNKNOWN_ORIGIN}"))
            return dest
        from vldft.data.benchmarks import embed_images, load_split

        log(f"[vldft] {src.name}: loading {what}, split {src.split} "
            f"{'from ' + str(local) if local else 'from the hub'} ...")
        ds = load_split(src.name, str(local) if local else src.hub, src.subset, src.split,
                        None if local else revision, config_word="subset")
        tmp = out.with_name(out.name + ".part")
        embed_images(ds).to_parquet(str(tmp))
        os.replace(tmp, out)
        write_origin(dest, want)
        log(f"[vldft] {src.name}: {len(ds)} rows -> {out}")
        return dest
    kept_unknown, kept = [], False
    for filename in src.hub_files:
        marker = dest / f".{Path(filename).name}.extracted"
        target = dest / filename
        if not force and (marker.exists() or (target.exists() and not _is_archive(filename))):
            log(f"[vldft] {src.name}: {filename} present, kept (--force to download again)")
            kept = True
            if have is None:
                kept_unknown.append(filename)
            continue
        log(f"[vldft] {src.name}: fetching {filename} from {local or what} ...")
        path = _fetch_file(src.hub, filename, dest, local, revision)
        if _is_archive(filename):
            extract(path, dest, log)
            marker.write_text(f"{filename} extracted from {local or src.hub}\n")
            path.unlink()
    shutil.rmtree(dest / ".hub", ignore_errors=True)
    if kept_unknown:  # part of the folder is of unknown origin: no record vouches for it
        log(f"[vldft] {src.name}: {', '.join(kept_unknown)} kept; {UNKNOWN_ORIGIN}")
    else:  # more files of the same repository join those recorded
        files = (have or {}).get("hub_files", [])
        rec = {**want, "hub_files": list(dict.fromkeys([*files, *src.hub_files]))}
        if kept and not pinned:  # files of an unrecorded commit stay: no one commit to name
            rec.pop("commit", None)
        write_origin(dest, rec)
    return dest


def download(cfg: Config, sources: dict[str, str] | None = None, force: bool = False,
             log: Log = print, revisions: dict[str, str] | None = None
             ) -> dict[str, list[Path]]:
    """Fetch every ``hub`` source of ``cfg`` into its data root and the benchmark copies it
    reads (``needed_benchmarks``) into its benchmark root. ``sources``: name -> local folder
    standing in for that source's / benchmark's hub repository; ``revisions``: benchmark name
    -> branch, tag or commit of its hub repository (a training source has its own
    ``revision`` key)."""
    sources, revisions = sources or {}, revisions or {}
    stray = sorted(set(revisions) - set(needed_benchmarks(cfg)))
    if stray:
        raise ValueError(f"--revision: {stray} is not a benchmark this config reads (those: "
                         f"{sorted(needed_benchmarks(cfg))}); a training source takes "
                         "data.sources[i].revision")
    known = {s.name for s in cfg.data.sources if s.hub} | set(needed_benchmarks(cfg))
    unknown = sorted(set(sources) - known)
    if unknown:
        raise ValueError(f"--source: {unknown} is not a downloadable source or benchmark of "
                         f"this config; those are {sorted(known)}")
    root = cfg.data_root()
    done: dict[str, list[Path]] = {"sources": [], "benchmarks": []}
    hub_sources = [(i, s) for i, s in enumerate(cfg.data.sources) if s.hub is not None]
    if not hub_sources:
        log("[vldft] no source of this config has a `hub` key: nothing to fetch for training")
    for i, src in hub_sources:
        local = Path(sources[src.name]) if src.name in sources else None
        done["sources"].append(download_source(src, root, local, force, log,
                                               f"data.sources[{i}]"))
    names = needed_benchmarks(cfg)
    if names:
        bench_root = cfg.benchmark_root()
        log(f"[vldft] benchmark copies for decontamination / evaluation: {', '.join(names)} "
            f"-> {bench_root}")
        done["benchmarks"] = download_benchmarks(
            names, bench_root, {k: v for k, v in sources.items() if k in names}, force, log,
            revisions=revisions)
    missing = cfg.absent_sources()
    if missing:  # e.g. `path` names a file the repository does not have
        raise DataError(f"after the download, not there: {'; '.join(missing)} (the source's "
                        "path / hub_files name files the repository does not have?)",
                        "missing_file")
    return done




def origin_conflict(cfg: Config, overrides: list[str] | None = None) -> str | None:
    """None when no ``hub`` source's local copy is recorded (``ORIGIN``) as coming from other
    than the source asks (hub, subset, split, hub_files, revision:
    ``origin_differences``), else one line
    naming the first such key, the folder, what it holds and the ways out (the download
    command with ``overrides``, the command line's). A copy without a record (an older
    vldft's, or made by hand) is not checked."""
    root = cfg.data_root()
    for i, src in enumerate(cfg.data.sources):
        if src.hub is None:
            continue
        folder = root / str(src.name)
        have = read_origin(folder)
        want = source_origin(src)
        diff = origin_differences(have, want) if have is not None else []
        if not diff:
            continue
        field = diff[0] if diff[0] in ("hub", "subset", "split", "hub_files",
                                       "revision") else None
        key = f"data.sources[{i}]" + (f".{field}={getattr(src, field)!r}" if field else "")
        return (f"{key}: {folder} holds {describe_origin(have)} (recorded in {ORIGIN}), "
                f"not {describe_origin(want)}; training would read the wrong rows. Replace it "
                f"with {cfg.download_command(overrides, str(root), force=True)}, or give this "
                f"source another name (data.sources[{i}].name) and download it")
    return None


def require_data(cfg: Config, overrides: list[str] | None = None,
                 benchmarks: bool = True) -> None:
    """Before any model loads: every ``hub`` source has its local copy, of what the source asks
    for (``origin_conflict``), and (``benchmarks``) the benchmark copies ``data.decontaminate``
    reads are present; else one ``ConfigError`` line naming what is missing or different, where
    it was looked for and the command that fetches it (with ``overrides``, the command
    line's). ``benchmarks=False``: sources only (a preview that does not decontaminate)."""
    from vldft.data.benchmarks import BENCHMARKS, LocalDataError, find_local

    conflict = origin_conflict(cfg, overrides)
    if conflict:
        raise ConfigError(conflict)
    try:
        names = benchmarks_for(cfg.data.decontaminate) if benchmarks else []
    except ValueError as e:
        raise ConfigError(str(e)) from None
    root = cfg.benchmark_root()
    absent = []
    for name in names:
        try:
            find_local(BENCHMARKS[name], root)
        except LocalDataError:
            absent.append(name)
    also = [f"benchmark copies for data.decontaminate={cfg.data.decontaminate}: "
            f"{', '.join(absent)} under {root}"] if absent else []
    missing = cfg.missing_sources(also, overrides)  # every piece the download fetches
    if missing:
        raise ConfigError(missing)
    if absent:
        raise ConfigError(
            f"data.decontaminate={cfg.data.decontaminate}: no local copy of {', '.join(absent)} "
            f"under {root} (train.eval_data_dir, else the data dir); fetch them with "
            f"{cfg.download_command(overrides)} or "
            f"`python -m vldft.eval download --benchmarks {','.join(absent)} --data-dir {root}`,"
            " or train without decontamination: data.decontaminate=off")
