"""Videos of a sample: references, checks and decoding (one path for training, held-out scoring
and ``vldft.eval``).

A video in a row is one of (docs/data.md#video):
- a video file (``clip.mp4``, any container FFmpeg reads), decoded by **decord** through
  qwen-vl-utils' ``fetch_video`` (frames sampled at ``data.video.fps``, capped at
  ``data.video.max_frames``);
- a list of frame files (or encoded frame bytes), in order: a clip already sampled at
  ``data.video.fps``;
- a folder of frame images (``*.png`` / ``*.jpg`` / ...), read in natural order (``f2`` before
  ``f10``): the same as the list of its files.

Decoder backend: qwen-vl-utils picks torchcodec, then decord, then torchvision.
``torchvision.io.read_video`` is gone from torchvision 0.29, and torchcodec needs the system's
FFmpeg libraries, so vldft pins decord (a wheel with FFmpeg inside) and tells qwen-vl-utils to use
it, unless ``FORCE_QWENVL_VIDEO_READER`` names another backend.

``decode`` returns ``(frames [T, 3, H, W] uint8, metadata)``; each frame is resized by
qwen-vl-utils' policy to multiples of the family's unit (28 px for Qwen2/2.5-VL, 32 px for
Qwen3-VL) within ``data.video.min_pixels`` / ``max_pixels`` per frame and
``data.video.max_tokens`` for the whole clip (a one-frame file, which qwen-vl-utils cannot
sample, is read by decord directly). ``T`` is even (Qwen's temporal patch joins two
frames; an odd frame list repeats its last frame, as qwen-vl-utils does).

A clip may carry its own values of those settings (``Video.options``, from the per-clip keys of
a video part or a ``videos`` entry, qwen-vl-utils' names: ``clip_options``); they replace
``data.video``'s for that clip only (``Video.settings``), wherever a clip is decoded or its
length estimated (the adapters' ``load_video`` / ``video_token_estimate``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
BACKEND = "decord"  # qwen-vl-utils' reader that installs from PyPI with FFmpeg built in


@dataclass(eq=False)
class Video:
    """One video of a sample: a ``file`` or ``frames`` (paths / ImageBytes / PIL, in order)."""

    file: Path | None = None
    frames: list[Any] = field(default_factory=list)
    name: str = ""  # how errors name it (the row's reference)
    options: dict[str, Any] = field(default_factory=dict)  # this clip's data.video values

    def settings(self, run):
        """``run`` (``data.video``) with this clip's options. A clip's min above the run's max
        (or its max below the run's min) moves the run's bound to it."""
        from vldft.data import bounds_over

        if not self.options:
            return run
        s = dataclasses.replace(run, **self.options)
        for lo, hi in (("min_frames", "max_frames"), ("min_pixels", "max_pixels")):
            a, b = bounds_over((getattr(run, lo), getattr(run, hi)),
                               (self.options.get(lo), self.options.get(hi)))
            s = dataclasses.replace(s, **{lo: a, hi: b})
        return s

    @classmethod
    def from_path(cls, path: Path, name: str = "") -> Video:
        """A folder as its frames (natural order; none: ``ValueError``), anything else as a
        video file (its existence is the caller's check)."""
        if path.is_dir():
            frames = frame_files(path)
            if not frames:
                raise ValueError(f"video folder {path} holds no frame images")
            return cls(frames=frames, name=name or str(path))
        return cls(file=path, name=name or str(path))

    def __repr__(self) -> str:
        what = str(self.file) if self.file is not None else f"{len(self.frames)} frames"
        return f"Video({self.name or what}{f', {self.options}' if self.options else ''})"


# Per-clip keys of a video part / ``videos`` entry, as qwen-vl-utils' ``fetch_video`` reads them:
# data.video's own keys override it for the clip; ``nframes`` (an exact, even count) is
# min_frames = max_frames = nframes. The keys naming the clip's source are not options.
CLIP_KEYS = ("fps", "min_frames", "max_frames", "min_pixels", "max_pixels", "max_tokens")
SOURCE_KEYS = frozenset({"type", "video", "video_url", "value"})
REFUSED = {  # qwen-vl-utils keys vldft does not honour, and what to write instead
    "video_start": "vldft reads whole clips: cut the segment out first",
    "video_end": "vldft reads whole clips: cut the segment out first",
    "total_pixels": "write max_tokens = total_pixels / unit^2, unit 28 px for Qwen2/2.5-VL, "
                    "32 px for Qwen3-VL / 3.5",
    "resized_height": "vldft does not force a frame size: bound it with min_pixels / max_pixels",
    "resized_width": "vldft does not force a frame size: bound it with min_pixels / max_pixels",
    "sample_fps": "write fps, which is a frame list's rate here",
}


def clip_keys(entry: dict) -> dict[str, Any]:
    """The per-clip keys of a video part or ``videos`` entry: all but its source keys, and
    none whose value is null (table rows give every struct key, null where absent)."""
    return {k: v for k, v in entry.items() if k not in SOURCE_KEYS and v is not None}


def _clip_value(key: str, value: Any) -> float | int:
    if key == "fps":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise ValueError(f"per-clip key 'fps': {value!r} is not a number > 0")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    least = 2 if key in ("max_frames", "nframes") else 1
    if isinstance(value, int) and not isinstance(value, bool) and value >= least:
        return value
    raise ValueError(f"per-clip key {key!r}: {value!r} is not an integer >= {least}")


def clip_options(keys: dict[str, Any]) -> dict[str, Any]:
    """``Video.options`` from a clip's per-clip keys (``clip_keys``); ``ValueError`` naming the
    first key vldft cannot honour (unknown, a segment, a fixed size) or whose value is
    invalid."""
    for key in keys:
        if key not in (*CLIP_KEYS, "nframes"):
            hint = REFUSED.get(key) or f"per-clip keys: {', '.join(CLIP_KEYS)}, nframes"
            raise ValueError(f"per-clip key {key!r} is not supported ({hint})")
    out = {key: _clip_value(key, value) for key, value in keys.items()}
    if "nframes" in out:
        n = out.pop("nframes")
        if n % 2:
            raise ValueError(f"per-clip key 'nframes': {n} is odd (Qwen joins 2 frames per "
                             "temporal patch)")
        if clash := [k for k in ("fps", "min_frames", "max_frames") if k in out]:
            raise ValueError(f"per-clip keys 'nframes' and {clash[0]!r} together (nframes is "
                             "an exact count; qwen-vl-utils takes one or the other)")
        out.update(min_frames=n, max_frames=n)
    for lo, hi in (("min_frames", "max_frames"), ("min_pixels", "max_pixels")):
        if lo in out and hi in out and out[lo] > out[hi]:
            raise ValueError(f"per-clip key {lo!r} ({out[lo]}) is larger than {hi!r} "
                             f"({out[hi]})")
    return out


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> list[Path]:
    """The frame images of a folder, in natural order."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES
                   and p.is_file()), key=lambda p: _natural(p.name))


@dataclass
class Decoded:
    """Frames as the processor takes them and the times they were taken at."""

    frames: Any  # torch.Tensor [T, 3, H, W] uint8
    fps: float  # the rate of the source the indices count in (frames' own rate for lists)
    indices: list[int]  # frame index of each frame in the source (its timestamps: i / fps)
    total: int  # frames in the source


def _decord():
    """decord, with FFmpeg's own log quiet: a broken clip is reported once by vldft (a row
    error or a counted skip), not also by FFmpeg's lines on stderr ('moov atom not found',
    'partial file', one per read). decord's own one-line open error still prints."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    return decord


