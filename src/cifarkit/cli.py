"""The ``cifarkit`` command: train, lr-find, doctor, evaluate, predict, export, inspect and plot.

``evaluate`` and ``predict`` take a cifarkit model file or an exported ``.onnx``/``.pt2`` program
(run by onnxruntime or ``torch.export.load``), and print the same for both.

Bad arguments exit with status 2 and a one-line message (checked before any work: ``--out``,
``--checkpoint`` and ``--log-dir`` included); failures exit with status 1 and the library's
message on one line (``--debug`` shows the traceback). No input prints a traceback otherwise.
The command owns its process, so unlike a library call it may change process-wide settings: it
seeds torch and turns on :func:`~cifarkit.device.retain_cpu_memory`.

May import: cifarkit.callbacks, cifarkit.data, cifarkit.device, cifarkit.doctor, cifarkit.errors,
cifarkit.evaluation, cifarkit.exporting, cifarkit.files.inspection, cifarkit.files.reading,
cifarkit.files.saving, cifarkit.files.writing, cifarkit.folders, cifarkit.history, cifarkit.loader,
cifarkit.losses, cifarkit.models, cifarkit.models.zoo, cifarkit.preprocess, cifarkit.runtime,
cifarkit.schedules, cifarkit.train, cifarkit.tuning.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from cifarkit.callbacks import TensorBoard
from cifarkit.data import ImageTensors, load_cifar10, synthetic_cifar10
from cifarkit.device import Amp, resolve_device, retain_cpu_memory
from cifarkit.doctor import doctor
from cifarkit.errors import CifarkitError, cut
from cifarkit.evaluation import evaluate, predict
from cifarkit.exporting import export
from cifarkit.files.inspection import inspect
from cifarkit.files.reading import versions
from cifarkit.files.saving import load, save
from cifarkit.files.writing import check_writable
from cifarkit.folders import is_image_folder, load_image_folder
from cifarkit.history import History
from cifarkit.loader import TensorLoader
from cifarkit.losses import CrossEntropyLoss
from cifarkit.models import adapt, build_cnn, head_of
from cifarkit.models.zoo import BACKBONES, freeze_features
from cifarkit.preprocess import Preprocess, preprocessing_of
from cifarkit.runtime import FORMATS as EXPORT_FORMATS
from cifarkit.runtime import load_exported
from cifarkit.schedules import Scheduler, cosine, one_cycle
from cifarkit.train import train_loop
from cifarkit.tuning import fine_tune, lr_find

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _data(spec: str, *, train: bool, count: int, seed: int) -> ImageTensors:
    """``count`` synthetic images (held-out ones are drawn with ``seed + 1``), or a CIFAR-10 split."""
    if spec == "synthetic":
        return synthetic_cifar10(count, seed=seed if train else seed + 1)
    return load_cifar10(spec, train=train)


def _train_and_held_out(args: argparse.Namespace) -> tuple[ImageTensors, ImageTensors]:
    """The training images and the held-out ones evaluated after every epoch."""
    if args.data != "synthetic" and is_image_folder(args.data):  # one sub-folder per class
        fraction: float = args.val_fraction
        return load_image_folder(args.data, size=args.image_size, val_fraction=fraction, seed=args.seed,
                                 progress=not args.quiet)  # fmt: skip
    eval_size = max(1, args.train_count // 5)  # synthetic held-out: a fifth of the training size
    held_out = _data(args.data, train=False, count=eval_size, seed=args.seed)
    return _data(args.data, train=True, count=args.train_count, seed=args.seed), held_out


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
                              normalize=norm)  # fmt: skip
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


def _cmd_lr_find(args: argparse.Namespace) -> int:
    model, optimizer, train_data, _ = _setup(args)
    _find_lr(args, model, optimizer, train_data)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    model, optimizer, train_data, _ = _setup(args)
    loss_fn = CrossEntropyLoss(label_smoothing=args.label_smoothing)
    report = doctor(model, train_data, optimizer=optimizer, loss_fn=loss_fn, amp=_amp(args.amp), device=args.device)
    print(report)
    return 0 if report.ok else 1


def _cmd_train(args: argparse.Namespace) -> int:
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
        "callbacks": [TensorBoard(args.log_dir)] if args.log_dir is not None else [],
    }  # fmt: skip
    if args.fine_tune:
        fine_tune(model, train_data, epochs=args.epochs, freeze_epochs=args.freeze_epochs, lr=lr,
                  weight_decay=args.weight_decay, **options)  # fmt: skip
    else:
        train_loop(model, train_data, epochs=args.epochs, optimizer=optimizer,
                   scheduler=_schedule(args, optimizer, lr, len(train_data)), **options)  # fmt: skip
    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    model, saved_classes, record = _model_and_classes(args)
    if args.data != "synthetic" and is_image_folder(args.data):  # the file's classes, in its order
        recorded = record.get("input_size")
        size = args.image_size or (tuple(recorded) if recorded else 32)
        data = load_image_folder(args.data, size=size, classes=saved_classes)
    else:
        data = _data(args.data, train=False, count=args.count, seed=0)
    classes = saved_classes or data.classes  # the file's names first
    device = resolve_device(args.device)
    loader = data.loader(batch_size=256, shuffle=False, device=device, normalize=_normalization(model))
    result = evaluate(model, loader, device=device)
    topk = "".join(f"  top-{k} {v:.2%}" for k, v in sorted(result.topk.items()) if k != 1)
    print(f"{args.file}: loss {result.loss:.4f}  accuracy {result.accuracy:.2%}{topk}  on {result.count} images")
    print(result.per_class_table(classes))
    if args.confusion is not None:
        print(f"wrote {result.plot_confusion(args.confusion, classes=classes)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    model, classes, record = _model_and_classes(args)  # names read without unpickling anything
    size = args.image_size or (tuple(record["input_size"]) if record.get("input_size") else None)
    preds = predict(model, list(args.images), classes=classes, device=args.device, top=args.top, size=size)
    for image, pred in zip(args.images, preds):
        ranked = ", ".join(f"{label if label is not None else f'class {i}'} ({p:.1%})" for i, label, p in pred.top)
        print(f"{image}: {ranked}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    model = load(args.file, trusted=args.trusted)
    print(export(model, args.output, format=args.format))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect(args.file)
    print(info)
    return 0 if info.ok else 1


def _cmd_plot(args: argparse.Namespace) -> int:
    out = History.from_json(args.run_dir).plot(args.output)
    print(f"wrote {out}")
    return 0


def _learning_rate(value: str) -> float | str:
    if value == "find":
        return value
    try:
        return float(value)
    except ValueError:
        msg = f"{value!r} is neither a number nor 'find'"
        raise argparse.ArgumentTypeError(msg) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cifarkit`` command."""
    parser = _Parser(prog="cifarkit", description="Train, evaluate and inspect CIFAR-10 classifiers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"cifarkit {versions()['cifarkit']}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = _Parser(add_help=False)  # the options train and doctor share
    run.add_argument("--model", choices=["cnn", "cnn-relu", *BACKBONES], default="cnn",
                     help="the tutorial's CNN, or a torchvision network (see cifarkit.backbones())")  # fmt: skip
    run.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic', a CIFAR-10 folder, or a folder with one sub-folder of images per class",
    )
    run.add_argument("--image-size", type=int, default=32, help="side of the images read from a folder")
    run.add_argument("--val-fraction", type=float, default=0.2, help="share of a folder's images held out")
    run.add_argument("--weights", default=None, help="a torchvision --model: 'imagenet' or a state_dict file")
    run.add_argument("--freeze-features", action="store_true", help="a torchvision --model: train the head only")
    run.add_argument("--fine-tune", action="store_true", help="two phases: the head alone, then every layer "
                     "with smaller rates for the early ones (cifarkit.fine_tune)")  # fmt: skip
    run.add_argument("--freeze-epochs", type=int, default=1, help="--fine-tune: epochs of the head alone")
    run.add_argument("--epochs", type=int, default=5)
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--lr", type=_learning_rate, default=0.01, help="a number, or 'find': run lr-find first")
    run.add_argument("--steps", type=int, default=100, help="lr-find (and --lr find): steps of the sweep")
    run.add_argument("--momentum", type=float, default=0.0)
    run.add_argument("--device", default="auto")
    run.add_argument("--train-count", type=int, default=10_000, help="synthetic images to train on")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--augment", action="store_true", help="random crop and flip")
    run.add_argument("--amp", nargs="?", const="auto", default=None, choices=["auto", "bf16", "fp16"],
                       help="mixed precision: the device's best, or bf16/fp16 by name")  # fmt: skip
    run.add_argument("--schedule", choices=["none", "onecycle", "cosine"], default="none",
                       help="learning-rate schedule, stepped per batch (--lr is its peak)")  # fmt: skip
    run.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up of --schedule cosine")
    run.add_argument("--weight-decay", type=float, default=0.0)
    run.add_argument("--label-smoothing", type=float, default=0.0)
    run.add_argument("--quiet", action="store_true", help="no progress bar: epoch lines only")
    train = sub.add_parser("train", parents=[run], help="train a model and save it")
    train.add_argument("--out", default="model.pt", help="where to save the model")
    train.add_argument("--checkpoint", default=None, help="save every epoch and resume from FILE")
    train.add_argument("--log-dir", default=None, help="TensorBoard run folder")
    train.set_defaults(func=_cmd_train)
    finder = sub.add_parser("lr-find", parents=[run], help="sweep the learning rate and suggest one (train's options)")
    finder.add_argument("-o", "--output", default=None, metavar="PNG", help="draw the loss against the rate")
    finder.set_defaults(func=_cmd_lr_find)
    check = sub.add_parser("doctor", parents=[run], help="check a training set-up before the run (train's options)")
    check.set_defaults(func=_cmd_doctor)

    ev = sub.add_parser("evaluate", help="loss and accuracy of a saved model")
    ev.add_argument("file")
    ev.add_argument("--data", default="synthetic", help="'synthetic', a CIFAR-10 folder, or an image folder")
    ev.add_argument("--image-size", type=int, default=None, help="side of the images read from a folder "
                    "(default: the size the model was trained on)")  # fmt: skip
    ev.add_argument("--count", type=int, default=2_000, help="synthetic images to evaluate on")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--trusted", action="store_true", help="allow a pickled whole model or a .pt2 program")
    ev.add_argument("--confusion", default=None, metavar="PNG", help="write the confusion matrix as a PNG")
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="classify image files")
    pr.add_argument("file")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top", type=int, default=1, help="how many classes to print, best first")
    pr.add_argument("--image-size", type=int, default=None, help="side the pictures are resized to "
                    "(default: the size the model was trained on)")  # fmt: skip
    pr.add_argument("--device", default="auto")
    pr.add_argument("--trusted", action="store_true", help="allow a pickled whole model or a .pt2 program")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="write an ONNX or torch.export program that takes raw pixels")
    ex.add_argument("file")
    ex.add_argument("-o", "--output", required=True, help="the program file: OUT.onnx or OUT.pt2")
    ex.add_argument("--format", choices=["onnx", "pt2"], default=None, help="default: from the suffix of -o")
    ex.add_argument("--trusted", action="store_true", help="allow a pickled whole model")
    ex.set_defaults(func=_cmd_export)

    ins = sub.add_parser("inspect", help="what a saved model file holds")
    ins.add_argument("file")
    ins.set_defaults(func=_cmd_inspect)

    plot = sub.add_parser("plot", help="draw loss and accuracy curves of a run")
    plot.add_argument("run_dir", help="a log_dir with history.json (or the file itself)")
    plot.add_argument("-o", "--output", default="curves.png")
    plot.set_defaults(func=_cmd_plot)
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors found before any work: each exits 2 with one line."""
    for name in ("epochs", "batch_size", "train_count", "count", "top", "image_size", "steps"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= getattr(args, "seed", 0) < 2**63:
        parser.error("--seed must be from 0 to 2**63 - 1")
    _check_model_options(parser, args)
    try:  # where the results go is checked before training, not discovered after it
        if hasattr(args, "device"):
            resolve_device(args.device)
        if getattr(args, "command", None) == "export":
            check_writable(args.output)
        for name in ("out", "checkpoint"):
            if getattr(args, name, None) is not None:
                check_writable(getattr(args, name))
        if getattr(args, "log_dir", None) is not None:  # a file there: "... is a file, not a folder"
            check_writable(Path(args.log_dir) / "history.json")
    except CifarkitError as exc:
        parser.error(str(exc))


def _check_model_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if getattr(args, "model", None) not in ("cnn", "cnn-relu"):
        if getattr(args, "fine_tune", False) and args.schedule != "none":
            parser.error("--fine-tune has its own schedule (one cycle per phase): leave out --schedule")
        if getattr(args, "freeze_epochs", 0) < 0:
            parser.error("--freeze-epochs must be at least 0")
        return
    for flag, given in (("--weights", args.weights is not None), ("--freeze-features", args.freeze_features),
                        ("--fine-tune", args.fine_tune)):  # fmt: skip
        if given:
            parser.error(f"{flag} goes with a torchvision network: --model resnet18 (see cifarkit.backbones())")
    if args.image_size != 32:
        parser.error(f"--model {args.model} takes 32x32 images: use --image-size 32, or --model resnet18")


def _one_line(exc: BaseException) -> str:
    """An error message on one line (a diagnosis has several), at most 2,000 characters."""
    text = "; ".join(" ".join(line.split()) for line in str(exc).splitlines() if line.strip())
    return cut(text, 2000)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done (``inspect``: the file is sound). 1: a failure (a damaged file, a diverged run,
    ``inspect`` found problems), one line on stderr. 2: a usage error, one line on stderr.
    ``--debug`` shows tracebacks instead. No input makes it print a traceback otherwise.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        print("cifarkit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        known = isinstance(exc, (CifarkitError, OSError, ValueError))
        prefix = "" if known else f"unexpected {type(exc).__name__} (run with --debug and report it): "
        print(f"cifarkit: error: {prefix}{_one_line(exc)}", file=sys.stderr)
        return 1
    return status
