"""int8 programs: ONNX Runtime's static quantization of an exported program, checked against it.

:func:`~cifarkit.exporting.programs.export` with ``quantize="int8"`` hands the checked fp32
program to :func:`quantize_int8`, which follows ONNX Runtime's guidance for CNNs on CPUs:
``quant_pre_process`` (shape inference and graph optimisation), then ``quantize_static`` in the
QDQ format with per-channel symmetric int8 weights and uint8 activations (U8S8), calibrated
(MinMax) on the user's own pictures. The model's operators are quantized (:data:`OPERATORS`); the
resize and normalisation before it and the temperature and softmax after its logits stay fp32,
so the probabilities stay probabilities.

Why uint8 activations: measured with onnxruntime 1.32 on a ResNet-18, int8 activations (S8S8)
left the 8 residual ``Add`` nodes and the 11 convolutions that feed them in fp32 between
``DequantizeLinear`` nodes (ONNX Runtime's CPU fusions did not make ``QLinearAdd`` of them), and
the program ran at 0.83x fp32; with uint8 activations all 20 convolutions became ``QLinearConv``
and the adds ``QLinearAdd``, at 3.8x. On a CPU without VNNI or AMX, U8S8 products can saturate
(``VPMADDUBSW``): there the weights are quantized to 7 bits (``reduce_range``), as ONNX Runtime
advises.

The pictures are split once, by a seeded permutation: at most :data:`CALIBRATE_AT_MOST` calibrate,
and the held-out rest (at least :data:`HOLD_OUT_AT_LEAST`) check the int8 program against the
fp32 one (:func:`check_int8`): the top-1 class agrees on at least :data:`MIN_AGREEMENT` of them
and, where the labels are known, the accuracy drops by at most :data:`MAX_ACCURACY_DROP`.
Otherwise :class:`~cifarkit.errors.ExportError` names the measured figures and the layers that lost
most (signal-to-quantization-noise ratios from ONNX Runtime's ``qdq_loss_debug``), and nothing is
written.

"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cifarkit.data.folders import load_image_folder
from cifarkit.data.tensors import ImageTensors
from cifarkit.device import cpu_has_int8_instructions
from cifarkit.errors import ExportError, InvalidOptionError, check_choice
from cifarkit.exporting.running import ExportedModel, open_program, require, same_answers, short_error
from cifarkit.writing import PathLike

__all__ = [
    "CALIBRATE_AT_MOST",
    "HOLD_OUT_AT_LEAST",
    "MAX_ACCURACY_DROP",
    "MIN_AGREEMENT",
    "Int8Check",
    "Quantize",
    "check_int8",
    "quantize_int8",
    "split_calibration",
]

#: ``quantize=``: ``"int8"`` or ``None`` (fp32).
Quantize = Literal["int8"] | None
#: The int8 program's top-1 class agrees with the fp32 program's on at least this share of the
#: held-out pictures ...
MIN_AGREEMENT = 0.99
#: ... and, where the labels are known, its accuracy is at most this much lower.
MAX_ACCURACY_DROP = 0.01
#: Pictures held out from calibration to check the int8 program (at least; a fifth if more).
HOLD_OUT_AT_LEAST = 100
#: Pictures used to calibrate, at most (MinMax ranges settle long before; more only costs time).
CALIBRATE_AT_MOST = 512
#: The operators quantized: the convolutions and matrix products, where the time goes, and the
#: operators between them (a residual ``Add`` left in fp32 keeps the convolutions beside it fp32
#: too: ONNX Runtime fuses a convolution into ``QLinearConv`` only where its output is quantized).
OPERATORS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
             "Concat")  # fmt: skip
#: The batch at which throughput is compared (ONNX Runtime, one session each, same run).
THROUGHPUT_BATCH = 256


@dataclass(frozen=True)
class Int8Check:
    """How an int8 program answered against its fp32 program, on pictures held out from calibration."""

    #: Pictures that calibrated the ranges, and pictures held out to check.
    calibrated: int
    held_out: int
    #: Share of held-out pictures whose top-1 class is the fp32 program's (a near-tie of the fp32
    #: probabilities, within 1e-5, agrees with either class).
    agreement: float
    #: Accuracy of the fp32 and int8 programs on the held-out pictures (``None``: labels unknown).
    accuracy_fp32: float | None
    accuracy_int8: float | None
    #: Largest difference of any probability from the fp32 program.
    max_abs_diff: float
    fp32_bytes: int
    int8_bytes: int
    #: Pictures per second at batch :data:`THROUGHPUT_BATCH`, int8 over fp32, measured in one run.
    speedup: float
    #: Whether this CPU has int8 dot-product instructions (VNNI or AMX).
    int8_instructions: bool

    @property
    def smaller(self) -> float:
        """How many times smaller the int8 file is."""
        return self.fp32_bytes / self.int8_bytes

    def rows(self) -> list[tuple[str, str]]:
        """The figures as (name, value) rows of :class:`~cifarkit.exporting.programs.ExportReport`."""
        accuracy = (
            "labels unknown"
            if self.accuracy_fp32 is None or self.accuracy_int8 is None
            else f"{self.accuracy_fp32:.4f} (fp32) -> {self.accuracy_int8:.4f} (int8)"
        )
        speed = f"{self.speedup:.2f}x the fp32 program at batch {THROUGHPUT_BATCH}"
        if self.speedup < 1.0:
            why = "" if self.int8_instructions else ": it has no VNNI or AMX"
            speed += f" (int8 is slower on this CPU{why})"
        return [
            (
                "quantized",
                f"int8 (QDQ: uint8 activations, int8 per-channel weights), calibrated on {self.calibrated} pictures",
            ),
            ("int8 agreement", f"{self.agreement:.2%} top-1 with fp32 on {self.held_out} held-out pictures"),
            ("int8 accuracy", accuracy),
            ("int8 max |diff|", f"{self.max_abs_diff:.2e} (probabilities, against fp32)"),
            ("int8 size", f"{self.int8_bytes:,} bytes ({self.smaller:.1f}x smaller than fp32)"),
            ("int8 speed", speed),
        ]


@dataclass(frozen=True)
class Calibration:
    """The pictures of a calibration set, split once: ``(N, H, W, 3)`` uint8, as the program takes them."""

    calibrate: np.ndarray
    held_out: np.ndarray
    #: The held-out pictures' labels in the model's class order (``None``: not known).
    labels: np.ndarray | None


def split_calibration(
    data: ImageTensors | PathLike, size: tuple[int, int], classes: list[str] | None, *, seed: int = 0
) -> Calibration:
    """Read and split the calibration pictures (an :class:`~cifarkit.data.ImageTensors` or an image
    folder, read at ``size``).

    The labels count only when the set's class names are the model's (``classes``), or when
    neither has names; otherwise only the agreement with fp32 is checked.

    Raises:
        InvalidOptionError: not a set of pictures, or fewer than ``2 * HOLD_OUT_AT_LEAST``.
    """
    if not isinstance(data, ImageTensors):
        if not isinstance(data, str | Path):
            msg = f"calibration= takes an ImageTensors or an image folder, got {type(data).__name__}"
            raise InvalidOptionError(msg)
        data = load_image_folder(data, size=size)
    if len(data) < 2 * HOLD_OUT_AT_LEAST:
        msg = (
            f"calibration has {len(data)} pictures; int8 needs at least {2 * HOLD_OUT_AT_LEAST} of the model's own "
            f"kind ({HOLD_OUT_AT_LEAST} to check the int8 program against fp32, the rest to calibrate)"
        )
        raise InvalidOptionError(msg)
    images = data.images
    if tuple(images.shape[2:]) != size:
        images = torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    held = max(HOLD_OUT_AT_LEAST, len(data) // 5)
    nhwc = images.permute(0, 2, 3, 1)
    known = data.classes == classes if classes and data.classes else not classes and not data.classes
    return Calibration(
        calibrate=nhwc[order[held : held + CALIBRATE_AT_MOST]].contiguous().numpy(),
        held_out=nhwc[order[:held]].contiguous().numpy(),
        labels=data.labels[order[:held]].numpy() if known else None,
    )


def quantize_int8(fp32: Path, out: Path, pictures: np.ndarray, *, batch_size: int = 32) -> None:
    """Write the static int8 quantization (QDQ, U8S8, per-channel weights; see the module's
    description) of the ONNX program ``fp32`` to ``out``, its activation ranges calibrated on
    ``pictures`` (uint8 ``(N, H, W, 3)``)."""
    quantization = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.name + ".pre.onnx")
    onnx = require("onnx")
    reader = _reader([pictures[i : i + batch_size] for i in range(0, len(pictures), batch_size)])
    try:
        with _quiet():
            quant_pre_process(str(fp32), str(prepared))
            after = _after_the_logits(onnx.load(str(prepared)).graph)
            quantization.quantize_static(
                str(prepared), str(out), reader, quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                reduce_range=not cpu_has_int8_instructions(), op_types_to_quantize=list(OPERATORS),
                nodes_to_exclude=after,
                calibrate_method=quantization.CalibrationMethod.MinMax,
            )  # fmt: skip
    except Exception as exc:
        msg = f"ONNX Runtime could not quantize the program: {short_error(exc, 3)}; nothing was written"
        raise ExportError(msg) from exc
    finally:
        prepared.unlink(missing_ok=True)


def check_int8(fp32: Path, int8: Path, calibration: Calibration) -> Int8Check:
    """Run both programs on the held-out pictures and measure them side by side.

    Raises:
        ExportError: the agreement or the accuracy misses the bar; the message has the figures and
            the three layers with the lowest signal-to-quantization-noise ratio.
    """
    full, small = open_program(fp32, "onnx"), open_program(int8, "onnx")
    held = calibration.held_out
    want, got = _probabilities(full, held), _probabilities(small, held)
    agreement = float(same_answers(want, got).mean())  # a near-tie in fp32: either class agrees
    acc_fp32 = acc_int8 = None
    if calibration.labels is not None:
        acc_fp32 = float((want.argmax(1) == calibration.labels).mean())
        acc_int8 = float((got.argmax(1) == calibration.labels).mean())
    # Shares of whole pictures: 1.00 - 0.99 is 0.010000000000000009 in floats, and must pass.
    dropped = acc_fp32 is not None and acc_int8 is not None and acc_fp32 - acc_int8 > MAX_ACCURACY_DROP + 1e-9
    if agreement < MIN_AGREEMENT - 1e-9 or dropped:
        accuracy = "" if acc_fp32 is None else f", accuracy {acc_fp32:.4f} (fp32) -> {acc_int8:.4f} (int8)"
        msg = (
            f"the int8 program agrees with fp32 on {agreement:.2%} of {len(held)} held-out pictures "
            f"(at least {MIN_AGREEMENT:.0%} needed, and an accuracy drop of at most {MAX_ACCURACY_DROP:.0%})"
            f"{accuracy}. "
            f"Layers that lost most (signal to quantization noise): {_worst_layers(fp32, int8, held[:32])}. "
            "Calibrate on more pictures of the model's own kind; a layer near 0 dB holds a few activations far "
            "larger than the rest (an outlier channel), which int8 cannot hold beside them. Or export fp32 "
            "(quantize=None); nothing was written"
        )
        raise ExportError(msg)
    batch = np.ascontiguousarray(np.resize(held, (THROUGHPUT_BATCH, *held.shape[1:])))
    seconds = _interleaved(full.run, small.run, batch)
    return Int8Check(
        calibrated=len(calibration.calibrate), held_out=len(held), agreement=agreement, accuracy_fp32=acc_fp32,
        accuracy_int8=acc_int8, max_abs_diff=float(np.abs(want - got).max()), fp32_bytes=fp32.stat().st_size,
        int8_bytes=int8.stat().st_size, speedup=seconds[0] / seconds[1],
        int8_instructions=cpu_has_int8_instructions(),
    )  # fmt: skip


def _after_the_logits(graph: Any) -> list[str]:
    """The nodes that compute from the logits (temperature, softmax, the mean of a flip): they stay
    fp32, so the probabilities are not rounded to int8 steps."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pending, seen = ["logits"], set()
    while pending:
        for node in consumers.get(pending.pop(), []):
            if node.name not in seen:
                seen.add(node.name)
                pending.extend(node.output)
    return sorted(seen)


