"""Running an exported program: an ``.onnx`` file with onnxruntime, a ``.pt2`` file with
``torch.export.load``, as an ``nn.Module`` that ``predict`` and ``evaluate`` take.

:func:`~cifarkit.exporting.programs.export` writes these files and checks them with :func:`open_program`
before they count; :func:`load_exported` opens one by its name. onnxruntime comes with
``pip install 'cifarkit[export]'`` and is imported only here, when an ``.onnx`` file is run.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cifarkit.errors import (
    ExportError,
    InvalidOptionError,
    MissingExtraError,
    ModelRecordError,
    UnsafeLoadError,
    check_choice,
    cut,
)
from cifarkit.preprocess import Preprocess, make_record, set_preprocessing, validate_record
from cifarkit.writing import PathLike

__all__ = [
    "FORMATS",
    "PT2_EXTRA_FILE",
    "TIE",
    "ExportedModel",
    "Format",
    "format_of",
    "load_exported",
    "open_program",
    "require",
    "same_answers",
    "short_error",
]

Format = Literal["onnx", "pt2"]
#: File suffixes and the format each names.
FORMATS: dict[str, Format] = {".onnx": "onnx", ".pt2": "pt2"}
#: The extra file of a ``.pt2`` archive that holds cifarkit's metadata (ONNX: ``metadata_props``).
PT2_EXTRA_FILE = "cifarkit.json"


def require(module: str) -> Any:
    """Import ``module`` (a dotted name gives the submodule) or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"exporting to ONNX needs {module}: pip install 'cifarkit[export]' (onnx, onnxscript, onnxruntime)"
        raise MissingExtraError(msg) from exc


def format_of(path: Path, format: str | None) -> Format:
    """The format named, or the one the suffix says.

    Raises:
        InvalidOptionError: neither says (the message lists both).
    """
    if format is not None:
        check_choice("format", format, ("onnx", "pt2"))
        return "onnx" if format == "onnx" else "pt2"
    if path.suffix.lower() not in FORMATS:
        msg = (
            f"cannot tell the format of {path}: name it .onnx or .pt2 (or a folder, without a suffix, for a web "
            "page), or pass format='onnx', 'pt2' or 'web'"
        )
        raise InvalidOptionError(msg)
    return FORMATS[path.suffix.lower()]


#: Two probabilities closer than this are a tie: either class is the same top-1 answer.
TIE = 1e-5


