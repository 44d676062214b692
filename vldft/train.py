"""Fine-tune a vision-language model with DFT (or SFT): one readable loop on accelerate.

    python -m vldft.train configs/demo.yaml                       # shipped prior, CPU, minutes
    python -m vldft.train configs/demo.yaml train.lr=1e-3 loss.name=sft
    python -m vldft.train configs/demo.yaml --print-config        # resolved config; no training
    torchrun --nproc_per_node 8 -m vldft.train configs/qwen25vl_geo.yaml
    vldft-train CONFIG [section.key=value ...]                    # the installed command

Per optimizer step: gather ``grad_accum`` micro-batches, count their target tokens on every rank,
sum the counts over ranks, then backpropagate ``loss_sum / global_count`` for each micro-batch
(times the world size, because DDP averages gradients). Batch 8 x accumulation 1 and batch 2 x
accumulation 4 therefore give the same update. Outputs go to ``train.output_dir``:
``config.yaml``, ``data_summary.json``, ``metrics.jsonl``, ``histograms.jsonl``,
``checkpoint-<step>/`` (resumable, see ``vldft.checkpoint``) and ``final/`` (Hugging Face
format), ``summary.json``, ``training_curves.png`` and ``prob_histograms.png``.

Faults: SIGTERM / Ctrl-C save a checkpoint and exit cleanly; a step whose loss or gradient is
not finite is skipped (no update), counted and logged, and ``train.max_nonfinite_steps`` in a
row abort the run; an unwritable ``output_dir``, or one without room for the kept checkpoints,
the one being written and ``final/``, fails before training starts; a save that fails (disk
full) removes its partial files. The command ends those aborts in one line naming the
checkpoint that was kept (``vldft.checkpoint.TrainingAborted``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import yaml

from vldft.checkpoint import TrainingAborted, find_resume, prune, save, save_final
from vldft.config import Config, ConfigError, config_keys, config_to_dict, load_config
from vldft.data import DataError, load_jsonl
from vldft.guard import CollapseGuard

# The recipe's heavy imports (torch, transformers, accelerate and every module that imports
# them) happen on main()'s first call, not at import, so that `vldft-train --help`,
# --print-config and config errors answer before torch loads (tests/test_cli_speed.py). They are
# module globals all the same: `vldft.train.load_adapter` is what main calls (tests replace it).
_recipe_imported = False


def _import_recipe() -> None:
    """Bind the heavy names main() uses as module globals (once; a name a test has replaced
    since is not rebound, because the first access to it ran this already)."""
    global _recipe_imported, torch, gather_object, set_seed, get_scheduler, load_adapter, \
        model_commit
    global Collator, training_set, require_data, prob_histogram, all_ranks_skips, build_loader
    global describe_data, micro_batch_stream, Evaluator, RunLog, finish_summary, run_summary
    global write_summary, check_disk_space, claim_run_dir, RunState, StopRequest, data_identity
    global ObjectiveModule, accumulate_gradients, build_accelerator
    global build_optimizer, build_reference, count_parameters, describe_model, model_writer
    global objective_at, prepare_model, register_zero3, sharded
    if _recipe_imported:
        return
    import torch
    from accelerate.utils import gather_object, set_seed
    from transformers import get_scheduler

    from vldft.adapters import load_adapter, model_commit
    from vldft.collate import Collator
    from vldft.data.cache import training_set
    from vldft.data.download import require_data
    from vldft.diagnostics import prob_histogram
    from vldft.loader import all_ranks_skips, build_loader, describe_data, micro_batch_stream
    from vldft.report import Evaluator, RunLog, finish_summary, run_summary, write_summary
    from vldft.run_dir import check_disk_space, claim_run_dir
    from vldft.state import RunState, StopRequest, data_identity
    from vldft.step import (
        ObjectiveModule,
        accumulate_gradients,
        build_accelerator,
        build_optimizer,
        build_reference,
        count_parameters,
        describe_model,
        model_writer,
        objective_at,
        prepare_model,
        register_zero3,
        sharded,
    )
    _recipe_imported = True


def __getattr__(name: str):
    """``vldft.train.<heavy name>`` (e.g. a test's monkeypatch of ``load_adapter``) imports
    the recipe first (PEP 562: called only for names not yet bound)."""
    if name.startswith("__") or _recipe_imported:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _import_recipe()
    return getattr(sys.modules[__name__], name)


def unused_loss_keys(loss) -> list[str]:
    """A line for each ``loss`` key set away from its default that ``loss.name`` does not use
    (a config's ``min_weight`` kept under ``loss.name=chord`` was ignored without a word)."""
    users = {"min_weight": ("dft", "asft"), "alpha": ("dft", "asft"),
             "kl_lambda": ("asft",), "eaft_topk": ("eaft",), "eaft_alpha": ("eaft",),
             "sft_mix": ("dft", "asft", "chord", "eaft")}  # (SFT's weights are 1 already)
    default = type(loss)()
    return [f"loss.{key}={getattr(loss, key)} applies to loss.name {' / '.join(names)}; "
            f"loss.name={loss.name} does not use it (loss.{key}={getattr(default, key)}, "
            "its default, silences this)" for key, names in users.items()
            if loss.name not in names and getattr(loss, key) != getattr(default, key)]


def main(cfg: Config) -> dict:
    """Train per ``cfg``; returns the summary dict (also written to output_dir/summary.json).
    ``train.output_dir`` is locked for the run (``vldft.run_dir.lock_output_dir``)."""
    from vldft.run_dir import release_output_dirs

    try:
        return _train(cfg)
    finally:
        release_output_dirs()


def _train(cfg: Config) -> dict:
    _import_recipe()
    t = cfg.train
    accelerator = build_accelerator(cfg)
    require_data(cfg)  # downloaded sources and benchmark copies: one line if absent
    if t.eval_tasks:  # unknown tasks / missing data fail before any model loads
        from vldft.eval.in_training import check_eval_tasks

        check_eval_tasks(cfg)
    refuse_packing(cfg)
    heldout = load_heldout(cfg)  # a bad held-out file: refused before the run dir is touched
    out_dir = cfg.resolve(t.output_dir)
    is_main, world = accelerator.is_main_process, accelerator.num_processes
    log = print if is_main else (lambda *a, **k: None)
    action, detail = claim_run_dir(cfg, out_dir, accelerator, log)  # rank 0 decides for all
    if action == "finished":
        return detail
    accelerator.wait_for_everyone()
    resume_from = find_resume(t.resume, out_dir, cfg.resolve)
    set_seed(t.seed)

    # --- build: data, model, optimizer, schedule -------------------------------------------
    adapter = load_model(cfg, accelerator)
    data = training_set(cfg, adapter, log)  # rank 0 builds once, cached on disk
    if not data.samples:
        raise SystemExit("no training samples: every row was skipped or the sources are empty"
                         + (f"\n{data.skips.summary()}" if data.skips.total else ""))
    prepare_model(adapter, cfg, log)
    commit = model_commit(cfg.model)  # the hub commit loaded (None: tiny / a local folder)
    log(f"[vldft] {describe_model(adapter, cfg, commit)}; {len(data.samples)} training samples; "
        f"engine {accelerator.distributed_type.value} x {world} on "
        f"{accelerator.device.type}, mixed precision {accelerator.mixed_precision}")
    log(describe_data(data, t.seed, out_dir / "data_summary.json"))
    for unused in unused_loss_keys(cfg.loss):
        log(f"[vldft] warning: {unused}", file=sys.stderr)
    collator = Collator.from_config(adapter, cfg)
    loader, sampler = build_loader(cfg, data, collator)
    grad_accum = t.global_batch_size // (t.micro_batch_size * world) if t.global_batch_size \
        else t.grad_accum
    if t.global_batch_size and t.grad_accum not in (1, grad_accum):  # said, not silently
        log(f"[vldft] note: train.global_batch_size={t.global_batch_size} sets "
            f"{grad_accum} micro-batches per step on {world} process(es) (micro_batch_size "
            f"{t.micro_batch_size}); the config's train.grad_accum={t.grad_accum} is not used")
    optimizer = build_optimizer(adapter, cfg, sharded=sharded(accelerator))
    lm_group = next((i for i, g in enumerate(optimizer.param_groups)
                     if g["name"] == "language"), 0)  # the logged lr
    module, optimizer, loader = accelerator.prepare(ObjectiveModule(adapter), optimizer, loader)
    register_zero3(accelerator.unwrap_model(module), accelerator)
    total = t.max_steps or max(1, math.ceil(t.epochs * len(loader) / grad_accum))
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * total),
                              num_training_steps=total)
    accelerator.register_for_checkpointing(scheduler)
    if is_main:  # room for the kept checkpoints, the one being written and final/
        n_params, n_trainable = count_parameters(adapter)
        bytes_per = next(adapter.model.parameters()).element_size()
        check_disk_space(out_dir, sum(n_params.values()), n_trainable, bytes_per, t, total)

    config = config_to_dict(cfg, absolute=True)  # a checkpoint's record, like config.yaml
    data_id = data_identity(data, cfg)
    if resume_from is None:
        state = RunState(config=config, data=data_id, model_commit=commit, world_size=world)
    else:
        state = RunState.resume(resume_from, total, config, out_dir / "final", log, data_id,
                                explicit=t.resume != "auto", model_commit=commit,
                                world_size=world)
        if (cfg.loss.name == "asft" and adapter.lora is None
                and state.step > cfg.loss.sft_warmup_steps):
            accelerator.unwrap_model(module).reference = build_reference(adapter)
        accelerator.load_state(str(resume_from / "state"))  # weights, optimizer, lr, RNG

    # --- the loop ------------------------------------------------------------------------
    out = RunLog(cfg, out_dir, data, state, resume_from is not None, total, is_main)
    stop = StopRequest()
    try:
        stream = micro_batch_stream(loader, sampler, state, world)
        evaluator = Evaluator(cfg, accelerator, module, adapter, collator, heldout, state, out,
                              out_dir)
        guard = CollapseGuard(window=t.collapse_window, loss=cfg.loss) \
            if t.on_collapse != "off" else None
        if guard is not None:
            guard.replay(state.history, state.collapse_warnings)  # the uninterrupted run's
        hist_every = t.hist_every or t.log_every
        max_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
        stopped = None
        state.start_clock()
        module.train()
        for step in range(state.step + 1, total + 1):
            state.step = step
            objective = objective_at(cfg, step)
            unwrapped = accelerator.unwrap_model(module)
            if objective == "asft" and adapter.lora is None and unwrapped.reference is None:
                unwrapped.reference = build_reference(adapter)
            micro = [next(stream) for _ in range(grad_accum)]
            probs: list[torch.Tensor] | None = [] if step % hist_every == 0 or step == 1 else None
            totals = accumulate_gradients(module, micro, cfg.loss.spec(objective), accelerator,
                                          probs)
            grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), max_norm))
            if math.isfinite(totals["loss_sum"]) and math.isfinite(grad_norm):
                optimizer.step()
                state.nonfinite_run = 0
                state.window.update(totals)
            else:  # no update; the step still counts towards max_steps and the lr schedule
                msg = state.count_nonfinite(step, totals["loss_sum"], grad_norm)
                out.metrics({"step": step, "nonfinite": msg})
                log(f"[vldft] warning: {msg}", file=sys.stderr)
                if (error := state.too_many_nonfinite(t.max_nonfinite_steps, out_dir)):
                    raise error
                probs = None
            lr = scheduler.get_last_lr()[lm_group]  # the rate this step's update used
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if probs is not None:
                counts = accelerator.reduce(prob_histogram(probs).to(accelerator.device), "sum")
                out.histogram(step, objective, [int(c) for c in counts.tolist()])
            # a record never averages two objectives: the window is also flushed at the last
            # SFT step of a warm-up, so the next record covers DFT (or ASFT) steps only
            switch = step == cfg.loss.sft_warmup_steps and cfg.loss.name != "sft"
            if step % t.log_every == 0 or step == total or switch:
                warning = out.log_step(state, step, objective, lr, grad_norm, guard)
                if warning and t.on_collapse == "stop":
                    stopped = "collapse"
            out.bar.update(1)
            asked = stop.agreed(accelerator)  # every rank must agree to stop
            stopped = stopped or asked
            if stopped:
                break
            if step < total and ((t.eval_every and step % t.eval_every == 0)
                                 or step == cfg.loss.sft_warmup_steps):
                evaluator.score_heldout(step)
            if step < total and t.eval_every and step % t.eval_every == 0:
                evaluator.run_tasks(step)
            if t.save_every and step % t.save_every == 0 and step < total:
                save_checkpoint(state, cfg, out_dir, accelerator, adapter, module)
        out.bar.close()

        # --- save and report -------------------------------------------------------------
        skipped, encode_entries = all_ranks_skips(state, world)
        summary = run_summary(cfg, state, data, skipped, stopped, resume_from)
        # passes over the data: train.epochs plans its steps from the micro-batches before
        # encoding, so samples skipped while encoding carry the run into another pass
        taken = state.pos["epoch"] * len(loader) + state.pos["consumed"]  # this rank's
        summary["data_passes"] = round(taken / max(1, len(loader)), 3)
        summary["empty_micro_batches"] = max(0, taken - state.step * grad_accum)
        summary["epochs_planned"] = None if t.max_steps else t.epochs
        if stopped:
            path = save_checkpoint(state, cfg, out_dir, accelerator, adapter, module)
            summary["checkpoint"] = str(path)
            log(f"[vldft] stopped at step {state.step} ({stopped}); resumable checkpoint: "
                f"{path}. Rerun the same command to " + ("write final/ from it"
                                                         if state.step >= total else "continue")
                + " (train.resume=auto).")
        else:
            save_final(model_writer(adapter, accelerator, module), accelerator, out_dir / "final")
            summary["checkpoint"] = str(out_dir / "final")
            evaluator.run(total)
        finish_summary(summary, state, t.on_collapse, guarded=guard is not None, loss=cfg.loss)
        if is_main:
            write_summary(out_dir, cfg, summary, state.history, data, encode_entries)
        accelerator.wait_for_everyone()
        return summary
    finally:
        out.close()
        stop.close()


