"""Writing programs that use the model anywhere: ONNX and ``torch.export`` files that take a
picture's raw pixels.

:func:`export` wraps the model in :class:`PixelPipeline`, the preprocessing of its record made
part of the program, and writes it with PyTorch's own exporters (``torch.export``; for ONNX,
``torch.onnx.export(..., dynamo=True)`` with onnxscript)::

    pixels   uint8 (batch, height, width, 3), RGB        <- Pillow, numpy, a browser canvas
      -> resize to the record's size (bilinear, antialiased, rounded; skipped at that size)
      -> / 255 -> (x - mean) / std -> the model in eval mode -> softmax
    probabilities  float32 (batch, classes)               (and ``logits``, the same shape)

Nothing counts before it is checked: the file is written under a temporary name, run
(onnxruntime, or ``torch.export.load``) on batches of one and several pictures at the record's
size and at two other sizes, and compared with the eager pipeline
(:func:`~cifarkit.evaluation.inference.class_probabilities`, what ``predict`` computes); only
then is it moved into place. :func:`~cifarkit.exporting.running.load_exported` runs such a file
as an ``nn.Module``, so ``predict`` and ``evaluate`` (and the command line) take ``.onnx`` and
``.pt2`` files too.

onnx, onnxscript and onnxruntime come with ``pip install 'cifarkit[export]'`` and are imported
only here, when used.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cifarkit.data.images import to_size
from cifarkit.data.tensors import ImageTensors
from cifarkit.device import unwrap_model
from cifarkit.display import format_table, html_table
from cifarkit.errors import ExportError, InvalidOptionError, MissingExtraError
from cifarkit.evaluation.inference import TTA, check_tta, class_probabilities, flip_mean
from cifarkit.exporting.quantizing import (
    Int8Check,
    Quantize,
    check_int8,
    check_quantize,
    quantize_int8,
    split_calibration,
)
from cifarkit.exporting.running import (
    PT2_EXTRA_FILE,
    Format,
    format_of,
    open_program,
    require,
    same_answers,
    short_error,
)
from cifarkit.exporting.web import find_runtime, site_target, write_site
from cifarkit.files.format import versions
from cifarkit.files.modelfiles import check_finite_weights
from cifarkit.preprocess import Preprocess, make_record, preprocessing_of, set_preprocessing, validate_record
from cifarkit.writing import PathLike, atomic_write, check_writable

__all__ = ["ExportFormat", "ExportReport", "PixelPipeline", "export"]

#: ``format=``: a program file (``"onnx"``, ``"pt2"``) or a web page's folder (``"web"``).
ExportFormat = Format | Literal["web"]

#: The largest picture side an exported program accepts (as the preprocessing record).
MAX_SIDE = 8192
#: Agreement with the eager pipeline: every probability at the record's size (fp32) ...
TOLERANCE_AT_SIZE = 1e-4
#: ... and at other sizes, where the runtime's resize may round a pixel the other way.
TOLERANCE_OTHER_SIZES = 1e-2


class PixelPipeline(nn.Module):
    """Raw pixels to probabilities: the preprocessing record and the model as one program.

    Input ``pixels``: uint8 ``(B, H, W, 3)``, RGB. Outputs ``(probabilities, logits)``, float32
    ``(B, C)``; the probabilities are ``softmax(logits / temperature)`` with the record's
    calibration temperature (1 without one). A picture of the record's size is not resized
    (``torch.cond``); others go through the same operations as
    :func:`~cifarkit.data.images.resize_pixels`.

    Example:
        >>> from cifarkit import build_cnn
        >>> pipeline = PixelPipeline(build_cnn(), make_record(input_size=(32, 32)))
        >>> probs, logits = pipeline(torch.zeros(2, 48, 40, 3, dtype=torch.uint8))
        >>> tuple(probs.shape), round(float(probs.sum()), 4)
        ((2, 10), 2.0)
    """

    def __init__(self, model: nn.Module, record: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.record = validate_record(record)
        self.height, self.width = to_size(tuple(record["input_size"]))
        mean, std = record.get("mean"), record.get("std")
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0]).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0]).reshape(1, -1, 1, 1))
        self.temperature = float(record.get("temperature") or 1.0)  # cifarkit.calibrate's, or 1
        self.tta = record.get("tta")  # "flip": the mean of the picture's and its mirror's probabilities

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.height, self.width)
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).round().clamp(0, 255)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, W, 3)`` uint8 -> ``(probabilities, logits)``, each ``(B, C)`` float32."""
        x = pixels.permute(0, 3, 1, 2).float()  # (B, 3, H, W), values 0..255
        other_size = (x.shape[2] != self.height) | (x.shape[3] != self.width)
        x = torch.cond(other_size, self._resize, torch.clone, (x,))
        torch._check(x.shape[2] == self.height)  # both branches give the record's size
        torch._check(x.shape[3] == self.width)
        x = (x / 255.0 - self.mean) / self.std
        logits = self.model(x).float()
        if self.tta == "flip":  # inside the program: the browser and ONNX users get it too
            logits = flip_mean(logits, self.model(x.flip(-1)).float(), self.temperature)
        return torch.softmax(logits / self.temperature, dim=1), logits  # calibrated, as recorded


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote and how the written file answered when it was run."""

    path: Path
    format: ExportFormat
    classes: list[str] | None
    #: Largest difference of any probability from the eager pipeline at the record's size.
    max_abs_diff: float
    #: The same at the other sizes checked (the resize runs in the program there).
    max_abs_diff_resized: float
    #: ``(height, width)`` of the pictures checked, the record's size first.
    sizes: list[tuple[int, int]]
    batch_sizes: list[int]
    file_bytes: int
    #: Milliseconds per picture at the record's size, in the runtime and in eager PyTorch.
    ms_per_picture: float
    eager_ms_per_picture: float
    preprocess: Preprocess
    #: For ``quantize="int8"``: how the int8 program answered against the fp32 one (the figures
    #: above are the fp32 program's, checked against the eager model before it was quantized).
    int8: Int8Check | None = None
    #: For ``format="web"``: where the page gets onnxruntime-web (bundled, or a CDN and the internet).
    runtime: str | None = None

    def _rows(self) -> list[tuple[str, str]]:
        size = self.preprocess["input_size"]
        return [
            ("file" if self.format != "web" else "site", f"{self.path} ({self.format}, {self.file_bytes:,} bytes)"),
            ("input", f"pixels uint8 (batch, height, width, 3); resized to {size[0]}x{size[1]} inside"),
            ("output", f"probabilities float32 (batch, {len(self.classes) if self.classes else 'classes'})"),
            ("classes", ", ".join(self.classes) if self.classes else "not named"),
            ("checked sizes", ", ".join(f"{h}x{w}" for h, w in self.sizes)),
            ("checked batches", ", ".join(str(b) for b in self.batch_sizes)),
            ("max |diff| at size", f"{self.max_abs_diff:.2e} (eager pipeline, fp32)"),
            ("max |diff| resized", f"{self.max_abs_diff_resized:.2e}"),
            (
                "ms per picture",
                f"{self.ms_per_picture:.3f} ({self.format if self.format != 'web' else 'onnx, in Python'}) "
                f"vs {self.eager_ms_per_picture:.3f} (eager)",
            ),
            *(self.int8.rows() if self.int8 is not None else []),
            *([("runtime", self.runtime)] if self.runtime is not None else []),
        ]

    def __str__(self) -> str:
        return format_table(self._rows())

    def _repr_html_(self) -> str:
        return html_table(self._rows(), caption="cifarkit.export")


def _record_for(
    model: nn.Module, input_size: int | Sequence[int] | None, classes: Sequence[str] | None, tta: TTA
) -> Preprocess:
    """The model's record, with ``input_size``, ``classes`` and ``tta`` given here taking precedence."""
    record = preprocessing_of(model) or {}
    if input_size is None and not record.get("input_size"):
        msg = (
            "the model carries no preprocessing record, so the picture size it takes is unknown: "
            "pass input_size= (a side in pixels, or (height, width)), e.g. export(model, path, input_size=32)"
        )
        raise InvalidOptionError(msg)
    height, width = to_size(input_size if input_size is not None else tuple(record["input_size"]))
    if max(height, width) > MAX_SIDE:
        msg = f"input_size {height}x{width} is over the {MAX_SIDE}-pixel limit of a record"
        raise InvalidOptionError(msg)
    check_tta(tta, record)
    names = classes if classes is not None else record.get("classes")
    made = make_record(input_size=(height, width), mean=record.get("mean"), std=record.get("std"), classes=names,
                       temperature=record.get("temperature"), mirror=record.get("mirror", True))  # fmt: skip
    if record.get("averaged") is not None:
        made["averaged"] = record["averaged"]
    return validate_record({**made, "tta": tta} if tta is not None else made)


