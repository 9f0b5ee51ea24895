"""Calibrated probabilities: the temperature fitted, stored in the record, applied everywhere."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import cifarkit
from cifarkit import build_cnn, calibrate, evaluate, predict, synthetic_cifar10
from cifarkit.errors import CalibrationError, EmptyDataError, InvalidOptionError, ModelRecordError, ShapeError
from cifarkit.evaluation.inference import class_probabilities
from cifarkit.evaluation.metrics import CalibrationBins, expected_calibration_error
from cifarkit.preprocess import make_record, preprocessing_of, set_preprocessing


@pytest.fixture(scope="module")
def overconfident() -> nn.Module:
    """A trained CNN whose logits are multiplied by 4: right as often, far too sure."""
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(3000, seed=0).loader(batch_size=50, seed=0)
    cifarkit.train_loop(model, data, epochs=3, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                        device="cpu", progress=False)  # fmt: skip
    with torch.no_grad():
        model.sequential[-1].weight.mul_(4)
        model.sequential[-1].bias.mul_(4)
    return model


def _held_out(n: int = 400, seed: int = 1) -> Any:
    return synthetic_cifar10(n, seed=seed).loader(batch_size=100, shuffle=False)


def _noisy_held_out(share: float = 0.1) -> Any:
    """Held-out pictures of which ``share`` carry a wrong label (seeded): a model sure of its
    answers is then over-confident by construction, on any CPU (on clean, easy pictures the
    calibration error of this model is small, and which way temperature moves it is a matter of
    rounding)."""
    held = synthetic_cifar10(400, seed=1)
    labels = held.labels.clone()
    g = torch.Generator().manual_seed(0)
    moved = torch.randperm(len(labels), generator=g)[: int(len(labels) * share)]
    labels[moved] = (labels[moved] + 1 + torch.randint(0, 9, (len(moved),), generator=g)) % 10
    return cifarkit.ImageTensors(held.images, labels, held.classes).loader(batch_size=100, shuffle=False)


def test_a_fitted_temperature_lowers_the_calibration_error_and_keeps_every_answer(overconfident: nn.Module) -> None:
    model = build_cnn(activation="relu")
    model.load_state_dict(overconfident.state_dict())
    set_preprocessing(model, preprocessing_of(overconfident))
    pictures = synthetic_cifar10(16, seed=9).images
    before = class_probabilities(model, pictures, device="cpu")
    report = calibrate(model, _noisy_held_out(), device="cpu")
    assert report.temperature > 1.5  # the model was over-confident: T spreads its probabilities
    assert report.nll_after < report.nll_before  # what the temperature minimises: always
    assert report.ece_before > 0.15 and report.ece_after < report.ece_before  # far too sure, then less
    assert report.count == 400 and 0 < report.accuracy <= 1
    assert preprocessing_of(model)["temperature"] == report.temperature  # type: ignore[index]
    after = class_probabilities(model, pictures, device="cpu")
    assert torch.equal(before.argmax(1), after.argmax(1)) and not torch.allclose(before, after)
    assert after.max(1).values.mean() < before.max(1).values.mean()
    result = evaluate(model, _noisy_held_out(), device="cpu")
    assert result.ece == pytest.approx(report.ece_after, abs=1e-6) and result.nll == pytest.approx(report.nll_after)
    shares = [share for share, _ in report.kept.values()]
    assert list(report.kept) == [0.5, 0.7, 0.9, 0.95] and shares == sorted(shares, reverse=True)
    assert "temperature" in str(report) and "reject below" in str(report) and "<table" in report._repr_html_()


def test_the_temperature_travels_through_save_load_and_export(overconfident: nn.Module, tmp_path: Path) -> None:
    model = build_cnn(activation="relu")
    model.load_state_dict(overconfident.state_dict())
    report = calibrate(model, _held_out(), device="cpu")
    cifarkit.save(model, tmp_path / "m.pt")
    again = cifarkit.load(tmp_path / "m.pt")
    assert preprocessing_of(again)["temperature"] == report.temperature  # type: ignore[index]
    assert cifarkit.inspect(tmp_path / "m.pt").preprocess["temperature"] == report.temperature  # type: ignore[index]
    pictures = synthetic_cifar10(8, seed=3).images
    expected = class_probabilities(model, pictures, device="cpu")
    torch.testing.assert_close(class_probabilities(again, pictures, device="cpu"), expected)
    exported = cifarkit.export(again, tmp_path / "m.pt2")
    program = cifarkit.load_exported(exported.path, trusted=True)
    torch.testing.assert_close(class_probabilities(program, pictures, device="cpu"), expected, atol=1e-5, rtol=0)
    probs, logits = program.run(pictures.permute(0, 2, 3, 1).numpy())
    torch.testing.assert_close(torch.from_numpy(probs), torch.softmax(torch.from_numpy(logits) / report.temperature, 1))
    pytest.importorskip("onnxruntime")
    onnx = cifarkit.load_exported(cifarkit.export(again, tmp_path / "m.onnx").path)
    assert onnx.preprocess["temperature"] == report.temperature  # in the file's metadata_props
    torch.testing.assert_close(class_probabilities(onnx, pictures, device="cpu"), expected, atol=1e-5, rtol=0)


def test_reject_below_answers_unknown(overconfident: nn.Module) -> None:
    pictures = synthetic_cifar10(6, seed=4).images
    sure = predict(overconfident, pictures, device="cpu")
    assert all(not p.unknown and p.label is not None for p in sure)
    untrained = build_cnn()  # about 10% for every class
    guesses = predict(untrained, pictures, device="cpu")
    none = predict(untrained, pictures, device="cpu", reject_below=0.5)
    assert all(p.unknown and p.label is None for p in none)
    assert [p.index for p in none] == [p.index for p in guesses]  # the best guess is still there
    threshold = sorted(p.probability for p in sure)[3]
    split = predict(overconfident, pictures, device="cpu", reject_below=threshold)
    assert [p.unknown for p in split] == [p.probability < threshold for p in sure]
    with pytest.raises(InvalidOptionError, match=r"reject_below=1\.5 is not a probability"):
        predict(overconfident, pictures, reject_below=1.5)


class _Oracle(nn.Module):
    """Reads the class written in the first pixel: right on every picture, so NLL falls as T -> 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot((x[:, 0, 0, 0] * 10).round().long(), 10).float() * 5


