"""The one owner of label masking: Sample -> input_ids / labels / pixel tensors -> padded batch.

How labels are made (``Collator.encode``):
1. Render the whole conversation with the checkpoint's chat template. For each trained assistant
   turn i, render ``messages[:i]`` + generation prompt (P) and ``messages[:i+1]`` (S); P must be a
   prefix of S and S of the whole text. The turn's trained characters are its text, which must
   follow P after at most whitespace, plus the end-of-turn string (appended when the template has
   none, as LLaVA-1.5's). Spans come from these offsets, never from searching for "assistant".
2. Tokenize the text with offsets; a token is trained iff its characters lie in a trained span
   (a token may also start with whitespace just before a span: SentencePiece's "▁The").
3. Run the processor on the same text + images + videos: it expands each image placeholder into
   N tokens, each video's template tokens (``Adapter.video_region``) into its frames (Qwen3-VL:
   per-frame timestamps, vision start / end and pad tokens). Every token of an expansion gets
   -100 and every other token must match one-to-one, else the sample is rejected with an error
   naming it. A sample over ``data.max_length`` with videos is first shortened by frames
   (decoded again with fewer frames: never cut inside a frame), then truncated as any other;
   one whose truncation would cut into a video is skipped (``video_cut``).
4. Verify by decoding: the trained tokens of each span decode to exactly its expected text.
Everything else (system prompt, user turns, role headers, image and vision start/end tokens,
padding) is -100.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vldft.config import Config, VideoSettings, source_pixels
from vldft.data import Sample, has_image_options, image_bounds, image_name
from vldft.progress import prog_name

if TYPE_CHECKING:  # torch is imported where tensors are made (an adapter has loaded it by then),
    import torch  # so this module, `vldft-collate --help` and `vldft-data` load without it

    from vldft.adapters.base import Adapter

IGNORE = -100
# held-out controls on the frames of every video (vldft.heldout --controls): one frame shown for
# the whole clip, or the frames in a seeded random order; a model that uses time falls to chance
VIDEO_CONTROLS = ("frozen_frame", "shuffled_frames")


class SampleError(ValueError):
    """A sample that cannot be encoded correctly; the message names it. ``reason``: a code of
    ``vldft.data.REASONS`` (``encode_error``, ``image_missing``, ``image_corrupt``); ``image``:
    the image that failed, when one did."""

    def __init__(self, message: str, reason: str = "encode_error",
                 image: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.image = reason, image


@dataclass
class Encoded:
    sample_id: str
    input_ids: torch.Tensor  # [T] long
    labels: torch.Tensor  # [T] long, IGNORE where not trained
    extras: dict[str, torch.Tensor]  # processor outputs besides ids/mask (pixel_values, ...)
    truncated: bool = False
    shortened: bool = False  # its videos were sampled with fewer frames to fit max_length


@dataclass
class Skipped:
    sample_id: str
    reason: str  # a reason code of vldft.data.REASONS: too_long, image_cut, video_cut,
    # truncated_empty
    source: str = ""
    origin: str = ""  # where the sample was read (Sample.origin: "file:line")
    image: str | None = None  # the image that caused it, when one did
    message: str = ""
    fatal: bool = False  # data.on_error=raise: the training loop stops on it (with its location)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _text_of(msg: dict) -> str:
    if any(p["type"] != "text" for p in msg["content"]):
        raise SampleError("assistant turns with images are not supported")
    return "".join(p["text"] for p in msg["content"])


class Collator:
    """Encodes samples for one adapter; ``__call__`` pads a list of them into a batch."""

    def __init__(self, adapter: Adapter, max_length: int = 2048, overlong: str = "truncate",
                 train_on: str = "all",
                 pixels: dict[str, tuple[int | None, int | None]] | None = None,
                 video: VideoSettings | None = None, video_control: str | None = None) -> None:
        self.adapter = adapter
        self.pixels = pixels or {}  # per-source (min_pixels, max_pixels) overrides
        self.max_length = max_length
        self.overlong = overlong
        self.train_on = train_on
        self.video = video or VideoSettings()  # data.video: how clips become frames
        if video_control not in (None, *VIDEO_CONTROLS):
            raise ValueError(f"video_control must be one of {VIDEO_CONTROLS}, got "
                             f"{video_control!r}")
        self.video_control = video_control  # a held-out control (vldft.heldout): frames changed

    @classmethod
    def from_config(cls, adapter: Adapter, cfg: Config) -> Collator:
        """The collator training builds from ``cfg``: ``data.max_length``, ``data.overlong``,
        ``data.train_on`` and each source's pixel bounds (``config.source_pixels``)."""
        d = cfg.data
        return cls(adapter, d.max_length, d.overlong, d.train_on, source_pixels(cfg), d.video)

    # -- step 1: character spans -------------------------------------------------------------
    def render_with_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int, str]]]:
        """Full text (with inserted end-of-turn strings) and trained spans (start, end, text)."""
        a, eot = self.adapter, self.adapter.end_of_turn
        full = a.render(messages)
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        trained = set(turns[-1:] if self.train_on == "last" else turns)
        pieces, spans, pos, out_len = [], [], 0, 0  # pos indexes `full`, out_len the output
        for i in turns:  # every answer gets its end-of-turn; only `trained` ones get a span
            prefix = a.render(messages[:i], add_generation_prompt=True)
            upto = a.render(messages[: i + 1])
            if not (upto.startswith(prefix) and full.startswith(upto)):
                why = getattr(a, "multi_turn_refused", "") if len(turns) > 1 else ""
                raise SampleError(f"turn {i}: {why or 'the chat template is not prefix-stable'}")
            content = _text_of(messages[i]).lstrip()
            body = upto[len(prefix):]
            lead = len(body) - len(body.lstrip())
            if not content or not body[lead:].startswith(content):
                raise SampleError(f"turn {i}: assistant text not found after the template prefix")
            end = len(prefix) + lead + len(content)
            pieces.append(full[pos:end])
            out_len += end - pos
            pieces.append(eot)  # the template's own end-of-turn, or an appended one
            out_len += len(eot)
            pos = end + len(eot) if full.startswith(eot, end) else end
            if i in trained:
                spans.append((out_len - len(content) - len(eot), out_len, content + eot))
        pieces.append(full[pos:])
        return "".join(pieces), spans

    # -- steps 2-4 ---------------------------------------------------------------------------
    def encode(self, sample: Sample) -> Encoded | Skipped:
        try:
            return self._encode(sample)
        except SampleError as e:
            raise SampleError(f"sample {sample.id}: {e}", e.reason, e.image) from None

    def _encode(self, sample: Sample) -> Encoded | Skipped:
        a = self.adapter
        text, spans = self.render_with_spans(sample.messages)
        enc = a.tokenizer(text, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        token_labels = [self._label(tid, s, e, text, spans)
                        for tid, (s, e) in zip(ids, offsets, strict=True)]

        n_placeholders = ids.count(a.image_token_id)
        if n_placeholders != len(sample.images):
            raise SampleError(f"{n_placeholders} image placeholders ({a.image_token!r}) in the "
                              f"rendered text but {len(sample.images)} images")
        if sample.videos and not a.video_token:
            raise SampleError(f"model family {a.family!r} does not take video ({len(sample.videos)}"
                              " videos in the sample)")
        if sample.videos and ids.count(a.video_token_id) != len(sample.videos):
            raise SampleError(f"{ids.count(a.video_token_id)} video placeholders "
                              f"({a.video_token!r}) in the rendered text but "
                              f"{len(sample.videos)} videos")
        px = self.pixels.get(sample.source)
        own = has_image_options(sample.messages)  # an image part's min_pixels / max_pixels
        if own and not a.supports_pixel_bounds:
            raise SampleError(f"per-image min_pixels / max_pixels: model family {a.family!r} "
                              "has no pixel bounds (its images are resized to the tower's "
                              "size)", "image_option")
        images = []
        for img, bounds in zip(sample.images, image_bounds(sample.messages, len(sample.images),
                                                            px), strict=True):
            try:
                images.append(a.load_image(img, bounds))
            except Exception as e:  # missing / corrupt / truncated file (OSError, SyntaxError..)
                missing = isinstance(img, (str, Path)) and not Path(img).is_file()
                raise SampleError(f"image {image_name(img)} cannot be opened: {e}",
                                  "image_missing" if missing else "image_corrupt",
                                  image_name(img)) from None
        if own and images:  # each image has its size: the processor's bounds keep every one
            areas = [im.width * im.height for im in images]
            px = (min(areas), max(areas))
        frames_cap, shortened = None, False
        while True:
            videos = [self.load_video(v, sample.id, frames_cap) for v in sample.videos]
            try:
                out = (a.process(text, images, px, videos=videos) if videos
                       else a.process(text, images, px))
            except ValueError as e:
                raise SampleError(f"processor rejected the sample: {e}") from None
            n = out["input_ids"].shape[1]
            if n <= self.max_length or not videos or a.video_frames_fixed:
                break
            frames = max(v.frames.shape[0] for v in videos)
            video_tokens = sum(a.video_token_counts(out))
            # frames to keep so that the video tokens shrink by the excess (never below 2)
            keep = int(frames * (1 - (n - self.max_length) / max(video_tokens, 1)))
            keep = min(keep - keep % 2, frames - 2)
            if keep < 2:  # the estimate is below 2: the fewest frames, then (still too
                if frames <= 2:  # long) truncation / skip below decides
                    break
                keep = 2
            frames_cap, shortened = keep, True
        full_ids = out.pop("input_ids")[0]
        out.pop("attention_mask", None)
        labels = self._expand(ids, token_labels, full_ids.tolist(),
                              a.video_token_counts({"input_ids": full_ids[None], **out}))
        import torch

        labels_t = torch.tensor(labels, dtype=torch.long)
        self._verify(full_ids, labels_t, spans)

        truncated = False
        if len(full_ids) > self.max_length:
            is_image = (full_ids == a.image_token_id).nonzero()
            # a video is never cut: after the shortening, what is left over is truncated
            is_video = (full_ids == a.video_token_id).nonzero() if sample.videos else is_image[:0]
            if self.overlong == "error":
                raise SampleError(f"{len(full_ids)} tokens > data.max_length={self.max_length}",
                                  "too_long")
            if self.overlong == "skip":
                return Skipped(sample.id, "too_long", sample.source, sample.origin,
                               message=f"{len(full_ids)} tokens > data.max_length="
                               f"{self.max_length}")
            # keep the token after the last image / video run too (Qwen's <|vision_end|>)
            if len(is_video) and int(is_video.max()) + 1 >= self.max_length:
                frames = max(v.frames.shape[0] for v in videos)
                return Skipped(sample.id, "video_cut", sample.source, sample.origin,
                               message=f"a video that cannot be shortened by frames to fit "
                               f"data.max_length={self.max_length} ({len(full_ids)} tokens with "
                               f"{frames} frames a clip): truncating would cut into it")
            if len(is_image) and int(is_image.max()) + 1 >= self.max_length:
                return Skipped(sample.id, "image_cut", sample.source, sample.origin,
                               message="truncating to data.max_length would cut an image")
            full_ids, labels_t = full_ids[: self.max_length], labels_t[: self.max_length]
            truncated = True
            for key, value in out.items():  # per-token extras (mm_token_type_ids)
                if value.dim() == 2 and value.shape[0] == 1:
                    out[key] = value[:, : self.max_length]
            if not (labels_t != IGNORE).any():
                return Skipped(sample.id, "truncated_empty", sample.source, sample.origin,
                               message="no trained token left after truncation")
        return Encoded(sample.id, full_ids, labels_t, out, truncated, shortened)

    def load_video(self, video, sample_id: str, max_frames: int | None = None):
        """Decode one video (``data.video``), then apply the held-out control, if any."""
        try:
            dec = self.adapter.load_video(video, self.video, max_frames)
        except Exception as e:  # decord / PIL errors: a corrupt or unreadable clip
            missing = video.file is not None and not Path(video.file).exists()
            raise SampleError(f"video {video.name} cannot be decoded: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                              "video_missing" if missing else "video_corrupt",
                              video.name) from None
        if self.video_control == "frozen_frame":  # the middle frame, shown for the whole clip
            mid = dec.frames.shape[0] // 2
            dec.frames = dec.frames[mid:mid + 1].expand_as(dec.frames).clone()
        elif self.video_control == "shuffled_frames":
            import random

            import torch

            order = list(range(dec.frames.shape[0]))
            random.Random(f"shuffled_frames:{sample_id}").shuffle(order)
            dec.frames = dec.frames[torch.tensor(order)]
        return dec

    def _label(self, tid: int, s: int, e: int, text: str, spans) -> int:
        for start, end, _ in spans:
            if start <= s and e <= end and e > s:
                return tid
            if s < start < e:  # straddles the start: allowed only for leading whitespace
                if text[s:start].isspace() and e <= end:
                    return tid
                raise SampleError(f"token {text[s:e]!r} straddles the start of a response")
            if s < end < e:
                raise SampleError(f"token {text[s:e]!r} straddles the end of a response")
        return IGNORE

    def _expand(self, ids: list[int], labels: list[int], full: list[int],
                video_counts: list[int] | None = None) -> list[int]:
        """Map labels of the unexpanded tokens onto the processor's expanded sequence: every
        token of an image / video expansion gets -100, every other token must match."""
        a = self.adapter
        img, vid, out, j = a.image_token_id, a.video_token_id, [], 0
        region = [a.tokenizer.convert_tokens_to_ids(t) for t in a.video_region] or [vid]
        lead = region.index(vid) if vid in region else 0
        counts = list(video_counts or [])
        k = 0
        while k < len(ids):
            tid, lab = ids[k], labels[k]
            if tid == img:
                if k + 1 < len(ids) and ids[k + 1] == img:
                    raise SampleError("two adjacent image placeholders cannot be told apart")
                run = 0
                while j < len(full) and full[j] == img:
                    run, j = run + 1, j + 1
                if run == 0:
                    raise SampleError("processor did not expand an image placeholder")
                out.extend([IGNORE] * run)
                k += 1
                continue
            if vid is not None and ids[k:k + len(region)] == region and counts:
                # one video: its template tokens became frames (Qwen3-VL: "<t seconds>" text,
                # vision start / end per frame); consume pad tokens up to this video's count,
                # then the region's tokens after the pad (each matched in order)
                want, seen, start = counts.pop(0), 0, j
                while j < len(full) and seen < want:
                    seen += full[j] == vid
                    j += 1
                tail = region[lead + 1:]
                if seen != want or full[j:j + len(tail)] != tail:
                    raise SampleError("processor did not expand a video placeholder")
                j += len(tail)
                out.extend([IGNORE] * (j - start))
                k += len(region)
                continue
            if j >= len(full) or full[j] != tid:
                raise SampleError("processor tokenization differs from the tokenizer's")
            out.append(lab)
            j += 1
            k += 1
        if j != len(full):
            raise SampleError("processor output has extra tokens")
        return out

    def _verify(self, ids: torch.Tensor, labels: torch.Tensor, spans) -> None:
        """Decode each contiguous trained run; it must equal its span's expected text."""
        trained = (labels != IGNORE).tolist()
        runs, cur = [], []
        for k, flag in enumerate(trained):
            if flag:
                cur.append(k)
            elif cur:
                runs.append(cur)
                cur = []
        if cur:
            runs.append(cur)
        if len(runs) != len(spans):
            raise SampleError(f"{len(runs)} trained runs for {len(spans)} responses")
        for run, (_, _, want) in zip(runs, spans, strict=True):
            got = self.adapter.tokenizer.decode(ids[run].tolist(), skip_special_tokens=False)
            if _nfc(got.lstrip()) != _nfc(want):  # tokenizers may NFC-normalise
                raise SampleError(f"trained tokens decode to {got!r}, expected {want!r}")

    # -- batching ----------------------------------------------------------------------------
    def __call__(self, items: list[Encoded | Skipped]) -> dict:
        """Right-pad to the longest sample; concatenate image tensors along dim 0."""
        kept = [it for it in items if isinstance(it, Encoded)]
        skipped = [it for it in items if isinstance(it, Skipped)]
        batch: dict = {"skipped": skipped, "n_truncated": sum(it.truncated for it in kept),
                       "n_shortened": sum(it.shortened for it in kept)}
        if not kept:
            return batch
        import torch

        from vldft.packing import PER_MEDIA_KEYS, cat_media

        T = max(len(it.input_ids) for it in kept)
        B = len(kept)
        input_ids = torch.full((B, T), self.adapter.pad_token_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE, dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        for b, it in enumerate(kept):
            n = len(it.input_ids)
            input_ids[b, :n], labels[b, :n], attention[b, :n] = it.input_ids, it.labels, 1
        batch.update(input_ids=input_ids, labels=labels, attention_mask=attention)
        keys = dict.fromkeys(k for it in kept for k in it.extras)
        for key in keys:
            values = [it.extras[key] for it in kept if key in it.extras]
            per_token = values[0].dim() == 2 and values[0].shape[0] == 1
            if per_token and key not in PER_MEDIA_KEYS:
                padded = torch.zeros((B, T), dtype=values[0].dtype)  # per-token extra
                for b, it in enumerate(kept):
                    v = it.extras[key][0]
                    padded[b, : len(v)] = v  # every sample has per-token extras
                batch[key] = padded
            else:  # per image / video: in order (LLaVA-OneVision tiles zero-padded)
                batch[key] = cat_media(key, values)
        return batch


def token_runs(enc: Encoded, image_token_id: int, video_token_id: int | None = None
               ) -> Iterator[tuple[str, list[int]]]:
    """The sample's tokens as maximal runs ``(kind, ids)`` in order; ``kind`` is ``"train"``
    (label kept), ``"mask"`` (label -100), ``"image"`` or ``"video"`` (placeholder tokens)."""
    ids, labels = enc.input_ids.tolist(), enc.labels.tolist()
    kinds = ["image" if t == image_token_id else "video" if t == video_token_id
             else "train" if lab != IGNORE else "mask" for t, lab in zip(ids, labels, strict=True)]
    k = 0
    while k < len(ids):
        j = k
        while j < len(ids) and kinds[j] == kinds[k]:
            j += 1
        yield kinds[k], ids[k:j]
        k = j


def show(enc: Encoded, tokenizer, image_token_id: int, video_token_id: int | None = None) -> str:
    """Debug view of one encoded sample: trained tokens inside [[...]], image / video runs
    abbreviated to ``<token>xN``, masked tokens as they are."""
    out = []
    for kind, ids in token_runs(enc, image_token_id, video_token_id):
        if kind in ("image", "video"):
            out.append(f"{tokenizer.decode(ids[:1])}x{len(ids)}")
        else:
            text = tokenizer.decode(ids, skip_special_tokens=False)
            out.append(f"[[{text}]]" if kind == "train" else text)
    return "".join(out)


# -- command line: python -m vldft.collate / vldft-collate --------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Print how CONFIG's first samples are encoded (trained tokens in ``[[...]]``)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog=prog_name("vldft.collate", "vldft-collate"), description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Shows the first --n samples of each source as the training loop encodes them: "
               "trained tokens inside [[...]], image-token runs as <token>xN, the rest masked. "
               "A histogram of lengths over more samples: python -m vldft.datatool inspect.")
    parser.add_argument("config", help="YAML config (the one you would train with)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                        help="optional overrides of the config's values (as for vldft.train)")
    parser.add_argument("--n", type=int, default=2, help="samples shown per source (default 2)")
    parser.add_argument("--source", default=None, help="only the source with this name")
    args = parser.parse_intermixed_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    from vldft.progress import quiet_if_logging

    quiet_if_logging()  # a log file: no \r-redrawn progress bars

    from vldft.adapters import load_adapter
    from vldft.config import ConfigError, load_config
    from vldft.data import DataError
    from vldft.data.formats import read_source
    from vldft.data.skips import SkipReport

    try:
        cfg = load_config(args.config, args.overrides)
        from vldft.data.download import require_data

        # a copy of other rows than asked, or none downloaded (the download command to run);
        # the preview does not decontaminate, so benchmark copies are not asked for
        require_data(cfg, args.overrides, benchmarks=False)
        sources = [s for s in cfg.all_sources() if args.source in (None, s.label)]
        if not sources:
            raise ConfigError(f"--source {args.source}: no such source; sources: "
                              f"{[s.label for s in cfg.all_sources()]}")
        adapter = load_adapter(cfg.model)
        coll = Collator.from_config(adapter, cfg)
        for src in sources:
            rows = read_source(src, Path(cfg.base_dir), cfg.data.on_error, SkipReport())
            for s in rows[: args.n]:
                try:
                    enc = coll.encode(s)
                except SampleError as e:  # training's data.on_error: skip counts it, raise stops
                    if cfg.data.on_error != "skip":
                        raise
                    print(f"--- {s.source} / {s.id}: skipped ({e.reason}: {e})")
                    continue
                if isinstance(enc, Skipped):
                    print(f"--- {s.source} / {s.id}: skipped ({enc.reason})")
                    continue
                n_train = int((enc.labels != IGNORE).sum())
                print(f"--- {s.source} / {s.id}: {len(enc.input_ids)} tokens, {n_train} trained")
                print(show(enc, adapter.tokenizer, adapter.image_token_id,
                           adapter.video_token_id))
    except (ConfigError, DataError, SampleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
