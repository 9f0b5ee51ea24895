"""The cifarkit command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cifarkit import load, synthetic_cifar10
from cifarkit.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model.pt"
    assert (
        main(["train", "--epochs", "2", "--train-size", "256", "--quiet", "--out", str(out), "--model", "cnn-relu"])
        == 0
    )
    return out


def test_train_prints_epochs_and_saves(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert trained.is_file()
    model = load(trained)
    assert type(model).__name__ == "CifarCNN" and model.sequential[1].__class__.__name__ == "ReLU"


def test_train_output_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "2", "--train-size", "128", "--quiet", "--out", str(tmp_path / "m.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/2  loss sum ") and "train acc" in lines[0] and "img/s" in lines[0]
    assert lines[1].startswith("epoch 2/2") and lines[2].startswith("saved ")


def test_evaluate_inspect_predict(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(trained), "--size", "200"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["inspect", str(trained)]) == 0
    text = capsys.readouterr().out
    assert "state_dict" in text and "145,578" in text and "class names" in text and "disc" in text
    image = synthetic_cifar10(1, seed=5).images[0].permute(1, 2, 0).numpy()
    path = tmp_path / "shape.png"
    Image.fromarray(image).save(path)
    assert main(["predict", str(trained), str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: ") and line.endswith("%)")


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
