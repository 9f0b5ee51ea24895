"""export(..., quantize="int8"): ONNX Runtime's static int8 program, checked against fp32 on
pictures held out from calibration, refused with the figures when it answers differently."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image
from torch import nn

from cifarkit import ImageTensors, export, load_exported, predict, save
from cifarkit.cli import main
from cifarkit.errors import ExportError, InvalidOptionError
from cifarkit.exporting.quantizing import HOLD_OUT_AT_LEAST, MAX_ACCURACY_DROP, MIN_AGREEMENT, split_calibration


def _temporaries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("cifarkit-*")}


def test_the_int8_program_agrees_with_fp32_and_is_four_times_smaller(
    shapes_model: tuple[nn.Module, ImageTensors], tmp_path: Path
) -> None:
    model, calibration = shapes_model
    before = _temporaries()
    report = export(model, tmp_path / "cnn.onnx", quantize="int8", calibration=calibration)
    check = report.int8
    assert check is not None and check.held_out == HOLD_OUT_AT_LEAST and check.calibrated == 300
    assert check.agreement >= MIN_AGREEMENT and check.accuracy_fp32 is not None and check.accuracy_int8 is not None
    lost = round((check.accuracy_fp32 - check.accuracy_int8) * check.held_out)  # pictures: 0.98 - 0.97 > 0.01 in floats
    assert check.accuracy_fp32 > 0.9 and lost <= round(MAX_ACCURACY_DROP * check.held_out)  # a model that learned
    assert report.file_bytes == check.int8_bytes == (tmp_path / "cnn.onnx").stat().st_size
    assert check.smaller >= 3.5 and check.speedup > 0 and 0 < check.max_abs_diff < 0.5
    graph = onnx.load(tmp_path / "cnn.onnx").graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops  # int8 inside, probabilities out
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("weight_quantized")]
    assert len(weights) == 5 and all(w.dtype == np.int8 for w in weights)  # three convolutions, two linears
    assert "int8 agreement" in str(report) and "smaller than fp32" in str(report)
    assert _temporaries() == before  # the fp32 program and the quantizer's files are gone
    program = load_exported(tmp_path / "cnn.onnx")  # runs where an fp32 program runs, with its record
    held = split_calibration(calibration, (32, 32), calibration.classes)
    answers = predict(program, torch.from_numpy(held.held_out).permute(0, 3, 1, 2), device="cpu")
    assert program.classes == calibration.classes
    assert np.mean([a.label == calibration.classes[y] for a, y in zip(answers, held.labels)]) > 0.9  # type: ignore[arg-type]


def test_an_int8_program_that_answers_differently_is_refused_with_its_figures(
    shapes_model: tuple[nn.Module, ImageTensors], tmp_path: Path
) -> None:
    """One output channel of the last convolution scaled up 1000x and the linear layer's inputs
    from it scaled down as much: the same function in fp32 (ReLU and max pooling commute with a
    positive scale), but one activation range that swallows the others in int8."""
    model, calibration = shapes_model
    outlier = copy.deepcopy(model)
    conv, linear = outlier.sequential[6], outlier.sequential[10]  # type: ignore[index]
    with torch.no_grad():
        conv.weight[0] *= 1000
        conv.bias[0] *= 1000
        linear.weight[:, :16] /= 1000  # channel 0 of the flattened 64x4x4
    target = tmp_path / "cnn.onnx"
    target.write_bytes(b"the previous program")
    before = _temporaries()
    with pytest.raises(ExportError, match=r"agrees with fp32 on [\d.]+% of 100 held-out pictures") as caught:
        export(outlier, target, quantize="int8", calibration=calibration)
    message = str(caught.value)
    assert "accuracy" in message and "Layers that lost most" in message and " dB" in message
    assert "nothing was written" in message
    assert target.read_bytes() == b"the previous program" and sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx"]
    assert _temporaries() == before
    fp32 = export(outlier, tmp_path / "fp32.onnx")  # the model itself is sound: fp32 exports it
    assert fp32.int8 is None and fp32.max_abs_diff < 1e-4


def test_options_are_checked_before_any_work(shapes_model: tuple[nn.Module, ImageTensors], tmp_path: Path) -> None:
    model, calibration = shapes_model
    with pytest.raises(InvalidOptionError, match="quantize"):
        export(model, tmp_path / "a.onnx", quantize="int4", calibration=calibration)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match=r"name the file \.onnx"):
        export(model, tmp_path / "a.pt2", quantize="int8", calibration=calibration)
    with pytest.raises(InvalidOptionError, match="needs calibration="):
        export(model, tmp_path / "a.onnx", quantize="int8")
    with pytest.raises(InvalidOptionError, match="calibration= is for quantize='int8'"):
        export(model, tmp_path / "a.onnx", calibration=calibration)
    with pytest.raises(InvalidOptionError, match="199 pictures; int8 needs at least 200"):
        export(model, tmp_path / "a.onnx", quantize="int8", calibration=calibration.subset(torch.arange(199)))
    with pytest.raises(InvalidOptionError, match="takes an ImageTensors or an image folder"):
        export(model, tmp_path / "a.onnx", quantize="int8", calibration=42)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_labels_count_only_when_the_class_names_are_the_models(shapes_model: tuple[nn.Module, ImageTensors]) -> None:
    _, calibration = shapes_model
    same = split_calibration(calibration, (32, 32), calibration.classes)
    assert same.labels is not None and same.calibrate.shape == (300, 32, 32, 3) and same.held_out.dtype == np.uint8
    other = split_calibration(calibration, (32, 32), list(reversed(calibration.classes)))
    assert other.labels is None and np.array_equal(other.held_out, same.held_out)  # the same seeded split
    resized = split_calibration(calibration, (40, 24), calibration.classes)  # read at the model's size
    assert resized.held_out.shape[1:] == (40, 24, 3)


def test_the_command_line_quantizes_with_a_folder(
    shapes_model: tuple[nn.Module, ImageTensors], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """From a folder of PNG files; as on a CPU without VNNI (7-bit weights, ONNX Runtime's advice
    against saturation there), whatever this CPU has."""
    import cifarkit.exporting.quantizing as quantizing

    monkeypatch.setattr(quantizing, "cpu_has_int8_instructions", lambda: False)
    model, calibration = shapes_model
    for i, (image, label) in enumerate(zip(calibration.images, calibration.labels)):
        folder = tmp_path / "pictures" / calibration.classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    save(model, tmp_path / "cnn.pt")
    out = tmp_path / "cnn-int8.onnx"
    code = main(["export", str(tmp_path / "cnn.pt"), "-o", str(out), "--quantize", "int8",
                 "--calibration", str(tmp_path / "pictures")])  # fmt: skip
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert "int8 agreement" in printed and "labels unknown" in printed  # the folder's classes come sorted
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(out).graph.node)
