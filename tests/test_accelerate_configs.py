"""The shipped accelerate configs (configs/accelerate/) load with accelerate's own config
reader, and their engine sections build accelerate's FSDP / DeepSpeed plugins. The engines
themselves: tests/test_deepspeed.py trains through zero2.yaml and zero3.yaml on 2 CPU processes
(DeepSpeed's CPU accelerator, gloo); accelerate builds FSDP only on GPUs, so tests/test_fsdp.py
runs torch's FSDP2 (fully_shard) on the CPU directly, and bench/engines_gpu.py runs fsdp.yaml
on a GPU."""


import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from conftest import ROOT

CONFIGS = ROOT / "configs/accelerate"


def test_every_engine_is_shipped():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == {"ddp", "fsdp", "zero2", "zero3"}


@pytest.mark.parametrize("name", ["ddp", "fsdp", "zero2", "zero3"])
def test_config_loads_and_documents_its_launch_line(name):
    path = CONFIGS / f"{name}.yaml"
    cfg = load_config_from_file(str(path))
    expected = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP,
                "zero2": DistributedType.DEEPSPEED, "zero3": DistributedType.DEEPSPEED}[name]
    assert cfg.distributed_type == expected and cfg.mixed_precision == "bf16"
    text = path.read_text()
    assert f"accelerate launch --config_file configs/accelerate/{name}.yaml -m vldft.train" in text


def test_fsdp_section_builds_an_fsdp2_plugin():
    c = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=c["fsdp_version"], auto_wrap_policy=c["fsdp_auto_wrap_policy"].lower(),
        reshard_after_forward=c["fsdp_reshard_after_forward"],
        state_dict_type=c["fsdp_state_dict_type"],
        cpu_ram_efficient_loading=c["fsdp_cpu_ram_efficient_loading"],
        cpu_offload=c["fsdp_offload_params"],
        activation_checkpointing=c["fsdp_activation_checkpointing"])
    assert plugin.fsdp_version == 2
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_section_builds_a_deepspeed_plugin(name, stage):
    c = load_config_from_file(str(CONFIGS / f"{name}.yaml")).deepspeed_config
    plugin = DeepSpeedPlugin(**c)
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage == plugin.zero_stage
    if stage == 3:  # the final model is gathered to one file at save
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "llava"])
def test_fsdp_wraps_every_decoder_and_vision_block_of_the_objective_module(family):
    """accelerate's FSDP2 picks the blocks to shard one by one from ``_no_split_modules`` of the
    module it prepares, which is vldft's ObjectiveModule, not the Hugging Face model: without
    them only the root would be wrapped (the whole model gathered at once). Checked with
    accelerate's own policy builder on the shipped fsdp.yaml (accelerate builds FSDP only on
    GPUs, so the sharding itself is not run here)."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from vldft.adapters import load_adapter
    from vldft.config import ModelConfig
    from vldft.step import ObjectiveModule

    c = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=c["fsdp_version"], auto_wrap_policy=c["fsdp_auto_wrap_policy"].lower())
    adapter = load_adapter(ModelConfig(family=family, tiny=True))
    module = ObjectiveModule(adapter)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, module)
    wrapped = [type(m).__name__ for m in module.modules() if policy(m)]
    blocks = [type(m).__name__ for m in adapter.model.modules()
              if type(m).__name__ in adapter.model._no_split_modules]
    decoder = [n for n in blocks if "Decoder" in n]
    assert len(decoder) == adapter.model.config.get_text_config().num_hidden_layers
    assert wrapped == blocks and len(blocks) > len(decoder)  # vision blocks / layers too
