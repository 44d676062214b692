"""Conversation formats -> the normalised row that ``sample_from_row`` checks.

Each converter takes one parsed row and its location and returns
``{"messages": [{"role", "content": [parts]}], "images": [...], "answer", "kind"}`` with parts
``{"type": "image"}`` / ``{"type": "text", "text": ...}``, or raises ``DataError``.

- ``llava``: ``{"id", "image": str | [str] (optional), "conversations": [{"from", "value"}]}``,
  ``from`` in human / gpt / system, ``<image>`` placeholders in ``value`` (one image and no
  placeholder: the image goes before the first turn's text). Also read from parquet / arrow
  tables with those columns (LLaVA-OneVision-Data: ``image`` an embedded HF Image).
- ``sharegpt`` (LLaMA-Factory): ``conversations`` with ``from`` / ``value`` or ``messages`` with
  ``role`` / ``content``; ``images`` list; optional ``system`` column. Tool turns
  (observation / function_call) are not supported (``unknown_role``).
- ``messages`` (OpenAI / ms-swift / LLaMA-Factory v1): ``{"messages": [{"role", "content"}],
  "images": [...]}``; ``content`` is a string with ``<image>`` placeholders or a list of parts:
  ``{"type": "text", "text" | "value"}``, ``{"type": "image"}`` (takes the next entry of
  ``images``), ``{"type": "image", "image": PATH}``, ``{"type": "image_url", "image_url":
  {"url": PATH}}`` or ``{"type": "image_url", "value": PATH}`` (inline: used where it stands).
  ``file://`` prefixes are dropped; ``data:image/...;base64,`` URIs are decoded. Video parts
  (``{"type": "video", "video": PATH | [frames]}``, ``video_url``, or bare: the next entry of
  ``videos``) keep their other keys (qwen-vl-utils' ``fps``, ``nframes``, ...) on the part, and a
  ``videos`` entry may be ``{"video": ..., "fps": ...}``: ``sample_from_row`` turns them into the
  clip's own settings or a ``video_option`` error (``vldft.data.video.clip_options``). An image
  part's other keys (qwen-vl-utils' ``min_pixels`` / ``max_pixels``) stay on it the same way:
  the image's own bounds, or an ``image_option`` error (``vldft.data.image_options``).

Roles: user / human, assistant / gpt, system are accepted in every conversation format.
"""

from __future__ import annotations

import base64
import difflib
from collections.abc import Iterator
from typing import Any

from vldft.data import ImageBytes, check_index, fail, image_keys, split_placeholders
from vldft.data.video import clip_keys

ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
                "system": "system"}
TOOL_ROLES = ("observation", "function_call", "function", "tool", "tool_call", "ipython")