def _capture(pipeline: PixelPipeline, fmt: Format) -> Callable[[IO[bytes]], object]:
    """Export ``pipeline``; return a function that writes the file."""
    example = torch.zeros(2, pipeline.height + 7, pipeline.width + 5, 3, dtype=torch.uint8)
    dim = torch.export.Dim
    dynamic = {
        "pixels": {0: dim("batch", min=1, max=1 << 20), 1: dim("height", min=1, max=MAX_SIDE),
                   2: dim("width", min=1, max=MAX_SIDE)}
    }  # fmt: skip
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), torch.no_grad():
            if fmt == "pt2":
                program = torch.export.export(pipeline, (example,), dynamic_shapes=dynamic)
            else:
                require("onnxscript")
                onnx_program = torch.onnx.export(
                    pipeline, (example,), dynamo=True, dynamic_shapes=dynamic, input_names=["pixels"],
                    output_names=["probabilities", "logits"], optimize=True, verbose=False,
                )  # fmt: skip
    except MissingExtraError:
        raise
    except Exception as exc:
        msg = (
            f"torch.{'export' if fmt == 'pt2' else 'onnx'} could not capture the model: {short_error(exc)}\n"
            "The exporters need a forward without Python decisions on tensor values (use torch.where), "
            "without .item()/.tolist()/numpy; nothing was written"
        )
        raise ExportError(msg) from exc
    if fmt == "pt2":
        return lambda f: torch.export.save(program, f, extra_files={PT2_EXTRA_FILE: json.dumps(_metadata(pipeline))})
    if onnx_program is None:  # pragma: no cover - only without dynamo=True
        raise ExportError("torch.onnx.export returned no program")
    for key, value in _metadata(pipeline).items():
        onnx_program.model.metadata_props[key] = value
    proto = onnx_program.model_proto
    _strip_node_metadata(proto.graph)
    size = proto.ByteSize()
    if size >= 2**31:
        msg = f"the ONNX program is {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit for one file; use format='pt2'"
        raise ExportError(msg)
    data = proto.SerializeToString()
    return lambda f: f.write(data)


