"""The training set, computed once and kept on disk: what makes a restart at real scale fast.

    data = training_set(cfg, adapter, log)   # vldft.train; every rank calls it

Reading a source validates every row, opens every image (PIL ``verify``), and the length
estimate renders and tokenizes every sample: ~0.9 ms a row on one CPU core, minutes for a
million rows, formerly repeated by every rank on every start. Here rank 0 does it once and
stores the result under ``$VLDFT_CACHE_DIR/<key>/`` (default ``~/.cache/vldft/sets/<key>/``),
not in the run's output directory, so a restart into any output directory reuses it:

- ``rows.arrow``: every row read, after ``data.decontaminate``, in source order, each with the
  digest of its content that checkpoints record (``vldft.data.rowstore``); every rank
  memory-maps it and builds a ``Sample`` on access;
- ``meta.json``: the rows of each source, the rows read, the ``SkipReport`` of the rows skipped
  while reading and the decontamination report (data_summary.json is unchanged);
- ``files.arrow``: size and mtime of every image file the rows name (missing ones too);
- ``lengths-<key>.npy``: the estimated length of each row, -1 where not yet estimated, one file
  per tokenizer / pixel setting.

The mixture is not stored: ``mix`` runs on row numbers at every start (same rule, same seed,
same order), so ``weight``, ``max_samples`` and ``train.seed`` change nothing on disk, and
only the rows it uses get lengths estimated.

The keys (``vldft.data.cache_key``): the rows' key covers the reading code and libraries,
``data.on_error``, every source field but ``weight`` / ``max_samples`` / pixel bounds, the path,
size and mtime of every file of every source and, with ``data.decontaminate``, of the benchmark
copies; the lengths' key adds the model family, tokenizer, chat template, image processor and
pixel bounds. On a hit, the image files are stat-ed again; one that changed, appeared or
vanished means a rebuild. A cache that is incomplete or unreadable is rebuilt, never trusted;
writes go to a temporary folder renamed into place.

Ranks: rank 0 builds (or checks) while the others wait (a gloo barrier with a long timeout, so
a long first build cannot trip NCCL's), then every rank maps the result; a failure on rank 0
is raised on every rank. On a machine that does not share rank 0's files, its first rank does
the same for its local ranks. ``VLDFT_NO_CACHE=1`` (or a ``data.cache: false``) turns it all
off: every rank builds, as before. A source given as a hub dataset id is not cached (download
it: ``vldft-data download``). The cache is never pruned: delete ``~/.cache/vldft/sets`` to
reclaim the space (the rows hold a copy of parquet / HF image bytes; image files are only
referenced).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from vldft.config import source_pixels
from vldft.data.cache_key import VERSION, lengths_key, rows_key, stat
from vldft.data.formats import image_roots
from vldft.data.mix import (
    TrainingSet,
    build_training_set,
    estimate_length,
    mix,
    read_sources,
    remove_benchmark_rows,
    source_table,
)
from vldft.data.rowstore import RowStore, SampleTable, Unstorable, write_rows
from vldft.data.skips import SkipReport

DEFAULT_DIR = "~/.cache/vldft/sets"
BARRIER_TIMEOUT = timedelta(hours=6)  # the other ranks wait this long for rank 0's build
FILES_SCHEMA = pa.schema([("path", pa.binary()), ("size", pa.int64()),
                          ("mtime_ns", pa.int64())])


def cache_root() -> Path:
    """``$VLDFT_CACHE_DIR``, else ``~/.cache/vldft/sets``."""
    return Path(os.environ.get("VLDFT_CACHE_DIR") or DEFAULT_DIR).expanduser()


def cache_off() -> bool:
    return os.environ.get("VLDFT_NO_CACHE", "").strip() not in ("", "0")


# -- the stored rows --------------------------------------------------------------------------
@dataclass
class Plan:
    """What a rank loads (what rank 0 tells the others): a cache folder and its keys, or
    ``dir`` None and why the set is built in memory instead."""

    dir: str | None
    key: str = ""
    lengths_key: str = ""
    built: bool = False
    estimated: int = 0  # lengths estimated this start
    why: str = ""  # why not cached, or why rebuilt


def read_meta(where: Path) -> dict:
    return json.loads((where / "meta.json").read_text())


def check(where: Path, key: str) -> str | None:
    """None if the cache in ``where`` is complete and its image files unchanged; else why not."""
    try:
        meta = read_meta(where)
        if meta.get("version") != VERSION or meta.get("key") != key:
            return "written by another version"
        for name, size in meta["sizes"].items():
            if (where / name).stat().st_size != size:
                return f"incomplete ({name} has another size than written)"
        if RowStore(where / "rows.arrow").n_rows != meta["n_rows"]:
            return "incomplete (rows.arrow)"
        changed = changed_files(where / "files.arrow")
    except (OSError, ValueError, KeyError, TypeError) as e:  # pyarrow errors subclass these
        return f"unreadable ({type(e).__name__}: {e})"
    if changed:
        return (f"stale: {len(changed)} image files changed, appeared or vanished since it was "
                f"built (first: {os.fsdecode(changed[0])})")
    return None


def changed_files(path: Path) -> list[bytes]:
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    if not reader.schema.equals(FILES_SCHEMA):
        raise ValueError(f"{path}: unexpected columns {reader.schema.names}")
    changed = []
    for i in range(reader.num_record_batches):
        b = reader.get_batch(i)
        for p, size, mtime in zip(b.column(0).to_pylist(), b.column(1).to_pylist(),
                                  b.column(2).to_pylist(), strict=True):
            if stat(p) != (size, mtime):
                changed.append(p)
    return changed


def image_files(per_source: dict, skips: SkipReport) -> list[bytes]:
    """Every image file the rows read name (and the missing / corrupt ones skipped rows
    named): what a restart stats again."""
    paths = {os.fsencode(img) for samples in per_source.values() for s in samples
             for img in s.images if isinstance(img, Path)}
    paths |= {os.fsencode(f) for samples in per_source.values() for s in samples
              for v in s.videos for f in ([v.file] if v.file is not None else v.frames)
              if isinstance(f, Path)}
    paths |= {os.fsencode(e["image"]) for e in skips.entries
              if e["reason"] in ("image_missing", "image_corrupt", "video_missing",
                                 "video_corrupt") and e.get("image")}
    return sorted(paths)


def write_files(path: Path, paths: list[bytes]) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, FILES_SCHEMA) as writer:
        for k in range(0, len(paths), 65536):
            chunk = paths[k:k + 65536]
            stats = [stat(p) for p in chunk]
            writer.write_batch(pa.record_batch(
                [pa.array(chunk, pa.binary()), pa.array([s for s, _ in stats], pa.int64()),
                 pa.array([m for _, m in stats], pa.int64())], schema=FILES_SCHEMA))


def skips_to_json(skips: SkipReport) -> dict:
    return {"counts": [[s, r, n] for (s, r), n in skips.counts.items()],
            "examples": [[s, r, ex] for (s, r), ex in skips.examples.items()],
            "entries": skips.entries}


def skips_from_json(d: dict) -> SkipReport:
    report = SkipReport()
    report.counts = {(s, r): n for s, r, n in d["counts"]}
    report.examples = {(s, r): ex for s, r, ex in d["examples"]}
    report.entries = d["entries"]
    return report


class WriteFailed(Exception):
    """The cache folder cannot be written (read-only, full): the set is built in memory."""


def build_rows(cfg, where: Path, key: str) -> None:
    """Read every source (and decontaminate) into a new cache folder ``where``."""
    choices: dict = {}
    per_source, skips = read_sources(cfg, choices)
    n_read = {label: len(v) for label, v in per_source.items()}
    images = image_files(per_source, skips)  # before decontamination drops rows
    decontamination = remove_benchmark_rows(cfg, per_source)
    labels = list(per_source)
    tmp = where.with_name(f".tmp-{where.name}-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        n_rows = write_rows(tmp / "rows.arrow", ((code, s) for code, label in enumerate(labels)
                                                 for s in per_source[label]), image_roots(cfg))
        write_files(tmp / "files.arrow", images)
        starts = np.cumsum([0] + [len(per_source[label]) for label in labels]).tolist()
        meta = {"version": VERSION, "key": key, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "sources": labels, "starts": starts, "n_rows": n_rows, "n_read": n_read,
                "skips": skips_to_json(skips), "decontamination": decontamination,
                "choices": choices,
                "sizes": {n: (tmp / n).stat().st_size for n in ("rows.arrow", "files.arrow")}}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if not (where.exists() and check(where, key) is None):  # else another job's is there
            publish(tmp, where)
    except OSError as e:
        raise WriteFailed(f"cannot write {where}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, where: Path) -> None:
    """Rename the finished folder ``tmp`` to ``where`` (replacing a stale / broken one)."""
    old = where.with_name(f".old-{where.name}-{os.getpid()}")
    if where.exists():
        os.rename(where, old)
    try:
        os.rename(tmp, where)
    except OSError:
        if not (where / "meta.json").exists():  # not another process's finished copy
            raise
    shutil.rmtree(old, ignore_errors=True)


def mixture(cfg, meta: dict) -> np.ndarray:
    """Row numbers of the mixture: ``mix`` (same rule, seed and order) over each source's rows."""
    sources = cfg.all_sources()
    if [s.label for s in sources] != meta["sources"]:
        raise ValueError(f"cached sources {meta['sources']} are not the configured ones")
    starts = meta["starts"]
    per = {label: list(range(starts[k], starts[k + 1])) for k, label in enumerate(meta["sources"])}
    out = mix(per, {s.label: s.weight for s in sources},
              {s.label: s.max_samples for s in sources}, cfg.train.seed)
    return np.asarray(out, dtype=np.int64)


