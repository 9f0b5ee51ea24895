"""What each ``cifarkit`` sub-command does, one ``_cmd_*`` function each, and the helpers they
share (data from ``--data``, the model from ``--model``, the learning-rate finder). The parser and
the usage checks are in :mod:`cifarkit.cli`.
"""

from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

import torch

from cifarkit.auditing import audit
from cifarkit.data.cifar10 import load_cifar10
from cifarkit.data.folders import is_image_folder, load_image_folder
from cifarkit.data.loader import TensorLoader
from cifarkit.data.synthetic import synthetic_cifar10
from cifarkit.data.tensors import ImageTensors
from cifarkit.device import Amp, resolve_device, retain_cpu_memory
from cifarkit.distributed import is_main_process
from cifarkit.evaluation.calibration import calibrate
from cifarkit.evaluation.inference import predict
from cifarkit.evaluation.metrics import evaluate
from cifarkit.evaluation.report import write_report
from cifarkit.exporting.programs import export
from cifarkit.exporting.running import FORMATS as EXPORT_FORMATS
from cifarkit.exporting.running import load_exported
from cifarkit.exporting.web import serve
from cifarkit.files.modelfiles import inspect, load, save
from cifarkit.history import History
from cifarkit.losses import CrossEntropyLoss
from cifarkit.models.cnn import build_cnn
from cifarkit.models.pretrained import adapt, head_of
from cifarkit.models.zoo import BACKBONES, freeze_features
from cifarkit.preprocess import Preprocess, preprocessing_of
from cifarkit.training.averaging import EMA
from cifarkit.training.callbacks import TensorBoard
from cifarkit.training.finder import lr_find
from cifarkit.training.finetune import fine_tune
from cifarkit.training.loop import train_loop
from cifarkit.training.preflight import doctor
from cifarkit.training.schedules import Scheduler, cosine, one_cycle
from cifarkit.writing import atomic_write

__all__ = ["LESSON_HINT"]


def _data(spec: str, *, train: bool, count: int, seed: int, download: bool = False) -> ImageTensors:
    """``count`` synthetic images (held-out ones are drawn with ``seed + 1``), or a CIFAR-10 split:
    ``cifar10`` is the cache folder (downloaded into with ``--download``), anything else its folder."""
    if spec == "synthetic":
        return synthetic_cifar10(count, seed=seed if train else seed + 1)
    return load_cifar10(None if spec == "cifar10" else spec, train=train, download=download)


