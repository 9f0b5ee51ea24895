"""Models: the tutorial CNN, the VGG16 adapter, build records and summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VGG16_Weights

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
from cifarkit.models import _IMAGENET_URL, CifarCNN, get_build_record, imagenet_cache_path, rebuild

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
    assert type(loaded) is CifarCNN and type(loaded).__module__ == "cifarkit.models"


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
    assert str(imagenet_cache_path()) in message and str(torch_home) in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert isinstance(info.value, FileNotFoundError)
    assert not imagenet_cache_path().exists()  # no half-downloaded file left behind


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


# --------------------------------------------------------------------------- records & summary


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


def test_summary_counts_and_table() -> None:
    s = summary(build_cnn())
    assert (s.total, s.trainable, s.frozen) == (145_578, 145_578, 0)
    assert s.size_mb == pytest.approx(145_578 * 4 / 1e6)
    assert [r.params for r in s.rows if r.params] == [2432, 25632, 51264, 65600, 650]
    text = str(s)
    assert "sequential.0" in text and "Conv2d" in text and "2,432" in text and "145,578" in text


def test_summary_shows_as_text_and_html() -> None:
    s = summary(build_cnn())
    assert repr(s) == str(s) and str(s).endswith("size (fp32): 0.58 MB")
    html = s._repr_html_()
    assert html.count("<tr>") == len(s.rows) + 1 and "total params: 145,578" in html


def test_the_written_out_imagenet_url_is_torchvisions() -> None:
    assert VGG16_Weights.IMAGENET1K_V1.url == _IMAGENET_URL
