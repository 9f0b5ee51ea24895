"""More accuracy from the same epochs: EMA of the weights, flip test-time augmentation, MixUp and
CutMix, each checked against what it means computed by hand."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import cifarkit
from cifarkit import EMA, build_cnn, evaluate, export, inspect, load, predict, save, synthetic_cifar10, train_loop
from cifarkit.data.tensors import ImageTensors
from cifarkit.errors import InvalidOptionError, ShapeError
from cifarkit.evaluation.inference import class_probabilities
from cifarkit.losses import cross_entropy
from cifarkit.preprocess import preprocessing_of


def _with_norm() -> nn.Module:
    """A small conv net with a batch norm: its running statistics must be averaged too."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10))  # fmt: skip


def _data(n: int = 128, seed: int = 0, **options: Any) -> Any:
    return synthetic_cifar10(n, seed=seed).loader(batch_size=32, seed=seed, **options)


# --------------------------------------------------------------------------- EMA


class Snapshots:
    """The model's floating parameters and buffers after every optimizer step."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.steps = model, []  # type: ignore[var-annotated]

    def on_step_end(self, step: Any) -> None:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items() if v.is_floating_point()}
        self.steps.append(state)


def test_the_average_is_the_one_computed_by_hand_buffers_included() -> None:
    model = _with_norm()
    ema, seen = EMA(0.8, start=2, every=2), Snapshots(model)
    history = train_loop(model, _data(256), epochs=2, device="cpu", progress=False, callbacks=[seen, ema],
                         eval_data=_data(64, seed=1))  # fmt: skip
    hand: dict[str, torch.Tensor] | None = None
    for i, weights in enumerate(seen.steps, start=1):  # steps 3, 5, 7, ...: after 2, every second one
        if i > 2 and (i - 3) % 2 == 0:
            hand = dict(weights) if hand is None else {k: 0.8 * hand[k] + 0.2 * weights[k] for k in hand}
    assert hand is not None and ema.updates == (len(seen.steps) - 2 + 1) // 2
    for key, value in hand.items():
        torch.testing.assert_close(ema.module.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert "1.running_mean" in hand  # the batch norm's statistics are in the average
    # the model ends with the average, evaluation saw it, and its record says so
    assert history.eval_weights == "ema" and "averaged (EMA)" in repr(history).splitlines()[0]
    for key, value in hand.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    last = evaluate(model, _data(64, seed=1), device="cpu")
    assert history.epochs[-1].eval_loss == pytest.approx(last.loss, rel=1e-6)
    assert preprocessing_of(model)["averaged"] == {"kind": "ema", "decay": 0.8, "updates": ema.updates}  # type: ignore[index]


def test_restore_raw_keeps_the_trained_weights_and_evaluation_gives_them_back() -> None:
    model = _with_norm()
    seen = Snapshots(model)
    train_loop(model, _data(), epochs=2, device="cpu", progress=False, eval_data=_data(64, seed=1),
               callbacks=[seen, EMA(0.5, restore_raw=True)])  # fmt: skip
    for key, value in seen.steps[-1].items():
        assert torch.equal(model.state_dict()[key], value), key  # raw: evaluation put them back
    assert "averaged" not in (preprocessing_of(model) or {})


def test_a_resumed_run_with_ema_ends_bit_identical(tmp_path: Path) -> None:
    def run(epochs: int, checkpoint: Path) -> tuple[nn.Module, EMA]:
        torch.manual_seed(0)
        model, ema = build_cnn(activation="relu"), EMA(0.9, start=3)
        train_loop(model, _data(), epochs=epochs, lr=0.05, device="cpu", progress=False, callbacks=[ema],
                   checkpoint=checkpoint)  # fmt: skip
        return model, ema

    whole, whole_ema = run(3, tmp_path / "whole.pt")
    run(1, tmp_path / "split.pt")
    resumed, resumed_ema = run(3, tmp_path / "split.pt")
    assert resumed_ema.updates == whole_ema.updates and resumed_ema.steps == whole_ema.steps
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    with pytest.raises(InvalidOptionError, match="same EMA settings"):
        train_loop(build_cnn(activation="relu"), _data(), epochs=4, device="cpu", progress=False,
                   callbacks=[EMA(0.99)], checkpoint=tmp_path / "split.pt")  # fmt: skip


def test_the_model_file_says_its_weights_are_an_average(tmp_path: Path) -> None:
    model = build_cnn(activation="relu")
    train_loop(model, _data(64), epochs=1, device="cpu", progress=False, callbacks=[EMA(0.9)])
    path = save(model, tmp_path / "m.pt")
    assert preprocessing_of(load(path))["averaged"]["kind"] == "ema"  # type: ignore[index]
    assert "EMA" in str(inspect(path)) and "decay 0.9" in str(inspect(path))


def test_fine_tune_takes_an_ema_and_bad_settings_are_refused() -> None:
    model = cifarkit.adapt("mobilenet_v3_small", num_classes=10)
    ema = EMA(0.9)
    history = cifarkit.fine_tune(model, _data(64), epochs=1, device="cpu", progress=False, callbacks=[ema])
    assert ema.updates == 4 and [e.phase for e in history.epochs] == ["frozen", "unfrozen"]
    for bad in (0, 1, 1.5, True):
        with pytest.raises(InvalidOptionError, match="decay"):
            EMA(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="every"):
        EMA(every=0)


# --------------------------------------------------------------------------- test-time augmentation


def test_flip_tta_is_the_mean_of_the_picture_and_its_mirror_in_python_and_in_the_program(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    train_loop(model, _data(), epochs=1, device="cpu", progress=False)
    pictures = synthetic_cifar10(6, seed=3).images
    hand = (class_probabilities(model, pictures, device="cpu") + class_probabilities(model, pictures.flip(-1),
            device="cpu")) / 2  # fmt: skip
    torch.testing.assert_close(class_probabilities(model, pictures, device="cpu", tta="flip"), hand)
    assert [p.index for p in predict(model, pictures, tta="flip")] == hand.argmax(1).tolist()
    data = synthetic_cifar10(96, seed=4)
    result = evaluate(model, data.loader(batch_size=32, shuffle=False), device="cpu", tta="flip")
    probs = class_probabilities(model, data.images, device="cpu", tta="flip")
    assert result.accuracy == pytest.approx(float((probs.argmax(1) == data.labels).float().mean()))
    assert result.loss == pytest.approx(float(-probs[torch.arange(96), data.labels].log().mean()), rel=1e-5)
    report = export(model, tmp_path / "tta.onnx", tta="flip")  # checked against the eager TTA
    program = cifarkit.load_exported(report.path)
    torch.testing.assert_close(class_probabilities(program, pictures, device="cpu"), hand, atol=1e-5, rtol=0)
    with pytest.raises(InvalidOptionError, match="already inside"):
        class_probabilities(program, pictures, tta="flip")
    with pytest.raises(InvalidOptionError, match="tta='rotate'"):
        evaluate(model, data.loader(), device="cpu", tta="rotate")  # type: ignore[arg-type]


def test_a_model_trained_on_pictures_that_must_not_be_mirrored_refuses_flip_tta() -> None:
    model = build_cnn(activation="relu")
    digits = _data(64, augment=True, mirror=False)  # digits, letters: no flip in the augmentation either
    train_loop(model, digits, epochs=1, device="cpu", progress=False)
    assert preprocessing_of(model)["mirror"] is False  # type: ignore[index]
    for call in (lambda: evaluate(model, digits, device="cpu", tta="flip"),
                 lambda: predict(model, digits.images[:2], tta="flip")):  # fmt: skip
        with pytest.raises(InvalidOptionError, match="must not be mirrored"):
            call()
    x = torch.arange(32, dtype=torch.uint8).repeat(32, 1).expand(8, 3, 32, 32).contiguous()
    loader = ImageTensors(x, torch.zeros(8, dtype=torch.int64)).loader(augment=True, mirror=False, seed=0)
    for batch, _ in loader:  # crops shift the columns, but never reverse them
        row = batch[0, 0, 10]
        inside = row[row > 0]
        assert bool((inside[1:] >= inside[:-1]).all())


# --------------------------------------------------------------------------- MixUp and CutMix

COLOURS = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.float32)


def _coloured(n: int = 32) -> ImageTensors:
    """One constant colour per class: a mixed picture's pixels say exactly how it was mixed."""
    labels = torch.arange(n) % 4
    images = COLOURS[labels][:, :, None, None].expand(n, 3, 32, 32).to(torch.uint8).contiguous()
    return ImageTensors(images, labels, ["black", "red", "green", "blue"])