def _train_and_held_out(args: argparse.Namespace) -> tuple[ImageTensors, ImageTensors]:
    """The training images and the held-out ones evaluated after every epoch."""
    if args.data != "synthetic" and is_image_folder(args.data):  # one sub-folder per class
        fraction: float = args.val_fraction
        return load_image_folder(args.data, size=args.image_size, val_fraction=fraction, seed=args.seed,
                                 progress=not args.quiet)  # fmt: skip
    eval_size = max(1, args.train_count // 5)  # synthetic held-out: a fifth of the training size
    download = bool(getattr(args, "download", False))
    train = _data(args.data, train=True, count=args.train_count, seed=args.seed, download=download)
    return train, _data(args.data, train=False, count=eval_size, seed=args.seed)


def _normalization(model: torch.nn.Module) -> tuple[list[float], list[float]] | None:
    """The ``(mean, std)`` the model's preprocessing record asks for, if any."""
    record = preprocessing_of(model)
    return (record["mean"], record["std"]) if record is not None and record.get("mean") is not None else None


def _build(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    if args.model in BACKBONES:
        return adapt(args.model, num_classes, weights=args.weights, freeze_features=args.freeze_features)
    return build_cnn(num_classes, activation="relu" if args.model == "cnn-relu" else "none")


def _setup(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.optim.Optimizer, TensorLoader, ImageTensors]:
    """What ``train`` and ``doctor`` both build from the options: model, optimizer, data."""
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    train, held_out = _train_and_held_out(args)
    model = _build(args, len(train.classes))
    norm = _normalization(model)  # pretrained VGG16: ImageNet's mean and std
    train_data = train.loader(batch_size=args.batch_size, seed=args.seed, device=device, augment=args.augment,
                              normalize=norm, mix=args.mix)  # fmt: skip
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = 0.01 if args.lr == "find" else args.lr  # "find": replaced by the finder's suggestion
    if args.fine_tune:  # fine_tune builds its own AdamW groups; this one is what lr-find sweeps
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(trainable, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return model, optimizer, train_data, held_out


def _find_lr(args: argparse.Namespace, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             data: TensorLoader) -> float:  # fmt: skip
    """Run the finder as the run will train: with ``--fine-tune``, on the head alone (phase 1)."""
    flags = [p.requires_grad for p in model.parameters()]
    if args.fine_tune:
        freeze_features(model, head_of(model)[0])
    try:
        result = lr_find(model, data, optimizer=optimizer, device=args.device, steps=args.steps,
                         loss_fn=CrossEntropyLoss(label_smoothing=args.label_smoothing))  # fmt: skip
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    print(f"lr-find: {len(result.lrs)} steps from {result.lrs[0]:.1e} to {result.lrs[-1]:.1e} "
          f"({result.stop_reason}); suggested learning rate {result.suggestion:.2e}")  # fmt: skip
    if getattr(args, "output", None) is not None:
        print(f"wrote {result.plot(args.output)}")
    return result.suggestion


def cmd_lr_find(args: argparse.Namespace) -> int:
    model, optimizer, train_data, _ = _setup(args)
    _find_lr(args, model, optimizer, train_data)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    model, optimizer, train_data, _ = _setup(args)
    if args.lr == "find":  # check the run at the rate it will train with
        lr = _find_lr(args, model, optimizer, train_data)  # first: the finder restores the optimizer's groups
        for group in optimizer.param_groups:
            group["lr"] = lr
    loss_fn = CrossEntropyLoss(label_smoothing=args.label_smoothing)
    report = doctor(model, train_data, optimizer=optimizer, loss_fn=loss_fn, amp=_amp(args.amp), device=args.device)
    print(report)
    ok = report.ok
    if args.data not in ("synthetic", "cifar10") and is_image_folder(args.data):  # the cheap checks of an audit
        pictures = audit(args.data, model=model, label_errors=False)
        print(f"\nthe folder {args.data}: {pictures}")
        ok = ok and pictures.ok
    return 0 if ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    model, optimizer, train_data, held_out = _setup(args)
    classes = held_out.classes
    device = resolve_device(args.device)
    eval_data = held_out.loader(batch_size=256, shuffle=False, device=device, normalize=_normalization(model))
    lr: float = _find_lr(args, model, optimizer, train_data) if args.lr == "find" else args.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    started = time.perf_counter()
    if device.type == "cpu":
        retain_cpu_memory()  # the command owns its process: glibc keeps activation buffers
    options = {
        "device": device, "eval_data": eval_data, "amp": _amp(args.amp), "checkpoint": args.checkpoint,
        "progress": "lines" if args.quiet else True, "loss_fn": CrossEntropyLoss(label_smoothing=args.label_smoothing),
        "callbacks": ([EMA(args.ema)] if args.ema is not None else [])
        + ([TensorBoard(args.log_dir)] if args.log_dir is not None else []),
    }  # fmt: skip
    if args.fine_tune:
        fine_tune(model, train_data, epochs=args.epochs, freeze_epochs=args.freeze_epochs, lr=lr,
                  weight_decay=args.weight_decay, **options)  # fmt: skip
    else:
        train_loop(model, train_data, epochs=args.epochs, optimizer=optimizer,
                   scheduler=_schedule(args, optimizer, lr, len(train_data)), **options)  # fmt: skip
    if not is_main_process():
        return 0
    if args.tta:
        for tta in (None, "flip"):
            result = evaluate(model, eval_data, device=device, tta=tta, distributed=False)
            print(f"held out{' with flip TTA' if tta else ''}: accuracy {result.accuracy:.2%}, loss {result.loss:.4f}")
    out = save(model, args.out, classes=classes)
    print(f"saved {out} ({out.stat().st_size:,} bytes) after {time.perf_counter() - started:.1f} s")
    if args.model == "cnn":
        print(LESSON_HINT)
    return 0


#: What the default run (the tutorial's network) just showed, and the one command that learns.
#: The accuracy was measured with the command's defaults on the built-in data (see CHANGELOG).
LESSON_HINT = (
    "That was the tutorial's network: no activation function, so apart from max-pooling it is one "
    "linear map, and its held-out accuracy swings instead of climbing.\n"
    "For a network that learns: cifarkit train --model cnn-relu --momentum 0.9 "
    "(99.8% held out on the built-in data after 5 epochs)"
)


def _schedule(args: argparse.Namespace, optimizer: torch.optim.Optimizer, lr: float, steps: int) -> Scheduler | None:
    if args.schedule == "onecycle":
        return one_cycle(optimizer, max_lr=lr, epochs=args.epochs, steps_per_epoch=steps)
    if args.schedule == "cosine":
        return cosine(optimizer, epochs=args.epochs, steps_per_epoch=steps, warmup_epochs=args.warmup_epochs)
    return None


def _amp(value: str | None) -> Amp:
    return False if value is None else True if value == "auto" else value  # type: ignore[return-value]


def _exported(file: str) -> bool:
    """An ``.onnx`` or ``.pt2`` program written by ``cifarkit export`` (run by its runtime)."""
    return Path(file).suffix.lower() in EXPORT_FORMATS


def _model_and_classes(args: argparse.Namespace) -> tuple[torch.nn.Module, list[str] | None, Preprocess]:
    """The model of ``args.file`` (a cifarkit file, or an exported program), its class names, its record."""
    if _exported(args.file):
        program = load_exported(args.file, trusted=args.trusted)
        return program, program.classes, program.preprocess
    model = load(args.file, trusted=args.trusted)
    return model, inspect(args.file).class_names, preprocessing_of(model) or {}


def cmd_evaluate(args: argparse.Namespace) -> int:
    model, saved_classes, record = _model_and_classes(args)
    if args.data != "synthetic" and is_image_folder(args.data):  # the file's classes, in its order
        recorded = record.get("input_size")
        size = args.image_size or (tuple(recorded) if recorded else 32)
        data = load_image_folder(args.data, size=size, classes=saved_classes)
    else:
        data = _data(args.data, train=False, count=args.count, seed=0, download=args.download)
    classes = saved_classes or data.classes  # the file's names first
    device = resolve_device(args.device)
    loader = data.loader(batch_size=256, shuffle=False, device=device, normalize=_normalization(model))
    result = evaluate(model, loader, device=device, tta="flip" if args.tta else None)
    topk = "".join(f"  top-{k} {v:.2%}" for k, v in sorted(result.topk.items()) if k != 1)
    print(f"{args.file}: loss {result.loss:.4f}  accuracy {result.accuracy:.2%}{topk}  on {result.count} images")
    print(result.per_class_table(classes))
    if args.confusion is not None:
        print(f"wrote {result.plot_confusion(args.confusion, classes=classes)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model, classes, record = _model_and_classes(args)  # names read without unpickling anything
    size = args.image_size or (tuple(record["input_size"]) if record.get("input_size") else None)
    preds = predict(model, list(args.images), classes=classes, device=args.device, top=args.top, size=size,
                    reject_below=args.reject_below, tta="flip" if args.tta else None)  # fmt: skip
    for image, pred in zip(args.images, preds):
        ranked = ", ".join(f"{label if label is not None else f'class {i}'} ({p:.1%})" for i, label, p in pred.top)
        print(f"{image}: unknown (best guess {ranked})" if pred.unknown else f"{image}: {ranked}")
    return 0


def _labelled(args: argparse.Namespace, model: torch.nn.Module, classes: list[str] | None) -> ImageTensors:
    """The labelled pictures of ``--data`` for a saved model: a folder read at the model's size
    with its classes in its order, or a CIFAR-10 folder, or synthetic pictures."""
    if args.data != "synthetic" and is_image_folder(args.data):
        recorded = (preprocessing_of(model) or {}).get("input_size")
        size = args.image_size or (tuple(recorded) if recorded else 32)
        return load_image_folder(args.data, size=size, classes=classes)
    return _data(args.data, train=False, count=args.count, seed=0, download=args.download)


def cmd_calibrate(args: argparse.Namespace) -> int:
    model = load(args.file, trusted=args.trusted)
    classes = inspect(args.file).class_names
    data = _labelled(args, model, classes)
    report = calibrate(model, data.loader(batch_size=256, shuffle=False, normalize=_normalization(model)),
                       device=args.device)  # fmt: skip
    print(report)
    out = save(model, args.output, classes=classes or data.classes)  # only once the temperature is fitted
    print(f"saved {out}: probabilities divided by temperature {report.temperature:.3f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    model = load(args.file, trusted=args.trusted)
    data = _labelled(args, model, inspect(args.file).class_names)
    folder = args.data not in ("synthetic", "cifar10") and is_image_folder(args.data)
    checked = audit(args.data, model=model, label_errors=False) if folder else None  # a section of the page
    out = write_report(model, data, args.output, k=args.top, heatmap=not args.no_heatmaps, device=args.device,
                       title=f"{Path(args.file).name} on {args.data}", audit=checked)  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model = load(args.file, trusted=args.trusted)
    print(export(model, args.output, format=args.format, tta="flip" if args.tta else None, quantize=args.quantize,
                 calibration=args.calibration, runtime=args.runtime, reject_below=args.reject_below))  # fmt: skip
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.folder, port=args.port, host=args.host)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    report = audit(args.folder, against=list(args.against) or None, label_errors=not args.no_label_errors,
                   folds=args.folds, epochs=args.epochs, device=args.device)  # fmt: skip
    print(report)
    if args.output is not None:
        page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>audit of {html.escape(args.folder)}</title>"
        page += f"</head><body><h1>Audit of {html.escape(args.folder)}</h1>{report.html_section()}</body></html>"
        print(f"wrote {atomic_write(args.output, lambda f: f.write(page.encode('utf-8')))}")
    if args.json is not None:
        text = report.to_json().encode("utf-8")
        print(f"wrote {atomic_write(args.json, lambda f: f.write(text))}")
    return 0 if report.ok else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect(args.file)
    print(info)
    return 0 if info.ok else 1


def cmd_plot(args: argparse.Namespace) -> int:
    out = History.from_json(args.run_dir).plot(args.output)
    print(f"wrote {out}")
    return 0
