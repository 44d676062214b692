"""Every command explains itself: --help lists its options (training: the config keys and the
override syntax), usage lines mark optional overrides as optional, config mistakes are one line
(closest key, YAML file:line:column), --print-config shows the resolved config without training,
LoRA runs say what is frozen and a log file gets no progress-bar redraws."""


import json
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_DATA, ROOT, TINY_CONFIG, write_tiny_data

import vldft.train
from vldft import collate, compare, probe
from vldft import datatool as data_cli
from vldft.config import ConfigError, load_config

OPTIONAL = "[section.key=value ...]"


pytestmark = pytest.mark.usefixtures("one_thread")  # in-process training: see conftest


def help_of(fn, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("fn, options", [
    (vldft.train.cli, ["--print-config", "CONFIG", "section.key=value", "model.lora.r",
                       "data: sources[] (path, format", "train: output_dir", "loss: name",
                       "docs/configuration.md", "train.lr=1e-5"]),
    (probe.cli, ["--samples", "--batch-size", "--out", "section.key=value"]),
    (compare.cli, ["--grid", "--variant", "--index", "--list", "--report", "--force",
                   "section.key=value"]),
    (collate.main, ["--n", "--source", "section.key=value", "[[...]]"]),
    (data_cli.main, ["convert", "validate", "inspect"]),
])
def test_help_lists_the_options(fn, options, capsys):
    text = help_of(fn, ["--help"], capsys)
    for option in options:
        assert option in text, option


@pytest.mark.parametrize("fn, argv", [
    (vldft.train.cli, ["--help"]), (probe.cli, ["--help"]), (compare.cli, ["--help"]),
    (collate.main, ["--help"]), (data_cli.main, ["validate", "--help"]),
    (data_cli.main, ["inspect", "--help"]),
])
def test_usage_marks_overrides_optional(fn, argv, capsys):
    usage = " ".join(help_of(fn, argv, capsys).split("\n\n")[0].split())
    assert OPTIONAL in usage, usage


def test_train_config_help_prints_help_not_an_override_error(capsys):
    text = help_of(vldft.train.cli, [str(TINY_CONFIG), "train.lr=1e-4", "--help"], capsys)
    assert "--print-config" in text and "config error" not in text


def test_print_config_prints_resolved_values_and_does_not_train(monkeypatch, capsys):
    def no_training(cfg):
        raise AssertionError("--print-config trained")

    monkeypatch.setattr(vldft.train, "main", no_training)
    vldft.train.cli([str(TINY_CONFIG), "--print-config", "train.lr=0.5", "model.freeze=[vision]"])
    out = capsys.readouterr().out
    cfg = yaml.safe_load(out)
    assert cfg["train"]["lr"] == 0.5 and cfg["model"]["freeze"] == ["vision"]
    assert cfg["loss"]["name"] == "dft"  # from the file
    assert cfg["train"]["keep_checkpoints"] == 3  # a default
    assert "every local path resolved" in out.splitlines()[0]
    # as the run's config.yaml: absolute paths (the held-out file was printed relative while
    # the output folder was absolute, and the header named a folder it did not resolve against)
    assert Path(cfg["data"]["heldout_file"]).is_absolute() and Path(
        cfg["train"]["output_dir"]).is_absolute()


def test_misspelt_key_suggests_the_closest(capsys):
    with pytest.raises(ConfigError, match=r"model\.freez: unknown key \(did you mean 'freeze'"):
        load_config(TINY_CONFIG, ["model.freez=[vision]"])
    with pytest.raises(ConfigError, match=r"trian: unknown key \(did you mean 'train'"):
        load_config(TINY_CONFIG, ["trian.lr=1"])
    with pytest.raises(SystemExit, match=r"config error: train\.micro_batch: unknown key "
                                         r"\(did you mean 'micro_batch_size'"):
        vldft.train.cli([str(TINY_CONFIG), "train.micro_batch=2"])


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  tiny: true\n   family: llava\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(e.value).startswith(f"{bad}:3:10: invalid YAML: ")
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match=f"config error: {bad}:3:10: "):
        vldft.train.cli([str(bad)])
    with pytest.raises(ConfigError, match=r"override 'train.lr=\[1,': value:1:4: invalid YAML"):
        load_config(TINY_CONFIG, ["train.lr=[1,"])


def test_lora_run_says_base_weights_are_frozen_and_logs_no_bar_redraws(tmp_path, capsys):
    demo_rows = DEMO_DATA
    vldft.train.cli([
        str(TINY_CONFIG), "data.train_files=[]",
        f"data.sources=[{{path: {demo_rows}, max_samples: 8}}]",
        "data.heldout_file=null", "train.max_steps=2", "loss.sft_warmup_steps=0",
        "loss.name=sft", "train.micro_batch_size=4", "train.log_every=1",
        "train.eval_max_samples=0", f"train.output_dir={tmp_path / 'run'}",
        "model.lora={r: 4, dropout: 0.0, parts: [language, vision]}", "model.freeze=[vision]"])
    out, err = capsys.readouterr()  # stderr is not a TTY here, as in a log file
    line = next(x for x in out.splitlines() if "; frozen: " in x)
    assert "(LoRA r=4 on ['language']; none on ['vision']: model.freeze)" in line, line
    assert "frozen: all base weights (LoRA adapters train)" in line, line
    assert "frozen: none" not in out
    assert "\r" not in err
    # no bar in a log file: each metrics record is a line there instead
    assert [x.split(":")[0] for x in out.splitlines() if x.startswith("[vldft] step ")] == [
        "[vldft] step 1/2 (sft)", "[vldft] step 2/2 (sft)"], out