def load_heldout(cfg: Config) -> list:
    """``data.heldout_file``'s samples, refused (``DataError``, one line) before the run
    directory is claimed (``train.overwrite`` would already have removed the old run) or a model
    loads: a missing or unreadable file, image or video, per-image keys the family cannot honour
    (``check_image_keys``), an image that does not decode or a clip that does not open
    (``check_media``: a held-out set is scored whole or refused)."""
    if not cfg.data.heldout_file:
        return []
    from vldft.adapters import FAMILIES
    from vldft.heldout import check_image_keys, check_media

    root = cfg.resolve(cfg.data.image_root) if cfg.data.image_root else None
    heldout = load_jsonl(cfg.resolve(cfg.data.heldout_file), root)
    check_image_keys(heldout, FAMILIES[cfg.model.family])
    check_media(heldout)
    return heldout


def refuse_packing(cfg: Config) -> None:
    """``data.packing`` for a family that cannot pack is a config error before the run directory
    is touched (``train.overwrite`` would already have removed the old run) or a model loads."""
    from vldft.adapters import FAMILIES

    cls = FAMILIES.get(cfg.model.family)
    if cfg.data.packing and cls is not None and cls.packing_refused:
        raise ConfigError(f"data.packing: not supported for {cfg.model.family} "
                          f"({cls.packing_refused}); train unpacked (data.packing=false)")


