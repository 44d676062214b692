"""``vldft.device.to_device``: the one copy of "a collated batch on the model's device" (the
training step, the held-out scorer and the probe use it)."""

import torch

from vldft.device import model_device, to_device


def test_tensors_move_and_other_values_are_left_out():
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[-100, 2, 3]]),
             "pixel_values": torch.ones(4, 6), "ids": ["geo-1"], "n_images": 1}
    moved = to_device(batch, "meta")  # a device that exists without a GPU
    assert list(moved) == ["input_ids", "labels", "pixel_values"]
    for key, value in moved.items():
        assert value.device.type == "meta"
        assert value.shape == batch[key].shape and value.dtype == batch[key].dtype
    assert batch["input_ids"].device.type == "cpu", "the caller's batch is not changed"


def test_model_device_is_where_the_parameters_are():
    model = torch.nn.Linear(2, 3)
    assert model_device(model) == torch.device("cpu")
    assert model_device(model.to("meta")).type == "meta"
