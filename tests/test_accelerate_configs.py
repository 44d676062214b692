"""The shipped accelerate configs (configs/accelerate/) load with accelerate's own config
reader, and their engine sections build accelerate's FSDP / DeepSpeed plugins. (DeepSpeed and
FSDP themselves need GPUs; tests/test_fsdp.py runs torch's FSDP2 on the CPU.)"""


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
