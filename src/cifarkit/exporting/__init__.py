"""Export: the model as a program that runs without cifarkit, and running such programs.

====================================== ==============================================================
:mod:`~cifarkit.exporting.programs`    :func:`~cifarkit.exporting.programs.export`: ONNX and
                                       ``torch.export`` programs that take raw pixels, with the
                                       preprocessing inside, checked against the model before
                                       they are written
:mod:`~cifarkit.exporting.quantizing`  ``export(..., quantize="int8")``: ONNX Runtime's static
                                       int8 program, checked against the fp32 one on pictures
                                       held out from calibration
:mod:`~cifarkit.exporting.web`         ``export(..., format="web")``: a folder with a page that
                                       classifies pictures in the browser (onnxruntime-web), and
                                       :func:`~cifarkit.exporting.web.serve` for it
:mod:`~cifarkit.exporting.page`        that page: its HTML and script
:mod:`~cifarkit.exporting.running`     :func:`~cifarkit.exporting.running.load_exported`: such a
                                       file as an ``nn.Module`` that ``predict`` and ``evaluate`` take
====================================== ==============================================================

onnx, onnxscript and onnxruntime come with ``pip install 'cifarkit[export]'`` and are imported
only when used. (The package is ``exporting``: ``cifarkit.export`` is the function.)
"""

from __future__ import annotations

from cifarkit.exporting.programs import ExportReport, PixelPipeline, export
from cifarkit.exporting.running import ExportedModel, load_exported

__all__ = ["ExportReport", "ExportedModel", "PixelPipeline", "export", "load_exported"]
