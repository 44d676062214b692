"""Training samples: the one normalised ``Sample`` every source format is turned into.

A JSONL row (the kit's normalised format, also what ``data/geo_demo`` holds):

    {"id": "geo-train-000000",
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "... Answer: 70"}]}],
     "images": ["images/train_000000.png"],
     "answer": "70"}

``content`` may also be a plain string, where each ``<image>`` marks an image. An image part
may carry its own ``min_pixels`` / ``max_pixels`` (``image_options``; they stay on the part:
``image_bounds``); any other key is an ``image_option`` error. Image paths are
relative to ``image_root`` (default: the JSONL file's directory) or absolute; a source may
require them to stay inside that root (``allow_outside_root``, off for hub sources). Rows
without images are text-only samples. Every problem raises ``DataError`` naming the file, line
and row id, with a short reason code (``REASONS``) that ``data.on_error=skip`` and
``python -m vldft.datatool validate`` count. Other formats (LLaVA, ShareGPT, messages, HF
datasets, Geometry3K, text math) are read by ``vldft.data.formats.read_source``; see its
docstring. ``iter_jsonl`` is the one line-numbered JSONL reader (also used for benchmark copies
by ``vldft.eval``), ``split_placeholders`` the one ``<image>`` splitter.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from PIL import Image

from vldft import resources

ROLES = ("system", "user", "assistant")

# Reason codes of DataError / skips / validation findings (table with examples: validate.py).
REASONS = {
    "missing_file": "the data file / folder does not exist",
    "bad_source": "the source cannot be read as its (given or detected) format",
    "bad_json": "the line / file is not valid JSON (or not valid UTF-8: file, line, byte offset)",
    "bad_row": "the row is not an object of the expected shape (wrong types, missing keys)",
    "missing_column": "a required column / key is missing (closest existing one suggested)",
    "bad_content": "a content part is malformed or unsupported (an image or video in an answer)",
    "unknown_role": "a turn's role is not system / user / assistant (or an alias of them)",
    "no_assistant": "no assistant turn: nothing to train on",
    "empty_assistant": "an assistant turn has no text",
    "empty_turn": "a user / system turn has neither text nor image",
    "bad_order": "turns do not alternate user / assistant, or a system turn is not first",
    "ends_with_user": "the conversation ends with a user turn (never answered)",
    "image_count": "the number of image placeholders differs from the number of images",
    "image_missing": "an image file does not exist (or is a URL, which is never downloaded)",
    "image_outside_root": "an image path resolves (after `..` and symlinks) outside the source's "
                          "image root, and allow_outside_root is off (the default for hub sources)",
    "image_corrupt": "an image cannot be opened and decoded",
    "image_option": "an image part's per-image key is not supported (a fixed size, an unknown "
                    "key; min_pixels / max_pixels for a family without pixel bounds) or its "
                    "value is invalid",
    "video_count": "the number of video placeholders differs from the number of videos",
    "video_missing": "a video file, frame file or frame folder does not exist (URLs are never "
                     "downloaded)",
    "video_corrupt": "a video cannot be opened / decoded (or one of its frames)",
    "video_option": "a video part's / videos entry's per-clip key is not supported (a segment, "
                    "a fixed frame size, an unknown key) or its value is invalid",
    "video_shortened": "warning: longer than data.max_length, the sample's videos are sampled "
                       "with fewer frames (never cut inside a frame)",
    "bad_answer": "the reference answer is invalid (e.g. a Geometry3K letter outside the choices)",
    "too_long": "longer than data.max_length and data.overlong is skip / error",
    "image_cut": "truncating to data.max_length would cut an image block (sample skipped)",
    "video_cut": "a video that cannot be shortened by frames enough to fit data.max_length: "
                 "truncating would cut into it (sample skipped)",
    "truncated_empty": "after truncation no trained token is left (sample skipped)",
    "truncated": "warning: longer than data.max_length, the response is truncated",
    "encode_error": "the collator rejected the sample (template / tokenizer mismatch)",
}
# reported, but the sample is still trained on
WARNINGS = frozenset({"truncated", "video_shortened"})


class DataError(ValueError):
    """A malformed sample or source; the message names where it came from.

    ``reason`` is a code from ``REASONS``; ``where`` the location ("file:line (id X)"), ``detail``
    the message without the location."""

    def __init__(self, message: str, reason: str = "bad_row", where: str | None = None,
                 detail: str | None = None, image: str | None = None,
                 offset: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.where = where
        self.detail = detail if detail is not None else message
        self.image = image  # the image file (or name) that caused it, when one did
        self.offset = offset  # byte offset in the file of an invalid UTF-8 byte


def fail(where: str, reason: str, text: str, image: str | None = None) -> NoReturn:
    """Raise ``DataError("{where}: {text}")`` with a reason code."""
    raise DataError(f"{where}: {text}", reason=reason, where=where, detail=text, image=image)


# a lone CR after which no LF follows: old-Mac line endings (text mode's universal newlines:
# "\r\n", "\r" and "\n" end a line; U+2028, U+0085 and the like do not)
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")
LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def split_lines(f: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of a binary file (each with its line break, so byte offsets add up), ended by
    ``\r\n``, ``\r`` or ``\n`` as in text mode. Iterating a binary file splits at ``\n`` only;
    a lone ``\r`` inside such a chunk ends a line too. (No UTF-8 multi-byte sequence holds a
    CR or LF byte, so splitting the bytes never cuts a character.)"""
    for chunk in f:
        if b"\r" not in chunk:
            yield chunk
            continue
        yield from (part for part in _LONE_CR.split(chunk) if part)