def test_mixup_pixels_are_the_target_weighted_mix_of_the_colours() -> None:
    loader = _coloured().loader(batch_size=16, seed=0, mix="mixup")
    for x, target in loader:
        assert target.shape == (16, 4) and torch.allclose(target.sum(1), torch.ones(16))
        expected = (target @ COLOURS) / 255  # (16, 3): each picture a blend of the classes' colours
        torch.testing.assert_close(x.mean((2, 3)), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(x.amax((2, 3)), x.amin((2, 3)))  # MixUp blends every pixel alike


def test_cutmix_areas_equal_the_target_shares() -> None:
    loader = _coloured().loader(batch_size=16, seed=1, mix="cutmix")
    mixed = 0
    for x, target in loader:
        pixels = (x * 255).round().permute(0, 2, 3, 1).reshape(16, -1, 3)  # (B, H*W, 3)
        share = torch.stack([(pixels == COLOURS[c]).all(2).float().mean(1) for c in range(4)], 1)
        torch.testing.assert_close(share, target, atol=1e-6, rtol=0)  # each class's area is its share
        mixed += int((target.max(1).values < 1).sum())
    assert mixed > 0


def test_the_mix_of_an_epoch_depends_on_the_seed_and_the_epoch_only() -> None:
    def epoch(e: int, seed: int = 0) -> list[torch.Tensor]:
        loader = _coloured().loader(batch_size=16, seed=seed, mix="cutmix", mix_prob=0.5)
        loader.set_epoch(e)
        return [t for _, t in loader]

    state = torch.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(epoch(3), epoch(3), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(epoch(3), epoch(4), strict=True))
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is given back
    with pytest.raises(InvalidOptionError, match="mix"):
        _coloured().loader(mix="blend")
    with pytest.raises(InvalidOptionError, match="mix_prob"):
        _coloured().loader(mix="mixup", mix_prob=1.5)


def test_cross_entropy_takes_probability_rows_and_refuses_anything_else() -> None:
    logits = torch.randn(4, 3)
    target = torch.softmax(torch.randn(4, 3), 1)
    assert torch.equal(cross_entropy(logits, target), torch.nn.functional.cross_entropy(logits, target))
    for bad in (target * 2, target - 0.5):
        with pytest.raises(ShapeError, match="not class probabilities"):
            cross_entropy(logits, bad)


def test_training_with_a_mix_counts_the_dominant_label_and_the_doctor_says_calibrate() -> None:
    loader = _data(128, mix="mixup")
    history = train_loop(build_cnn(activation="relu"), loader, epochs=1, device="cpu", progress=False)
    assert 0 <= history.epochs[0].train_accuracy <= 1 and math.isfinite(history.epochs[0].loss_mean)
    report = cifarkit.doctor(build_cnn(activation="relu"), loader)
    assert report.ok and _codes(report.notes) == ["probabilities-softened"]
    assert "calibrate" in str(report)
    smoothing = cifarkit.doctor(build_cnn(activation="relu"), _data(64), loss_fn=cifarkit.CrossEntropyLoss(
        label_smoothing=0.1))  # fmt: skip
    assert _codes(smoothing.notes) == ["probabilities-softened"]


def _codes(notes: list[Any]) -> list[str]:
    """The notes' codes, less the one that depends on the CPU (tested in test_doctor)."""
    return [n.code for n in notes if n.code != "int8-without-vnni"]


def test_the_command_line_trains_with_ema_and_a_mix_and_evaluates_with_tta(tmp_path: Path, capsys: Any) -> None:
    from cifarkit.cli import main

    out = tmp_path / "m.pt"
    args = ["train", "--model", "cnn-relu", "--epochs", "1", "--train-count", "128", "--quiet", "--ema", "0.9",
            "--mix", "cutmix", "--tta", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "held out with flip TTA: accuracy" in printed
    assert preprocessing_of(load(out))["averaged"]["decay"] == 0.9  # type: ignore[index]
    assert main(["evaluate", str(out), "--count", "64", "--tta"]) == 0
    assert main(["export", str(out), "-o", str(tmp_path / "m.onnx"), "--tta"]) == 0
    with pytest.raises(SystemExit):
        main(["train", "--ema", "1.5"])
