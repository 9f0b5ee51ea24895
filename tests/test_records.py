"""Build records from files: known builders and keywords, typed and bounded values, no weights source."""

from __future__ import annotations

from typing import Any

import pytest

from cifarkit.errors import ModelRecordError
from cifarkit.models.records import VGG_ARCHS, validate_build_record
from cifarkit.preprocess import MAX_CLASSES


@pytest.mark.parametrize(
    "record",
    [
        {"builder": "build_cnn", "kwargs": {}},
        {"builder": "build_cnn"},
        {"builder": "build_cnn", "kwargs": {"num_classes": MAX_CLASSES, "activation": "relu", "dropout": 0.75}},
        {
            "builder": "adapt_vgg16",
            "kwargs": {"arch": "vgg16_bn", "strategy": "append", "num_classes": 3, "freeze_features": True},
        },
        {"builder": "adapt_vgg16", "kwargs": {"arch": None}},
    ],
)
def test_admissible_records_come_back_as_given(record: dict[str, Any]) -> None:
    checked = validate_build_record(record)
    assert checked["builder"] == record["builder"] and checked["kwargs"] == record.get("kwargs", {})


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"num_classes": 2_000_000}, "num_classes must be an int from 1 to 100,000"),
        ({"num_classes": 10**12}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_classes": 10.0}, "num_classes"),
        ({"num_classes": "10"}, "num_classes"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ({"dropout": -0.1}, "dropout"),
        ({"dropout": float("nan")}, "dropout"),
        ({"activation": "gelu"}, "activation must be one of 'none', 'relu'"),
        ({"weights": "imagenet"}, "takes no argument 'weights'"),
        ({"weights": "/tmp/fifo"}, "takes no argument 'weights'"),
    ],
)
def test_out_of_bounds_or_unknown_cnn_arguments_are_refused(kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(ModelRecordError, match=why):
        validate_build_record({"builder": "build_cnn", "kwargs": kwargs})


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"builder": "adapt_vgg16", "kwargs": {"weights": "imagenet"}}, "takes no argument 'weights'"),
        ({"builder": "adapt_vgg16", "kwargs": {"arch": "resnet50"}}, "arch must be one of"),
        ({"builder": "adapt_vgg16", "kwargs": {"freeze_features": 1}}, "freeze_features must be true or false"),
        ({"builder": "os.system", "kwargs": {}}, "unknown builder"),
        ({"builder": "build_cnn", "kwargs": {}, "extra": 1}, "nothing else"),
        ({"builder": "build_cnn", "kwargs": [1]}, "'kwargs' must be a dict"),
        (["build_cnn"], "expected"),
        (None, "expected"),
    ],
)
def test_malformed_records_are_refused(record: Any, why: str) -> None:
    with pytest.raises(ModelRecordError, match=why):
        validate_build_record(record)


def test_messages_quote_little_of_a_huge_record() -> None:
    shared = ["x" * 10_000] * 1_000
    with pytest.raises(ModelRecordError) as caught:
        validate_build_record({"builder": "build_cnn", "kwargs": {"num_classes": shared, "y" * 10**6: 1}})
    assert len(str(caught.value)) < 600


def test_every_recorded_vgg_arch_is_a_torchvision_builder() -> None:
    import torchvision.models

    assert all(callable(getattr(torchvision.models, arch)) for arch in VGG_ARCHS)