def line_of(raw: bytes, at: int) -> int:
    """The 1-based line number of byte offset ``at`` of ``raw`` (any line ending)."""
    return len(LINE_BREAK.findall(raw, 0, at)) + 1


def iter_lines(path: Path) -> Iterator[tuple[int, str | DataError]]:
    """(line number, text) of each non-blank line of a text file, decoded line by line, so an
    invalid UTF-8 byte costs its own line only: that line comes as a ``bad_json`` DataError
    naming the file, the line and the byte offset of the bad byte in the file. Lines end at
    ``\r\n``, ``\r`` or ``\n`` (as in text mode)."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(split_lines(f), 1):
            start, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                where, at = f"{path}:{lineno}", start + e.start
                detail = (f"not UTF-8 text: invalid byte 0x{raw[e.start]:02x} at byte offset "
                          f"{at} of the file (column {e.start + 1} of the line)")
                yield lineno, DataError(f"{where}: {detail}", "bad_json", where, detail,
                                        offset=at)
                continue
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte order mark
            if line.strip():
                yield lineno, line


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON value) of each non-blank line of a JSONL file. A line that is
    not UTF-8 or not JSON comes as a ``bad_json`` DataError instead of a value ("file:line:
    invalid JSON (...)"), so the caller decides: raise it, or skip and count it."""
    for lineno, line in iter_lines(path):
        if isinstance(line, DataError):
            yield lineno, line
            continue
        try:
            yield lineno, json.loads(line.rstrip("\r\n"))  # (the column of an error: its line's)
        except json.JSONDecodeError as e:
            where = f"{path}:{lineno}"  # (json's "... starting at" + " at column": once)
            detail = f"invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
            yield lineno, DataError(f"{where}: {detail}", "bad_json", where, detail)


IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
_PLACEHOLDERS = re.compile("(<image>|<video>)")
MEDIA = ("image", "video")  # content part types that stand for a picture / a clip


def split_placeholders(text: str) -> list[dict[str, Any]]:
    """A string content as typed parts: each ``<image>`` an image part, each ``<video>`` a video
    part, the text between them text parts (empty text is dropped). ``"a<image>b"`` -> text a,
    image, text b."""
    parts: list[dict[str, Any]] = []
    for chunk in _PLACEHOLDERS.split(text):
        if chunk in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
            parts.append({"type": chunk[1:-1]})
        elif chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


@contextmanager
def strict_images() -> Iterator[None]:
    """PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` off for the duration: a truncated file is an
    error, and the same error in every process, even where a library (lmms-eval's task module,
    at import) has turned the flag on for everyone."""
    from PIL import ImageFile

    lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def image_problem(img: Any) -> str | None:
    """None if the image opens and passes PIL's cheap integrity check (``verify()``: headers
    and, for PNG, chunk checksums; no pixel decoding), else the reason."""
    if isinstance(img, Image.Image):  # already in memory (and never the caller's to close)
        return None
    try:
        with strict_images(), open_image(img) as im:
            im.verify()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb
        return f"{type(e).__name__}: {e}"
    return None


