"""cifarkit: the classic first PyTorch classifier, as reliable, fast, reusable code.

The names most people need, from the packages that own them: the data (:mod:`cifarkit.data`),
the models (:mod:`cifarkit.models`), training (:mod:`cifarkit.training`), evaluation
(:mod:`cifarkit.evaluation`), export (:mod:`cifarkit.exporting`), the file formats
(:mod:`cifarkit.files`) and the command line (:mod:`cifarkit.cli`). How they import one another
is one contract, in ``pyproject.toml``, checked by import-linter (the guide's "How cifarkit is
built").

Example:
    >>> import cifarkit
    >>> model = cifarkit.build_cnn(activation="relu")
    >>> data = cifarkit.synthetic_cifar10(256)
    >>> history = cifarkit.train_loop(model, data.loader(seed=0), epochs=1, device="cpu", progress=False)
    >>> history.epochs[0].images
    256
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from cifarkit import errors
from cifarkit.auditing import AuditReport, audit
from cifarkit.data import ImageTensors, Loader, TensorLoader, load_cifar10, load_image_folder, synthetic_cifar10
from cifarkit.evaluation import (
    CalibrationReport,
    EvalResult,
    Interpretation,
    Prediction,
    calibrate,
    evaluate,
    interpret,
    predict,
    write_report,
)
from cifarkit.exporting import ExportedModel, ExportReport, export, load_exported
from cifarkit.files.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from cifarkit.files.modelfiles import FileInfo, diagnose, inspect, load, save
from cifarkit.history import EpochStats, History
from cifarkit.losses import CrossEntropyLoss, L1Loss, MSELoss, cross_entropy, l1_loss, mse_loss
from cifarkit.models import Diagnosis, ModelSummary, adapt, adapt_vgg16, backbones, build_cnn, summary
from cifarkit.preprocess import preprocessing_of
from cifarkit.training import (
    EMA,
    DoctorReport,
    EarlyStopping,
    GradReport,
    LRFindResult,
    StepReport,
    TensorBoard,
    cosine,
    doctor,
    fine_tune,
    grad_report,
    lr_find,
    one_cycle,
    train_loop,
    train_one_epoch,
    watch_step,
)

try:
    __version__ = version("cifarkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "EMA",
    "AuditReport",
    "CalibrationReport",
    "Checkpoint",
    "CrossEntropyLoss",
    "Diagnosis",
    "DoctorReport",
    "EarlyStopping",
    "EpochStats",
    "EvalResult",
    "ExportReport",
    "ExportedModel",
    "FileInfo",
    "GradReport",
    "History",
    "ImageTensors",
    "Interpretation",
    "L1Loss",
    "LRFindResult",
    "Loader",
    "MSELoss",
    "ModelSummary",
    "Prediction",
    "StepReport",
    "TensorBoard",
    "TensorLoader",
    "__version__",
    "adapt",
    "adapt_vgg16",
    "audit",
    "backbones",
    "build_cnn",
    "calibrate",
    "cosine",
    "cross_entropy",
    "diagnose",
    "doctor",
    "errors",
    "evaluate",
    "export",
    "fine_tune",
    "grad_report",
    "inspect",
    "interpret",
    "l1_loss",
    "load",
    "load_checkpoint",
    "load_cifar10",
    "load_exported",
    "load_image_folder",
    "lr_find",
    "mse_loss",
    "one_cycle",
    "predict",
    "preprocessing_of",
    "save",
    "save_checkpoint",
    "summary",
    "synthetic_cifar10",
    "train_loop",
    "train_one_epoch",
    "watch_step",
    "write_report",
]