def load_model(cfg: Config, accelerator):
    """``load_adapter(cfg.model)``; under DeepSpeed ZeRO-3 with ``zero3_init_flag: false`` (the
    shipped configs/accelerate/zero3.yaml) every rank builds the whole model and DeepSpeed
    partitions it at ``accelerator.prepare``. accelerate registers its DeepSpeed config with
    transformers whatever the flag says, and transformers then builds each sub-model under
    ``deepspeed.zero.Init`` (the tiny models' constructors fail there: a partitioned embedding
    is initialised), so that registration is lifted while the model loads and restored after
    (generation under ZeRO-3 reads it)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3 or plugin.zero3_init_flag:
        return load_adapter(cfg.model)
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        return load_adapter(cfg.model)
    finally:
        plugin.set_deepspeed_weakref()


def save_checkpoint(state: RunState, cfg: Config, out_dir: Path, accelerator, adapter,
                    module) -> Path:
    """``checkpoint-<step>/`` (all ranks call this); its trainer_state.json, written by the
    main process, holds every rank's skips. Prunes to ``train.keep_checkpoints``."""
    path = out_dir / f"checkpoint-{state.step}"
    own = state.own_skips()
    parts = gather_object([own]) if accelerator.num_processes > 1 else [own]
    save(path, accelerator, model_writer(adapter, accelerator, module), state.to_dict(parts))
    if accelerator.is_main_process:
        prune(out_dir, cfg.train.keep_checkpoints)
    return path


