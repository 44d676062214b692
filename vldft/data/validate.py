"""Check every training source of a config before training: ``check_sources(cfg)``.

    python -m vldft.datatool validate configs/demo.yaml [key=value ...] [--max-samples N]

Each source (``cfg.all_sources()``, plus ``data.heldout_file``) is read with
``on_error="skip"``, so every bad row is found, not only the first; the rows that survive are
then opened image by image and, when an ``encode`` check is given, encoded for training
(``vldft.datatool.validate`` passes the training ``Collator`` with the config's
``data.max_length`` / ``overlong`` / ``train_on``; the collator sits above this data layer).
Findings are counted per source and reason, each with example locations (file, line or row, id).

| reason          | meaning                                                                  |
|-----------------|--------------------------------------------------------------------------|
| missing_file    | the data file / folder does not exist                                    |
| bad_source      | the source cannot be read as its format (undetectable, no rows, bad split)|
| bad_json        | a line (JSONL) or the file (JSON) is not valid JSON or not valid UTF-8     |
| bad_row         | a row is not an object of the expected shape (wrong types)               |
| missing_column  | a required column / key is missing; the closest existing one is named    |
| bad_content     | a content part is malformed / unsupported (image / video in an answer)   |
| unknown_role    | a role other than system / user / assistant (human / gpt accepted)       |
| no_assistant    | no assistant turn: nothing to train on                                   |
| empty_assistant | an assistant turn without text                                           |
| empty_turn      | a user / system turn with neither text nor image                         |
| bad_order       | turns do not alternate user / assistant, or a system turn is not first   |
| ends_with_user  | the conversation ends with an unanswered user turn                       |
| image_count     | number of image placeholders != number of images                         |
| image_missing   | an image file does not exist (or is a URL)                               |
| image_outside_root | an image path resolves outside the image root (allow_outside_root off) |
| image_corrupt   | an image cannot be opened and fully decoded                              |
| image_option    | an image part's key is not supported (resized_*, unknown) or invalid;    |
|                 | its min / max_pixels for a LLaVA family (found when encoding)            |
| video_count     | number of video placeholders != number of videos                         |
| video_missing   | a video file / frame / frame folder does not exist (or is a URL)         |
| video_corrupt   | a video file decord cannot open, or a frame that cannot be decoded       |
| video_option    | a clip's per-clip key (fps, nframes, ...) is not supported or invalid    |
| bad_answer      | invalid reference answer (a Geometry3K letter outside the choices)       |
| too_long        | over data.max_length with data.overlong skip / error                     |
| image_cut       | truncating to data.max_length would cut an image block (skipped)          |
| video_cut       | a video cannot be shortened by frames to fit data.max_length, and        |
|                 | truncating would cut into it (skipped)                                   |
| truncated_empty | no trained token left after truncation (skipped)                         |
| encode_error    | the collator rejected the sample (template / tokenizer mismatch)         |
| truncated       | WARNING only: over data.max_length, the response is truncated            |
| video_shortened | WARNING only: over data.max_length, the videos get fewer frames          |

``ValidationReport.ok`` is true when there are no findings other than warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vldft.config import Config, SourceConfig
from vldft.data import WARNINGS, DataError, Sample, image_name, open_image, strict_images
from vldft.data.formats import read_source
from vldft.data.skips import SkipReport
from vldft.data.video import video_problem


class ValidationReport(SkipReport):
    """Findings per (source, reason) plus rows read / samples checked per source."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, int] = {}  # rows read per source (good + bad)
        self.checked: dict[str, int] = {}  # samples that went through image / encode checks
        self.tokens: dict[str, list[int]] = {}  # encoded lengths per source

    @property
    def problems(self) -> int:
        return sum(n for (_, reason), n in self.counts.items() if reason not in WARNINGS)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def summary(self, title: str = "findings") -> str:
        head = [f"validation: {'OK' if self.ok else 'FAILED'} - {sum(self.rows.values())} rows "
                f"in {len(self.rows)} sources, {self.problems} problems, "
                f"{self.total - self.problems} warnings"]
        for source, n in self.rows.items():
            lens = self.tokens.get(source)
            toks = f", tokens min {min(lens)} / max {max(lens)}" if lens else ""
            head.append(f"  {source}: {n} rows, {self.checked.get(source, 0)} checked in "
                        f"depth{toks}")
        return "\n".join(head + ([super().summary(title)] if self.counts else []))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(ok=self.ok, problems=self.problems, rows=self.rows, checked=self.checked,
                   max_tokens={s: max(v) for s, v in self.tokens.items() if v})
        return out


