"""The models: the tutorial's CIFAR-10 CNN, pretrained torchvision networks adapted to one's
classes, the build record every model carries, and rebuilding a model from it.

=================================== ================================================================
:mod:`~cifarkit.models.cnn`          :func:`build_cnn`: the tutorial's network, layer for layer
:mod:`~cifarkit.models.pretrained`   :func:`adapt`, the lesson's :func:`adapt_vgg16`, their
                                     pretrained weights, :func:`head_of`
:mod:`~cifarkit.models.zoo`          the table of torchvision networks (:func:`backbones`) and the
                                     surgery done on them (heads, frozen features, layer groups)
:mod:`~cifarkit.models.records`      the build record: how a model was built, checked when read
:mod:`~cifarkit.models.rebuilding`   :func:`rebuild`: a fresh model from a record (what ``load``
                                     uses)
:mod:`~cifarkit.models.fitting`      why a ``state_dict`` does not fit a model, in plain words
:mod:`~cifarkit.models.overview`     :func:`summary`: parameters at a glance
=================================== ================================================================

Every model built here remembers how it was built, so :func:`cifarkit.save` writes a file that
:func:`cifarkit.load` turns back into the same architecture with no pickle and no class import.

Example:
    >>> from cifarkit.models import build_cnn, get_build_record, rebuild
    >>> record = get_build_record(build_cnn(activation="relu"))
    >>> type(rebuild(record)).__name__, record["builder"]
    ('CifarCNN', 'build_cnn')
"""

from __future__ import annotations

from cifarkit.models.cnn import CifarCNN, build_cnn
from cifarkit.models.fitting import Diagnosis
from cifarkit.models.overview import LayerRow, ModelSummary, summary
from cifarkit.models.pretrained import adapt, adapt_vgg16, head_of
from cifarkit.models.rebuilding import rebuild
from cifarkit.models.records import BuildRecord, get_build_record
from cifarkit.models.zoo import BACKBONES, Backbone, BackboneTable, backbones, weights_path

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneTable",
    "BuildRecord",
    "CifarCNN",
    "Diagnosis",
    "LayerRow",
    "ModelSummary",
    "adapt",
    "adapt_vgg16",
    "backbones",
    "build_cnn",
    "get_build_record",
    "head_of",
    "rebuild",
    "summary",
    "weights_path",
]