def cli(argv: list[str] | None = None) -> None:
    """``python -m vldft.train CONFIG [section.key=value ...] [--print-config]`` (``--help``)."""
    import argparse
    import textwrap

    argv = sys.argv[1:] if argv is None else argv

    sections = "\n".join(
        textwrap.fill(f"{name}: " + ", ".join(keys), width=96, initial_indent="  ",
                      subsequent_indent="      ", break_long_words=False)
        for name, keys in config_keys().items())
    epilog = (
        "config sections and keys (defaults and meanings: docs/configuration.md):\n"
        f"{sections}\n\n"
        "overrides: section.key=value, the value read as YAML, applied after the file:\n"
        "  train.lr=1e-5 loss.name=sft model.freeze=[vision] model.lora.r=8 "
        "data.heldout_file=null train.eval_every=0\n\n"
        "Progress bars are drawn only when stderr is a terminal; a log file gets the periodic "
        "[vldft] lines instead (a metrics line every train.log_every steps, held-out scores).")
    prog = "vldft-train" if Path(sys.argv[0]).name == "vldft-train" else "python -m vldft.train"
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                        help="optional overrides of the config's values (see below)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (file + overrides + defaults) as YAML "
                             "and exit without loading a model")
    args = parser.parse_intermixed_args(argv)
    from vldft.progress import quiet_if_logging

    quiet_if_logging()  # a log file: no \r-redrawn progress bars
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(f"# {args.config} + overrides {args.overrides}, every local path resolved "
                  "(as the run's config.yaml records it)")
            print(yaml.safe_dump(config_to_dict(cfg, absolute=True), sort_keys=False), end="")
            return
        from vldft.data.download import require_data

        require_data(cfg, args.overrides)  # missing downloads: one line, before torch loads
        main(cfg)
    except ConfigError as e:  # from loading, or from main's checks before any model loads
        raise SystemExit(f"config error: {e}") from None
    except DataError as e:  # a bad row / image with data.on_error=raise: file, line, id
        raise SystemExit(f"data error: {e}") from None
    except TrainingAborted as e:  # disk full at a save, non-finite steps: what was kept
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    cli()
