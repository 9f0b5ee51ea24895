"""Evaluation: how good a trained model is, what it says of one's own pictures, and where it goes
wrong. Every part runs the model through the one inference loop.

=========================================== ==================================================
:mod:`~cifarkit.evaluation.inference`       the one inference loop (``model_outputs``),
                                            :func:`predict`, :func:`class_probabilities`
:mod:`~cifarkit.evaluation.metrics`         the meters (loss, accuracy, the confusion matrix,
                                            top-k, calibration bins) and :func:`evaluate`
:mod:`~cifarkit.evaluation.calibration`     :func:`calibrate`: one temperature that makes the
                                            probabilities honest
:mod:`~cifarkit.evaluation.interpretation`  :func:`interpret`: the worst pictures by file, the
                                            most confused classes, Grad-CAM
:mod:`~cifarkit.evaluation.report`          :func:`write_report`: all of it on one HTML page
=========================================== ==================================================

Example:
    >>> from cifarkit import build_cnn, synthetic_cifar10
    >>> from cifarkit.evaluation import evaluate
    >>> evaluate(build_cnn(), synthetic_cifar10(32).loader(batch_size=16), device="cpu").count
    32
"""

from __future__ import annotations

from cifarkit.evaluation.calibration import CalibrationReport, calibrate
from cifarkit.evaluation.inference import Prediction, class_probabilities, model_outputs, predict
from cifarkit.evaluation.interpretation import Interpretation, TopLoss, interpret
from cifarkit.evaluation.metrics import EvalResult, evaluate
from cifarkit.evaluation.report import write_report

__all__ = [
    "CalibrationReport",
    "EvalResult",
    "Interpretation",
    "Prediction",
    "TopLoss",
    "calibrate",
    "class_probabilities",
    "evaluate",
    "interpret",
    "model_outputs",
    "predict",
    "write_report",
]