def read_lengths(path: Path, n_rows: int) -> np.ndarray:
    """The stored estimates (-1: not estimated); all -1 if the file is absent or broken."""
    try:
        arr = np.load(path)
        if arr.shape == (n_rows,) and arr.dtype == np.int32:
            return arr
    except (OSError, ValueError):
        pass
    return np.full(n_rows, -1, np.int32)


def fill_lengths(cfg, adapter, where: Path, lkey: str) -> int:
    """Estimate the lengths the mixture needs and the lengths file lacks; how many."""
    meta = read_meta(where)
    path = where / f"lengths-{lkey}.npy"
    lengths = read_lengths(path, meta["n_rows"])
    need = np.unique(mixture(cfg, meta))
    missing = need[lengths[need] < 0]
    if not len(missing):
        return 0
    store, pixels = RowStore(where / "rows.arrow"), source_pixels(cfg)
    for j in tqdm(missing.tolist(), desc="lengths", disable=len(missing) < 2000):
        s = store.sample(j, meta["sources"])
        lengths[j] = estimate_length(s, adapter, pixels.get(s.source), cfg.data.video)
    now = read_lengths(path, meta["n_rows"])  # another job may have added some meanwhile
    lengths = np.where(lengths < 0, now, lengths).astype(np.int32)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        np.save(f, lengths)
    os.replace(tmp, path)
    return len(missing)


