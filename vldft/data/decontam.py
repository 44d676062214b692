"""Benchmark decontamination: drop training rows whose image or question is a benchmark's test row.

Public geometry SFT sets (Geo170K, MathV360K, LLaVA-OneVision's geometry configs) are built from
GeoQA, Geometry3K and the like, whose test splits the benchmark suites score. With
``data.decontaminate: paper`` (a suite, or a list of benchmarks / lmms-eval tasks) training reads
the benchmarks' local copies (``vldft.data.benchmarks`` layouts), indexes their test rows and
drops every training sample that matches one (``vldft.data.mix.remove_benchmark_rows``)::

    index = BenchmarkIndex.from_local(benchmarks_for("paper"), Path("/data/vl_bench"))
    kept, dropped = decontaminate(samples, index)   # dropped: one dict per row, with its reason

A training sample matches a test row when (first rule that holds, in this priority):

1. ``image_exact``: one of its images has the same encoded bytes (SHA-256) as a test image.
2. ``image_similar``: one of its images is the same picture re-encoded (PNG -> JPEG q75),
   resized (0.4x .. 2x, also stretched) or turned grey. Each image is reduced to a 64x64
   greyscale thumbnail (box filter; JPEGs are DCT-downscaled to >= 256 px first); its 64-bit
   DCT perceptual hash (32x32 -> 8x8 lowest frequencies incl. DC -> bit = above the median)
   finds candidates within Hamming distance ``HASH_DISTANCE`` (10), and each candidate is
   verified by the Pearson correlation of the two thumbnails (>= ``MIN_CORRELATION``, 0.85).
   Line diagrams are sparse and many look alike, so the hash alone is not trusted.
   Near-uniform images (thumbnail std < ``MIN_CONTRAST``: blank placeholders) match only
   exactly. Crops, padding, rotations and redrawn diagrams are not detected.
3. ``question``: the normalised question (``normalise_question`` of the text parts of the user
   turns, joined with a space) equals or contains, as whole words, a *specific* normalised test
   question: at least ``MIN_QUESTION_WORDS`` (8) words, and not a stock phrase, i.e. not a text
   that occurs in ``STOCK_ROWS`` (3) or more test rows with different images (Geometry3K's
   "Find x." and "Find the area of the figure. Round to the nearest tenth."). A question that
   differs in any word or number does not match; paraphrases are not detected. A test question
   with a "Choices:" / "Options:" trailer (MathVerse) is also indexed without it.

Calibration (generated line diagrams, 200-600 px, 1-3 px lines, labels; see
``tests/test_decontam.py`` and ``bench/decontam.py``): the re-encoded / resized copies above are
within Hamming distance 8 and correlate >= 0.90; of 1.1M pairs of distinct diagrams, 65 were
within 10 bits (one at 6) and all correlated <= 0.36; the same diagram with its points moved by
up to 3 px correlates around 0.88 (usually matched), by 10 px around 0.56 (kept). Diagrams that
differ only in small label letters (a few pixels at 64x64) are the same picture to this check.

Speed: candidates come from a multi-index over the hash (6 bands of 11/10 bits; a distance
<= 11 leaves at least one band within one bit, so 6 x 12 dict look-ups per image, no all-pairs);
questions are looked up by their first ``MIN_QUESTION_WORDS`` words at every position of the
training question. Memory: per distinct test image its SHA-256, hash and 4 KiB thumbnail
(40 MB for 10k images), per test question its normalised words; no test image is kept.
``bench/decontam.py`` (bench/results/2026-12-07_cpu/results_decontam.json, 2-core CPU shared
with other jobs): 100k training rows with 400 px diagrams vs 5k test rows took 278 CPU s
(~360 rows per CPU second, one process; decoding the images is most of it, questions alone run
at 20k rows/s), recall 1400/1400 on planted duplicates and no false drop, although 24.5k hash
candidates had to be rejected by the correlation check.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vldft.data import ImageBytes, Sample, split_placeholders
from vldft.data.benchmarks import (
    BENCHMARKS,
    BY_TASK,
    SUITES,
    LocalDataError,
    find_local,
    load_local,
)

SUITE_WORDS = ("off", *SUITES)  # data.decontaminate's words besides benchmark / task names
REASONS = ("image_exact", "image_similar", "question")  # in priority order

THUMB = 64  # side of the greyscale thumbnail every image is reduced to
HASH_DISTANCE = 10  # most differing hash bits for an image_similar candidate (even: 32 bits set)
MIN_CORRELATION = 0.85  # thumbnails' Pearson correlation that confirms a candidate
MIN_CONTRAST = 2.0  # thumbnail std (grey levels) below which an image matches only exactly
MIN_QUESTION_WORDS = 8  # a test question shorter than this is never matched by text
STOCK_ROWS = 3  # a test question in this many test rows (different images) is a stock phrase
# (shift, width) of the hash's bands; HASH_DISTANCE <= 2 * len(BANDS) - 1 (pigeonhole)
BANDS = ((53, 11), (42, 11), (31, 11), (20, 11), (10, 10), (0, 10))
_DRAFT = 4 * THUMB  # JPEGs are decoded at >= this size (DCT scaling), then box-filtered


# -- benchmark names --------------------------------------------------------------------------
def benchmarks_for(setting: str | list[str]) -> list[str]:
    """Benchmark names of a ``data.decontaminate`` value: ``"off"`` -> []; a suite ("paper",
    "geo") -> its benchmarks; a list (or comma-separated string) of benchmark names, lmms-eval
    task names (``BENCHMARKS[...].task``) or suites -> their benchmarks, in order, once each."""
    if isinstance(setting, str):
        if setting.strip() == "off":
            return []
        setting = [s for s in setting.split(",") if s.strip()]
    names: list[str] = []
    for entry in setting:
        key = str(entry).strip()
        if key in BENCHMARKS:
            found = [key]
        elif key in BY_TASK:
            found = [BY_TASK[key].name]
        elif key in SUITES:
            found = list(SUITES[key])
        else:
            raise ValueError(
                f"data.decontaminate: unknown benchmark or task {key!r}; valid: 'off', a suite "
                f"({', '.join(SUITES)}), or a list of benchmarks ({', '.join(BENCHMARKS)}) or "
                f"lmms-eval tasks ({', '.join(BY_TASK)})")
        names += [n for n in found if n not in names]
    return names


# -- image keys -------------------------------------------------------------------------------
_DCT = np.sqrt(2 / 32) * np.cos(np.pi * (2 * np.arange(32)[None, :] + 1)
                                * np.arange(32)[:, None] / 64)
_DCT[0] /= np.sqrt(2)


def _encoded(img: Any) -> bytes:
    """The encoded bytes of an image entry (a PIL image: its PNG encoding)."""
    if isinstance(img, ImageBytes):
        return img.data
    if isinstance(img, Image.Image):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    if isinstance(img, dict):  # a datasets Image feature read undecoded: {"bytes", "path"}
        if img.get("bytes") is not None:
            return img["bytes"]
        return Path(img["path"]).read_bytes()
    return Path(img).read_bytes()


def _thumbnail(img: Image.Image | bytes) -> np.ndarray:
    """[64, 64] uint8 greyscale thumbnail (transparent parts on white)."""
    if isinstance(img, bytes):  # (never draft() a caller's image: it would change it)
        im = Image.open(io.BytesIO(img))
        im.draft("L", (_DRAFT, _DRAFT))  # JPEG only: decode at 1/2..1/8 scale, >= 256 px
    else:
        im = img
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return np.asarray(im.convert("L").resize((THUMB, THUMB), Image.BOX), dtype=np.uint8)


def _phash(thumb: np.ndarray) -> int:
    """64-bit DCT hash: 32x32 mean-pooled thumbnail -> 8x8 lowest frequencies > their median."""
    small = thumb.reshape(32, THUMB // 32, 32, THUMB // 32).mean(axis=(1, 3))
    low = (_DCT @ small @ _DCT.T)[:8, :8].ravel()
    return int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big")


def _keys(img: Any) -> tuple[str, np.ndarray | None]:
    """(SHA-256 of the encoded bytes, thumbnail or None when the bytes do not decode)."""
    data = _encoded(img)
    try:
        thumb = _thumbnail(img if isinstance(img, Image.Image) else data)
    except Exception:  # PIL raises OSError, SyntaxError, ValueError ...: exact matching only
        thumb = None
    return hashlib.sha256(data).hexdigest(), thumb


def image_key(img: Any) -> tuple[str, int]:
    """(SHA-256 hex of the encoded bytes, 64-bit perceptual hash) of a path, ``ImageBytes`` or
    PIL image (for a PIL image, the SHA-256 of its PNG encoding)."""
    sha, thumb = _keys(img)
    if thumb is None:
        raise ValueError(f"cannot decode image {img!r}")
    return sha, _phash(thumb)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    x = a.astype(np.float32).ravel()
    y = b.astype(np.float32).ravel()
    x -= x.mean()
    y -= y.mean()
    den = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    return float(np.dot(x, y)) / den if den else 0.0


# -- question text ----------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"<\s*image\s*\d*\s*>", re.IGNORECASE)  # <image>, <image1> (MathVision)
_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")
_HYPHEN = re.compile(r"-(?!\s*\d)")  # a hyphen that is no minus sign (right-angled, x-axis)
# numbers keep their inner . , : / (3.5, 1,000, 2:3, 1/2); words; any other single character
_TOKEN = re.compile(r"\d+(?:[.,:/]\d+)+|\w+|\S")
_TRAILER = re.compile(r"(?:^|\s)(?:choices|options)\s*:", re.IGNORECASE)


def _keep(token: str) -> bool:
    if token[0].isalnum() or token[0] == "_" or token == "-":  # "-": a minus (see _HYPHEN)
        return True
    # math symbols (+ = < > ± × ÷ ∠ ⊥ ∥ √ ° △ ^) stay; punctuation and $ (LaTeX) go
    return unicodedata.category(token)[0] == "S" and token not in "$`"


def normalise_question(text: str) -> str:
    """Lower-case (NFKC, casefold), ``<image>`` placeholders dropped, punctuation dropped except
    inside numbers and "-" before a number, math symbols kept as words, CJK characters one word
    each, whitespace collapsed: ``"In △ABC, AB = 3.5;  find x."`` -> ``"in △ abc ab = 3.5
    find x"``. Trailers such as "Choices:" are kept (matching works by containment)."""
    text = _PLACEHOLDER.sub(" ", unicodedata.normalize("NFKC", text)).casefold()
    text = _HYPHEN.sub(" ", text.replace("\u2212", "-"))
    return " ".join(t for t in _TOKEN.findall(_CJK.sub(r" \1 ", text)) if _keep(t))


