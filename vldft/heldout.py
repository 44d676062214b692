"""Held-out scoring after training: teacher-forced CE / objective, and answer accuracy.

Accuracy uses greedy generation from the prompt (every turn before the last assistant turn,
plus the generation prompt) and scores the output against the sample's ``answer`` field with the
rule-based scorer the lmms-eval tasks use (``vldft.scoring``: ``Answer: X``, ``\\boxed{}``,
numbers with tolerance, ...). ``generate_messages`` is the one greedy, left-padded generation
path, shared with vldft's lmms-eval model class. It exists so the demo shows more than a
falling loss: DFT's loss can fall while the model collapses
(docs/design.md#measured-on-a-tiny-qwen25-vl-on-a-cpu). Benchmark
evaluation lives in the lmms-eval bridge (``python -m vldft.eval``).
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

import torch

from vldft.adapters.base import Adapter
from vldft.collate import VIDEO_CONTROLS, Collator, Encoded
from vldft.data import IMAGE_KEYS, Sample, fail, has_image_options, image_bounds, image_parts
from vldft.device import model_device, to_device
from vldft.objectives import ObjectiveSpec, as_spec, compute_objective
from vldft.scoring import score


@torch.no_grad()
def score_part(adapter: Adapter, collator: Collator, samples: list[Sample],
               batch_size: int = 16, max_new_tokens: int = 64,
               objective: ObjectiveSpec | str = "dft") -> dict:
    """Raw sums over ``samples`` (each rank scores its share; :func:`combine` merges the parts
    into {"n", "n_scored_ce", "n_skipped", "ce", "loss", "mean_p", "accuracy",
    "accuracy_by_kind", "accuracy_strict", "accuracy_strict_by_kind", "examples"}).
    ``accuracy_strict`` counts a reply only when it states its answer (``Answer: X``,
    ``\\boxed{}``: ``vldft.scoring``'s strict mode); broken text that happens to end in the
    right number is right under ``accuracy``, wrong under ``accuracy_strict``.

    For asft the held-out "loss" is its DFT part (the KL anchor needs the reference model).
    Samples ``check_image_keys`` refuses raise before the model runs."""
    check_image_keys(samples, adapter)
    spec = as_spec(objective)
    if spec.name == "asft":
        spec = dataclasses.replace(spec, name="dft")
    model = adapter.model
    was_training = model.training
    model.eval()
    device = model_device(model)
    part = {"n": len(samples), "n_skipped": 0, "loss_sum": 0.0, "ce_sum": 0.0, "p_sum": 0.0,
            "n_tokens": 0, "n_scored_ce": 0, "correct": 0, "correct_strict": 0, "scored": 0,
            "per_kind": {},
            "examples": []}
    for i in range(0, len(samples), batch_size):
        items = [collator.encode(s) for s in samples[i: i + batch_size]]
        kept = [it for it in items if isinstance(it, Encoded)]
        part["n_skipped"] += len(items) - len(kept)
        part["n_scored_ce"] += len(kept)
        if not kept:
            continue
        batch = collator(kept)
        inputs = to_device(batch, device)
        labels = inputs.pop("labels")
        head = adapter.output_layer()
        out = compute_objective(adapter.hidden_states(inputs), head.weight, labels, spec,
                                bias=head.bias)
        part["loss_sum"] += out.loss_sum.item()
        part["ce_sum"] += out.stats["ce_sum"].item()
        part["p_sum"] += out.stats["p_sum"].item()
        part["n_tokens"] += out.n_tokens

    scored = [s for s in samples if s.answer is not None]
    for i in range(0, len(scored), batch_size):
        chunk = scored[i: i + batch_size]
        outputs = generate(adapter, chunk, max_new_tokens, device, collator)
        for s, text in zip(chunk, outputs, strict=True):
            _, ok = score(text, s.answer)
            _, ok_strict = score(text, s.answer, strict=True)
            part["correct"] += ok
            part["correct_strict"] += ok_strict
            part["scored"] += 1
            hits = part["per_kind"].setdefault(s.kind or "all", [0, 0, 0])  # right, n, strict
            hits[0], hits[1], hits[2] = hits[0] + ok, hits[1] + 1, hits[2] + ok_strict
            if len(part["examples"]) < 5:
                part["examples"].append({"id": s.id, "output": text, "answer": s.answer,
                                         "correct": ok})
    model.train(was_training)
    return part


def combine(parts: list[dict]) -> dict:
    """Merge :func:`score_part` results (one per rank) into averages (``loss`` / ``ce`` /
    ``mean_p`` None when no token was scored: every sample skipped, not a perfect score)."""
    tot = {k: sum(p[k] for p in parts) for k in ("n", "n_skipped", "n_scored_ce", "loss_sum",
                                                  "ce_sum", "p_sum", "n_tokens", "correct",
                                                  "correct_strict", "scored")}
    n_tok = tot["n_tokens"]

    def mean(total: float) -> float | None:  # None: no token scored (every sample skipped)
        return total / n_tok if n_tok else None
    kinds: dict[str, list[int]] = {}
    for p in parts:
        for k, counts in p["per_kind"].items():
            kinds[k] = [a + b for a, b in zip(kinds.get(k, [0, 0, 0]), counts, strict=True)]
    return {"n": tot["n"], "n_answered": tot["scored"], "n_scored_ce": tot["n_scored_ce"],
            "n_skipped": tot["n_skipped"],
            "loss": mean(tot["loss_sum"]), "ce": mean(tot["ce_sum"]),
            "mean_p": mean(tot["p_sum"]),
            "accuracy": tot["correct"] / tot["scored"] if tot["scored"] else None,
            "accuracy_by_kind": {k: c / n for k, (c, n, _) in sorted(kinds.items())},
            "accuracy_strict": (tot["correct_strict"] / tot["scored"] if tot["scored"]
                                else None),
            "accuracy_strict_by_kind": {k: c / n for k, (_, n, c) in sorted(kinds.items())},
            "examples": [e for p in parts for e in p["examples"]][:5]}


def check_image_keys(samples: list[Sample], adapter: Adapter | type[Adapter]) -> None:
    """Refuse the held-out set if a sample's image part has ``min_pixels`` / ``max_pixels`` and
    ``adapter``'s family (an adapter or its class) has no pixel bounds: a ``DataError``
    (``image_option``) naming file:line, id and key. Training skips such a sample (or stops, by
    ``data.on_error``) when it encodes it; a held-out set is scored whole or refused, as
    ``load_jsonl`` refuses one with a missing image, never scored with the key ignored."""
    if adapter.supports_pixel_bounds:
        return
    for s in samples:
        for i, msg in enumerate(s.messages):
            key = next((k for p in image_parts([msg]) for k in IMAGE_KEYS if k in p), None)
            if key:
                fail(f"{s.origin or s.id} (id {s.id})", "image_option",
                     f"message {i}: image part: per-image key {key!r} is not supported by "
                     f"model family {adapter.family!r} (no pixel bounds: its images are resized "
                     "to the tower's size); drop the key from the held-out file")


def check_media(samples: list[Sample]) -> None:
    """Refuse the held-out set if an image or video of a sample does not decode
    (``vldft.data.validate.media_problem``): a ``DataError`` (``image_corrupt`` /
    ``video_corrupt``) naming file:line, id and the file, before any model loads. A held-out
    set is scored whole or refused (``load_jsonl`` refuses a missing file); a corrupt clip
    found at the first evaluation ended the run with a traceback."""
    from vldft.data.validate import media_problem

    for s in samples:
        if (problem := media_problem(s)) is not None:
            reason, name, message = problem
            fail(f"{s.origin or s.id} (id {s.id})", reason,
                 f"{message}; fix or drop the row from the held-out file", image=name)


def generate(adapter: Adapter, samples: list[Sample], max_new_tokens: int,
             device: torch.device, collator: Collator | None = None) -> list[str]:
    """Greedy completions of each sample's last assistant turn (batched, left padding). Videos
    are decoded by ``collator`` (its ``data.video`` settings and video control, as in
    training); samples with videos need one. Samples ``check_image_keys`` refuses raise."""
    check_image_keys(samples, adapter)
    convs = []
    for s in samples:
        last = max(i for i, m in enumerate(s.messages) if m["role"] == "assistant")
        before = [p["type"] for m in s.messages[:last] for p in m["content"]]
        n_vid = before.count("video")
        if n_vid and collator is None:
            raise ValueError(f"sample {s.id}: generating for a video needs the collator")
        videos = [collator.load_video(v, s.id) for v in s.videos[:n_vid]] if n_vid else []
        convs.append((s.messages[:last], list(s.images[:before.count("image")]), videos))
    return generate_messages(adapter, convs, max_new_tokens, device)


def generate_messages(adapter: Adapter, convs: list[tuple],
                      max_new_tokens: int, device: torch.device | None = None,
                      **gen_kwargs) -> list[str]:
    """Complete each ``(messages, images)`` or ``(messages, images, videos)`` conversation
    after the generation prompt.

    ``messages`` use vldft's parts (``{"type": "image"}`` / ``{"type": "video"}`` /
    ``{"type": "text", "text"}``); ``images`` (paths or PIL images, one per image part) go
    through ``adapter.load_image``, the training-time policy (Qwen: ``min_pixels`` /
    ``max_pixels``, an image part's own over them; never re-encoded, nor resized again by the
    processor; a family without pixel bounds refuses an image part's own); ``videos`` are
    decoded clips (``Collator.load_video``).
    The batch is left-padded; decoding is greedy unless ``gen_kwargs`` say otherwise
    (``do_sample``, ...)."""
    device = device or model_device(adapter.model)
    prompts, images, videos = [], [], []
    for j, (messages, imgs, *vids) in enumerate(convs):
        prompts.append(adapter.render(messages, add_generation_prompt=True))
        if has_image_options(messages):  # image parts' own min_pixels / max_pixels
            if not adapter.supports_pixel_bounds:
                raise ValueError(f"conversation {j}: per-image 'min_pixels' / 'max_pixels': "
                                 f"model family {adapter.family!r} has no pixel bounds")
            bounds = image_bounds(messages, len(imgs))
        else:
            bounds = [None] * len(imgs)
        images += [adapter.load_image(img, b) for img, b in zip(imgs, bounds, strict=True)]
        videos += vids[0] if vids else []
    kwargs = adapter.video_kwargs(videos)
    if adapter.supports_pixel_bounds and images:  # each image keeps load_image's size
        kwargs["images_kwargs"] = {"size": adapter.keep_size(images)}
    tok = adapter.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    try:
        inputs = adapter.processor(text=[adapter.processor_text(p, videos) for p in prompts],
                                   images=images or None, padding=True,
                                   return_tensors="pt", **kwargs)
    finally:
        tok.padding_side = side
    inputs = to_device(inputs, device)
    gen = {"do_sample": False, **gen_kwargs}
    out = adapter.model.generate(**inputs, max_new_tokens=max_new_tokens,
                                 eos_token_id=adapter.eot_token_id,
                                 pad_token_id=adapter.pad_token_id, **gen)
    new = out[:, inputs["input_ids"].shape[1]:]
    return tok.batch_decode(new, skip_special_tokens=True)


# -- controls: does the model read the picture / use time? -----------------------------------
CONTROLS = ("blank", "shuffled")  # images: replaced in the samples (control_samples)
ALL_CONTROLS = CONTROLS + VIDEO_CONTROLS  # videos: the collator changes the decoded frames


def control_samples(samples: list[Sample], control: str, seed: int = 0) -> list[Sample]:
    """``samples`` with their images replaced, to measure what the answers owe to the picture.

    ``blank``: each image becomes a white one of the same size. ``shuffled``: each sample gets
    the images of another sample with as many images (a seeded cyclic shift of a shuffled
    order within each image count: no sample keeps its own; one with no such partner, and a
    sample without images, is left as it is: :func:`unshuffled` counts them). Kinds
    answerable only from the image should fall to chance under both."""
    if control == "blank":
        from PIL import Image

        from vldft.data import open_image

        return [dataclasses.replace(s, images=[Image.new("RGB", open_image(im).size, "white")
                                               for im in s.images]) for s in samples]
    if control == "shuffled":
        import random

        order = list(range(len(samples)))
        random.Random(seed).shuffle(order)
        donor = {}
        for count in sorted({len(s.images) for s in samples} - {0}):
            group = [i for i in order if len(samples[i].images) == count]  # placeholders match
            donor.update({group[k]: group[(k + 1) % len(group)] for k in range(len(group))})
        return [dataclasses.replace(s, images=list(samples[donor[i]].images)) if i in donor
                else s for i, s in enumerate(samples)]
    raise ValueError(f"unknown image control {control!r}; choose from {CONTROLS}")


def unshuffled(samples: list[Sample]) -> int:
    """How many samples with images the ``shuffled`` control leaves with their own: those no
    other sample matches in image count."""
    counts = collections.Counter(len(s.images) for s in samples if s.images)
    return sum(1 for s in samples if s.images and counts[len(s.images)] == 1)


def accuracy_line(label: str, result: dict) -> str:
    """One console line: overall answer accuracy and per kind, from :func:`combine`'s result
    (``n/a`` when no sample has an ``answer``)."""
    skipped = (f"; {result['n_skipped']} skipped for CE (over data.max_length)"
               if result.get("n_skipped") else "")
    if result["accuracy"] is None:
        return f"[vldft] {label}: accuracy n/a (no sample has an 'answer' field){skipped}"
    kinds = ", ".join(f"{k} {v:.0%}" for k, v in result["accuracy_by_kind"].items())
    return (f"[vldft] {label}: accuracy {result['accuracy']:.1%}{of_answered(result)} "
            f"({kinds}){skipped}")


def of_answered(result: dict) -> str:
    """" of N with an answer (M without)" when some samples have no ``answer`` (the accuracy's
    denominator is the N), else ""."""
    n, answered = result.get("n"), result.get("n_answered")
    if answered is None or n is None or answered >= n:
        return ""
    return f" of {answered} with an answer ({n - answered} without)"


PROG = "python -m vldft.heldout"


def checkpoint_family(path: str | Path) -> str:
    """The vldft family of the checkpoint folder ``path``; a plain-English ``ValueError`` when
    it is not one (a run directory: names its ``final/`` or latest ``checkpoint-N/``)."""
    from vldft.adapters import family_of_checkpoint

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"checkpoint {path}: a file; pass the checkpoint folder, e.g. "
                         f"{folder.parent}" if folder.is_file() else
                         f"checkpoint {path}: no such directory")
    if not (folder / "config.json").is_file():
        saved = sorted((d for d in folder.glob("checkpoint-*") if d.name[11:].isdigit()),
                       key=lambda d: int(d.name[11:]))
        inside = [d for d in (folder / "final", *reversed(saved)) if (d / "config.json").is_file()]
        hint = f" (a run directory? did you mean {inside[0]}?)" if inside else ""
        raise ValueError(f"checkpoint {path}: no config.json here, not a saved checkpoint{hint}")
    return family_of_checkpoint(folder)


def default_controls(samples: list[Sample]) -> list[str]:
    """The controls a set gets when none are asked for: blank and shuffled images for a set
    with images, the video controls for one with videos only, none for text only."""
    if any(s.images for s in samples):
        return list(CONTROLS)
    return list(VIDEO_CONTROLS) if any(s.videos for s in samples) else []


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """CLI: score a checkpoint on a held-out JSONL as is and under image / video controls.
    Returns ``{"images" | "videos": result, control: result, ...}`` (:func:`combine`'s results;
    "videos" names the unchanged run of a set with videos and no images). Argument mistakes
    exit with status 2; a bad held-out file raises ``DataError`` (:func:`cli` says it in a
    line)."""
    import argparse

    from vldft.adapters import FAMILIES, load_adapter
    from vldft.config import (
        ConfigError,
        ModelConfig,
        saved_encoding,
        saved_training_data,
        saved_video_settings,
    )
    from vldft.data import load_jsonl

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Held-out answer accuracy of a checkpoint with the real images / videos and "
                    "under controls. Images: blank (white) or shuffled (another sample's) images; "
                    "a model that reads the picture falls to chance on picture-only questions. "
                    "Videos: frozen_frame (the middle frame for the whole clip) or "
                    "shuffled_frames (the frames in a random order); a model that uses time "
                    "falls to chance on questions whose answer is in the order of the frames "
                    "(python -m vldft.data.synth_video).")
    p.add_argument("checkpoint", help="a saved checkpoint directory (e.g. runs/demo/final)")
    p.add_argument("heldout", help="held-out JSONL in vldft's normalised format")
    p.add_argument("--controls", default=None,
                   help=f"comma-separated controls to run, of {', '.join(ALL_CONTROLS)}, or "
                        "'none' (default: blank,shuffled for a set with images, "
                        "frozen_frame,shuffled_frames for one with videos only, none for text "
                        "only)")
    p.add_argument("--config", default=None,
                   help="training YAML whose data.video settings decode the clips and whose "
                        "data.max_length / overlong / train_on encode the samples, as the "
                        "in-training held-out evaluation does (default: config.yaml of the "
                        "checkpoint's run directory, when there; else 2048 / truncate / all)")
    p.add_argument("--max-samples", type=int, default=0, help="score the first N rows (0: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the shuffled control (shuffled_frames: seeded by sample id)")
    args = p.parse_args(argv)
    for flag, value, low in (("--max-samples", args.max_samples, 0),
                             ("--batch-size", args.batch_size, 1),
                             ("--max-new-tokens", args.max_new_tokens, 1)):
        if value < low:
            p.error(f"{flag} must be >= {low}, got {value}")

    def error(message: str):  # one line, status 2 (argparse's code for a usage error)
        p.exit(2, f"{PROG}: error: {message}\n")

    try:
        saved = saved_training_data(args.checkpoint, args.config)  # the run's YAML, read once
        video = saved_video_settings(args.checkpoint, saved=saved)
        encoding = saved_encoding(saved)
    except (OSError, ValueError) as e:  # a missing file / bad data.video (ConfigError)
        error(f"--config: {e}")
    samples = load_jsonl(args.heldout)
    samples = samples[:args.max_samples] if args.max_samples else samples
    has_images, has_videos = any(s.images for s in samples), any(s.videos for s in samples)
    if has_videos and saved[0] is None:
        print(f"[vldft] note: no config.yaml beside {args.checkpoint} and no --config: clips are "
              "decoded with the default data.video settings, not necessarily training's (pass "
              "--config RUN/config.yaml)", flush=True)
    media = "images and videos" if has_images and has_videos else \
        "videos" if has_videos else "images"  # what the unchanged run is called
    if args.controls is None:
        controls = default_controls(samples)
    else:
        controls = [c.strip() for c in args.controls.split(",")
                    if c.strip() not in ("", "none")]
    for c in controls:
        if c not in ALL_CONTROLS:
            error(f"--controls: unknown control {c!r}; choose from {', '.join(ALL_CONTROLS)}")
        has = any(s.images for s in samples) if c in CONTROLS else any(s.videos for s in samples)
        if not has:
            error(f"--controls {c}: {args.heldout} has no "
                  f"{'images' if c in CONTROLS else 'videos'} to change")
    kept = unshuffled(samples) if "shuffled" in controls else 0
    if kept and kept == sum(1 for s in samples if s.images):  # nothing to swap
        if args.controls is not None:
            error(f"--controls shuffled: no two of the {kept} samples with images have the same "
                  "number of images, so none can get another's (more samples, or "
                  "--controls blank)")
        controls.remove("shuffled")
        print(f"[vldft] no shuffled-images control: no two of the {kept} samples with images "
              "have the same number of images", flush=True)
    elif kept:
        print(f"[vldft] shuffled images: {kept} sample(s) keep their own (no other sample has "
              "as many images)", flush=True)
    try:
        family = checkpoint_family(args.checkpoint)
    except ValueError as e:
        error(str(e))
    check_image_keys(samples, FAMILIES[family])  # before the checkpoint loads
    check_media(samples)
    try:
        adapter = load_adapter(ModelConfig(family=family, name_or_path=args.checkpoint,
                                           dtype="float32"))
    except ConfigError as e:  # config.json but no weights, ...
        error(f"checkpoint {str(e).removeprefix('model.name_or_path: ')}")
    has_media = any(s.images if media == "images" else s.videos for s in samples)
    results = {}
    for name in [media, *controls]:
        part = control_samples(samples, name, args.seed) if name in CONTROLS else samples
        collator = Collator(adapter, **encoding, video=video,
                            video_control=name if name in VIDEO_CONTROLS else None)
        results[name] = combine([score_part(adapter, collator, part, args.batch_size,
                                            args.max_new_tokens, "sft")])
        if name != media:
            label = f"control, {name}" + (" images" if name in CONTROLS else "")
        else:
            label = f"held-out ({len(samples)} samples)" + (f", real {media}" if has_media
                                                            else ", text only")
        print(accuracy_line(label, results[name]), flush=True)
    return results


def cli(argv: list[str] | None = None) -> dict[str, dict]:
    """``python -m vldft.heldout``: :func:`main`, with a bad held-out file (``DataError``: a
    missing image, bad JSON, a row without an assistant turn, ...) said in one line, status 2."""
    from vldft.collate import SampleError
    from vldft.data import DataError

    try:
        return main(argv)
    except (DataError, SampleError) as e:  # SampleError: an overlong sample, data.overlong=error
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    cli()