def suggest(name: str, options: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest option, or ''."""
    close = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def require(row: dict, key: str, where: str, fmt: str, what: str = "") -> Any:
    """``row[key]``, or a ``missing_column`` error naming the closest existing key."""
    if key not in row:
        fail(where, "missing_column", f"{what}no {key!r} key ({fmt} format)"
             f"{suggest(key, list(row))}; keys: {sorted(row)}")
    return row[key]


def image_ref(ref: Any, where: str) -> Any:
    """An image reference from a part or an images list: path string, ImageBytes or PIL."""
    if isinstance(ref, dict):  # {"bytes": ..., "path": ...} (HF Image feature, undecoded)
        if ref.get("bytes"):
            return ImageBytes(ref["bytes"], ref.get("path") or "")
        if ref.get("path"):
            return ref["path"]
        if "url" in ref:
            return image_ref(ref["url"], where)
        fail(where, "bad_content", f"image entry {ref!r} has neither 'bytes' nor 'path'")
    if isinstance(ref, bytes):
        return ImageBytes(ref)
    if isinstance(ref, str):
        if ref.startswith("file://"):
            return ref[len("file://"):]
        if ref.startswith("data:image") and "base64," in ref:
            return ImageBytes(base64.b64decode(ref.split("base64,", 1)[1]))
    return ref  # checked (path exists, type) by sample_from_row


def _pieces(content: Any, where: str, what: str = "") -> Iterator[tuple[str, Any, dict]]:
    """("text", str, {}), ("image", inline ref or None, the part's per-image keys) and
    ("video", inline ref or None, the part's per-clip keys) pieces of one turn's content."""
    if content is None:
        return
    if isinstance(content, str):
        for part in split_placeholders(content):
            yield part["type"], part.get("text"), {}
        return
    if not isinstance(content, list):
        fail(where, "bad_content", f"{what}content must be a string or a list of parts, got "
             f"{type(content).__name__}")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                fail(where, "bad_content", f"{what}text part {part!r} has no 'text' string")
            yield from _pieces(text, where, what)  # "<image>" in a text part is a placeholder
        elif kind in ("image", "video", "image_url", "video_url"):
            ref = part.get(kind, part.get("value"))
            if kind.endswith("_url") and isinstance(ref, dict):
                ref = ref.get("url")
            yield kind[:5], ref, clip_keys(part) if kind[:5] == "video" else image_keys(part)
        else:
            fail(where, "bad_content", f"{what}unsupported content part {part!r} (text, image "
                 "and video only)")


def video_ref(ref: Any) -> Any:
    """A video reference from a part or a videos list: a path (``file://`` dropped), a list
    of frames (each an image reference) or ``{"video": reference, per-clip keys}``."""
    if isinstance(ref, dict) and "video" in ref:
        return {**ref, "video": video_ref(ref["video"])}
    if isinstance(ref, str) and ref.startswith("file://"):
        return ref[len("file://"):]
    if isinstance(ref, list):
        return [image_ref(f, "") for f in ref]
    return ref  # checked (exists, type) by sample_from_row


def _pool(items: Any) -> list:
    """A row's ``images`` / ``videos`` column as a list (one entry may stand alone)."""
    if items is None:
        return []
    return items if isinstance(items, list) else [items]


def turns_to_messages(turns: Any, role_key: str, content_key: str, images: Any,
                      where: str, fmt: str, videos: Any = None
                      ) -> tuple[list[dict], list[Any], list[Any]]:
    """Normalise a list of turns; bare placeholders take ``images`` / ``videos`` in order,
    inline references stay where they stand. Returns (messages, images, videos)."""
    if not isinstance(turns, list):
        fail(where, "bad_row", f"the conversation must be a list of turns ({fmt})")
    pools = {"image": _pool(images), "video": _pool(videos)}
    used = {"image": 0, "video": 0}
    out: dict[str, list] = {"image": [], "video": []}
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            fail(where, "bad_row", f"turn {i} is not an object: {turn!r}")
        role = require(turn, role_key, where, fmt, f"turn {i}: ")
        if role not in ROLE_ALIASES:
            hint = "; tool turns are not supported" if role in TOOL_ROLES else ""
            fail(where, "unknown_role", f"turn {i} has unknown role {role!r}{hint}; valid: "
                 f"{sorted(ROLE_ALIASES)}")
        parts = []
        for kind, value, keys in _pieces(turn.get(content_key), where, f"turn {i}: "):
            if kind == "text":
                parts.append({"type": "text", "text": value})
                continue
            check_index(keys, kind, len(out[kind]), where, f"turn {i}: ")  # Hugging Face's
            if value is None:
                pool = pools[kind]
                if used[kind] >= len(pool):
                    n = sum(1 for t in turns if isinstance(t, dict)
                            for k, *_ in _pieces(t.get(content_key), where) if k == kind)
                    fail(where, f"{kind}_count", f"{n} {kind} placeholders but {len(pool)} "
                         f"{kind}s")
                value, used[kind] = pool[used[kind]], used[kind] + 1
            out[kind].append(image_ref(value, where) if kind == "image" else video_ref(value))
            parts.append({"type": kind, **keys})  # sample_from_row checks these keys
        messages.append({"role": ROLE_ALIASES[role], "content": parts})
    for kind in ("image", "video"):
        if used[kind] < len(pools[kind]):
            fail(where, f"{kind}_count", f"{used[kind]} {kind} placeholders but "
                 f"{len(pools[kind])} {kind}s")
    return messages, out["image"], out["video"]


def _row(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        fail(where, "bad_row", f"expected a JSON object, got {type(raw).__name__}")
    return raw


def _extra(raw: dict) -> dict:
    return {"answer": raw.get("answer"), "kind": raw.get("kind")}


def _media(images: list, videos: list) -> dict:
    return {"images": images, "videos": videos} if videos else {"images": images}


def normalized_row(raw: Any, where: str) -> dict:
    return _row(raw, where)  # sample_from_row is the strict reader of this format


def llava_row(raw: Any, where: str) -> dict:
    raw = _row(raw, where)
    turns = require(raw, "conversations", where, "llava")
    image, video = raw.get("image"), raw.get("video")
    if video not in (None, "", []):
        # LLaVA-Video rows: {"video": path, "conversations": ...}; their "<image>" placeholder
        # stands for the clip (LLaVA-Video-178K writes it so), as does "<video>"
        if image not in (None, "", []):
            fail(where, "bad_row", "a llava row with both 'image' and 'video' is not supported")
        turns = [{**t, "value": t["value"].replace("<image>", "<video>")}
                 if isinstance(t, dict) and isinstance(t.get("value"), str) else t
                 for t in turns] if isinstance(turns, list) else turns
    media, mark = (video, "<video>") if video not in (None, "", []) else (image, "<image>")
    if media not in (None, "", []) and isinstance(turns, list) and turns and not any(
            isinstance(t, dict) and isinstance(t.get("value"), str) and mark in t["value"]
            for t in turns) and isinstance(turns[0], dict) and isinstance(
            turns[0].get("value"), str) and not isinstance(media, list):
        # one image (video) and no placeholder: it goes before the first turn's text, as
        # LLaVA's own preprocessing puts it (LLaVA-OneVision-Data has such rows)
        turns = [{**turns[0], "value": mark + "\n" + turns[0]["value"]}, *turns[1:]]
    if mark == "<video>":
        messages, images, videos = turns_to_messages(turns, "from", "value", None, where,
                                                     "llava", videos=[media])
    else:
        messages, images, videos = turns_to_messages(turns, "from", "value", image, where,
                                                     "llava")
    return {"messages": messages, **_media(images, videos), **_extra(raw)}


def sharegpt_row(raw: Any, where: str) -> dict:
    raw = _row(raw, where)
    if "conversations" in raw:
        turns, keys = raw["conversations"], ("from", "value")
    else:
        turns, keys = require(raw, "messages", where, "sharegpt"), ("role", "content")
    messages, images, videos = turns_to_messages(turns, *keys, raw.get("images"), where,
                                                 "sharegpt", raw.get("videos"))
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        fail(where, "bad_row", f"'system' must be a string, got {type(system).__name__}")
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return {"messages": messages, **_media(images, videos), **_extra(raw)}


def messages_row(raw: Any, where: str) -> dict:
    raw = _row(raw, where)
    turns = require(raw, "messages", where, "messages")
    messages, images, videos = turns_to_messages(turns, "role", "content", raw.get("images"),
                                                 where, "messages", raw.get("videos"))
    return {"messages": messages, **_media(images, videos), **_extra(raw)}


CONVERTERS = {"normalized": normalized_row, "llava": llava_row, "sharegpt": sharegpt_row,
              "messages": messages_row}