def image_name(img: Any) -> str:
    """A printable name of an image entry (path, or the stored name of encoded bytes)."""
    if isinstance(img, (str, Path)):
        return str(img)
    return getattr(img, "name", "") or repr(img)


@dataclass(eq=False)
class ImageBytes:
    """An encoded image (PNG / JPEG bytes from a parquet or HF dataset), decoded only on use.

    Keeps reading a 10k-row dataset cheap: nothing is decoded until ``open()``."""

    data: bytes
    name: str = ""  # original file name, when the source stored one

    def open(self) -> Image.Image:
        """A fresh PIL image (lazy: pixels are decoded on ``load()`` / ``convert()``)."""
        return Image.open(io.BytesIO(self.data))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) from the header only (no pixel decoding)."""
        with self.open() as im:
            return im.size

    def __repr__(self) -> str:
        return f"ImageBytes({self.name or 'unnamed'}, {len(self.data)} bytes)"


def open_image(image: str | Path | ImageBytes | Image.Image) -> Image.Image:
    """Open any image a Sample may hold (path, encoded bytes, PIL image) as a PIL image."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, ImageBytes):
        return image.open()
    return Image.open(image)


@dataclass
class Sample:
    id: str
    messages: list[dict[str, Any]]  # [{"role", "content": [{"type": "text"|"image"|"video"}]}]
    images: list[Any] = field(default_factory=list)  # Path | ImageBytes | PIL image, in order
    answer: str | None = None  # reference final answer, when the source has one
    kind: str | None = None  # optional category (e.g. problem kind) for per-kind reporting
    source: str = ""  # label of the source it came from (SourceConfig.label)
    origin: str = ""  # where the row was read: "file:line" / "file row N" (for messages)
    videos: list[Any] = field(default_factory=list)  # vldft.data.video.Video, in order


# Per-image keys of an image part (qwen-vl-utils' names): the image's own bounds on its area
# after resizing, over the source's / model's (Qwen families only). They stay on the normalised
# image part ({"type": "image", "max_pixels": ...}), where the collator, the length estimate
# and held-out generation read them (``image_bounds``).
IMAGE_KEYS = ("min_pixels", "max_pixels")
IMAGE_SOURCE_KEYS = frozenset({"type", "image", "image_url", "value"})
IMAGE_REFUSED = {  # qwen-vl-utils keys vldft does not honour, and what to write instead
    "resized_height": "vldft does not force an image size: bound it with min_pixels / "
                      "max_pixels",
    "resized_width": "vldft does not force an image size: bound it with min_pixels / "
                     "max_pixels",
}


def image_keys(part: dict) -> dict[str, Any]:
    """The per-image keys of an image part: all but its source keys, and none whose value is
    null (table rows give every struct key, null where absent)."""
    return {k: v for k, v in part.items() if k not in IMAGE_SOURCE_KEYS and v is not None}


def image_options(keys: dict[str, Any]) -> dict[str, int]:
    """An image part's options from its per-image keys (``image_keys``); ``ValueError`` naming
    the first key vldft cannot honour (a fixed size, an unknown key) or whose value is not a
    positive integer (or a minimum above the maximum)."""
    out: dict[str, int] = {}
    for key, value in keys.items():
        if key not in IMAGE_KEYS:
            hint = IMAGE_REFUSED.get(key) or f"per-image keys: {', '.join(IMAGE_KEYS)}"
            raise ValueError(f"per-image key {key!r} is not supported ({hint})")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"per-image key {key!r}: {value!r} is not an integer >= 1")
        out[key] = value
    if len(out) == 2 and out["min_pixels"] > out["max_pixels"]:
        raise ValueError(f"per-image key 'min_pixels' ({out['min_pixels']}) is larger than "
                         f"'max_pixels' ({out['max_pixels']})")
    return out


Pixels = tuple[int | None, int | None]


def bounds_over(base: Pixels, own: Pixels) -> Pixels:
    """``own`` (min, max) over ``base`` (min, max), either may be None: a given bound replaces
    the base's, and a given one that crosses the other base bound moves that bound with it
    (an image's or clip's keys over a source's / run's, a source's over the model's)."""
    (lo, hi), (own_lo, own_hi) = base, own
    if own_lo is not None:
        lo = own_lo
        if own_hi is None and hi is not None and hi < lo:
            hi = lo
    if own_hi is not None:
        hi = own_hi
        if own_lo is None and lo is not None and lo > hi:
            lo = hi
    return lo, hi


