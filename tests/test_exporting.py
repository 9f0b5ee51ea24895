"""export: ONNX and .pt2 programs that take raw pixels, run and checked against the eager model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.distributed as dist
import torchvision
from torch import nn

import cifarkit
from cifarkit import ExportReport, build_cnn, export, load_exported, predict, synthetic_cifar10, train_loop
from cifarkit.errors import (
    ExportError,
    InvalidOptionError,
    MissingExtraError,
    NonFiniteWeightsError,
    PathIsDirectoryError,
    WriteError,
)
from cifarkit.evaluation.inference import class_probabilities
from cifarkit.preprocess import preprocessing_of

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
CLASSES = synthetic_cifar10(1).classes


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """The tutorial CNN (ReLU), trained for an epoch on normalized data, so it carries a record."""
    torch.manual_seed(0)
    model = build_cnn(activation="relu")
    data = synthetic_cifar10(512, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_loop(model, data.loader(batch_size=64, seed=0, normalize=(MEAN, STD)), epochs=1, optimizer=optimizer,
               device="cpu", progress=False)  # fmt: skip
    return model


def pictures(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, height, width, 3), as Pillow and numpy give pictures."""
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def eager(model: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """What predict computes for these pictures."""
    return class_probabilities(model, torch.from_numpy(pixels).permute(0, 3, 1, 2), device="cpu").numpy()


def test_onnx_program_takes_raw_pixels_and_carries_its_record(trained: nn.Module, tmp_path: Path) -> None:
    report = export(trained, tmp_path / "cnn.onnx")
    proto = onnx.load(tmp_path / "cnn.onnx")
    (pixels,) = proto.graph.input
    assert pixels.name == "pixels" and pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in pixels.type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    assert [o.name for o in proto.graph.output] == ["probabilities", "logits"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["cifarkit.classes"]) == CLASSES
    assert json.loads(meta["cifarkit.preprocess"]) == preprocessing_of(trained)
    assert json.loads(meta["cifarkit.preprocess"])["mean"] == MEAN  # numbers as given, not float32's
    assert meta["cifarkit.version"] == cifarkit.__version__
    branches = [a.g for node in proto.graph.node for a in node.attribute if a.HasField("g")]
    assert branches and all(not n.metadata_props for g in [proto.graph, *branches] for n in g.node)
    data = (tmp_path / "cnn.onnx").read_bytes()  # no stack traces with this machine's paths
    assert b"stack_trace" not in data and str(Path(cifarkit.__file__).parent).encode() not in data

    session = ort.InferenceSession(str(tmp_path / "cnn.onnx"), providers=["CPUExecutionProvider"])
    for n, (h, w) in [(1, (32, 32)), (5, (32, 32))]:
        probs, logits = session.run(None, {"pixels": pictures(n, h, w, seed=n)})
        assert probs.dtype == np.float32 and probs.shape == logits.shape == (n, 10)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, eager(trained, pictures(n, h, w, seed=n)), atol=1e-4, rtol=0)
    for n, (h, w) in [(1, (200, 150)), (3, (20, 45))]:  # resized inside the program
        probs, _ = session.run(None, {"pixels": pictures(n, h, w, seed=n)})
        want = eager(trained, pictures(n, h, w, seed=n))
        assert (probs.argmax(1) == want.argmax(1)).all()
        np.testing.assert_allclose(probs, want, atol=1e-2, rtol=0)
    assert isinstance(report, ExportReport) and report.path == tmp_path / "cnn.onnx"
    assert report.format == "onnx" and report.classes == CLASSES
    assert report.max_abs_diff <= 1e-4 and report.max_abs_diff_resized <= 1e-2
    assert report.sizes[0] == (32, 32) and len(report.sizes) == 3 and report.batch_sizes == [1, 4]
    assert report.file_bytes == (tmp_path / "cnn.onnx").stat().st_size
    assert report.ms_per_picture > 0 and report.eager_ms_per_picture > 0
    assert "max |diff| at size" in str(report) and "<table>" in report._repr_html_()
    assert trained.training  # the caller's model is untouched (mode, device, weights)


@pytest.mark.filterwarnings("ignore:No complete tensor found:UserWarning")  # torch.export.load, CPU weights
def test_pt2_program_is_torch_export_of_the_same_pipeline(trained: nn.Module, tmp_path: Path) -> None:
    report = export(trained, tmp_path / "cnn.pt2")
    assert report.format == "pt2" and report.max_abs_diff <= 1e-6  # the same kernels as eager
    module = torch.export.load(tmp_path / "cnn.pt2").module()
    for shape in [(1, 32, 32), (4, 32, 32), (2, 77, 51)]:
        x = pictures(*shape)
        with torch.no_grad():
            probs, logits = module(torch.from_numpy(x))
        np.testing.assert_allclose(probs.numpy(), eager(trained, x), atol=1e-6, rtol=0)
        assert torch.allclose(torch.softmax(logits, 1), probs)
    assert load_exported(tmp_path / "cnn.pt2", trusted=True).classes == CLASSES