def _question_keys(text: str) -> set[tuple[str, ...]]:
    """The word tuples a test question is indexed by: all of it, and the part before a
    "Choices:" / "Options:" trailer when it has one."""
    keys = {tuple(normalise_question(text).split())}
    trailer = _TRAILER.search(text)
    if trailer and trailer.start() > 0:
        keys.add(tuple(normalise_question(text[:trailer.start()]).split()))
    return {k for k in keys if k}


def question_text(sample: Sample) -> str:
    """The question of a sample: the text parts of its user turns, joined with a space."""
    parts = []
    for msg in sample.messages:
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        content = split_placeholders(content) if isinstance(content, str) else content or []
        parts += [p["text"] for p in content if p.get("type") == "text"]
    return " ".join(parts)


# -- the index --------------------------------------------------------------------------------
@dataclass
class Match:
    """The test row a training sample matched, and why (one of ``REASONS``)."""

    benchmark: str
    test_id: str
    reason: str


class BenchmarkIndex:
    """Keys of benchmark test rows (image hashes, thumbnails, normalised questions) for
    :meth:`match`; build it with :meth:`build` or :meth:`from_local`."""

    def __init__(self) -> None:
        self.rows = 0  # test rows indexed
        self._exact: dict[str, tuple[str, str]] = {}  # sha256 -> (benchmark, test id)
        self._owners: list[tuple[str, str]] = []  # per similarity-indexed image
        self._hashes: list[int] = []
        self._thumbs: list[np.ndarray] = []
        self._bands: list[dict[int, list[int]]] = [{} for _ in BANDS]
        # first MIN_QUESTION_WORDS words -> [(words, benchmark, test id)] of specific questions
        self._questions: dict[tuple[str, ...], list[tuple[tuple[str, ...], str, str]]] = {}
        self.stats = {"images": 0, "undecodable_images": 0, "questions": 0,
                      "stock_questions": 0, "short_questions": 0,
                      # while matching: hash candidates verified, and rejected by correlation
                      "similar_candidates": 0, "similar_rejected": 0}

    def __len__(self) -> int:
        return self.rows

    # -- building -----------------------------------------------------------------------------
    def _add_image(self, img: Any, benchmark: str, test_id: str) -> str:
        sha, thumb = _keys(img)
        if sha in self._exact:
            return sha
        self._exact[sha] = (benchmark, test_id)
        self.stats["images"] += 1
        if thumb is None:
            self.stats["undecodable_images"] += 1
        elif float(thumb.std()) >= MIN_CONTRAST:
            k = len(self._owners)
            self._owners.append((benchmark, test_id))
            h = _phash(thumb)
            self._hashes.append(h)
            self._thumbs.append(thumb)
            for band, (shift, width) in zip(self._bands, BANDS, strict=True):
                band.setdefault((h >> shift) & ((1 << width) - 1), []).append(k)
        return sha

    def _add_questions(self, rows: list[tuple[set[tuple[str, ...]], tuple[str, ...], str, str]]
                       ) -> None:
        """Index the specific ones of (question keys, image shas, benchmark, test id)."""
        images_per_key: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        for keys, shas, _, _ in rows:
            for key in keys:
                images_per_key.setdefault(key, set()).add(shas)
        seen: set[tuple[str, ...]] = set()
        for keys, _, benchmark, test_id in rows:
            for key in keys:
                if key in seen:
                    continue
                seen.add(key)
                if len(key) < MIN_QUESTION_WORDS:
                    self.stats["short_questions"] += 1
                elif len(images_per_key[key]) >= STOCK_ROWS:
                    self.stats["stock_questions"] += 1
                else:
                    self.stats["questions"] += 1
                    self._questions.setdefault(key[:MIN_QUESTION_WORDS], []).append(
                        (key, benchmark, test_id))

    @classmethod
    def build(cls, items: Iterable[tuple[str, str, str, list]]) -> BenchmarkIndex:
        """An index of ``(benchmark, test_id, question_text, [images])`` test rows; images are
        paths, ``ImageBytes``, PIL images or datasets' undecoded ``{"bytes", "path"}``."""
        index = cls()
        rows = []
        for benchmark, test_id, question, images in items:
            try:
                shas = tuple(sorted(index._add_image(img, benchmark, str(test_id))
                                    for img in images))
            except OSError as e:
                raise LocalDataError(f"{benchmark} test row {test_id}: cannot read an image "
                                     f"({e})") from None
            rows.append((_question_keys(question or ""), shas, benchmark, str(test_id)))
            index.rows += 1
        index._add_questions(rows)
        return index

    @classmethod
    def from_local(cls, names: list[str], root: Path, progress: bool = True) -> BenchmarkIndex:
        """An index of the test rows of benchmarks ``names`` from their local copies under
        ``root`` (``benchmarks.load_local``; images read undecoded). Missing copies raise one
        ``LocalDataError`` naming them, the paths looked for and the download command."""
        root = Path(root)
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmarks {unknown}; known: {list(BENCHMARKS)}")
        missing: dict[str, str] = {}
        for name in names:
            try:
                find_local(BENCHMARKS[name], root)
            except LocalDataError as e:
                missing[name] = str(e)
        if missing:
            raise LocalDataError(
                f"data.decontaminate: no local copy of {', '.join(missing)}: "
                f"{'; '.join(missing.values())}. Download them with: python -m vldft.eval "
                f"download --benchmarks {','.join(missing)} --data-dir {root}")
        return cls.build(_local_rows(names, root, progress))

    # -- matching -----------------------------------------------------------------------------
    def _similar(self, thumb: np.ndarray) -> Match | None:
        if float(thumb.std()) < MIN_CONTRAST:
            return None
        h = _phash(thumb)
        candidates: set[int] = set()
        for band, (shift, width) in zip(self._bands, BANDS, strict=True):
            v = (h >> shift) & ((1 << width) - 1)
            for probe in (v, *(v ^ (1 << b) for b in range(width))):
                candidates.update(band.get(probe, ()))
        best, best_r = None, MIN_CORRELATION
        for k in candidates:
            if (h ^ self._hashes[k]).bit_count() <= HASH_DISTANCE:
                r = _correlation(thumb, self._thumbs[k])
                self.stats["similar_candidates"] += 1
                self.stats["similar_rejected"] += r < MIN_CORRELATION
                if r >= best_r:
                    best, best_r = k, r
        return None if best is None else Match(*self._owners[best], "image_similar")

    def _image(self, img: Any, cache: dict | None) -> Match | None:
        """The best image match of one image (cached by SHA-256 when ``cache`` is a dict)."""
        try:
            data = _encoded(img)
        except OSError:  # unreadable: nothing to compare (read_source reports such rows)
            return None
        sha = hashlib.sha256(data).hexdigest()
        if cache is not None and sha in cache:
            return cache[sha]
        if sha in self._exact:
            found = Match(*self._exact[sha], "image_exact")
        else:
            try:
                thumb = _thumbnail(img if isinstance(img, Image.Image) else data)
            except Exception:  # undecodable: exact matching only
                thumb = None
            found = None if thumb is None or not self._owners else self._similar(thumb)
        if cache is not None:
            cache[sha] = found
        return found

    def _question(self, question: str) -> Match | None:
        words = normalise_question(question).split()
        k = MIN_QUESTION_WORDS
        if len(words) < k or not self._questions:
            return None
        for i, head in enumerate(zip(*(words[j:] for j in range(k)), strict=False)):
            for key, benchmark, test_id in self._questions.get(head, ()):
                if tuple(words[i:i + len(key)]) == key:
                    return Match(benchmark, test_id, "question")
        return None

    def _match(self, question: str, images: list, cache: dict | None) -> Match | None:
        found = [m for m in (self._image(img, cache) for img in images) if m is not None]
        if found:
            return min(found, key=lambda m: REASONS.index(m.reason))
        return self._question(question)

    def match(self, question: str, images: list) -> Match | None:
        """The test row a training question + images matches (module docstring), or None."""
        return self._match(question, images, None)


