"""Config loading: every shipped YAML validates; bad keys, types and combinations name the key."""


import pytest
from conftest import DEMO_CONFIG, ROOT

from vldft.config import Config, ConfigError, load_config

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "qwen25vl_geo.yaml", "llava_geo.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert path.read_text().startswith("#"), "each YAML starts with a comment saying how to run it"
    assert "python -m vldft.train" in path.read_text() or "torchrun" in path.read_text()


def test_headline_recipe_is_the_real_model():
    cfg = load_config(ROOT / "configs/qwen25vl_geo.yaml")
    assert cfg.model.name_or_path == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert cfg.loss.name == "dft" and cfg.train.scheduler == "cosine"
    assert 1e-6 <= cfg.train.lr <= 5e-5 and cfg.train.warmup_ratio == pytest.approx(0.1)
    assert cfg.model.gradient_checkpointing and cfg.model.max_pixels


def test_overrides_apply_with_types():
    cfg = load_config(DEMO_CONFIG,
                      ["train.lr=1e-5", "loss.name=sft", "model.freeze=[vision]",
                       "train.vision_lr=3e-6", "data.overlong=skip"])
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.loss.name == "sft" and cfg.model.freeze == ["vision"]
    assert cfg.train.vision_lr == 3e-6 and cfg.data.overlong == "skip"