def image_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The image parts of normalised messages, in order (one per image of the sample)."""
    return [p for m in messages if isinstance(m.get("content"), list) for p in m["content"]
            if isinstance(p, dict) and p.get("type") == "image"]


def has_image_options(messages: list[dict[str, Any]]) -> bool:
    """Whether an image part carries its own ``min_pixels`` / ``max_pixels``."""
    return any(k in p for p in image_parts(messages) for k in IMAGE_KEYS)


def image_bounds(messages: list[dict[str, Any]], n: int, pixels: Pixels | None = None
                 ) -> list[Pixels | None]:
    """``(min_pixels, max_pixels)`` of each of a sample's ``n`` images: the source's ``pixels``
    with the image part's own keys over them (None where neither gives one; the adapter fills
    the model's). An image's minimum above the source's maximum (or its maximum below the
    source's minimum) moves that bound with it, as a clip's keys do (``Video.settings``)."""
    parts = image_parts(messages)
    if len(parts) != n or not has_image_options(messages):
        return [pixels] * n
    out: list[Pixels | None] = []
    for part in parts:
        lo, hi = bounds_over(pixels or (None, None),
                             (part.get("min_pixels"), part.get("max_pixels")))
        out.append((lo, hi) if lo or hi else None)
    return out


def check_index(keys: dict[str, Any], kind: str, position: int, where: str, what: str = ""
                ) -> None:
    """Take ``index`` out of a media part's ``keys``: Hugging Face's chat-template rows give
    every part one (``{"type": "image", "index": 0, "text": null}``). It must be the part's
    place among the row's ``kind`` parts (0-based), which is the entry vldft gives it; another
    is an ``image_option`` / ``video_option`` error, not a silent swap."""
    index = keys.pop("index", None)
    if index is not None and index != position:
        fail(where, f"{kind}_option", f"{what}{kind} part with index {index!r}, but it is the "
             f"row's {kind} {position} (vldft takes the {kind}s in the order of their parts)")


def _parts(content: Any, where: str, what: str, clips: list[dict], images_before: int = 0
           ) -> list[dict[str, Any]]:
    """Normalised parts of one turn's content; each video part's per-clip keys (``fps``, ...)
    are appended to ``clips``, in order; an image part keeps its per-image keys
    (``image_options``; one vldft cannot honour is an ``image_option`` error)."""
    from vldft.data.video import clip_keys

    if isinstance(content, str):
        parts = split_placeholders(content)
        clips += [{} for p in parts if p["type"] == "video"]
        return parts
    if not isinstance(content, list):
        fail(where, "bad_content", f"{what}content must be a string or a list of parts")
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in ("text", *MEDIA):
            fail(where, "bad_content", f"{what}content part {part!r} is not a text, image or "
                 "video part")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            fail(where, "bad_content", f"{what}text part without a 'text' string")
        source = next((k for k in ("image", "image_url", "video", "video_url", "value")
                       if part["type"] in MEDIA and part.get(k) is not None), None)
        if source is not None:  # it was dropped, and the row's list entry shown instead
            kind = part["type"]
            fail(where, "bad_content", f"{what}{kind} part names its own source ({source!r}: "
                 f"{str(part[source])[:60]!r}), which a normalised row does not read: it takes "
                 f"its {kind}s from the row's '{kind}s' list, in order (source format: messages "
                 "reads a part's own source; vldft-data convert --format messages FILE OUT "
                 "writes the file in this format)")
        if part["type"] == "video":
            keys = clip_keys(part)
            check_index(keys, "video", len(clips), where, what)
            clips.append(keys)
    out = []
    for p in content:
        if p["type"] == "image":
            keys = image_keys(p)
            check_index(keys, "image", images_before, where, what)
            images_before += 1
            try:
                out.append({"type": "image", **image_options(keys)})
            except ValueError as e:
                fail(where, "image_option", f"{what}image part: {e}")
        else:
            out.append({"type": p["type"]} if p["type"] in MEDIA
                       else {"type": "text", "text": p["text"]})
    return out


def check_structure(messages: list[dict[str, Any]], where: str) -> None:
    """Turn-level checks on normalised messages (roles already valid): order and emptiness."""
    roles = [m["role"] for m in messages]
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            fail(where, "bad_order", f"message {i} is a system turn; only the first may be")
    turns = roles[1:] if roles and roles[0] == "system" else roles
    offset = len(roles) - len(turns)
    if "assistant" not in turns:
        fail(where, "no_assistant", "no assistant turn, nothing to train on")
    for j, role in enumerate(turns):
        want = "user" if j % 2 == 0 else "assistant"
        if role != want:
            fail(where, "bad_order", f"message {j + offset} is a {role} turn where a {want} turn "
                 "was expected (turns must alternate user/assistant, starting with user)")
    if turns[-1] == "user":
        fail(where, "ends_with_user", f"the last message ({len(roles) - 1}) is an unanswered "
             "user turn; drop it or add the assistant's answer")
    for i, msg in enumerate(messages):
        text = "".join(p["text"] for p in msg["content"] if p["type"] == "text").strip()
        has_image = any(p["type"] in MEDIA for p in msg["content"])
        if msg["role"] == "assistant":
            if has_image:
                fail(where, "bad_content", f"message {i}: images / videos in assistant turns "
                     "are not supported")
            if not text:
                fail(where, "empty_assistant", f"message {i}: the assistant turn is empty")
        elif not text and not has_image:
            fail(where, "empty_turn", f"message {i}: the {msg['role']} turn is empty")


def _image(img: Any, image_root: Path, where: str, allow_outside_root: bool = True
           ) -> Path | ImageBytes | Image.Image:
    if isinstance(img, (ImageBytes, Image.Image)):
        return img
    if not isinstance(img, (str, Path)) or not str(img):
        fail(where, "bad_row", f"image entry {img!r} is not a file path")
    if str(img).startswith(("http://", "https://")):
        fail(where, "image_missing", f"image {img} is a URL; download it and use a local path")
    path = Path(img) if Path(img).is_absolute() else image_root / img
    if not allow_outside_root:  # checked first: a path out of the root is never opened
        resolved, root = path.resolve(), image_root.resolve()
        if not resolved.is_relative_to(root):
            fail(where, "image_outside_root", f"image {img} resolves to {resolved}, outside the "
                 f"image root {root} (allow_outside_root is off for this source)",
                 image=str(img))
    if path.is_dir():
        fail(where, "image_missing", f"image {img} is a folder, not an image file: {path}",
             image=str(path))
    if not path.is_file():
        hint = ("" if Path(img).is_absolute() else f" (a relative image path resolves against "
                f"{image_root}; if the images lie elsewhere, set the source's image_root, "
                f"or --image-root for vldft-data)")
        fail(where, "image_missing", f"image file not found: {path}{hint}", image=str(path))
    return path


def sample_from_row(row: dict[str, Any], where: str, image_root: Path,
                    default_id: str | None = None, allow_outside_root: bool = True) -> Sample:
    """Normalise one row (already parsed JSON) and check it; ``where`` names it in errors.

    Checks: roles, turn order (optional system first, then user/assistant alternating, ending
    with an assistant turn), empty turns, placeholder count == image count, image files exist.
    Images may be paths (relative to ``image_root``, or absolute), ``ImageBytes`` or PIL images.
    ``allow_outside_root=False``: a path that resolves (after ``..`` and symlinks) outside
    ``image_root`` is an ``image_outside_root`` error, and that file is never opened."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        fail(where, "bad_row", "expected an object with a 'messages' list")
    sid = str(row["id"]) if row.get("id") is not None else (default_id or where)
    origin, where = where, f"{where} (id {sid})"
    messages: list[dict] = []
    keys: list[dict] = []  # each video part's per-clip keys
    for i, msg in enumerate(row["messages"]):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ROLES:
            fail(where, "unknown_role", f"message {i} has unknown role {role!r}; valid: {ROLES}")
        images_before = sum(p["type"] == "image" for m in messages for p in m["content"])
        content = _parts(msg.get("content"), where, f"message {i}: ", keys, images_before)
        messages.append({"role": role, "content": content})
    check_structure(messages, where)
    resolved = [_image(img, image_root, where, allow_outside_root)
                for img in _media_list(row, "image", messages, where)]
    clips = [_video(v, image_root, where, allow_outside_root, k)
             for v, k in zip(_media_list(row, "video", messages, where), keys, strict=True)]
    answer, kind = row.get("answer"), row.get("kind")
    return Sample(sid, messages, resolved, None if answer is None else str(answer),
                  None if kind is None else str(kind), origin=origin, videos=clips)