def _reader(batches: list[np.ndarray]) -> Any:
    """An ONNX Runtime calibration reader that hands out ``batches`` as the program's ``pixels``."""
    base = require("onnxruntime.quantization").CalibrationDataReader
    pending = iter(batches)

    def get_next(self: object) -> dict[str, np.ndarray] | None:
        batch = next(pending, None)
        return None if batch is None else {"pixels": batch}

    return type("PixelReader", (base,), {"get_next": get_next})()


def _probabilities(program: ExportedModel, pictures: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([program.run(pictures[i : i + batch_size])[0] for i in range(0, len(pictures), batch_size)])


def _interleaved(
    a: Callable[[np.ndarray], Any], b: Callable[[np.ndarray], Any], batch: np.ndarray
) -> tuple[float, float]:
    """Best of three, the two programs taking turns (a warm-up each first): seconds per batch."""
    a(batch), b(batch)
    best = [float("inf"), float("inf")]
    for _ in range(3):
        for i, run in enumerate((a, b)):
            start = time.perf_counter()
            run(batch)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def _worst_layers(fp32: Path, int8: Path, pictures: np.ndarray) -> str:
    """The three tensors with the lowest SQNR (dB) of the int8 program against fp32."""
    try:
        debug = require("onnxruntime.quantization.qdq_loss_debug")
        with tempfile.TemporaryDirectory(prefix="cifarkit-int8-debug-") as tmp, _quiet():
            a, b = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            debug.modify_model_output_intermediate_tensors(str(fp32), str(a))
            debug.modify_model_output_intermediate_tensors(str(int8), str(b))
            matched = debug.create_activation_matching(
                debug.collect_activations(str(b), _reader([pictures])),
                debug.collect_activations(str(a), _reader([pictures])),
            )
            errors = debug.compute_activation_error(matched)
        ranked = sorted((e["xmodel_err"], name) for name, e in errors.items() if "xmodel_err" in e)
        return ", ".join(f"{name} {sqnr:.1f} dB" for sqnr, name in ranked[:3]) or "none measured"
    except Exception as exc:  # a diagnosis must not hide the refusal it explains
        return f"not measured ({short_error(exc, 1)})"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs every step at INFO and prints its advice; keep it for errors."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def check_quantize(quantize: object, fmt: str, calibration: object) -> None:
    """Refuse ``quantize=`` values, formats and a missing calibration set before any work."""
    check_choice("quantize", quantize, ("int8", None))
    if quantize is None:
        if calibration is not None:
            raise InvalidOptionError("calibration= is for quantize='int8'; an fp32 export takes no calibration set")
        return
    if fmt != "onnx":
        msg = "quantize='int8' writes an ONNX program (ONNX Runtime's quantization): name the file .onnx"
        raise InvalidOptionError(msg)
    if calibration is None:
        msg = (
            "quantize='int8' needs calibration=: pictures of the model's own kind (an image folder or "
            f"ImageTensors, at least {2 * HOLD_OUT_AT_LEAST}) to measure the activations' ranges and check the result"
        )
        raise InvalidOptionError(msg)
