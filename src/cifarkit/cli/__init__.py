"""The ``cifarkit`` command: train, lr-find, doctor, evaluate, predict, calibrate, report, export, serve,
inspect and plot (each one's work: :mod:`cifarkit.cli.commands`).

``audit`` exits 0 when it found nothing, 1 when it found something (like ``doctor``), 2 on bad
input. ``evaluate`` and ``predict`` take a cifarkit model file or an exported ``.onnx``/``.pt2`` program
(run by onnxruntime or ``torch.export.load``), and print the same for both.

Bad arguments exit with status 2 and a one-line message (checked before any work: ``--out``,
``--checkpoint`` and ``--log-dir`` included); failures exit with status 1 and the library's
message on one line (``--debug`` shows the traceback). No input prints a traceback otherwise.
The command owns its process, so unlike a library call it may change process-wide settings: it
seeds torch and turns on :func:`~cifarkit.device.retain_cpu_memory`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from cifarkit.cli import commands
from cifarkit.cli.commands import LESSON_HINT
from cifarkit.device import resolve_device
from cifarkit.errors import CifarkitError, cut
from cifarkit.exporting.web import site_target
from cifarkit.files.format import versions
from cifarkit.models.zoo import BACKBONES
from cifarkit.writing import check_writable

__all__ = ["LESSON_HINT", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
        help="'synthetic', 'cifar10' (the cache folder, see --download), a CIFAR-10 folder, or a folder "
        "with one sub-folder of images per class",
    )
    run.add_argument("--download", action="store_true", help="--data cifar10: download it into the cache "
                     "folder ($CIFARKIT_DATA/cifar10) when missing (MD5 checked)")  # fmt: skip
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
    run.add_argument("--mix", choices=["mixup", "cutmix"], default=None, help="mix each training batch (soft targets)")
    run.add_argument("--ema", nargs="?", type=float, const=0.999, default=None, metavar="DECAY",
                     help="average the weights over the steps (evaluated and saved); DECAY default 0.999")  # fmt: skip
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
    train.add_argument("--tta", action="store_true", help="also report the held-out accuracy with flip TTA")
    train.set_defaults(func=commands.cmd_train)
    finder = sub.add_parser("lr-find", parents=[run], help="sweep the learning rate and suggest one (train's options)")
    finder.add_argument("-o", "--output", default=None, metavar="PNG", help="draw the loss against the rate")
    finder.set_defaults(func=commands.cmd_lr_find)
    check = sub.add_parser("doctor", parents=[run], help="check a training set-up before the run (train's options)")
    check.set_defaults(func=commands.cmd_doctor)

    ev = sub.add_parser("evaluate", help="loss and accuracy of a saved model")
    ev.add_argument("file")
    ev.add_argument("--data", default="synthetic", help="'synthetic', 'cifar10', a CIFAR-10 folder, or an image folder")
    ev.add_argument("--download", action="store_true", help="--data cifar10: download it when missing")
    ev.add_argument("--image-size", type=int, default=None, help="side of the images read from a folder "
                    "(default: the size the model was trained on)")  # fmt: skip
    ev.add_argument("--count", type=int, default=2_000, help="synthetic images to evaluate on")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--trusted", action="store_true", help="allow a pickled whole model or a .pt2 program")
    ev.add_argument("--confusion", default=None, metavar="PNG", help="write the confusion matrix as a PNG")
    ev.add_argument("--tta", action="store_true", help="each picture and its mirror image: their mean")
    ev.set_defaults(func=commands.cmd_evaluate)

    pr = sub.add_parser("predict", help="classify image files")
    pr.add_argument("file")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top", type=int, default=1, help="how many classes to print, best first")
    pr.add_argument("--image-size", type=int, default=None, help="side the pictures are resized to "
                    "(default: the size the model was trained on)")  # fmt: skip
    pr.add_argument("--device", default="auto")
    pr.add_argument("--reject-below", type=float, default=None, metavar="P",
                    help="answer 'unknown' when the top probability is below P (calibrate first)")  # fmt: skip
    pr.add_argument("--trusted", action="store_true", help="allow a pickled whole model or a .pt2 program")
    pr.add_argument("--tta", action="store_true", help="each picture and its mirror image: their mean")
    pr.set_defaults(func=commands.cmd_predict)

    ex = sub.add_parser("export", help="write an ONNX or torch.export program that takes raw pixels")
    ex.add_argument("file")
    ex.add_argument("-o", "--output", required=True, help="OUT.onnx, OUT.pt2, or a folder (OUT/) for a web page")
    ex.add_argument("--format", choices=["onnx", "pt2", "web"], default=None, help="default: from the suffix of -o")
    ex.add_argument(
        "--runtime",
        metavar="FOLDER",
        default=None,
        help="web: onnxruntime-web's dist folder to bundle (default: $CIFARKIT_ORT_WEB, else a CDN)",
    )
    ex.add_argument(
        "--reject-below",
        type=float,
        default=None,
        metavar="P",
        help="web: say 'unknown' when the top probability is below P",
    )
    ex.add_argument("--trusted", action="store_true", help="allow a pickled whole model")
    ex.add_argument("--tta", action="store_true", help="put flip test-time augmentation inside the program")
    ex.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="write ONNX Runtime's static int8 program, checked against fp32 (needs --calibration)",
    )
    ex.add_argument(
        "--calibration",
        metavar="FOLDER",
        default=None,
        help="for --quantize int8: an image folder of the model's own kind (at least 200 pictures)",
    )
    ex.set_defaults(func=commands.cmd_export)

    trust = (("calibrate", "fit a temperature on held-out pictures and save the calibrated model"),
             ("report", "write one HTML page: accuracy, confusions, the worst pictures, calibration"))  # fmt: skip
    for name, what in trust:
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument("file")
        cmd.add_argument("--data", default="synthetic", help="held-out labelled pictures: a folder, 'cifar10', "
                         "or 'synthetic'")  # fmt: skip
        cmd.add_argument("--download", action="store_true", help="--data cifar10: download it when missing")
        cmd.add_argument("-o", "--output", required=True, help="the calibrated model file" if name == "calibrate"
                         else "the .html file")  # fmt: skip
        cmd.add_argument("--image-size", type=int, default=None, help="default: the size the model was trained on")
        cmd.add_argument("--count", type=int, default=2_000, help="synthetic pictures")
        cmd.add_argument("--device", default="auto")
        cmd.add_argument("--trusted", action="store_true", help="allow a pickled whole model")
        cmd.set_defaults(func=commands.cmd_calibrate if name == "calibrate" else commands.cmd_report)
        if name == "report":
            cmd.add_argument("--top", type=int, default=12, help="how many of the worst pictures to show")
            cmd.add_argument("--no-heatmaps", action="store_true", help="no Grad-CAM (needs cifarkit[gradcam])")

    au = sub.add_parser("audit", help="check a picture folder before training: broken and duplicate files, leaks, "
                        "odd pictures, imbalance, likely label errors")  # fmt: skip
    au.add_argument("folder", help="a folder with one sub-folder of pictures per class")
    au.add_argument("--against", action="append", default=[], metavar="DIR", help="another split (repeatable)")
    au.add_argument("--no-label-errors", action="store_true", help="skip the folds' trainings (the slow part)")
    au.add_argument("--folds", type=int, default=5)
    au.add_argument("--epochs", type=int, default=8, help="epochs of each fold's training")
    au.add_argument("--device", default="auto")
    au.add_argument("-o", "--output", default=None, metavar="HTML", help="write the report as an HTML page")
    au.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    au.set_defaults(func=commands.cmd_audit)

    sv = sub.add_parser("serve", help="serve a web page from export --format web (127.0.0.1; Ctrl-C stops)")
    sv.add_argument("folder")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--host", default="127.0.0.1", help="the address to bind (default: this machine only)")
    sv.set_defaults(func=commands.cmd_serve)

    ins = sub.add_parser("inspect", help="what a saved model file holds")
    ins.add_argument("file")
    ins.set_defaults(func=commands.cmd_inspect)

    plot = sub.add_parser("plot", help="draw loss and accuracy curves of a run")
    plot.add_argument("run_dir", help="a log_dir with history.json (or the file itself)")
    plot.add_argument("-o", "--output", default="curves.png")
    plot.set_defaults(func=commands.cmd_plot)
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors found before any work: each exits 2 with one line."""
    if getattr(args, "command", None) == "audit":
        for folder in [args.folder, *args.against]:
            if not Path(folder).is_dir():
                parser.error(f"no folder at {folder}: pass a folder with one sub-folder of pictures per class")
        if args.folds < 2:
            parser.error("--folds must be at least 2")
        for name in ("output", "json"):
            if getattr(args, name) is not None:
                try:
                    check_writable(getattr(args, name))
                except CifarkitError as exc:
                    parser.error(str(exc))
    for name in ("epochs", "batch_size", "train_count", "count", "top", "image_size", "steps"):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= getattr(args, "seed", 0) < 2**63:
        parser.error("--seed must be from 0 to 2**63 - 1")
    _check_model_options(parser, args)
    try:  # where the results go is checked before training, not discovered after it
        if hasattr(args, "device"):
            resolve_device(args.device)
        web = getattr(args, "command", None) == "export" and (
            args.format == "web" or args.output.endswith("/") or not Path(args.output).suffix
        )  # a folder for a web page
        if web:
            site_target(args.output)
        elif getattr(args, "command", None) in ("export", "calibrate", "report"):
            check_writable(args.output)
        if getattr(args, "download", False) and args.data != "cifar10":
            parser.error("--download fetches CIFAR-10 into its cache folder: use it with --data cifar10")
        if getattr(args, "reject_below", None) is not None and not 0 <= args.reject_below <= 1:
            parser.error("--reject-below must be a probability from 0 to 1")
        for name in ("out", "checkpoint"):
            if getattr(args, name, None) is not None:
                check_writable(getattr(args, name))
        if getattr(args, "log_dir", None) is not None:  # a file there: "... is a file, not a folder"
            check_writable(Path(args.log_dir) / "history.json")
    except CifarkitError as exc:
        parser.error(str(exc))


def _check_model_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not hasattr(args, "model"):
        return
    if args.warmup_epochs and args.schedule != "cosine":
        parser.error("--warmup-epochs is the warm-up of --schedule cosine: add --schedule cosine, or leave it out")
    if args.ema is not None and not 0 < args.ema < 1:
        parser.error("--ema DECAY must be between 0 and 1 (exclusive), e.g. --ema 0.999")
    if args.fine_tune and args.momentum:
        parser.error("--fine-tune trains with AdamW, which has no --momentum: leave it out (or train without "
                     "--fine-tune, with SGD)")  # fmt: skip
    if args.model not in ("cnn", "cnn-relu"):
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