def _media_list(row: dict, kind: str, messages: list[dict], where: str) -> list:
    """The row's ``images`` / ``videos`` entries (one entry may stand alone), as many as the
    messages have ``kind`` parts (else an ``image_count`` / ``video_count`` error)."""
    items = row.get(f"{kind}s") or []
    if isinstance(items, (str, Path, ImageBytes, Image.Image)) or _is_video(items) or (
            kind == "video" and isinstance(items, dict)):
        items = [items]
    if not isinstance(items, list):
        fail(where, "bad_row", f"'{kind}s' must be a list, got {type(items).__name__}")
    n_parts = sum(p["type"] == kind for m in messages for p in m["content"])
    if n_parts != len(items):
        fail(where, f"{kind}_count", f"{n_parts} {kind} placeholders but {len(items)} {kind}s")
    return items


def _is_video(obj: Any) -> bool:
    from vldft.data.video import Video

    return isinstance(obj, Video)


def _video(ref: Any, root: Path, where: str, allow_outside_root: bool, keys: dict) -> Any:
    """A ``Video`` from a row's reference (a file or folder path, a list of frames, or an
    object ``{"video": reference, "fps": ...}``) with the per-clip keys of the reference and
    of its video part (``keys``) as its options (``vldft.data.video.clip_options``)."""
    from vldft.data.video import clip_keys, clip_options

    own: dict = {}
    if isinstance(ref, dict):
        if ref.get("video") is None:
            fail(where, "bad_row", f"video entry {ref!r} has no 'video' key (the file, folder "
                 "or frame list)")
        own, ref = clip_keys(ref), ref["video"]
    video = _video_source(ref, root, where, allow_outside_root)
    try:
        if clash := [k for k in own if k in keys and keys[k] != own[k]]:
            raise ValueError(f"per-clip key {clash[0]!r} is {own[clash[0]]!r} in the videos "
                             f"entry but {keys[clash[0]]!r} in the video part")
        options = clip_options({**own, **keys})
    except ValueError as e:
        fail(where, "video_option", f"video {video.name}: {e}")
    return dataclasses.replace(video, options={**video.options, **options}) if options else video