def check_images(sample: Sample) -> tuple[str, str] | None:
    """None if every image opens and decodes, else (image, message) of the first that fails
    (truncated files fail too: ``strict_images``)."""
    with strict_images():
        for k, img in enumerate(sample.images):
            try:
                im = open_image(img)
                im.load()
            except Exception as e:  # PIL: OSError, SyntaxError, ValueError, DecompressionBomb
                return image_name(img), f"image {k} ({image_name(img)}) cannot be decoded: {e}"
    return None


def video_corrupt(sample: Sample) -> tuple[str, str] | None:
    """None if every video of ``sample`` opens (a file: decord reads it, ``video_problem``; a
    frame list: each frame decodes fully, as an image), else (name, message) of the first."""
    for k, video in enumerate(sample.videos):
        if video.frames:
            frames = Sample(sample.id, [], list(video.frames))
            if (bad := check_images(frames)) is not None:
                frame = bad[1].replace("image ", "frame ", 1)
                return video.name, f"video {k} ({video.name}): {frame}"
        elif (why := video_problem(video)) is not None:
            return video.name, f"video {k} ({video.name}) cannot be opened ({why})"
    return None


def media_problem(sample: Sample) -> tuple[str, str, str] | None:
    """None if every image and video of ``sample`` decodes (``check_images``,
    ``video_corrupt``), else (reason, image or video name, message) of the first that does not:
    ``image_corrupt`` or ``video_corrupt``."""
    if (bad := check_images(sample)) is not None:
        return "image_corrupt", *bad
    if (bad := video_corrupt(sample)) is not None:
        return "video_corrupt", *bad
    return None


def _sources(cfg: Config) -> list[SourceConfig]:
    sources = cfg.all_sources()
    if cfg.data.heldout_file:
        label = "heldout"
        sources.append(SourceConfig(path=cfg.data.heldout_file, format="normalized",
                                    name=label))
    return sources


# (reason or None, message, token count) of encoding one sample for training
EncodeCheck = Callable[[Sample], tuple[str | None, str, int | None]]


def check_sources(cfg: Config, max_samples: int | None = None,
                  encode: EncodeCheck | None = None) -> ValidationReport:
    """Check all sources of ``cfg``: read every row, open every image of up to ``max_samples``
    samples per source (None: all) and, with ``encode``, encode those samples too."""
    report = ValidationReport()
    base = Path(cfg.base_dir)
    for src in _sources(cfg):
        label, before = src.label, report.total
        try:
            samples = read_source(src, base, on_error="skip", report=report)
        except DataError as e:  # source-level (file missing, unreadable, unknown format)
            report.add_error(label, e, src.path)
            report.rows[label] = 0
            continue
        report.rows[label] = len(samples) + report.total - before
        checked = samples if max_samples is None else samples[:max_samples]
        report.checked[label] = len(checked)
        lengths = report.tokens.setdefault(label, [])
        for s in checked:
            where = f"{s.origin} (id {s.id})"
            problem = media_problem(s)
            if problem:
                reason, name, message = problem
                report.add(label, where, reason, message, s.id, name)
                continue
            if encode is None:
                continue
            reason, message, n = encode(s)
            if n is not None:
                lengths.append(n)
            if reason:
                report.add(label, where, reason, message, s.id)
    return report