def _use_decord() -> None:
    _decord()  # qwen-vl-utils' reads go through the same library
    from qwen_vl_utils import vision_process as vp

    if os.environ.get("FORCE_QWENVL_VIDEO_READER") is None \
            and vp.FORCE_QWENVL_VIDEO_READER != BACKEND:
        vp.FORCE_QWENVL_VIDEO_READER = BACKEND
        vp.get_video_reader_backend.cache_clear()


def video_problem(video: Video) -> str | None:
    """None if the video opens (a file: decord reads its header and frame count; frames: each
    passes the image check), else the reason."""
    if video.file is None:
        from vldft.data import image_problem

        for f in video.frames:
            if (p := image_problem(f)) is not None:
                return f"frame {getattr(f, 'name', f)}: {p}"
        return None
    try:
        decord = _decord()

        n = len(decord.VideoReader(str(video.file)))
    except Exception as e:  # decord raises DECORDError (a RuntimeError) on bad files
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None if n > 0 else "no frames"


def sample_indices(n: int, keep: int, exact: bool = False) -> list[int]:
    """``keep`` indices spread evenly over ``range(n)`` (first and last kept); fewer (all ``n``)
    when ``keep > n`` unless ``exact``, where frames repeat evenly (0, 0, 1, 1, ...)."""
    if keep >= n:
        return [i * n // keep for i in range(keep)] if exact else list(range(n))
    if keep == 1:
        return [0]
    return [round(i * (n - 1) / (keep - 1)) for i in range(keep)]


def decode(video: Video, settings, unit: int, max_frames: int | None = None,
           nframes: int | None = None) -> Decoded:
    """Decode ``video`` with ``settings`` (``vldft.config.VideoSettings``): frames resized to
    multiples of ``unit`` px. ``max_frames`` lowers the cap (overlong samples are shortened by
    frames); ``nframes`` asks for exactly that many (families that batch a fixed count)."""
    import numpy as np
    import torch
    from qwen_vl_utils import fetch_video

    from vldft.data import open_image

    cap = min(settings.max_frames, max_frames or settings.max_frames)
    ele: dict[str, Any] = {"min_pixels": min_pixels(settings, unit),
                           "max_pixels": settings.max_pixels,
                           "total_pixels": settings.max_tokens * unit * unit}
    ele = {k: v for k, v in ele.items() if v is not None}
    if video.file is not None:
        _use_decord()
        ele["video"] = str(video.file)
        if nframes is not None:  # as many as there are (an even count), stretched below
            total = _frame_count(video.file)
            if total < 2:
                return _decode_single(video.file, settings, unit, nframes)
            ele["nframes"] = max(2, min(nframes, total - total % 2))
        else:
            ele.update(fps=settings.fps, min_frames=min(settings.min_frames, cap),
                       max_frames=cap)
        try:
            with _quiet_fallback():
                frames, meta = fetch_video(ele, image_patch_size=unit // 2,
                                           return_video_metadata=True)
        except Exception:  # one frame: qwen-vl-utils asks for 2 (the file is opened again
            if _frame_count(video.file) < 2:  # only here, off the common path)
                return _decode_single(video.file, settings, unit, 2)
            raise
        indices = [int(i) for i in meta["frames_indices"]]
        fps, total = float(meta["fps"]), int(meta["total_num_frames"])
        if nframes is not None and frames.shape[0] != nframes:  # a short clip: repeat evenly
            pick = sample_indices(frames.shape[0], nframes, exact=True)
            frames, indices = frames[pick], [indices[i] for i in pick]
    else:
        # an odd cap is floored to even, as qwen-vl-utils floors a file's (3: 2 frames, not 3
        # padded to 4, above the cap); an exact count (a fixed-count family) is kept as asked
        keep = sample_indices(len(video.frames), nframes or even_cap(cap),
                              exact=nframes is not None)
        if len(keep) % 2 and nframes is None:  # fewer frames than the cap, an odd count: the
            # last repeats (Qwen's temporal patch joins 2), as qwen-vl-utils pads a frame list
            keep.append(keep[-1])
        arrays = []
        for i in keep:
            with open_image(video.frames[i]) as im:
                im = im.convert("RGB")
                if arrays and im.size != (arrays[0].shape[2], arrays[0].shape[1]):
                    im = im.resize((arrays[0].shape[2], arrays[0].shape[1]))
                arrays.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
        frames = _resize(torch.stack(arrays), settings, unit)
        indices, fps, total = keep, float(settings.fps), len(video.frames)
    frames = frames.round().clamp(0, 255).to(torch.uint8)
    return Decoded(frames, fps, indices, total)


def _not_the_fallback(record: logging.LogRecord) -> bool:
    return "use torchvision as default" not in record.getMessage()


@contextlib.contextmanager
def _quiet_fallback():
    """qwen-vl-utils' warning when decord fails ("use torchvision as default") is not said:
    torchvision has no video reader (0.29), and vldft reads a one-frame file itself or reports
    the file as corrupt (``video_corrupt``) in its own words. Its other warnings stay."""
    log = logging.getLogger("qwen_vl_utils.vision_process")
    log.addFilter(_not_the_fallback)
    try:
        yield
    finally:
        log.removeFilter(_not_the_fallback)


def even_cap(cap: int) -> int:
    """A frame cap as Qwen's families take it: floored to an even count, at least 2."""
    return max(2, cap - cap % 2)


def _frame_count(file: Path) -> int:
    decord = _decord()

    return len(decord.VideoReader(str(file)))


def _decode_single(file: Path, settings, unit: int, n: int) -> Decoded:
    """A one-frame video file, which qwen-vl-utils cannot sample (it asks for at least 2 frames,
    then falls back to torchvision's removed ``read_video``): its frame repeated ``n`` times
    (2, or the exact count a fixed-count family asks for, as ``plan`` counts), sized like a
    frame list's."""
    import torch

    vr = _decord().VideoReader(str(file))
    frame = torch.from_numpy(vr[0].asnumpy()).permute(2, 0, 1)
    frames = _resize(frame.unsqueeze(0).repeat(n, 1, 1, 1), settings, unit)
    frames = frames.round().clamp(0, 255).to(torch.uint8)
    return Decoded(frames, float(vr.get_avg_fps() or settings.fps), [0] * frames.shape[0], 1)


def plan(video: Video, settings, unit: int, fixed: bool = False) -> tuple[int, int, int]:
    """``(frames, height, width)`` that ``decode`` will give, from headers only (a file: decord
    reads the container's frame count and rate and decodes one frame for its size; frames: the
    first frame's header). For length estimates (packing, length grouping)."""
    from qwen_vl_utils.vision_process import smart_nframes

    if video.file is not None:
        decord = _decord()

        vr = decord.VideoReader(str(video.file))
        total, native = len(vr), vr.get_avg_fps()
        h, w = vr[0].shape[:2]
        if fixed:
            n = settings.max_frames
        elif total < 2:  # one frame, repeated to a temporal patch (``_decode_single``)
            n = 2
        else:
            cap = settings.max_frames
            n = smart_nframes({"fps": settings.fps, "min_frames": min(settings.min_frames, cap),
                               "max_frames": cap}, total_frames=total, video_fps=native)
    else:
        from vldft.data import open_image

        with open_image(video.frames[0]) as im:
            w, h = im.size
        n = settings.max_frames if fixed else min(len(video.frames), even_cap(settings.max_frames))
        n += 0 if fixed else n % 2
    rh, rw = _frame_size(n, h, w, settings, unit)
    return n, rh, rw


def min_pixels(settings, unit: int) -> int:
    """The per-frame pixel floor: ``settings.min_pixels``, else qwen-vl-utils' (128 tokens'
    worth), lowered to ``max_pixels`` where that is smaller (qwen-vl-utils would stop with
    "max_pixels ... must be greater than or equal to min_pixels")."""
    from qwen_vl_utils.vision_process import VIDEO_MIN_TOKEN_NUM

    if settings.min_pixels:
        return settings.min_pixels
    floor = VIDEO_MIN_TOKEN_NUM * unit * unit
    return min(floor, settings.max_pixels or floor)


def _frame_size(n: int, h: int, w: int, settings, unit: int) -> tuple[int, int]:
    from qwen_vl_utils.vision_process import FRAME_FACTOR, VIDEO_MAX_TOKEN_NUM, smart_resize

    lo = min_pixels(settings, unit)
    budget = settings.max_tokens * unit * unit / n * FRAME_FACTOR
    hi = max(min(VIDEO_MAX_TOKEN_NUM * unit * unit, budget), int(lo * 1.05))
    if settings.max_pixels:
        hi = min(hi, settings.max_pixels)
    return smart_resize(h, w, factor=unit, min_pixels=lo, max_pixels=hi)


def _resize(frames, settings, unit: int):
    """qwen-vl-utils' frame policy for frames given as images (its own list path pre-resizes
    each frame at twice the unit): one size for the clip, a multiple of ``unit`` within the
    per-frame bounds and the clip's token budget."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    n, _, h, w = frames.shape
    rh, rw = _frame_size(n, h, w, settings, unit)
    return resize(frames, [rh, rw], interpolation=InterpolationMode.BICUBIC,
                  antialias=True).float()
