"""The cifarkit command."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cifarkit import evaluate, inspect, load, predict, synthetic_cifar10
from cifarkit.cli import main
from cifarkit.cli.commands import LESSON_HINT


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("cli") / "model.pt"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(
            ["train", "--epochs", "2", "--train-count", "256", "--quiet", "--out", str(out), "--model", "cnn-relu"]
        )
    assert status == 0
    return out, printed.getvalue().splitlines()


def test_train_prints_epochs_and_saves_the_model_it_reports_on(trained: tuple[Path, list[str]]) -> None:
    path, lines = trained
    assert [line.split("  ")[0] for line in lines[:2]] == ["epoch 1/2", "epoch 2/2"]
    assert lines[2].startswith(f"saved {path} (")
    model = load(path)
    assert type(model).__name__ == "CifarCNN" and model.sequential[1].__class__.__name__ == "ReLU"
    # The last line's held-out accuracy is the saved model's accuracy on the same held-out data
    # (--train-count 256: 51 images generated with seed 1).
    printed = float(re.search(r"eval acc ([\d.]+)%", lines[1]).group(1))  # type: ignore[union-attr]
    held_out = synthetic_cifar10(51, seed=1).loader(batch_size=256, shuffle=False)
    assert evaluate(model, held_out, device="cpu").accuracy * 100 == pytest.approx(printed, abs=0.05)


def test_default_run_is_the_lesson_and_says_what_to_try_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--epochs", "2", "--train-count", "128", "--quiet", "--out", str(tmp_path / "m.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/2  loss sum ") and "train acc" in lines[0] and "img/s" in lines[0]
    assert lines[1].startswith("epoch 2/2") and lines[2].startswith("saved ")
    assert lines[3:] == LESSON_HINT.splitlines() and len(lines) == 5  # two lines: what it showed, what next
    assert "cifarkit train --model cnn-relu --momentum 0.9" in lines[4]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"cifarkit {version('cifarkit')}"


def test_evaluate_inspect_predict(
    trained: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = trained[0]
    model = load(file)
    assert main(["evaluate", str(file), "--count", "200"]) == 0
    expected = evaluate(model, synthetic_cifar10(200, seed=1).loader(batch_size=256, shuffle=False), device="cpu")
    first = capsys.readouterr().out.splitlines()[0]
    assert f"accuracy {expected.accuracy:.2%}  top-5 {expected.topk[5]:.2%}  on 200 images" in first
    assert main(["inspect", str(file)]) == 0
    text = capsys.readouterr().out
    assert "state_dict" in text and "145,578" in text and "class names" in text and "disc" in text
    image = synthetic_cifar10(1, seed=5).images[0]
    path = tmp_path / "shape.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    assert main(["predict", str(file), str(path)]) == 0
    pred = predict(model, image, classes=synthetic_cifar10(1).classes, device="cpu")[0]
    assert capsys.readouterr().out.strip() == f"{path}: {pred.label} ({pred.probability:.1%})"


def test_bad_arguments_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "resnet"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'resnet'" in err[0]
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "0"])
    assert info.value.code == 2


def test_errors_exit_1_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cifarkit: error: no such file") and "Traceback" not in err
    assert main(["train", "--data", str(tmp_path), "--epochs", "1"]) == 1
    assert "CIFAR-10 not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "inspect", str(tmp_path / "missing.pt")])


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "cifarkit", "--help"], capture_output=True, text=True, check=True)
    assert "train" in result.stdout and "inspect" in result.stdout


def test_train_with_a_schedule_regularisation_and_fp16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--model", "cnn-relu", "--epochs", "2", "--train-count", "128", "--quiet", "--momentum", "0.9",
            "--weight-decay", "5e-4", "--label-smoothing", "0.1", "--amp", "fp16"]  # fmt: skip
    assert main([*args, "--schedule", "onecycle", "--out", str(tmp_path / "a.pt")]) == 0
    assert main([*args, "--schedule", "cosine", "--warmup-epochs", "1", "--out", str(tmp_path / "b.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("epoch 2/2") for line in lines) == 2
    assert main(["train", "--schedule", "cosine", "--warmup-epochs", "5", "--epochs", "2", "--out", "x.pt"]) == 1
    assert "warmup_epochs must be an int in [0, epochs=2)" in capsys.readouterr().err


def test_evaluate_prints_the_classes_and_draws_the_confusion_matrix(
    trained: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "confusion.png"
    assert main(["evaluate", str(trained[0]), "--count", "100", "--confusion", str(picture)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "top-5" in out[0] and out[1].split() == ["class", "accuracy", "images"]
    assert {line.split()[0] for line in out[3:13]} == set(synthetic_cifar10(1).classes)
    assert out[13] == f"wrote {picture}"
    with Image.open(picture) as image:
        assert image.format == "PNG"


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    """Three classes of small pictures on disk: red, green and blue squares in random places."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pictures"
    for label, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 60, size=(40, 48, 3), dtype=np.uint8)
            y, x = rng.integers(0, 20), rng.integers(0, 28)
            pixels[y : y + 20, x : x + 20, label] = 250
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_train_on_a_folder_of_your_own_pictures(
    pictures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.pt"
    args = ["train", "--data", str(pictures), "--model", "cnn-relu", "--momentum", "0.9", "--epochs", "3",
            "--batch-size", "8", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/3") and "eval acc" in lines[0]  # 20% of each class held out
    assert load(out).sequential[-1].out_features == 3  # the head fits the folder's classes
    assert inspect(out).class_names == ["blue", "green", "red"]  # sorted folder names
    new = tmp_path / "new.png"
    Image.open(pictures / "green" / "0.png").save(new)
    assert main(["predict", str(out), str(new), "--top", "3"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"{new}: ") and sorted(n.split(" (")[0] for n in printed[len(f"{new}: "):].split(", ")) == [
        "blue", "green", "red"]  # fmt: skip
    assert main(["evaluate", str(out), "--data", str(pictures)]) == 0
    assert "on 36 images" in capsys.readouterr().out


def test_pretrained_vgg16_options(torch_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "vgg16", "--weights", "imagenet", "--epochs", "1", "--out", "v.pt"]) == 1
    err = capsys.readouterr().err
    assert "vgg16-397923af.pth" in err and str(torch_home) in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "cnn", "--weights", "imagenet"])
    assert info.value.code == 2 and "--weights goes with a torchvision network" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "cnn", "--image-size", "64"])
    assert "takes 32x32 images" in capsys.readouterr().err


