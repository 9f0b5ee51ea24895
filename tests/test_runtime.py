"""Running exported programs: .onnx with onnxruntime, .pt2 with torch.export.load, as modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit import build_cnn, evaluate, export, load_exported, predict, synthetic_cifar10
from cifarkit.errors import ExportError, InvalidOptionError, ModelRecordError, UnsafeLoadError
from cifarkit.exporting.running import format_of


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, list[Path]]:
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    folder = tmp_path_factory.mktemp("programs")
    classes = synthetic_cifar10(1).classes
    paths = [export(model, folder / f"m.{fmt}", input_size=32, classes=classes).path for fmt in ("onnx", "pt2")]
    return model, paths


def test_a_program_runs_like_the_model_in_predict_and_evaluate(programs: tuple[torch.nn.Module, list[Path]]) -> None:
    model, paths = programs
    data = synthetic_cifar10(64, seed=3)
    want = evaluate(model, data.loader(batch_size=32, shuffle=False), device="cpu")
    for path in paths:
        program = load_exported(path, trusted=True)
        assert program.format == path.suffix[1:] and program.preprocess["input_size"] == [32, 32]
        got = evaluate(program, data.loader(batch_size=32, shuffle=False), device="cpu")
        assert got.accuracy == want.accuracy and got.loss == pytest.approx(want.loss, abs=1e-5)
        assert torch.equal(got.confusion, want.confusion)
        preds = predict(program, data.images[:5], size=32)
        assert [p.label for p in preds] == [p.label for p in predict(model, data.images[:5], classes=program.classes)]
        assert [p.probability for p in preds] == pytest.approx([p.probability for p in predict(model, data.images[:5])])


def test_run_takes_the_programs_own_input(programs: tuple[torch.nn.Module, list[Path]]) -> None:
    program = load_exported(programs[1][0], trusted=True)
    probs, logits = program.run(np.zeros((2, 50, 40, 3), dtype=np.uint8))
    assert probs.shape == logits.shape == (2, 10)
    with pytest.raises(InvalidOptionError, match=r"uint8 pixels \(batch, height, width, 3\)"):
        program.run(np.zeros((2, 3, 32, 32), dtype=np.float32))


def test_load_exported_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no exported model"):
        load_exported(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ExportError, match="cannot open"):
        load_exported(tmp_path / "bad.onnx")
    (tmp_path / "bad.pt2").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UnsafeLoadError, match="trusted=True"):
        load_exported(tmp_path / "bad.pt2")  # torch.export.load unpickles: never by default
    with pytest.raises(ExportError, match="cannot open"):
        load_exported(tmp_path / "bad.pt2", trusted=True)
    with pytest.raises(InvalidOptionError, match=r"\.onnx or \.pt2"):
        load_exported(tmp_path / "model.pt")
    assert format_of(Path("x.ONNX"), None) == "onnx" and format_of(Path("x"), "pt2") == "pt2"


def test_a_program_without_cifarkit_metadata_is_named_as_such(tmp_path: Path) -> None:
    import onnx

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    torch.onnx.export(model, (torch.zeros(1, 3, 2, 2),), tmp_path / "plain.onnx", dynamo=True, verbose=False)
    assert onnx.load(tmp_path / "plain.onnx").graph.input
    with pytest.raises(ModelRecordError, match=r"cifarkit\.export"):
        load_exported(tmp_path / "plain.onnx")
