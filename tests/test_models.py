"""Models: the tutorial CNN, the VGG16 adapter, build records and summaries."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import cifarkit
from cifarkit import adapt_vgg16, build_cnn, summary
from cifarkit.errors import (
    AlreadyAdaptedError,
    InvalidOptionError,
    ModelFileNotFoundError,
    ModelRecordError,
    NotACheckpointError,
    ShapeError,
    StateDictMismatchError,
    WeightsUnavailableError,
)
from cifarkit.models.cnn import CifarCNN
from cifarkit.models.rebuilding import rebuild
from cifarkit.models.records import get_build_record
from cifarkit.models.zoo import BACKBONES, weights_path
from cifarkit.preprocess import IMAGENET_MEAN, IMAGENET_STD

VGG16_PARAMS = 138_357_544  # torchvision's documented count for vgg16


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_vgg_params(strategy: str, num_classes: int) -> int:
    head_1000 = 4096 * 1000 + 1000
    if strategy == "replace":
        return VGG16_PARAMS - head_1000 + 4096 * num_classes + num_classes
    return VGG16_PARAMS + 1000 * num_classes + num_classes


class TutorialNet(nn.Module):
    """The tutorial's own class, written out as in the notes."""

    def __init__(self) -> None:
        super().__init__()
        self.sequential = nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(1024, 64), nn.Linear(64, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.sequential(x)
        return out


# --------------------------------------------------------------------------- the CNN


def test_cnn_reproduces_the_tutorial_network_exactly() -> None:
    model = build_cnn()
    tutorial = TutorialNet()
    assert n_params(model) == 145_578
    assert [type(m) for m in model.sequential] == [type(m) for m in tutorial.sequential]
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in tutorial.state_dict().items()}
    # Same weights -> same outputs: the architecture is the tutorial's, layer for layer.
    model.load_state_dict(tutorial.state_dict())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), tutorial(x), rtol=0, atol=0)
    assert isinstance(model.sequential[0], nn.Conv2d)
    assert model.sequential[0].kernel_size == (5, 5) and model.sequential[0].padding == (2, 2)


def test_relu_variant_inserts_activations_and_keeps_parameter_count() -> None:
    model = build_cnn(activation="relu", dropout=0.5)
    kinds = [type(m).__name__ for m in model.sequential]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d",
                     "Flatten", "Linear", "ReLU", "Dropout", "Linear"]  # fmt: skip
    assert n_params(model) == 145_578
    assert build_cnn(num_classes=3)(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32), (2, 3, 28, 28), (2, 32, 32, 3)])
def test_cnn_rejects_wrong_input_shapes_with_a_clear_message(shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match=r"expects input of shape \(N, 3, 32, 32\), got"):
        build_cnn()(torch.zeros(shape))


def test_single_image_error_suggests_unsqueeze() -> None:
    with pytest.raises(ShapeError, match="unsqueeze"):
        build_cnn()(torch.zeros(3, 32, 32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"activation": "gelu"}, "activation='gelu' is not valid; choose one of 'none', 'relu'"),
     ({"num_classes": 0}, "num_classes"), ({"dropout": 1.5}, "dropout")],
)  # fmt: skip
def test_cnn_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidOptionError, match=match):
        build_cnn(**kwargs)  # type: ignore[arg-type]


def test_cnn_class_is_importable_for_whole_model_pickles(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(build_cnn(), path)
    loaded = torch.load(path, weights_only=False)
    assert type(loaded) is CifarCNN and type(loaded).__module__ == "cifarkit.models.cnn"


# --------------------------------------------------------------------------- VGG16


@pytest.mark.parametrize("strategy", ["replace", "append"])
@pytest.mark.parametrize("size", [32, 224])
def test_vgg_output_shape_and_parameter_count(strategy: str, size: int) -> None:
    model = adapt_vgg16(strategy=strategy)  # type: ignore[arg-type]
    assert n_params(model) == expected_vgg_params(strategy, 10)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_vgg_heads_match_the_tutorial() -> None:
    replaced = adapt_vgg16(strategy="replace", num_classes=7)
    head = replaced.classifier[6]
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (4096, 7)
    appended = adapt_vgg16(strategy="append")
    assert appended.classifier[6].out_features == 1000
    assert list(appended.classifier._modules)[-1] == "add_linear"
    assert (appended.classifier.add_linear.in_features, appended.classifier.add_linear.out_features) == (1000, 10)


@pytest.mark.parametrize("strategy", ["replace", "append"])
def test_every_trainable_parameter_gets_a_gradient(strategy: str) -> None:
    for model in (build_cnn(), build_cnn(activation="relu"), adapt_vgg16(strategy=strategy)):  # type: ignore[arg-type]
        out = model(torch.randn(2, 3, 32, 32))
        nn.functional.cross_entropy(out, torch.tensor([1, 2])).backward()
        missing = [
            n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
        ]
        assert missing == []


def test_frozen_features_get_no_gradient() -> None:
    model = adapt_vgg16(freeze_features=True)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.features.parameters())
    assert all(p.grad is not None for p in model.classifier.parameters())
    s = summary(model)
    assert s.trainable == n_params(model.classifier) and s.frozen == n_params(model.features)