def test_every_listed_network_is_a_model_choice_and_fine_tune_options_are_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cifarkit.cli import build_parser
    from cifarkit.models.zoo import BACKBONES

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    model = next(a for a in train._actions if a.dest == "model")
    assert set(model.choices) == {"cnn", "cnn-relu", *BACKBONES}
    for argv, message in (
        (["train", "--model", "cnn-relu", "--fine-tune"], "--fine-tune goes with a torchvision network"),
        (["train", "--model", "resnet18", "--fine-tune", "--schedule", "onecycle"], "its own schedule"),
        (["train", "--model", "resnet18", "--fine-tune", "--freeze-epochs", "-1"], "--freeze-epochs must be"),
        (["train", "--lr", "fast"], "'fast' is neither a number nor 'find'"),
        (["lr-find", "--steps", "0"], "--steps must be at least 1"),
        (["train", "--model", "resnet18", "--fine-tune", "--momentum", "0.9"], "AdamW, which has no --momentum"),
        (["train", "--warmup-epochs", "1"], "--warmup-epochs is the warm-up of --schedule cosine"),
        (["train", "--schedule", "onecycle", "--warmup-epochs", "1"], "add --schedule cosine"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and message in capsys.readouterr().err, argv


def test_fine_tune_with_lr_find_trains_in_two_phases_and_saves_a_file_without_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    args = ["train", "--model", "mobilenet_v3_small", "--fine-tune", "--freeze-epochs", "1", "--epochs", "1",
            "--lr", "find", "--steps", "12", "--train-count", "96", "--batch-size", "32", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    found = re.search(r"suggested learning rate (\S+)", printed)
    assert found is not None and float(found.group(1)) > 0
    assert "epoch 1/2" in printed and "epoch 2/2" in printed
    info = inspect(out)
    assert info.ok and info.build is not None and info.build["builder"] == "adapt" and info.references == []
    assert load(out).classifier[3].out_features == 10


def test_doctor_with_lr_find_checks_the_rate_the_finder_suggests(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cifarkit.training import preflight

    seen: list[float] = []
    real = preflight.doctor

    def spy(model: Any, data: Any, **options: Any) -> Any:
        seen.append(options["optimizer"].param_groups[0]["lr"])
        return real(model, data, **options)

    monkeypatch.setattr("cifarkit.cli.commands.doctor", spy)
    assert main(["doctor", "--model", "cnn-relu", "--train-count", "64", "--lr", "find", "--steps", "10"]) == 0
    found = re.search(r"suggested learning rate (\S+)", capsys.readouterr().out)
    assert found is not None and seen == [pytest.approx(float(found.group(1)), rel=1e-2)] and seen[0] != 0.01


def test_lr_find_command_draws_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "lr.png"
    assert main(["lr-find", "--model", "cnn-relu", "--train-count", "64", "--steps", "10", "-o", str(png)]) == 0
    assert "suggested learning rate" in capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_torchvision_network_from_a_weights_file_and_the_doctor_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    status = main(["doctor", "--model", "resnet18", "--weights", str(weights), "--train-count", "64"])
    printed = capsys.readouterr().out
    assert status == 1 and "input-too-small" in printed and "224" in printed


@pytest.mark.slow
def test_vgg16_from_a_weights_file_with_frozen_features(
    vgg_weights_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vgg.pt"
    args = ["train", "--model", "vgg16", "--weights", str(vgg_weights_file), "--freeze-features", "--epochs", "1",
            "--train-count", "32", "--batch-size", "16", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    trained, start = load(out).state_dict(), torch.load(vgg_weights_file, weights_only=True)
    assert torch.equal(trained["features.0.weight"], start["features.0.weight"])  # frozen: untouched
    assert not torch.equal(trained["classifier.0.weight"], start["classifier.0.weight"])  # the head trained
    assert trained["classifier.6.weight"].shape == (10, 4096)


def test_export_then_predict_and_evaluate_the_program_print_what_the_model_file_prints(
    trained: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = trained[0]
    out = tmp_path / "model.onnx"
    assert main(["export", str(file), "-o", str(out)]) == 0
    report = capsys.readouterr().out
    assert f"{out} (onnx, {out.stat().st_size:,} bytes)" in report and "max |diff| at size" in report
    assert main(["export", str(file), "-o", str(tmp_path / "model.pt2")]) == 0
    capsys.readouterr()

    folder = tmp_path / "pictures"  # pictures of other sizes, from the built-in classes
    data = synthetic_cifar10(40, seed=7)
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        (folder / data.classes[label]).mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((48 + i % 5, 40))
        big.save(folder / data.classes[label] / f"{i}.png")
    pictures = [str(p) for p in sorted(folder.rglob("*.png"))[:4]]

    def printed(*argv: str) -> str:
        assert main(list(argv)) == 0
        return capsys.readouterr().out.replace(str(file), "FILE").replace(str(out), "FILE")

    assert printed("predict", str(out), *pictures, "--top", "3") == printed(
        "predict", str(file), *pictures, "--top", "3"
    )
    model_lines = printed("evaluate", str(file), "--data", str(folder))
    assert printed("evaluate", str(out), "--data", str(folder)) == model_lines
    assert "on 40 images" in model_lines
    assert main(["evaluate", str(tmp_path / "model.pt2")]) == 1  # unpickled: --trusted only
    assert "trusted" in capsys.readouterr().err
    pt2 = printed("evaluate", str(tmp_path / "model.pt2"), "--count", "100", "--trusted")
    pt2 = pt2.replace(str(tmp_path / "model.pt2"), "FILE")
    assert pt2 == printed("evaluate", str(file), "--count", "100")


def test_export_usage_errors(
    trained: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as info:
        main(["export", str(trained[0]), "-o", str(tmp_path / "mine")])  # a folder: a web page, but not over these
    assert info.value.code == 2 and "not a cifarkit site" in capsys.readouterr().err
    assert main(["export", str(trained[0]), "-o", str(tmp_path / "m.tflite")]) == 1
    assert ".onnx or .pt2" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and (
        tmp_path / "mine" / "notes.txt"
    ).read_text() == "keep me"