def _strip_node_metadata(graph: Any) -> None:
    """Drop what the exporter notes on every node (its Python stack trace, with this machine's
    file paths, and the module path): 7% of the tutorial CNN's file, and nothing a runtime reads."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attribute in node.attribute:  # the branches of an If
            if attribute.HasField("g"):
                _strip_node_metadata(attribute.g)


def _metadata(pipeline: PixelPipeline) -> dict[str, str]:
    record = pipeline.record
    return {
        "cifarkit.classes": json.dumps(record.get("classes")),
        "cifarkit.preprocess": json.dumps(record),
        "cifarkit.version": versions()["cifarkit"],
    }


def _pictures(count: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """``count`` pictures uint8 ``(count, 3, H, W)``: smooth colour fields with detail, not noise
    (noise makes every class equally likely), drawn from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 6, 6, generator=g) * 255
    smooth = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    detail = torch.randn(count, 3, *size, generator=g) * 12
    return (smooth + detail).round().clamp(0, 255).to(torch.uint8)


def _check_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """The record's size, a larger non-square one (a shrink, antialiased) and a smaller one."""
    return [
        (height, width),
        (2 * height + 3, width + width // 2 + 1),
        (max(1, height // 2 + 1), max(1, width * 3 // 4)),
    ]


def _timed(fn: Callable[[], object], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def export(
    model: nn.Module,
    path: PathLike,
    *,
    format: ExportFormat | None = None,
    input_size: int | Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    tta: TTA = None,
    quantize: Quantize = None,
    calibration: ImageTensors | PathLike | None = None,
    runtime: PathLike | None = None,
    reject_below: float | None = None,
) -> ExportReport:
    """Write ``model`` as an ONNX or ``torch.export`` program that takes raw pixels, or as a web
    page that classifies pictures in the browser.

    The program's input ``pixels`` is uint8 ``(batch, height, width, 3)`` RGB (batch, height and
    width dynamic); its outputs are ``probabilities`` and ``logits``, float32 ``(batch, classes)``.
    Inside: the resize to the record's size, /255, the record's mean and std, the model in eval
    mode, softmax (see the module description). An ONNX file's ``metadata_props`` hold
    ``cifarkit.classes``, ``cifarkit.preprocess`` and ``cifarkit.version``; a ``.pt2`` file is
    ``torch.export.save`` of the same program (the metadata in its extra file ``cifarkit.json``).

    The file is written under a temporary name, run on batches of 1 and 4 pictures at the
    record's size and at two other sizes, and compared with the eager pipeline (what
    :func:`~cifarkit.evaluation.inference.predict` computes): within 1e-4 in every probability at the
    record's size, the same top-1 class and within 1e-2 at the others. Only then is it moved
    into place (atomically). The model itself is not changed: a copy is exported, on the CPU.

    Args:
        model: A classifier; ``DistributedDataParallel`` and ``torch.compile`` wrappers are removed.
        path: The file to write; its suffix (``.onnx``, ``.pt2``) names the format. A path
            without a suffix or with a trailing slash is a folder for a web page (``"web"``).
        format: ``"onnx"``, ``"pt2"`` or ``"web"``, when the path does not say.
        input_size: The side (or ``(height, width)``) pictures are resized to; default: the
            record's. Needed for a model without a record.
        classes: The class names; default: the record's.
        tta: ``"flip"``: the program answers the mean of the probabilities of each picture and
            of its mirror image (two forward passes inside it; the record says ``"tta": "flip"``).
        quantize: ``"int8"``: write ONNX Runtime's static int8 quantization of the checked fp32
            program (QDQ, per-channel weights; the convolutions and matrix products), written
            only when its top-1 class agrees with fp32 on at least 99% of pictures held out from
            calibration and, where the labels are known, its accuracy drops by at most 1 point
            (see :mod:`~cifarkit.exporting.quantizing`). ONNX only.
        calibration: For ``quantize="int8"``: the model's own kind of pictures, raw (an image
            folder or an :class:`~cifarkit.data.ImageTensors`; at least 200), that set the
            activations' ranges and check the result.
        runtime: For ``"web"``: onnxruntime-web's ``dist`` folder, whose three files the site
            bundles (default: ``$CIFARKIT_ORT_WEB``, else the page loads the pinned release from
            a CDN with Subresource Integrity; see :mod:`~cifarkit.exporting.web`).
        reject_below: For ``"web"``: the page answers "unknown" when the top probability is
            below this.

    Returns:
        An :class:`ExportReport`: the file, the sizes and batches checked, the largest
        difference from the eager pipeline, the milliseconds per picture; for int8, ``int8``:
        the agreement, the accuracy before and after, the size and the speed against fp32.

    Raises:
        InvalidOptionError: an unknown format or suffix; no size for a model without a record;
            for ``"web"``, a target that is a file or a folder of other files, a runtime folder
            that lacks a file or mixes releases, ``runtime``/``reject_below`` for a program file;
            ``classes`` of the wrong length; ``quantize="int8"`` for a ``.pt2`` file or without
            ``calibration`` (or with fewer than 200 pictures).
        PathIsDirectoryError, WriteError: the path is a directory, a FIFO, under a file.
        NonFiniteWeightsError: NaN or infinite weights.
        ExportError: the exporter cannot capture the model, or the written program answers
            differently from the eager model, or the int8 program from the fp32 one (the message
            has the figures and the layers that lost most); nothing is written.
        MissingExtraError: ONNX without ``pip install 'cifarkit[export]'``.

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import build_cnn
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "cnn.pt2"
        >>> report = export(build_cnn(activation="relu"), path, input_size=32)
        >>> report.format, report.max_abs_diff < 1e-4, path.is_file()
        ('pt2', True, True)
    """
    fmt = _format_for(path, format)
    if fmt != "web" and (runtime is not None or reject_below is not None):
        raise InvalidOptionError("runtime= and reject_below= are for format='web' (a web page); this writes a program")
    if fmt == "web":
        site = site_target(path)
        if reject_below is not None and not 0.0 < reject_below < 1.0:
            raise InvalidOptionError(f"reject_below must be a probability between 0 and 1, got {reject_below}")
        found = find_runtime(runtime)
        with tempfile.TemporaryDirectory(prefix="cifarkit-web-") as folder:
            program = _export_program(model, Path(folder) / "model.onnx", "onnx", input_size, classes, tta, quantize,
                                      calibration)  # fmt: skip
            size = write_site(site, program.path, program.preprocess, found, reject_below=reject_below,
                              quantized=program.int8 is not None)  # fmt: skip
        return dataclasses.replace(program, path=site, format="web", file_bytes=size, runtime=found.describe())
    return _export_program(model, Path(path), fmt, input_size, classes, tta, quantize, calibration)


def _format_for(path: PathLike, format: str | None) -> ExportFormat:
    """``"web"`` when named, or for a path without a suffix or with a trailing slash; else the
    program format the suffix or ``format`` names."""
    text = os.fspath(path)
    if format == "web" or (format is None and (text.endswith(("/", os.sep)) or not Path(text).suffix)):
        return "web"
    return format_of(Path(text), format)


def _export_program(
    model: nn.Module, target: Path, fmt: Format, input_size: int | Sequence[int] | None, classes: Sequence[str] | None,
    tta: TTA, quantize: Quantize, calibration: ImageTensors | PathLike | None,
) -> ExportReport:  # fmt: skip
    """The ONNX or ``.pt2`` program of :func:`export`, checked and written to ``target``."""
    check_writable(target)
    check_quantize(quantize, fmt, calibration)
    if fmt == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module)
    inner = unwrap_model(model)
    check_finite_weights(inner, target)
    record = _record_for(inner, input_size, classes, tta)
    size = (record["input_size"][0], record["input_size"][1])
    eager = copy.deepcopy(inner).to("cpu", torch.float32).eval()
    set_preprocessing(eager, {k: v for k, v in record.items() if k != "tta"})  # by the final record; tta: asked below
    checks = [(s, b, _pictures(b, s, seed=i)) for i, s in enumerate(_check_sizes(*size)) for b in (1, 4)]
    expected = [class_probabilities(eager, pictures, device="cpu", size=size, tta=tta).numpy()
                for _, _, pictures in checks]  # fmt: skip
    count = expected[0].shape[1]
    if record.get("classes") is not None and len(record["classes"]) != count:
        msg = f"{len(record['classes'])} class names for a model with {count} outputs: pass classes= with {count} names"
        raise InvalidOptionError(msg)
    pipeline = PixelPipeline(eager, record).eval()
    write = _capture(pipeline, fmt)
    measured: dict[str, Any] = {}

    def verify(temporary: Path) -> None:
        program = open_program(temporary, fmt)
        at_size, resized = 0.0, 0.0
        for (shape, _, pictures), want in zip(checks, expected):
            got, _ = program.run(pictures.permute(0, 2, 3, 1))
            diff = float(np.abs(got - want).max())
            if shape == size:
                at_size = max(at_size, diff)
            else:
                resized = max(resized, diff)
                if not same_answers(want, got).all():
                    raise _disagreement(shape, "the top-1 class differs", diff)
        if at_size > TOLERANCE_AT_SIZE:
            raise _disagreement(size, f"a probability differs by {at_size:.2e} (> {TOLERANCE_AT_SIZE})", at_size)
        if resized > TOLERANCE_OTHER_SIZES:
            raise _disagreement(None, f"a probability differs by {resized:.2e} (> {TOLERANCE_OTHER_SIZES})", resized)
        batch = checks[1][2]  # 4 pictures at the record's size
        nhwc = batch.permute(0, 2, 3, 1).contiguous()
        measured.update(
            at_size=at_size, resized=resized, bytes=temporary.stat().st_size,
            runtime=_timed(lambda: program.run(nhwc)) / len(batch) * 1000,
            eager=_timed(lambda: class_probabilities(eager, batch, device="cpu", size=size, tta=tta))
            / len(batch) * 1000,
        )  # fmt: skip

    int8: list[Int8Check] = []
    if quantize == "int8" and calibration is not None:
        with tempfile.TemporaryDirectory(prefix="cifarkit-int8-") as folder:  # gone on every path
            fp32, quantized = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
            with fp32.open("wb") as f:
                write(f)
            verify(fp32)  # the fp32 program passes the eager checks first
            held = split_calibration(calibration, size, record.get("classes"))
            quantize_int8(fp32, quantized, held.calibrate)
            written = atomic_write(target, lambda f: f.write(quantized.read_bytes()),
                                   verify=lambda temporary: int8.append(check_int8(fp32, temporary, held)))  # fmt: skip
    else:
        written = atomic_write(target, write, verify=verify)
    return ExportReport(
        path=written, format=fmt, classes=record.get("classes"), max_abs_diff=measured["at_size"],
        max_abs_diff_resized=measured["resized"], sizes=_check_sizes(*size), batch_sizes=[1, 4],
        file_bytes=int8[0].int8_bytes if int8 else measured["bytes"], ms_per_picture=measured["runtime"],
        eager_ms_per_picture=measured["eager"],
        preprocess=record, int8=int8[0] if int8 else None,
    )  # fmt: skip


def _disagreement(shape: tuple[int, int] | None, what: str, diff: float) -> ExportError:
    where = f"on {shape[0]}x{shape[1]} pictures" if shape is not None else "on resized pictures"
    msg = (
        f"the exported program answers differently from the eager model {where}: {what} "
        f"(max |diff| {diff:.2e}). The model's forward probably depends on the data in Python "
        "(an if on a tensor's value, a counter, randomness in eval mode); nothing was written"
    )
    return ExportError(msg)