def _video_source(ref: Any, root: Path, where: str, allow_outside_root: bool) -> Any:
    from vldft.data.video import Video

    if _is_video(ref):
        return ref
    if isinstance(ref, list):
        if not ref:
            fail(where, "bad_row", "a video given as a list of frames has no frames")
        frames = []
        for f in ref:
            try:
                frames.append(_image(f, root, where, allow_outside_root))
            except DataError as e:
                reason = "video_missing" if e.reason == "image_missing" else e.reason
                raise DataError(f"{where}: video frame: {e.detail}", reason, where,
                                f"video frame: {e.detail}", image=e.image) from None
        return Video(frames=frames, name=f"{image_name(ref[0])} .. ({len(ref)} frames)")
    if not isinstance(ref, (str, Path)) or not str(ref):
        fail(where, "bad_row", f"video entry {ref!r} is not a file / folder path or a list "
             "of frames")
    if str(ref).startswith(("http://", "https://")):
        fail(where, "video_missing", f"video {ref} is a URL; download it and use a local path")
    path = Path(ref) if Path(ref).is_absolute() else root / ref
    if not allow_outside_root and not path.resolve().is_relative_to(root.resolve()):
        fail(where, "image_outside_root", f"video {ref} resolves to {path.resolve()}, outside "
             f"the image root {root.resolve()} (allow_outside_root is off for this source)",
             image=str(ref))
    if not path.is_dir() and not path.is_file():
        fail(where, "video_missing", f"video file not found: {path}", image=str(path))
    try:
        return Video.from_path(path)
    except ValueError as e:  # a folder without frames
        fail(where, "video_missing", str(e), image=str(path))


def load_jsonl(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Read a JSONL file of normalised rows into Samples (errors name file and line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: a folder, not a JSONL file" if path.is_dir() else
                        f"data file not found: {path}{resources.hint(path)}", "missing_file",
                        str(path))
    root = Path(image_root) if image_root else path.parent
    samples = []
    for lineno, row in iter_jsonl(path):
        if isinstance(row, DataError):
            raise row
        samples.append(sample_from_row(row, f"{path}:{lineno}", root, f"{path.name}:{lineno}"))
    if not samples:
        fail(str(path), "bad_row", "no samples")
    return samples
