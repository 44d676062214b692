"""Samples in one Arrow file, memory-mapped: the rows the start-up cache keeps
(``vldft.data.cache``).

    write_rows(path, ((source_code, sample), ...), roots)  # once, on a cache miss
    store = RowStore(path)                      # every start: maps the file, reads nothing
    store.sample(j, labels)                     # row j as the Sample it was written from
    SampleTable(store, index, labels)[i]        # a lazy Sequence[Sample] in mixture order
    content_digest(samples, roots)              # what a checkpoint records of their content

A row holds its source (an index into the cache's source labels), its numbers of images and
of videos (the mixture table's counts), the rest of the Sample as JSON (id, messages, answer,
kind, origin, each image as a path or as the name of encoded bytes, each video as its file or
frames with its name and per-clip options), the encoded bytes of its ``ImageBytes`` (parquet /
HF sources: a copy of the source's image column) and its ``content_key`` (what a checkpoint's
record of the training set digests: ``content_digest``, without decoding a row). JSON is
written ASCII-only, so any Python string (lone surrogates from odd file names included) comes
back exactly. A PIL image in memory cannot be stored (``Unstorable``); no source reader
produces one.

A restart maps the file and builds a ``Sample`` only when one is asked for: a rank holds no
per-row Python objects, and the ranks of a machine share the file's pages.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from vldft.data import ImageBytes, Sample
from vldft.data.video import Video

SCHEMA = pa.schema([("source", pa.int32()), ("images", pa.int32()), ("videos", pa.int32()),
                    ("row", pa.string()), ("blobs", pa.list_(pa.large_binary())),
                    ("content", pa.uint64())])
BATCH_ROWS = 8192  # rows per record batch
BATCH_BYTES = 256 << 20  # ... or fewer, once their image bytes pass this


class Unstorable(ValueError):
    """A sample holds something the store cannot keep (an in-memory PIL image)."""


def _image_entry(img, blobs: list[bytes], sample: Sample) -> list:
    if isinstance(img, Path):
        return ["path", str(img)]
    if isinstance(img, ImageBytes):
        blobs.append(bytes(img.data))
        return ["bytes", img.name]
    raise Unstorable(f"sample {sample.id} ({sample.origin}) holds a {type(img).__name__} "
                     "image, which the cache cannot store")


def encode(sample: Sample) -> tuple[str, list[bytes]]:
    """A sample as its JSON row and the bytes of its encoded images (in order: the images,
    then the frames of its videos)."""
    blobs: list[bytes] = []
    images = [_image_entry(img, blobs, sample) for img in sample.images]
    row = {"id": sample.id, "messages": sample.messages, "images": images,
           "answer": sample.answer, "kind": sample.kind, "origin": sample.origin}
    if sample.videos:  # a file, or frames (each as an image is), and the clip's options
        row["videos"] = [{"name": v.name, "options": v.options,
                          **({"file": str(v.file)} if v.file is not None else
                             {"frames": [_image_entry(f, blobs, sample) for f in v.frames]})}
                         for v in sample.videos]
    return json.dumps(row), blobs


def content_key(sample: Sample, root: Path | None = None) -> int:
    """A 64-bit digest of what a sample trains on and is scored against: its messages, answer,
    and its images and videos as the row names them (a path relative to ``root``, the source's
    image root, when below it: an image file is not read; encoded bytes held in the row, from a
    parquet / HF source, by their name and a hash of the bytes). A letter edited in an answer,
    or an embedded image replaced under its own name, changes it; moving the data with its image
    root does not."""

    def ref(img) -> list:
        if isinstance(img, ImageBytes):
            return ["bytes", img.name, hashlib.sha256(img.data).hexdigest()[:16]]
        if not isinstance(img, Path):
            return ["bytes", getattr(img, "name", "")]
        rel = root is not None and img.is_relative_to(root)
        return ["path", img.relative_to(root).as_posix() if rel else str(img)]

    videos = [[ref(v.file) if v.file is not None else [ref(f) for f in v.frames], v.options]
              for v in sample.videos]
    text = json.dumps([sample.messages, sample.answer, [ref(i) for i in sample.images], videos],
                      sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def content_digest(samples: Sequence[Sample], roots: dict[str, Path]) -> str:
    """The digest of every sample's ``content_key`` in order (``roots``: image root by source
    label, ``vldft.data.formats.image_roots``). A ``SampleTable`` reads the keys stored with its
    rows (no row is decoded); other samples are keyed here, to the same value."""
    if isinstance(samples, SampleTable):
        keys = samples.store.column("content")[samples.index]
    else:
        keys = np.fromiter((content_key(s, roots.get(s.source)) for s in samples), np.uint64,
                           count=len(samples))
    return hashlib.sha256(keys.astype("<u8").tobytes()).hexdigest()[:16]


def decode(row: str, blobs: list[bytes], source: str) -> Sample:
    d = json.loads(row)
    data = iter(blobs)

    def image(how: str, v: str):
        return Path(v) if how == "path" else ImageBytes(next(data), v)

    images = [image(how, v) for how, v in d["images"]]
    videos = [Video(file=Path(v["file"]) if "file" in v else None,
                    frames=[image(how, f) for how, f in v.get("frames", [])], name=v["name"],
                    options=v["options"]) for v in d.get("videos", [])]
    return Sample(d["id"], d["messages"], images, d["answer"], d["kind"], source, d["origin"],
                  videos)


def write_rows(path: Path, rows: Iterable[tuple[int, Sample]],
               roots: dict[str, Path] | None = None) -> int:
    """Write (source code, sample) rows to the Arrow IPC file ``path``, each with its
    ``content_key`` (``roots``: image root by source label); the number written."""
    n = 0
    cols: tuple[list, ...] = ([], [], [], [], [], [])
    size = 0

    def flush(writer) -> None:
        nonlocal size
        if cols[0]:
            writer.write_batch(pa.record_batch([pa.array(c, t) for c, t in
                                                zip(cols, SCHEMA.types, strict=True)],
                                               schema=SCHEMA))
        for c in cols:
            c.clear()
        size = 0

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        for code, sample in rows:
            row, blobs = encode(sample)
            key = content_key(sample, (roots or {}).get(sample.source))
            for col, value in zip(cols, (code, len(sample.images), len(sample.videos), row,
                                         blobs, key), strict=True):
                col.append(value)
            size += len(row) + sum(len(b) for b in blobs)
            n += 1
            if len(cols[0]) >= BATCH_ROWS or size >= BATCH_BYTES:
                flush(writer)
        flush(writer)
    return n


class RowStore:
    """The rows of an Arrow file written by ``write_rows``, memory-mapped (nothing is read
    until a row or a column is asked for). Raises ``ValueError`` / ``OSError`` if the file is
    not such a file (truncated, another schema)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        if not reader.schema.equals(SCHEMA):
            raise ValueError(f"{path}: unexpected columns {reader.schema.names}")
        self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self._starts = [0]
        for b in self._batches:
            self._starts.append(self._starts[-1] + b.num_rows)
        self.n_rows = self._starts[-1]

    def column(self, name: str) -> np.ndarray:
        """One small column (``source``, ``images``, ``videos`` or ``content``) of every row, as
        a numpy array."""
        parts = [b.column(name).to_numpy(zero_copy_only=False) for b in self._batches]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def sample(self, j: int, labels: Sequence[str]) -> Sample:
        """Row ``j`` as a Sample (``labels``: source code -> label)."""
        if not 0 <= j < self.n_rows:
            raise IndexError(j)
        b = bisect.bisect_right(self._starts, j) - 1
        batch, k = self._batches[b], j - self._starts[b]
        return decode(batch.column(3)[k].as_py(), batch.column(4)[k].as_py(),
                      labels[batch.column(0)[k].as_py()])


class SampleTable(Sequence):
    """``Sequence[Sample]``: row ``index[i]`` of a ``RowStore`` for item ``i``, built on access.
    Pickles as its file's path and the index (DataLoader workers map the file again)."""

    def __init__(self, store: RowStore, index: np.ndarray, labels: Sequence[str]) -> None:
        self.store, self.index, self.labels = store, index, list(labels)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return SampleTable(self.store, self.index[i], self.labels)
        return self.store.sample(int(self.index[i]), self.labels)

    def __getstate__(self) -> dict:
        return {"path": str(self.store.path), "index": self.index, "labels": self.labels}

    def __setstate__(self, state: dict) -> None:
        self.__init__(RowStore(Path(state["path"])), state["index"], state["labels"])