@pytest.mark.parametrize("override, key", [
    ("train.lr=fast", "train.lr"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("train.micro_batch_size=true", "train.micro_batch_size"),
    ("model.tiny=yes please", "model.tiny"),
    ("train.learning_rate=1e-5", "train.learning_rate"),
    ("optim.lr=1", "optim"),
    ("loss.name=dpo", "loss.name"),
    ("data.overlong=drop", "data.overlong"),
    ("model.freeze=[vision, projector, language]", "model.freeze"),
    ("model.freeze=[encoder]", "model.freeze"),
    ("train.warmup_ratio=1.0", "train.warmup_ratio"),
    ("model.name_or_path=Qwen/Qwen2.5-VL-3B-Instruct", "model"),
    ("train.micro_batch_size=0", "train.micro_batch_size"),
    ("data.train_files=[]", "data.train_files"),
    ("model.min_pixels=100000", "model.min_pixels"),
    ("noequals", "key=value"),
    ("model.dtype=float16", "model.dtype"),
    ("model.max_pixels=0", "model.max_pixels"),
    ("loss.sft_warmup_steps=1200", "loss.sft_warmup_steps"),  # = the demo's max_steps
    ("train.eval_max_new_tokens=0", "train.eval_max_new_tokens"),
    ("data.num_workers=-1", "data.num_workers"),
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("loss.min_weight=2", "loss.min_weight"),
    ("loss.chunk_size=0", "loss.chunk_size"),
    ("data.sources=[{path: a.jsonl, min_pixels: 100000}]", "data.sources[0].min_pixels"),
    ("data.sources=[{path: a.jsonl, weight: 1}, {path: b.jsonl}]", "data.sources"),
    ("data.sources=[{path: a.jsonl, prompt_template: 'no placeholder'}]",
     "data.sources[0].prompt_template"),
    ("train.lr=-1e-5", "train.lr"),
    ("model.family=gpt4v", "model.family"),
    ("data.train_files=[data/missing.jsonl]", "data.train_files[0]"),
    ("data.sources=[{path: data/missing.parquet}]", "data.sources[0].path"),
    ("data.heldout_file=data/missing.jsonl", "data.heldout_file"),
    (["model.lora={parts: [language]}", "model.freeze=[language]"], "model.lora.parts"),
    ("model.lora={r: 0}", "model.lora.r"),
    ("model.lora={parts: [decoder]}", "model.lora.parts"),
    ("model.lora={rank: 8}", "model.lora.rank"),
    ("train.resume=runs/no-such-checkpoint", "train.resume"),
    ("train.on_collapse=maybe", "train.on_collapse"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps"),
    ("train.collapse_window=1", "train.collapse_window"),
    ("train.global_batch_size=0", "train.global_batch_size"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, override if isinstance(override, list)
                    else [override])
    assert key in str(err.value)


def test_world_size_must_divide_the_global_batch(monkeypatch):
    """global_batch_size = micro_batch_size x world size x grad_accum; checked before launch
    against the WORLD_SIZE torchrun / accelerate set."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="train.global_batch_size.*16 x 3"):
        load_config(DEMO_CONFIG, ["train.global_batch_size=64"])
    cfg = load_config(DEMO_CONFIG, ["train.global_batch_size=96"])
    assert cfg.train.global_batch_size == 96


def test_lora_settings_parse_with_defaults():
    cfg = load_config(DEMO_CONFIG, ["model.lora={r: 4, parts: [language, vision]}"])
    assert cfg.model.lora.r == 4 and cfg.model.lora.parts == ["language", "vision"]
    assert "q_proj" in cfg.model.lora.target_modules and cfg.model.lora.alpha == 32.0


def test_bool_strings_are_not_truthy(tmp_path):
    """`model.tiny=False` must be the boolean False, never a truthy string."""
    cfg = load_config(ROOT / "configs/qwen25vl_geo.yaml", ["model.tiny=False"])
    assert cfg.model.tiny is False


def test_pixels_only_for_qwen(tmp_path):
    with pytest.raises(ConfigError, match="model.min_pixels"):
        load_config(ROOT / "configs/llava_geo.yaml", ["model.min_pixels=3136"])


def test_missing_file_and_bad_top_level(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_validation_happens_before_any_model_load(monkeypatch):
    """An invalid config fails in load_config, so train.main never builds a model."""
    import vldft.adapters as adapters

    monkeypatch.setattr(adapters, "load_adapter", lambda *a: pytest.fail("model was loaded"))
    from vldft.train import cli

    with pytest.raises(SystemExit, match="loss.name"):
        cli([str(DEMO_CONFIG), "loss.name=nope"])


def test_eval_every_needs_a_heldout_file():
    with pytest.raises(ConfigError, match="train.eval_every"):
        load_config(DEMO_CONFIG, ["train.eval_every=10", "data.heldout_file=null"])


CONFIG_DOC = ROOT / "docs" / "configuration.md"


def config_sections() -> dict[str, type]:
    """Every config section, by its dotted name, from ``Config``'s type hints: the top-level
    dataclasses (``model``, ``data``, ``loss``, ``train``) and the nested ones, whether optional
    (``model.lora``) or lists (``data.sources``)."""
    import dataclasses
    import typing

    out: dict[str, type] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in typing.get_type_hints(cls).items():
            inner = [a for a in (tp, *typing.get_args(tp)) if dataclasses.is_dataclass(a)]
            if inner:
                out[prefix + name] = inner[0]
                walk(inner[0], f"{prefix}{name}.")

    walk(Config, "")
    return out


def documented_keys(text: str) -> dict[str, list[str]]:
    """Section name -> the keys of its table rows (``| `key` |``), for every heading that is a
    section name in backticks (``## `model.lora` ``); rows under any other heading, and inside
    code fences, belong to no section."""
    import re

    sections: dict[str, list[str]] = {}
    current, fenced = None, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*$", line)
        if heading:
            name = re.fullmatch(r"`([\w.]+)`", heading.group(1))
            current = name.group(1) if name else None
            if current is not None:
                assert current not in sections, f"section {current} appears twice"
                sections[current] = []
            continue
        row = re.match(r"\|\s*`(\w+)`\s*\|", line)
        if row and current is not None:
            sections[current].append(row.group(1))
    return sections


def config_doc_problems(text: str) -> list[str]:
    """What docs/configuration.md gets wrong: a section without its own heading, a key without
    a row in its section's table, a row naming no field of that section, a key listed twice."""
    import dataclasses

    expected = config_sections()
    documented = documented_keys(text)
    problems = [f"section `{s}` has no heading '## `{s}`'" for s in expected if s not in documented]
    problems += [f"heading `{s}` is not a config section" for s in documented if s not in expected]
    for section, cls in expected.items():
        rows = documented.get(section, [])
        fields = [f.name for f in dataclasses.fields(cls)]
        problems += [f"{section}.{k} has no row | `{k}` | in its section's table"
                     for k in fields if k not in rows]
        problems += [f"{section}: row `{k}` is not a field of {cls.__name__}"
                     for k in rows if k not in fields]
        problems += [f"{section}.{k} has {rows.count(k)} rows" for k in set(rows)
                     if rows.count(k) > 1]
    return problems


def test_config_sections_are_found():
    found = set(config_sections())
    assert {"model", "model.lora", "data", "data.sources", "loss", "train"} <= found


def test_configuration_doc_has_a_row_for_every_key_in_its_own_section():
    problems = config_doc_problems(CONFIG_DOC.read_text(encoding="utf-8"))
    assert not problems, "docs/configuration.md:\n" + "\n".join(problems)


def test_config_doc_check_is_exact():
    """A key named only in prose, or in another section's table, does not count."""
    good = CONFIG_DOC.read_text(encoding="utf-8")
    assert not config_doc_problems(good)
    # the row of model.lora's `r` removed: the word `r` elsewhere does not satisfy the check
    no_row = good.replace("| `r` | 16 |", "| rank | 16 |")
    assert "model.lora.r has no row | `r` | in its section's table" in config_doc_problems(no_row)
    # data.image_root's row removed: data.sources.image_root's row does not stand in for it
    lines = good.splitlines()
    data_at = lines.index("## `data`")
    cut = next(i for i in range(data_at, len(lines)) if lines[i].startswith("| `image_root` |"))
    moved = "\n".join(lines[:cut] + lines[cut + 1:])
    assert config_doc_problems(moved) == ["data.image_root has no row | `image_root` | in its "
                                          "section's table"]
    # a stale row is reported too
    stale = good.replace("| `seed` | 0 |", "| `seed` | 0 | x |\n| `sed` | 0 |")
    assert "train: row `sed` is not a field of TrainConfig" in config_doc_problems(stale)


def test_each_section_validates_its_own_keys():
    """A section checks itself (``ModelConfig().validate()`` etc.) without the rest of the
    config; ``Config.validate`` runs them and adds the checks that span sections or paths."""
    from vldft.config import (
        DataConfig,
        LoraSettings,
        LossConfig,
        ModelConfig,
        SourceConfig,
        TrainConfig,
    )

    ModelConfig(tiny=True).validate()
    TrainConfig().validate()
    LossConfig().validate()
    DataConfig(train_files=["x.jsonl"]).validate()  # existence is a path check, not the section's
    cases = [
        (ModelConfig(), "model: set exactly one of model.tiny=true or model.name_or_path"),
        (ModelConfig(tiny=True, freeze=["language"], lora=LoraSettings(parts=["language"])),
         "model.lora.parts: every LoRA part is also in model.freeze"),
        (DataConfig(), "data.sources: at least one source"),
        (DataConfig(sources=[SourceConfig(path="a", weight=1.0), SourceConfig(path="b")]),
         "data.sources: give a weight to every source or to none"),
        (DataConfig(sources=[SourceConfig(path="a.jsonl"), SourceConfig(path="b/a.jsonl")]),
         "data.sources: duplicate source names"),
        (LossConfig(sft_warmup_steps=-1), "loss.sft_warmup_steps: must be >= 0"),
        (TrainConfig(adam_betas=[0.9]), "train.adam_betas: must be two numbers in [0, 1)"),
        (TrainConfig(eval_tasks=["a", "a"]), "train.eval_tasks: duplicate task names"),
    ]
    for section, message in cases:
        with pytest.raises(ConfigError) as e:
            section.validate()
        assert str(e.value).startswith(message), (section, e.value)
    with pytest.raises(ConfigError, match=r"^data\.sources\[1\]\.prompt_template: must contain"):
        SourceConfig(path="p", prompt_template="no slot").validate("data.sources[1]")
    # cross-section: the same source is fine alone, not with a model that has no pixel bounds
    src = SourceConfig(path=str(DEMO_CONFIG), min_pixels=3136)
    src.validate("data.sources[0]")
    cfg = Config(model=ModelConfig(family="llava", tiny=True), data=DataConfig(sources=[src]))
    with pytest.raises(ConfigError, match=r"^data\.sources\[0\]\.min_pixels/max_pixels:"):
        cfg.validate()


def test_paths_resolve_against_the_base_dir_and_hub_ids(tmp_path, monkeypatch):
    from vldft.config import hub_source, is_hub_id, resolve_path

    assert resolve_path("a/b.jsonl", tmp_path) == tmp_path / "a/b.jsonl"
    assert resolve_path(tmp_path / "x", "/elsewhere") == tmp_path / "x"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/d.jsonl", "/elsewhere") == tmp_path / "d.jsonl"
    cfg = Config(base_dir=str(tmp_path))
    assert cfg.resolve("d.jsonl") == resolve_path("d.jsonl", tmp_path)
    assert is_hub_id("AI4Math/MathVista") and is_hub_id("owner/name.v2")
    assert not is_hub_id("data/train.jsonl") and not is_hub_id("a/b/c") and not is_hub_id("x")
    # a source path is a hub dataset only when no such local path exists and its format can
    # read from the hub (the config check and the reader use this one rule)
    assert hub_source("owner/name", "auto", tmp_path) and hub_source("owner/name", "hf", tmp_path)
    assert not hub_source("owner/name", "llava", tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner/name").write_text("")
    assert not hub_source("owner/name", "auto", tmp_path)


def test_hub_unreachable_names_the_reason(monkeypatch):
    """One hub check for the data readers and the eval runner: offline mode by either variable,
    a proxy (not probed), and a refused connection (a local port nothing listens on)."""
    import socket

    from vldft.config import hub_unreachable

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub_unreachable() == "HF_DATASETS_OFFLINE is set"
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with socket.socket() as s:  # a port that was free a moment ago: connecting is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_unreachable(timeout=2).startswith("127.0.0.1 unreachable (")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # huggingface_hub's flag counts too
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub_unreachable() is None
    with socket.socket() as server:  # a listening endpoint is reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_unreachable(timeout=2) is None
