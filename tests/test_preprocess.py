"""The preprocessing record: carried by models and files, applied by predict, evaluate and the CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from cifarkit import (
    adapt_vgg16,
    build_cnn,
    evaluate,
    inspect,
    load,
    predict,
    preprocessing_of,
    save,
    synthetic_cifar10,
    train_loop,
)
from cifarkit.cli import main
from cifarkit.errors import CorruptCheckpointError, ModelRecordError
from cifarkit.files.format import payload_digest
from cifarkit.preprocess import IMAGENET_MEAN, IMAGENET_STD, make_record, to_model_input, validate_record

MEAN, STD = (0.13, 0.5, 0.87), (0.3, 0.25, 0.2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A model trained on normalized batches, and its file."""
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(256, seed=0)
    train_loop(model, data.loader(batch_size=32, seed=0, normalize=(MEAN, STD)), epochs=2, lr=0.05,
               device="cpu", progress=False)  # fmt: skip
    return model, save(model, tmp_path_factory.mktemp("pre") / "m.pt")


def test_the_record_is_taken_from_the_loader_and_kept_as_given(trained: tuple[torch.nn.Module, Path]) -> None:
    model, path = trained
    record = preprocessing_of(model)
    assert record == {"input_size": [32, 32], "channels": "RGB", "resize": "bilinear-antialias", "scale": "uint8 / 255", "mean": list(MEAN),
                      "std": list(STD), "classes": synthetic_cifar10(1).classes}  # fmt: skip
    raw = torch.load(path, weights_only=True)
    assert raw["preprocess"]["mean"] == [0.13, 0.5, 0.87]  # not float32's 0.12999999523
    assert preprocessing_of(load(path)) == record and inspect(path).preprocess == record
    assert "mean [0.13, 0.5, 0.87]" in str(inspect(path))
    assert preprocessing_of(build_cnn()) is None  # a fresh model has none


def test_one_picture_gets_the_same_answer_everywhere(
    trained: tuple[torch.nn.Module, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, path = trained
    picture = synthetic_cifar10(1, seed=7).images[0]  # (3, 32, 32) uint8
    # training-time view: the loader's normalized batch through the model
    x = synthetic_cifar10(1, seed=7).loader(batch_size=1, shuffle=False, normalize=(MEAN, STD))
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(next(iter(x))[0]), 1)[0]
    model.train()
    library = predict(load(path), picture, device="cpu")[0]  # no classes=: from the file
    assert library.index == int(expected.argmax()) and library.probability == pytest.approx(float(expected.max()))
    assert library.label == synthetic_cifar10(1).classes[library.index]
    file = tmp_path / "p.png"
    Image.fromarray(picture.permute(1, 2, 0).numpy()).save(file)
    assert main(["predict", str(path), str(file)]) == 0
    assert capsys.readouterr().out.strip() == f"{file}: {library.label} ({library.probability:.1%})"


def test_evaluate_applies_the_record_to_raw_pixels_and_warns_on_a_contradiction(
    trained: tuple[torch.nn.Module, Path],
) -> None:
    model, _ = trained
    data = synthetic_cifar10(64, seed=3)
    normalized = evaluate(model, data.loader(batch_size=32, shuffle=False, normalize=(MEAN, STD)), device="cpu")
    raw = evaluate(model, [(data.images[:32], data.labels[:32]), (data.images[32:], data.labels[32:])], device="cpu")
    assert raw.accuracy == normalized.accuracy and raw.loss == pytest.approx(normalized.loss, rel=1e-5)
    with pytest.warns(UserWarning, match=r"normalizes with None .* trained with \(\[0\.13"):
        evaluate(model, data.loader(shuffle=False), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(model, data.loader(shuffle=False, normalize=(MEAN, STD)), device="cpu")  # agrees: silent


def test_pretrained_vgg16_records_imagenet_normalization(vgg_weights_file: Path) -> None:
    record = preprocessing_of(adapt_vgg16(weights=vgg_weights_file))
    assert record is not None and tuple(record["mean"]) == IMAGENET_MEAN and tuple(record["std"]) == IMAGENET_STD
    assert preprocessing_of(adapt_vgg16()) is None  # random weights expect nothing in particular


def test_a_changed_record_fails_the_checksum_and_old_files_still_load(
    trained: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    _, path = trained
    raw = torch.load(path, weights_only=True)
    raw["preprocess"]["mean"] = [0.0, 0.0, 0.0]
    torch.save(raw, tmp_path / "tampered.pt")
    with pytest.raises(CorruptCheckpointError, match="fails its SHA-256 check"):
        load(tmp_path / "tampered.pt")
    old = {k: v for k, v in torch.load(path, weights_only=True).items() if k not in ("preprocess", "payload_sha256")}
    old |= {"format_version": 1}
    torch.save(old | {"payload_sha256": payload_digest(old)}, tmp_path / "old.pt")  # a file of format 1
    with pytest.raises(CorruptCheckpointError, match="format version 1; this cifarkit reads model files of version 2"):
        load(tmp_path / "old.pt")


def test_bad_records_are_refused() -> None:
    with pytest.raises(ModelRecordError, match="std must be positive"):
        make_record(mean=[0.5], std=[0.0])
    with pytest.raises(ModelRecordError, match="mean and std go together"):
        validate_record({"mean": [0.5]})
    with pytest.raises(ModelRecordError, match="input_size"):
        validate_record({"input_size": [32]})
    with pytest.raises(ModelRecordError, match="expected a JSON object"):
        validate_record(json.loads("[1, 2]"))
    assert to_model_input(torch.zeros(1, 3, 1, 1), None).dtype == torch.float32