def prepare(cfg, adapter, log: Callable = print) -> Plan:
    """On rank 0 (and the first rank of a machine that does not share its files): make sure
    the cache holds this config's rows and the lengths its mixture needs."""
    key, why = rows_key(cfg)
    if key is None:
        return Plan(None, why=why)
    where = cache_root() / key
    problem = check(where, key) if where.exists() else "absent"
    if problem is not None:
        if problem != "absent":
            log(f"[vldft] training set cache {where}: {problem}; rebuilding")
        try:
            build_rows(cfg, where, key)
        except (Unstorable, WriteFailed) as e:
            return Plan(None, why=str(e))
    lkey = lengths_key(cfg, adapter, key)
    try:
        estimated = fill_lengths(cfg, adapter, where, lkey)
    except OSError as e:
        return Plan(None, why=f"cannot write {where}: {e}")
    return Plan(str(where), key, lkey, built=problem is not None, estimated=estimated,
                why="" if problem == "absent" else problem or "")


def load(plan: Plan, cfg) -> TrainingSet:
    """The training set of a prepared cache: rows mapped, mixture and table computed here."""
    where = Path(plan.dir)
    meta = read_meta(where)
    store = RowStore(where / "rows.arrow")
    index = mixture(cfg, meta)
    if len(index):
        lengths = np.load(where / f"lengths-{plan.lengths_key}.npy", mmap_mode="r")[index]
    else:  # every row skipped: no length was needed, none written (the caller says so)
        lengths = np.zeros(0, np.int32)
    if (lengths < 0).any():
        raise RuntimeError(f"{where}: length estimates missing; delete the folder and rerun")
    images, videos = (store.column(c)[index].tolist() for c in ("images", "videos"))
    has_image = [bool(i or v) for i, v in zip(images, videos, strict=True)]
    labels = meta["sources"]
    source_of = [labels[c] for c in store.column("source")[index].tolist()]
    lengths = lengths.tolist()
    dec = meta["decontamination"]
    table = source_table(cfg.all_sources(), meta["n_read"], source_of,
                         list(zip(images, videos, strict=True)), lengths, dec, cfg.base_dir)
    return TrainingSet(SampleTable(store, index, labels), lengths,
                       skips_from_json(meta["skips"]), table, dec, has_image,
                       meta.get("choices"))