def test_adapting_in_place_and_twice() -> None:
    base = torchvision.models.vgg16()
    assert adapt_vgg16(base) is base
    with pytest.raises(AlreadyAdaptedError, match="already adapted"):
        adapt_vgg16(base)
    hand_made = torchvision.models.vgg16()
    hand_made.classifier.add_module("add_linear", nn.Linear(1000, 10))
    with pytest.raises(AlreadyAdaptedError):
        adapt_vgg16(hand_made)


def test_bad_strategy_lists_the_valid_ones() -> None:
    with pytest.raises(InvalidOptionError, match="strategy='swap' is not valid; choose one of 'replace', 'append'"):
        adapt_vgg16(strategy="swap")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="expects a torchvision VGG"):
        adapt_vgg16(build_cnn())  # type: ignore[arg-type]


def test_imagenet_weights_load_offline_from_a_seeded_cache(seeded_cache: Path, network: object) -> None:
    assert seeded_cache.name == "vgg16-397923af.pth"
    expected = torch.load(seeded_cache, weights_only=True)
    model = adapt_vgg16(weights="imagenet", strategy="append")
    torch.testing.assert_close(model.features[0].weight, expected["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.classifier[6].weight, expected["classifier.6.weight"], rtol=0, atol=0)
    assert network.attempts == []  # type: ignore[attr-defined]


def test_missing_cache_raises_with_path_and_url(torch_home: Path, network: object) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        adapt_vgg16(weights="imagenet", progress=False)
    message = str(info.value)
    assert str(weights_path("vgg16")) in message and str(torch_home) in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert isinstance(info.value, FileNotFoundError)
    assert not weights_path("vgg16").exists()  # no half-downloaded file left behind


def test_local_weights_file_round_trips(vgg_weights_file: Path) -> None:
    model = adapt_vgg16(weights=vgg_weights_file, freeze_features=True)
    expected = torch.load(vgg_weights_file, weights_only=True)
    torch.testing.assert_close(model.features[28].weight, expected["features.28.weight"], rtol=0, atol=0)
    assert model.classifier[6].out_features == 10


def test_wrong_or_corrupt_weights_files(tmp_path: Path) -> None:
    cnn_file = tmp_path / "cnn.pt"
    torch.save(build_cnn().state_dict(), cnn_file)
    with pytest.raises(StateDictMismatchError, match="wrong architecture"):
        adapt_vgg16(weights=cnn_file)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    with pytest.raises(NotACheckpointError, match="PNG"):
        adapt_vgg16(weights=junk)
    with pytest.raises(ModelFileNotFoundError, match="no such file"):
        adapt_vgg16(weights=tmp_path / "missing.pth")


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize(
    "make",
    [lambda: build_cnn(), lambda: build_cnn(5, activation="relu", dropout=0.25),
     lambda: adapt_vgg16(strategy="append", num_classes=4), lambda: adapt_vgg16(torchvision.models.vgg11())],
)  # fmt: skip
def test_build_record_is_json_and_rebuilds_the_same_architecture(make: object) -> None:
    model = make()  # type: ignore[operator]
    record = get_build_record(model)
    assert record is not None
    assert json.loads(json.dumps(record)) == record
    again = rebuild(json.loads(json.dumps(record)))
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_build_record_of_foreign_models_and_bad_records() -> None:
    assert get_build_record(nn.Linear(2, 2)) is None
    assert get_build_record(torch.nn.DataParallel(build_cnn())) is not None
    with pytest.raises(ModelRecordError, match="unknown builder"):
        rebuild({"builder": "resnet", "kwargs": {}})
    with pytest.raises(ModelRecordError, match="takes no argument 'depth'"):
        rebuild({"builder": "build_cnn", "kwargs": {"depth": 3}})
    with pytest.raises(ModelRecordError, match="'kwargs' must be a dict"):
        rebuild({"builder": "build_cnn", "kwargs": 3})


# --------------------------------------------------------------------------- adapt(): every listed network


# vgg16 (138 M parameters, 13 s here) is left out: test_vgg_* above, test_saving and test_exporting
# take it through the same steps.
@pytest.mark.parametrize("arch", [name for name in BACKBONES if name != "vgg16"])
def test_each_network_adapts_trains_saves_reloads_without_pickle_and_exports(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cifarkit.adapt(arch)
    data = cifarkit.synthetic_cifar10(32, seed=0).loader(batch_size=16, seed=0)
    before = copy.deepcopy(model.state_dict())
    history = cifarkit.train_loop(model, data, epochs=1, lr=0.01, device="cpu", progress=False)
    assert history.epochs[0].images == 32
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it learned
    path = tmp_path / f"{arch}.safetensors"
    cifarkit.save(model, path, method="safetensors")
    info = cifarkit.inspect(path)
    assert info.ok and info.build is not None and info.build["kwargs"]["arch"] == arch and info.references == []
    again = cifarkit.load(path)  # no pickle anywhere: rebuilt from the build record
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    report = cifarkit.export(model, tmp_path / f"{arch}.pt2")
    assert report.max_abs_diff < 1e-4 and report.classes is not None and len(report.classes) == 10


@pytest.mark.parametrize("arch", ["resnet18"])  # every network exports to .pt2 above; ONNX costs 6-15 s each
def test_adapted_networks_export_to_onnx(arch: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = cifarkit.adapt(arch, num_classes=3, strategy="append")
    report = cifarkit.export(model, tmp_path / f"{arch}.onnx", input_size=32)
    assert report.max_abs_diff < 1e-4 and report.max_abs_diff_resized < 1e-4


@pytest.mark.parametrize(("strategy", "freeze"), [("replace", False), ("append", True)])
def test_adapt_record_rebuilds_strategy_and_freezing_through_a_state_dict_file(
    strategy: str, freeze: bool, tmp_path: Path
) -> None:
    model = cifarkit.adapt("regnet_y_400mf", num_classes=6, strategy=strategy, freeze_features=freeze)  # type: ignore[arg-type]
    cifarkit.save(model, tmp_path / "m.pt")
    again = cifarkit.load(tmp_path / "m.pt")
    assert get_build_record(again) == get_build_record(model)
    assert [p.requires_grad for p in again.parameters()] == [p.requires_grad for p in model.parameters()]
    for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_adapt_vgg16_is_adapt_of_vgg16_and_both_record_one_builder() -> None:
    torch.manual_seed(0)
    a = cifarkit.adapt("vgg16", num_classes=3, strategy="append")
    b = cifarkit.adapt_vgg16(num_classes=3, strategy="append")
    c = cifarkit.adapt_vgg16(torchvision.models.vgg16(), num_classes=3, strategy="append")
    record = {"builder": "adapt", "kwargs": {"arch": "vgg16", "strategy": "append", "num_classes": 3,
                                            "freeze_features": False}}  # fmt: skip
    assert get_build_record(a) == get_build_record(b) == get_build_record(c) == record
    assert a.classifier.add_linear.out_features == 3
    other = cifarkit.adapt_vgg16(torchvision.models.vgg11_bn(), num_classes=3)  # another depth: its own name
    assert (
        get_build_record(other)["builder"] == "adapt_vgg16" and get_build_record(other)["kwargs"]["arch"] == "vgg11_bn"
    )
    assert type(rebuild(get_build_record(other)).features[1]).__name__ == "BatchNorm2d"
    old = {"builder": "adapt_vgg16", "kwargs": {"arch": "vgg16", "strategy": "replace", "num_classes": 4}}
    assert rebuild(old).classifier[6].out_features == 4  # files of the earlier record still load


@pytest.fixture
def resnet_weights(torch_home: Path) -> dict[str, torch.Tensor]:
    """A resnet18 state_dict in torchvision's layout at the cache path of its ImageNet weights."""
    torch.manual_seed(7)
    state = torchvision.models.resnet18().state_dict()
    path = weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def test_imagenet_weights_of_any_network_come_from_the_torch_cache(
    resnet_weights: dict[str, torch.Tensor], network: object
) -> None:
    model = cifarkit.adapt("resnet18", num_classes=5, weights="imagenet")
    for name, value in model.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(value, resnet_weights[name]), name
    assert model.fc.out_features == 5
    record = cifarkit.preprocessing_of(model)
    assert record is not None and record["input_size"] == [224, 224]
    assert tuple(record["mean"]) == IMAGENET_MEAN and tuple(record["std"]) == IMAGENET_STD
    assert network.attempts == []  # type: ignore[attr-defined]


def test_weights_from_a_file_and_a_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    assert cifarkit.adapt("mobilenet_v3_small", weights=path).classifier[3].out_features == 10
    with pytest.raises(StateDictMismatchError):
        cifarkit.adapt("resnet18", weights=path)


def test_missing_imagenet_weights_name_the_file_and_where_to_put_it(torch_home: Path, network: object) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        cifarkit.adapt("efficientnet_b0", weights="imagenet", progress=False)
    message = str(info.value)
    path = weights_path("efficientnet_b0")
    assert (
        str(path) in message and "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth" in message
    )
    assert not path.exists()


def test_adapt_refuses_bad_options() -> None:
    with pytest.raises(InvalidOptionError, match="unknown network 'resnet'"):
        cifarkit.adapt("resnet")
    with pytest.raises(InvalidOptionError, match="strategy="):
        cifarkit.adapt("resnet18", strategy="swap")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="num_classes"):
        cifarkit.adapt("resnet18", num_classes=0)
    with pytest.raises(InvalidOptionError, match="weights=''"):
        cifarkit.adapt("resnet18", weights="")
    with pytest.raises(ModelRecordError, match="arch must be one of"):
        rebuild({"builder": "adapt", "kwargs": {"arch": "resnet152"}})
