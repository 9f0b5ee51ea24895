"""cifarkit: the classic first PyTorch classifier, as reliable, fast, reusable code.

Example:
    >>> import cifarkit
    >>> model = cifarkit.build_cnn(activation="relu")
    >>> data = cifarkit.synthetic_cifar10(256)
    >>> history = cifarkit.train_loop(model, data.loader(seed=0), epochs=1, device="cpu", progress=False)
    >>> history.epochs[0].images
    256

The package is flat; each module holds one concern and imports only modules below it (the
layers are listed in the guide's "How cifarkit is built" page and kept by a test).

May import: cifarkit.callbacks, cifarkit.data, cifarkit.doctor, cifarkit.errors,
cifarkit.evaluation, cifarkit.exporting, cifarkit.files.checkpoints, cifarkit.files.diagnosis,
cifarkit.files.inspection, cifarkit.files.saving, cifarkit.folders, cifarkit.grads,
cifarkit.history, cifarkit.loader, cifarkit.losses, cifarkit.models, cifarkit.preprocess,
cifarkit.runtime, cifarkit.schedules, cifarkit.train, cifarkit.tuning, cifarkit.evaluation.interpretation,
cifarkit.evaluation.report (never the command line).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from cifarkit import errors
from cifarkit.callbacks import EarlyStopping, TensorBoard
from cifarkit.data import ImageTensors, load_cifar10, synthetic_cifar10
from cifarkit.doctor import DoctorReport, doctor
from cifarkit.evaluation import CalibrationReport, EvalResult, Prediction, calibrate, evaluate, predict
from cifarkit.evaluation.interpretation import Interpretation, interpret
from cifarkit.evaluation.report import write_report
from cifarkit.exporting import ExportReport, export
from cifarkit.files.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from cifarkit.files.diagnosis import Diagnosis
from cifarkit.files.inspection import FileInfo, inspect
from cifarkit.files.saving import diagnose, load, save
from cifarkit.folders import load_image_folder
from cifarkit.grads import GradReport, StepReport, grad_report, watch_step
from cifarkit.history import EpochStats, History
from cifarkit.loader import Loader, TensorLoader
from cifarkit.losses import CrossEntropyLoss, L1Loss, MSELoss, cross_entropy, l1_loss, mse_loss
from cifarkit.models import CifarCNN, ModelSummary, adapt, adapt_vgg16, backbones, build_cnn, summary
from cifarkit.preprocess import preprocessing_of
from cifarkit.runtime import ExportedModel, load_exported
from cifarkit.schedules import cosine, one_cycle
from cifarkit.train import train_loop, train_one_epoch
from cifarkit.tuning import LRFindResult, fine_tune, lr_find

try:
    __version__ = version("cifarkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "CalibrationReport",
    "Checkpoint",
    "CifarCNN",
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