@pytest.mark.parametrize(("module", "argv", "says"), [
    ("vldft.heldout", ["runs/x/final", "h.jsonl", "--batch-size", "0"],
     "--batch-size must be >= 1"),
    ("vldft.heldout", ["runs/x/final", "h.jsonl", "--max-new-tokens", "0"],
     "--max-new-tokens must be >= 1"),
    ("vldft.heldout", ["runs/x/final", "h.jsonl", "--max-samples", "-3"],
     "--max-samples must be >= 0"),
    ("vldft.datatool", ["validate", "c.yaml", "--max-samples", "-1"], "--max-samples must be >= 0"),
    ("vldft.datatool", ["inspect", "c.yaml", "--n", "-2"], "--n must be >= 0"),
    ("vldft.probe", ["c.yaml", "--batch-size", "0"], "--batch-size must be >= 1")])
def test_counts_below_their_minimum_are_refused_in_one_line(module, argv, says, capsys):
    """They ran silently (--max-samples -3 dropped the last 3 rows, validate checked one row
    fewer) or ended in a traceback (--batch-size 0: range() arg 3 must not be zero)."""
    import importlib

    mod = importlib.import_module(module)
    entry = getattr(mod, "main", None) if module != "vldft.probe" else mod.cli
    with pytest.raises(SystemExit) as e:
        entry(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_eval_on_cuda_without_a_gpu_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    from vldft.eval.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--model", str(ROOT / "priors/tiny-qwen25vl-geo"), "--tasks", "vldft_geo_heldout",
              "--device", "cuda", "--out", str(tmp_path / "o")])
    assert "--device cuda: this machine has no CUDA device" in str(e.value.code)


def test_collate_preview_follows_on_error(tmp_path, capsys):
    """A sample the family cannot encode (a two-turn row for qwen3_5, single-turn only):
    with data.on_error=skip the preview says it was skipped and goes on, as training and
    vldft-data inspect do (it stopped at it); with raise it is the one-line error."""
    rows = [json.loads(x) for x in DEMO_DATA.read_text().splitlines()[:2]]
    two = dict(rows[0], id="two-turns", messages=[
        *rows[0]["messages"], {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."}])
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (two, rows[1])))
    argv = [str(TINY_CONFIG), "model.tiny=true", "model.family=qwen3_5",
            f"data.train_files=[{path}]", f"data.image_root={DEMO_DATA.parent}", "--n", "2"]
    assert collate.main([*argv, "data.on_error=skip"]) == 0
    out = capsys.readouterr().out
    assert "two-turns: skipped (" in out and f"/ {rows[1]['id']}: " in out, out
    assert collate.main([*argv, "data.on_error=raise"]) == 2
    assert "error: sample two-turns" in capsys.readouterr().err


def test_probe_compare_and_collate_end_a_data_error_in_one_line(tmp_path, capsys):
    """A bad row under data.on_error=raise, and a recipe whose data is not downloaded, end
    vldft.probe, vldft.compare and vldft.collate in one line, as vldft.train (they ended in a
    traceback, and the probe loaded the model before saying the data was missing)."""
    bad = write_tiny_data(tmp_path / "bad.jsonl", 4)
    with open(bad, "a") as f:
        f.write("{not json\n")
    rows = [f"data.train_files=[{bad}]", f"data.heldout_file={DEMO_DATA}",
            "train.max_steps=2", "train.eval_every=0", "loss.sft_warmup_steps=0",
            f"train.output_dir={tmp_path / 'o'}"]
    with pytest.raises(SystemExit) as e:
        probe.cli([str(TINY_CONFIG), *rows, "--samples", "2"])
    assert str(e.value).startswith(f"data error: {bad}:5: ") and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        compare.cli([str(TINY_CONFIG), *rows, "--grid", "loss.name=sft,dft", "--index", "0"])
    assert str(e.value).startswith(f"compare: run sft: data error: {bad}:5: "), e.value
    recipe = [str(ROOT / "configs/qwen25vl_geo.yaml"), "model.tiny=true",
              f"data.data_dir={tmp_path / 'nothing'}"]
    with pytest.raises(SystemExit) as e:
        probe.cli(recipe)
    assert str(e.value).startswith("config error: data not downloaded: "), e.value
    assert collate.main([*recipe, "--n", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: data not downloaded: ")
