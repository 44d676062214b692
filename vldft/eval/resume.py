"""Resumable evaluation: every generated response is kept on disk as soon as its batch is done,
so an interrupted evaluation (Ctrl-C, SIGTERM, kill -9, a pre-empted cluster job) continues
where it stopped when the same command runs again.

How: the model's ``generate_until`` is wrapped (``make_resumable``). Each process cuts its
requests, in lmms-eval's order, into blocks of ``batch_size`` and runs the model on one block at
a time; after each block, its responses are appended to ``<out>/responses/rank<r>.jsonl`` (one
line per request, flushed and fsync'ed). A request's key hashes the fingerprint of the run (the
checkpoint's files, the model class and its arguments, the batch size) with the task, document
id, request index, prompt, generation settings and the pixels of its images (a video file by
its content, ``file_digest``): a response is reused only for the model's input. On a
rerun a block whose every key is stored is not generated again; any other block is generated
whole. A block is always the same requests in the same batch, whether the run was interrupted
or not, so a resumed run gives the responses, and therefore the scores, of an uninterrupted one
(batched generation is not bit-identical across batch compositions; equal blocks make it so).

Many processes: lmms-eval deals documents out by rank; each rank writes its own file and reads
every rank's file, so a rerun with the same process count resumes every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
WHOLE_BYTES = 64 << 20  # files up to this size are hashed whole
SAMPLE_BYTES = 1 << 20  # a larger file (not safetensors): this many bytes at 16 places
TENSOR_BYTES = 16 << 10  # a large safetensors file: this many at each tensor's start, middle, end


def file_digest(path: Path) -> str:
    """sha256 of a file's size and content: whole up to ``WHOLE_BYTES``; a larger safetensors
    file (weights: GBs) by its header and the start, middle and end of every tensor (a
    retrained tensor anywhere in the file changes it: ends-of-file samples missed a merged LoRA
    model, whose first and last tensors, the embeddings and the frozen vision tower, stay);
    any other large file (a video, a big parquet file) by 16 evenly spaced samples."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= WHOLE_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        elif path.suffix != ".safetensors" or not _tensor_samples(f, size, h):
            chunk = min(SAMPLE_BYTES, size)
            for i in range(16):
                f.seek((size - chunk) * i // 15)
                h.update(f.read(chunk))
    return h.hexdigest()


def _tensor_samples(f, size: int, h) -> bool:
    """Hash a safetensors file's header and ``TENSOR_BYTES`` at the start, middle and end of
    each tensor into ``h``; False (nothing hashed) when the header does not parse."""
    try:
        n = int.from_bytes(f.read(8), "little")
        header = f.read(n) if 0 < n < size else b""
        tensors = json.loads(header)
        spans = sorted((m["data_offsets"][0], m["data_offsets"][1])
                       for k, m in tensors.items() if k != "__metadata__")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        f.seek(0)
        return False
    h.update(header)
    for a, b in spans:
        for at in sorted({a, max(a, (a + b - TENSOR_BYTES) // 2), max(a, b - TENSOR_BYTES)}):
            f.seek(8 + n + at)
            h.update(f.read(min(TENSOR_BYTES, b - at)))
    return True


def checkpoint_fingerprint(model: str) -> str:
    """What identifies a checkpoint: for a local folder, its config, processor and weight
    files (digests); for a hub id, the id itself."""
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}"
    parts = []
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.suffix in (".json", ".jinja")):
            parts.append(f"{f.name}:{file_digest(f)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def run_fingerprint(model: str, model_class: str, model_args: str, batch_size: int,
                    checkpoint: str | None = None) -> str:
    """What identifies an evaluation's generations: the checkpoint (``checkpoint``: its
    ``checkpoint_fingerprint`` when already computed), class, model arguments, batch size."""
    checkpoint = checkpoint if checkpoint is not None else checkpoint_fingerprint(model)
    return hashlib.sha256(json.dumps([checkpoint, model_class, model_args,
                                      int(batch_size)]).encode()).hexdigest()[:16]


def _settings(req) -> tuple[str, dict]:
    """(prompt text, generation kwargs) of an lmms-eval request (simple or chat arguments)."""
    args = req.args
    gen = next((a for a in args if isinstance(a, dict)), {})
    return str(args[0]), gen


def _feed(h, value: Any) -> None:
    """Feed ``h`` what a model is shown: images (PIL, arrays) by their pixels, a file (a video,
    an image path) by its digest, text as is; containers item by item. An object of another type
    by its type's name only (its repr may hold a memory address)."""
    if isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _feed(h, value[k])
    elif isinstance(value, (str, os.PathLike)):
        h.update(file_digest(Path(value)).encode() if os.path.isfile(value)
                 else str(value).encode())
    elif isinstance(value, (int, float, bool, type(None))):
        h.update(repr(value).encode())
    elif isinstance(value, (bytes, bytearray, memoryview)):  # encoded image bytes
        h.update(bytes(value))
    elif type(value).__module__.startswith("torch") and hasattr(value, "detach"):  # a tensor
        t = value.detach().cpu().contiguous()
        h.update(repr((str(t.dtype), tuple(t.shape))).encode())
        h.update(t.view(-1).view(torch_uint8()).numpy().tobytes() if t.numel() else b"")
    elif callable(getattr(value, "tobytes", None)):  # a PIL image, a numpy array
        h.update(repr((type(value).__name__, getattr(value, "mode", None),
                       getattr(value, "size", None), getattr(value, "shape", None))).encode())
        h.update(value.tobytes())
    else:
        h.update(type(value).__name__.encode())


def torch_uint8():
    import torch

    return torch.uint8


def request_inputs(lm, req) -> str:
    """A digest of what a request shows the model besides its prompt: the outputs of its
    callables (``doc_to_visual``, ``doc_to_messages``) on its document, images by their pixels,
    so a stored response is reused only for the same pictures (the same task over other images,
    from another folder or edited in place, is another request). '' when the document cannot be
    looked up (``lm.task_dict[task][split][doc_id]``, as lmms-eval's evaluator fills it)."""
    args = req.args
    try:
        doc_id, task, split = args[-3], args[-2], args[-1]
        doc = lm.task_dict[task][split][doc_id]
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    h = hashlib.sha256()
    for fn in args:
        if callable(fn):
            try:
                _feed(h, fn(doc))
            except Exception as e:  # noqa: BLE001 - generation meets (and reports) it itself
                h.update(f"error:{type(e).__name__}".encode())
    return h.hexdigest()


def request_key(fingerprint: str, req, inputs: str = "") -> str:
    """A request's key: the run fingerprint, task, document, request index, prompt, generation
    settings and ``inputs`` (:func:`request_inputs`)."""
    ctx, gen = _settings(req)
    return hashlib.sha256(json.dumps(
        [fingerprint, req.task_name, req.doc_id, req.idx, ctx, gen, inputs], sort_keys=True,
        default=str).encode()).hexdigest()


class ResponseStore:
    """``<root>/rank<r>.jsonl`` files of ``{"key", "task", "doc_id", "response"}`` lines.
    ``fresh`` (``--overwrite``): nothing stored is read, this rank's file starts empty, and rank
    0 removes the files of ranks ``world`` and above (an earlier run with more processes), so
    a rerun that resumes this run reads only this run's responses."""

    def __init__(self, root: Path, rank: int, fresh: bool = False, world: int = 1) -> None:
        self.root, self.rank = Path(root), rank
        self.kept: dict[str, Any] = {}
        if fresh:
            (self.root / f"rank{rank}.jsonl").unlink(missing_ok=True)
            for f in self.root.glob("rank*.jsonl") if rank == 0 else []:
                if f.stem[4:].isdigit() and int(f.stem[4:]) >= world:
                    f.unlink(missing_ok=True)
        for f in [] if fresh else sorted(self.root.glob("rank*.jsonl")):
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by kill -9: that block reruns
                        continue
                    self.kept[rec["key"]] = rec["response"]
        self.found = len(self.kept)  # stored by an interrupted run (of any settings)
        self.reused = 0  # of those, served in place of a generation (make_resumable)
        self.written = 0

    def append(self, records: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"rank{self.rank}.jsonl", "a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                self.kept[rec["key"]] = rec["response"]
            fh.flush()
            os.fsync(fh.fileno())
        self.written += len(records)


def _as_text(resp: Any) -> Any:
    """A storable response: lmms-eval's GenerationResult (text + token counts) or a string."""
    if hasattr(resp, "text"):
        return {"text": resp.text, "output_tokens": getattr(
            getattr(resp, "token_counts", None), "output_tokens", None)}
    return resp


def _from_text(stored: Any) -> Any:
    if isinstance(stored, dict) and "text" in stored:
        from lmms_eval.api.instance import GenerationResult, TokenCounts

        return GenerationResult(text=stored["text"], token_counts=TokenCounts(
            output_tokens=stored.get("output_tokens")))
    return stored


def make_resumable(lm, store: ResponseStore, fingerprint: str, block: int) -> None:
    """Replace ``lm.generate_until`` by the block-wise, stored version (module docstring)."""
    generate: Callable = lm.generate_until

    def generate_until(requests: list) -> list:
        out: list = [None] * len(requests)
        keys: list = [None] * len(requests)
        for start in range(0, len(requests), block):
            idx = list(range(start, min(start + block, len(requests))))
            for i in idx:  # per block: the first block generates without waiting for the rest
                keys[i] = request_key(fingerprint, requests[i], request_inputs(lm, requests[i]))
            if all(keys[i] in store.kept for i in idx):
                for i in idx:
                    out[i] = _from_text(store.kept[keys[i]])
                store.reused += len(idx)
                continue
            resps = generate([requests[i] for i in idx])
            store.append([{"key": keys[i], "task": requests[i].task_name,
                           "doc_id": requests[i].doc_id, "response": _as_text(r)}
                          for i, r in zip(idx, resps, strict=True)])
            for i, r in zip(idx, resps, strict=True):
                out[i] = r
        return out

    lm.generate_until = generate_until


class Interrupted(BaseException):
    """SIGTERM during an evaluation (raised in the main thread, like Ctrl-C's
    KeyboardInterrupt, and like it not an ``Exception``: scoring's and transformers' ``except
    Exception`` swallowed it, scoring a right answer wrong, or turned it into another error)."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``Interrupted`` in the main thread for the duration (so the caller can
    say what was kept), then the previous handler is restored."""
    def handler(signum, frame):
        raise Interrupted("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