def _undecoded_rows(ds, columns: list[str]):
    """Rows of ``columns`` as Python values with image columns left encoded ({bytes, path})."""
    table = ds.select_columns(columns).with_format("arrow")
    for batch in table.iter(batch_size=256):
        yield from batch.to_pylist()


def _local_rows(names: list[str], root: Path, progress: bool):
    """(benchmark, test id, question, images) of every test row of the local copies."""
    for name in names:
        bench = BENCHMARKS[name]
        ds = load_local(bench, root, check_images=False)  # an unreadable one: exact match only
        cols = ds.column_names
        image_cols = [c for c in bench.images if c in cols]
        qcol = bench.question if bench.question in cols else None
        idcol = bench.id_column if bench.id_column in cols else None
        wanted = [c for c in dict.fromkeys([*image_cols, qcol, idcol]) if c]
        rows = _undecoded_rows(ds, wanted)
        bar = tqdm(rows, total=len(ds), desc=f"decontam index {name}", unit="rows",
                   disable=None if progress else True)
        for i, row in enumerate(bar):
            images = []
            for col in image_cols:
                value = row[col]
                values = (value if bench.images[col] else [value]) or []
                images += [v for v in values if v and (v.get("bytes") or v.get("path"))]
            test_id = str(row[idcol]) if idcol and row[idcol] is not None else str(i)
            yield name, test_id, str(row[qcol] or "") if qcol else "", images


def decontaminate(samples: list[Sample], index: BenchmarkIndex, progress: bool = True
                  ) -> tuple[list[Sample], list[dict]]:
    """(kept samples, dropped entries): each sample that matches a test row of ``index`` is
    dropped, with an entry ``{"source", "id", "origin", "benchmark", "test_id", "reason"}``.
    An image repeated across samples is decoded once (results cached by SHA-256)."""
    kept: list[Sample] = []
    dropped: list[dict] = []
    cache: dict[str, Match | None] = {}
    bar = tqdm(samples, desc="decontaminate", unit="rows", disable=None if progress else True)
    for s in bar:
        m = index._match(question_text(s), s.images, cache)
        if m is None:
            kept.append(s)
        else:
            dropped.append({"source": s.source, "id": s.id, "origin": s.origin,
                            "benchmark": m.benchmark, "test_id": m.test_id, "reason": m.reason})
    return kept, dropped