# -- ranks ------------------------------------------------------------------------------------
def _attempt(fn: Callable[[], Plan]) -> Plan | Exception:
    """``fn()``, or the exception it raised (picklable, for the other ranks)."""
    try:
        return fn()
    except Exception as e:
        try:
            pickle.dumps(e)
        except Exception:
            return RuntimeError(f"{type(e).__name__}: {e}")
        return e


def _plan_for_ranks(work: Callable[[], Plan]) -> Plan | Exception:
    """``work()`` on rank 0 while the other ranks wait; then on the first rank of each other
    machine (which may not see rank 0's files); each rank gets its machine's plan."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _attempt(work)
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    try:
        hosts: list = [None] * world
        dist.all_gather_object(hosts, socket.gethostname(), group=group)
        first = _attempt(work) if rank == 0 else None
        plans: list = [None] * world
        dist.all_gather_object(plans, first, group=group)
        leader = hosts.index(hosts[rank])
        mine = _attempt(work) if rank == leader and hosts[rank] != hosts[0] else None
        others: list = [None] * world
        dist.all_gather_object(others, mine, group=group)
    finally:
        dist.destroy_process_group(group)
    if rank == 0:
        return first  # the original exception, with its traceback
    return plans[0] if hosts[rank] == hosts[0] else others[leader]


def training_set(cfg, adapter, log: Callable = print) -> TrainingSet:
    """``build_training_set(cfg, adapter)``, from the cache when it holds it (see the module
    docstring); every rank calls it. Logs one line: cached / built, key, time."""
    t0 = time.perf_counter()
    off = "VLDFT_NO_CACHE=1" if cache_off() else \
        "data.cache=false" if getattr(cfg.data, "cache", True) is False else None
    if off:
        data = build_training_set(cfg, adapter)
        log(f"[vldft] training set: built in {time.perf_counter() - t0:.1f} s (cache off: {off})")
        return data
    plan = _plan_for_ranks(lambda: prepare(cfg, adapter, log))
    if isinstance(plan, Exception):
        raise plan
    if plan.dir is None:
        data = build_training_set(cfg, adapter)
        log(f"[vldft] training set: built in {time.perf_counter() - t0:.1f} s "
            f"(not cached: {plan.why})")
        return data
    data = load(plan, cfg)
    took = time.perf_counter() - t0
    n = f"{len(data.samples)} samples"
    if plan.built:
        log(f"[vldft] training set: built in {took:.1f} s, {n} (key {plan.key[:12]}; cached "
            f"in {plan.dir} for later starts and the other ranks)")
    else:
        est = f", {plan.estimated} lengths estimated" if plan.estimated else ""
        log(f"[vldft] training set: cached (key {plan.key[:12]}, {plan.dir}), {n}{est}, "
            f"ready in {took:.1f} s")
    return data
