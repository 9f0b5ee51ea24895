"""The table of torchvision networks, kept equal to torchvision's own metadata, and the surgery."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights

from cifarkit import backbones
from cifarkit.errors import InvalidOptionError, ModelRecordError
from cifarkit.models.records import validate_build_record
from cifarkit.models.zoo import (
    BACKBONES,
    build_backbone,
    find_backbone,
    freeze_features,
    has_imagenet_head,
    layer_groups,
    replace_head,
    weights_path,
)
from cifarkit.preprocess import IMAGENET_MEAN, IMAGENET_STD

NAMES = list(BACKBONES)


@pytest.mark.parametrize("arch", NAMES)
def test_each_row_is_torchvisions_default_weights(arch: str) -> None:
    spec, weights = BACKBONES[arch], get_model_weights(arch).DEFAULT
    transforms = weights.transforms()
    assert spec.url == weights.url and spec.file == weights.url.rsplit("/", 1)[-1]
    assert spec.params == weights.meta["num_params"]
    assert list(transforms.crop_size) == [spec.input_size]
    assert tuple(transforms.mean) == IMAGENET_MEAN and tuple(transforms.std) == IMAGENET_STD


def test_a_build_record_admits_exactly_the_networks_of_the_table() -> None:
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
            "convnext_tiny", "regnet_y_400mf", "vgg16"} <= set(BACKBONES)  # fmt: skip
    for arch in BACKBONES:
        assert validate_build_record({"builder": "adapt", "kwargs": {"arch": arch}})["kwargs"]["arch"] == arch
    with pytest.raises(ModelRecordError, match="arch must be one of"):
        validate_build_record({"builder": "adapt", "kwargs": {"arch": "resnet152"}})


def test_backbones_lists_smallest_first_as_text_and_html() -> None:
    table = backbones()
    assert len(table) == len(BACKBONES) and sorted(table.names) == sorted(BACKBONES)
    assert [b.params for b in table] == sorted(b.params for b in BACKBONES.values())
    text = str(table)
    assert "resnet18" in text and "11.7M" in text and "224x224" in text and "vgg16-397923af.pth" in text
    assert table._repr_html_().count("<tr>") == len(table) + 1


def test_unknown_network_names_the_known_ones() -> None:
    with pytest.raises(InvalidOptionError, match=r"unknown network 'resnet19'; cifarkit adapts resnet18, resnet50"):
        find_backbone("resnet19")


def test_weights_path_follows_torch_home(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights_path("convnext_tiny") == tmp_path / "hub" / "checkpoints" / "convnext_tiny-983f1562.pth"  # type: ignore[operator]


@pytest.mark.parametrize("arch", NAMES)
def test_groups_cover_every_parameter_once_earliest_first_head_last(arch: str) -> None:
    spec = BACKBONES[arch]
    model = build_backbone(arch)
    assert has_imagenet_head(model, spec)
    groups = layer_groups(model, spec.head, spec.depth)
    flat = [id(p) for _, params in groups for p in params]
    assert sorted(flat) == sorted(id(p) for p in model.parameters())
    names = [name for name, _ in groups]
    assert names[-1] == spec.head and len(names) >= 3
    first = next(iter(model.named_parameters()))[0]
    assert first.startswith(names[0])


def test_layer_groups_refuses_a_head_that_is_not_there() -> None:
    with pytest.raises(InvalidOptionError, match="head='head' names no parameter"):
        layer_groups(torchvision.models.resnet18(), "head", 1)
    with pytest.raises(InvalidOptionError, match="names every parameter"):
        layer_groups(nn.Sequential(nn.Linear(2, 2)), "0", 1)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_replace_and_append_heads(arch: str) -> None:
    spec = BACKBONES[arch]
    replaced, appended = build_backbone(arch), build_backbone(arch)
    replace_head(replaced, spec, "replace", 4)
    replace_head(appended, spec, "append", 4)
    assert not has_imagenet_head(replaced, spec)
    x = torch.rand(2, 3, 32, 32)
    assert replaced.eval()(x).shape == appended.eval()(x).shape == (2, 4)
    assert sum(p.numel() for p in appended.parameters()) == spec.params + 1000 * 4 + 4


def test_freeze_features_leaves_only_the_head_trainable() -> None:
    model = build_backbone("efficientnet_b0")
    freeze_features(model, "classifier")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.1.weight", "classifier.1.bias"}
    freeze_features(model, "classifier", frozen=False)
    assert all(p.requires_grad for p in model.parameters())


def test_regnet_builds_on_the_meta_device_too() -> None:
    with torch.device("meta"):
        model = build_backbone("regnet_y_400mf")
    assert {p.device.type for p in model.parameters()} == {"meta"}