def test_format_is_named_or_follows_the_suffix(trained: nn.Module, tmp_path: Path) -> None:
    report = export(trained, tmp_path / "model.bin", format="onnx")
    assert report.format == "onnx" and onnx.load(tmp_path / "model.bin").graph.input[0].name == "pixels"
    with pytest.raises(InvalidOptionError, match=r"\.onnx or \.pt2"):
        export(trained, tmp_path / "model.tflite")
    with pytest.raises(InvalidOptionError, match="format"):
        export(trained, tmp_path / "model.onnx", format="tflite")  # type: ignore[arg-type]


def _resnet18(tmp_path: Path) -> nn.Module:
    model = torchvision.models.resnet18(num_classes=3)
    full = synthetic_cifar10(48, seed=0)
    data = cifarkit.ImageTensors(full.images, full.labels % 3, full.classes[:3])
    train_loop(model, data.loader(batch_size=16, seed=0), epochs=1, device="cpu", progress=False, lr=0.01)
    return model


@pytest.mark.parametrize(
    ("name", "build", "size"),
    [
        ("cnn-linear", lambda p: build_cnn(activation="none"), 32),
        ("cnn-relu", lambda p: build_cnn(activation="relu", num_classes=4), 32),
        ("vgg16-replace", lambda p: cifarkit.adapt_vgg16(strategy="replace"), 32),
        ("vgg16-append", lambda p: cifarkit.adapt_vgg16(strategy="append", num_classes=3), 32),
        ("resnet18-trained", _resnet18, None),
    ],
)
def test_every_kind_of_model_exports_and_answers_like_predict(name: str, build, size, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build(tmp_path)
    report = export(model, tmp_path / f"{name}.onnx", input_size=size)
    program = load_exported(report.path)
    x = pictures(3, 32, 32)
    np.testing.assert_allclose(program.run(x)[0], eager(model, x), atol=1e-4, rtol=0)
    got = predict(program, list(torch.from_numpy(x).permute(0, 3, 1, 2)), size=32)
    assert [p.index for p in got] == [p.index for p in predict(model, torch.from_numpy(x).permute(0, 3, 1, 2))]


def test_wrapped_models_are_unwrapped(trained: nn.Module, tmp_path: Path) -> None:
    compiled = torch.compile(trained)  # wrapping only: export reaches the module inside
    assert export(compiled, tmp_path / "c.onnx").max_abs_diff <= 1e-4
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(build_cnn(activation="relu"))
        assert export(ddp, tmp_path / "d.pt2", input_size=32).max_abs_diff <= 1e-6
    finally:
        dist.destroy_process_group()


def test_a_model_without_a_record_needs_a_size_and_takes_class_names(tmp_path: Path) -> None:
    model = build_cnn()
    with pytest.raises(InvalidOptionError, match=r"input_size="):
        export(model, tmp_path / "m.onnx")
    report = export(model, tmp_path / "m.onnx", input_size=(32, 32), classes=list("abcdefghij"))
    program = load_exported(report.path)
    assert program.classes == list("abcdefghij") and program.preprocess["mean"] is None
    assert preprocessing_of(model) is None  # the model itself is not changed
    with pytest.raises(InvalidOptionError, match="3 class names for a model with 10 outputs"):
        export(model, tmp_path / "n.onnx", input_size=32, classes=["a", "b", "c"])
    assert not (tmp_path / "n.onnx").exists()


def test_bad_paths_are_refused_before_exporting(trained: nn.Module, tmp_path: Path) -> None:
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(PathIsDirectoryError):
        export(trained, tmp_path / "dir.onnx")
    os.mkfifo(tmp_path / "pipe.onnx")
    with pytest.raises(WriteError, match="FIFO"):
        export(trained, tmp_path / "pipe.onnx")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="is a file, not a folder"):
        export(trained, tmp_path / "file" / "m.onnx")


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    model = build_cnn()
    with torch.no_grad():
        model.sequential[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError) as info:
        export(model, tmp_path / "m.onnx", input_size=32)
    assert "allow_nonfinite" not in str(info.value)  # export has no such option: the message offers none
    assert list(tmp_path.iterdir()) == []


class DataIf(nn.Module):
    """A Python ``if`` on a tensor's value: the exporters cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out if float(x.mean()) > 0 else -out


class Counter(nn.Module):
    """Answers by how often it was called: a traced program freezes the count, eager does not."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_cnn()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.net(x) * (self.calls % 7)
        return out


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_model_the_exporter_cannot_capture_or_that_answers_differently_is_never_written(
    fmt: str, tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="could not capture the model") as info:
        export(DataIf(), tmp_path / f"m.{fmt}", input_size=32)
    assert len(str(info.value).splitlines()) <= 10  # the exporter's reason in a few lines
    with pytest.raises(ExportError, match="answers differently from the eager model"):
        export(Counter(), tmp_path / f"m.{fmt}", input_size=32)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary


def test_a_previous_file_survives_a_failed_export(trained: nn.Module, tmp_path: Path) -> None:
    export(trained, tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    with pytest.raises(ExportError):
        export(Counter(), tmp_path / "m.onnx", input_size=32)
    assert (tmp_path / "m.onnx").read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_missing_extra_is_named(trained: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'cifarkit\[export\]'"):
        export(trained, tmp_path / "m.onnx")
    assert export(trained, tmp_path / "m.pt2").format == "pt2"  # .pt2 needs no extra


def test_import_cifarkit_does_not_import_the_exporters() -> None:
    code = "import sys, cifarkit; print(sorted(m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