def same_answers(want: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per picture: the same top-1 class in both ``(N, C)`` probability arrays, a near-tie of
    ``want`` (within :data:`TIE`) excepted, since either class is then its answer."""
    top_want, top_got = want.argmax(1), got.argmax(1)
    rows = np.arange(len(want))
    result: np.ndarray = (top_want == top_got) | (want[rows, top_want] - want[rows, top_got] <= TIE)
    return result


def short_error(exc: BaseException, lines: int = 6) -> str:
    """The first lines of an exporter's message (they run to hundreds)."""
    text = [line.rstrip() for line in str(exc).splitlines() if line.strip()]
    shown = "\n  ".join(cut(line, 300) for line in text[:lines])
    return f"{type(exc).__name__}: {shown}" + ("\n  ..." if len(text) > lines else "")


class ExportedModel(nn.Module):
    """An exported file (``.onnx`` run by onnxruntime, ``.pt2`` by ``torch.export.load``) as a module.

    ``forward`` takes what cifarkit's loaders and :func:`~cifarkit.data.images.image_batch` give, float
    pixels ``(N, 3, H, W)`` in [0, 1] (or uint8), turns them back into uint8 ``(N, H, W, 3)`` and
    returns the program's logits, so :func:`~cifarkit.evaluation.inference.predict` and
    :func:`~cifarkit.evaluation.metrics.evaluate` run it like the model it came from. :meth:`run` takes
    and gives the program's own inputs and outputs. It has no parameters and runs on the CPU.
    """

    def __init__(self, path: Path, format: Format, run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 metadata: dict[str, str]) -> None:  # fmt: skip
        super().__init__()
        self.path = path
        self.format = format
        self._run = run
        try:
            record = validate_record(json.loads(metadata["cifarkit.preprocess"]))
            if record.get("input_size") is None:
                raise ModelRecordError("the record names no input_size")
        except (KeyError, ValueError, ModelRecordError) as exc:
            msg = f"{path} has no valid cifarkit.preprocess metadata ({exc}); was it written by cifarkit.export?"
            raise ModelRecordError(msg) from exc
        #: The preprocessing record the program applies (its ``input_size``, mean, std, classes).
        self.preprocess: Preprocess = record
        self.classes: list[str] | None = record.get("classes")
        # What this module takes: pixels scaled to [0, 1] at the program's size, not normalized
        # (the program normalizes), so predict and evaluate pick the size and class names from it.
        # (with its temperature, so that its logits give the program's own probabilities)
        own = make_record(input_size=record["input_size"], classes=self.classes, temperature=record.get("temperature"))
        set_preprocessing(self, {**own, "tta": record["tta"]} if record.get("tta") else own)

    def run(self, pixels: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, H, W, 3)`` -> ``(probabilities, logits)``, numpy float32 ``(B, C)``."""
        array = pixels.numpy(force=True) if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3:
            msg = f"an exported program takes uint8 pixels (batch, height, width, 3), got {array.dtype} {array.shape}"
            raise InvalidOptionError(msg)
        return self._run(np.ascontiguousarray(array))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(N, 3, H, W)`` in [0, 1] or uint8 -> logits ``(N, C)`` (on ``x``'s device)."""
        pixels = x if x.dtype == torch.uint8 else (x.float() * 255).round().clamp(0, 255).to(torch.uint8)
        _, logits = self.run(pixels.permute(0, 2, 3, 1).cpu())
        return torch.from_numpy(logits).to(x.device)


def load_exported(path: PathLike, *, trusted: bool = False) -> ExportedModel:
    """Open an ``.onnx`` or ``.pt2`` file written by :func:`~cifarkit.exporting.programs.export`, ready to run.

    An ONNX file is parsed by onnxruntime and runs no Python. ``torch.export.load`` reads a
    ``.pt2`` archive's tensors with pickle, so, like a pickled model, a ``.pt2`` file is opened
    only with ``trusted=True``: pass it for files you wrote yourself or whose source you trust.

    Raises:
        InvalidOptionError: the suffix is neither ``.onnx`` nor ``.pt2``.
        UnsafeLoadError: a ``.pt2`` file without ``trusted=True``.
        ExportError: the file cannot be opened by its runtime.
        ModelRecordError: the file lacks cifarkit's metadata.
        MissingExtraError: onnxruntime is missing (``pip install 'cifarkit[export]'``).

    Example:
        >>> import tempfile, pathlib, torch
        >>> from cifarkit import build_cnn, export, predict
        >>> path = export(build_cnn(), pathlib.Path(tempfile.mkdtemp()) / "m.pt2", input_size=32).path
        >>> program = load_exported(path, trusted=True)  # a .pt2 we just wrote
        >>> program.format, len(predict(program, torch.zeros(2, 3, 60, 40, dtype=torch.uint8)))
        ('pt2', 2)
    """
    file = Path(path)
    fmt = format_of(file, None)
    if not file.is_file():
        msg = f"no exported model at {file}: write one with cifarkit.export(model, {str(file)!r})"
        raise ExportError(msg)
    if fmt == "pt2" and not trusted:
        msg = (
            f"refusing to open {file} without trusted=True: torch.export.load unpickles a .pt2 archive, which "
            "can run arbitrary code. Pass trusted=True (--trusted) for a file you trust, or export to .onnx"
        )
        raise UnsafeLoadError(msg)
    return open_program(file, fmt)


def open_program(file: Path, fmt: Format) -> ExportedModel:
    """Open ``file`` as a ``fmt`` program (any name; a ``.pt2`` is unpickled: trusted files only)."""
    try:
        if fmt == "onnx":
            ort = require("onnxruntime")
            session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
            metadata = dict(session.get_modelmeta().custom_metadata_map)

            def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                probs, logits = session.run(["probabilities", "logits"], {"pixels": pixels})
                return probs, logits

            return ExportedModel(file, fmt, run, metadata)
        extra = {PT2_EXTRA_FILE: ""}
        source = file if file.suffix == ".pt2" else io.BytesIO(file.read_bytes())  # a temporary name
        with _quiet_deserializer():
            module = torch.export.load(source, extra_files=extra).module()
        metadata = json.loads(extra[PT2_EXTRA_FILE]) if extra[PT2_EXTRA_FILE] else {}

        def run_pt2(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                probs, logits = module(torch.from_numpy(pixels))
            return probs.numpy(), logits.numpy()

        return ExportedModel(file, fmt, run_pt2, metadata)
    except (MissingExtraError, ModelRecordError):
        raise
    except Exception as exc:
        msg = f"cannot open {file} as a {fmt} program: {short_error(exc, 3)}"
        raise ExportError(msg) from exc


@contextlib.contextmanager
def _quiet_deserializer() -> Iterator[None]:
    """Silence torch's "Symbol u0 did not appear in the graph" warnings (the resize branch's
    sizes, which the program checks itself) for the duration of a load, then restore the level."""
    logger = logging.getLogger("torch._export.serde.serialize")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # weights saved from the CPU: nothing to worry about
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            yield
    finally:
        logger.setLevel(level)