def test_bad_held_out_data_and_an_unfittable_temperature_leave_the_model_unchanged() -> None:
    oracle = _Oracle()
    set_preprocessing(oracle, make_record())
    labels = torch.arange(40) % 10
    images = torch.zeros(40, 3, 32, 32)
    images[:, 0, 0, 0] = labels / 10
    with pytest.raises(CalibrationError, match="left unchanged"):
        calibrate(oracle, [(images, labels)], device="cpu")
    assert "temperature" not in (preprocessing_of(oracle) or {})
    with pytest.raises(EmptyDataError):
        calibrate(build_cnn(), [], device="cpu")
    wrong = [(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 12]))]
    with pytest.raises(ShapeError, match="labels run from 0 to 12 but the model has 10 classes"):
        calibrate(build_cnn(), wrong, device="cpu")
    for bad in (0.0, float("inf"), -1.0, True):
        with pytest.raises(ModelRecordError, match="temperature"):
            set_preprocessing(build_cnn(), {**make_record(), "temperature": bad})


def test_the_expected_calibration_error_by_hand() -> None:
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 0, 0])
    # bin of 0.95: accuracy 1/2, confidence 0.95; bin of 0.55: accuracy 1, confidence 0.55
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    bins = CalibrationBins(torch.device("cpu"))
    bins.add(probs, labels)
    expected_nll = -(2 * math.log(0.95) + math.log(0.05) + math.log(0.55) * 0 + 2 * math.log(0.55) - math.log(0.95))
    assert bins.nll() == pytest.approx((-(math.log(0.95) + math.log(0.05) + 2 * math.log(0.55))) / 4)
    assert expected_nll > 0
    assert math.isnan(CalibrationBins(torch.device("cpu")).ece())
