"""What a training run records: :class:`EpochStats` per epoch, gathered in a :class:`History`.

Plain dataclasses that round-trip through JSON (``history.json``) and through
``torch.load(weights_only=True)`` (checkpoints), and draw their own learning curves.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from cifarkit.display import format_table, html_table, new_figure, save_or_return
from cifarkit.errors import HistoryFormatError, HistoryNotFoundError, check_choice
from cifarkit.writing import PathLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["EVAL_FIGURES", "TRAIN_FIGURES", "EpochStats", "History"]

_HEADERS = ("epoch", "loss sum", "mean loss", "train acc", "eval loss", "eval acc", "img/s", "seconds")
_RIGHT = range(len(_HEADERS))


def _opt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


@dataclass
class EpochStats:
    """Figures of one epoch (``epoch`` counts from 1).

    Attributes:
        epoch: The epoch's number, from 1.
        loss_sum: The tutorial's ``sum_loss``: the sum of the batch losses.
        loss_mean: Mean training loss per image.
        train_accuracy: Share of training images classified right while training (0-1).
        images: Training images seen (over all ranks under DDP).
        seconds: Wall time of the epoch (the slowest rank's under DDP).
        images_per_second: ``images / seconds``.
        lr: Learning rate of each optimizer parameter group that the epoch trained with (with a
            per-batch schedule: after the epoch's last step; a per-epoch one steps after this).
        grad_norm: Mean over the epoch's steps of the global gradient L2 norm (before clipping).
        eval_loss: Mean loss per image on ``eval_data``, if any.
        eval_accuracy: Accuracy on ``eval_data``, if any.
        first_step_seconds: Time from the epoch's start until its first optimizer step ended
            (with ``torch.compile``, the first epoch's includes compiling).
        phase: The training phase the epoch belonged to, where a policy has phases
            (:func:`cifarkit.fine_tune`: ``"frozen"``, then ``"unfrozen"``); ``None`` otherwise.
    """

    epoch: int
    loss_sum: float
    loss_mean: float
    train_accuracy: float
    images: int
    seconds: float
    images_per_second: float
    lr: list[float] = field(default_factory=list)
    grad_norm: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    first_step_seconds: float | None = None
    phase: str | None = None

    def summary(self, epochs: int | None = None) -> str:
        """The epoch as one line, as the ``cifarkit`` command and ``train_loop`` print it.

        Example:
            >>> EpochStats(3, 12.5, 0.2, 0.931, 640, 2.0, 320.0, eval_accuracy=0.9).summary(5)
            'epoch 3/5  loss sum 12.50  mean loss 0.2000  train acc 93.1%  eval acc 90.0%  320 img/s'
        """
        parts = [
            f"epoch {self.epoch}/{epochs}" if epochs else f"epoch {self.epoch}",
            f"loss sum {self.loss_sum:.2f}",
            f"mean loss {self.loss_mean:.4f}",
            f"train acc {self.train_accuracy:.1%}",
        ]
        if self.eval_accuracy is not None:
            parts.append(f"eval acc {self.eval_accuracy:.1%}")
        parts.append(f"{self.images_per_second:.0f} img/s")
        return "  ".join(parts)

    def row(self) -> tuple[str, ...]:
        """The cells of this epoch in :class:`History`'s table."""
        return (
            str(self.epoch) if self.phase is None else f"{self.epoch} ({self.phase})",
            f"{self.loss_sum:.2f}",
            f"{self.loss_mean:.4f}",
            f"{self.train_accuracy:.1%}",
            _opt(self.eval_loss, ".4f"),
            _opt(self.eval_accuracy, ".1%"),
            f"{self.images_per_second:.0f}",
            f"{self.seconds:.1f}",
        )

    def __repr__(self) -> str:
        return format_table([self.row()], headers=_HEADERS, right=_RIGHT)

    def _repr_html_(self) -> str:
        return html_table([self.row()], headers=_HEADERS, right=_RIGHT)


_FIELDS = frozenset(f.name for f in fields(EpochStats))
_REQUIRED = frozenset(f.name for f in fields(EpochStats) if f.default is MISSING and f.default_factory is MISSING)


def _number(value: object, *, whole: bool = False) -> bool:
    kinds = (int,) if whole else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool)


def _admissible(name: str, value: object) -> bool:
    """An epoch field's value has the type :class:`EpochStats` declares (``None`` where optional)."""
    if name == "lr":
        return isinstance(value, list) and all(_number(v) for v in value)
    if name in ("epoch", "images"):
        return _number(value, whole=True)
    if name == "phase":
        return value is None or (isinstance(value, str) and len(value) <= 40)
    return _number(value) or (value is None and name not in _REQUIRED)


#: The figures every epoch records, and the ones evaluation adds.
TRAIN_FIGURES = ("loss_mean", "loss_sum", "train_accuracy")
EVAL_FIGURES = ("eval_loss", "eval_accuracy")


@dataclass
class History:
    """Per-epoch figures of a training run: ``history.epochs[-1].loss_sum`` and friends.

    Example:
        >>> h = History([EpochStats(1, 10.0, 1.0, 0.5, 10, 1.0, 10.0)])
        >>> History.from_dict(h.to_dict()) == h
        True
        >>> h.column("loss_sum")
        [10.0]
    """

    epochs: list[EpochStats] = field(default_factory=list)
    compile_seconds: float | None = None
    #: With an :class:`~cifarkit.training.callbacks.EarlyStopping` callback: the epoch whose weights were best.
    best_epoch: int | None = None
    #: Why training ended: ``"completed"``, ``"stopped by a callback"``, ``"early stopping: ..."``,
    #: ``"raised <Error>: ..."`` or ``"interrupted"``.
    stop_reason: str | None = None
    #: Which weights the ``eval_*`` figures are of: ``"raw"``, or ``"ema"`` with an
    #: :class:`~cifarkit.training.averaging.EMA` callback (its average).
    eval_weights: str = "raw"
    #: The figures this run records (``train_loop`` adds the ``eval_*`` ones with ``eval_data``);
    #: not saved, it describes the run in progress.
    figures: tuple[str, ...] = field(default=TRAIN_FIGURES, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.epochs)

    def _title(self) -> str:
        extra = f", compiled in {self.compile_seconds:.1f} s" if self.compile_seconds is not None else ""
        extra += f", best epoch {self.best_epoch}" if self.best_epoch is not None else ""
        extra += f" ({self.stop_reason})" if self.stop_reason not in (None, "completed") else ""
        extra += ", evaluated with the averaged (EMA) weights" if self.eval_weights == "ema" else ""
        return f"History: {len(self.epochs)} epoch{'s' if len(self.epochs) != 1 else ''}{extra}"

    def __repr__(self) -> str:
        """A compact table, one row per epoch (what a terminal or a notebook's text view shows)."""
        if not self.epochs:
            return self._title()
        return self._title() + "\n" + format_table([e.row() for e in self.epochs], headers=_HEADERS, right=_RIGHT)

    def _repr_html_(self) -> str:
        """The same table as HTML, for Jupyter."""
        return html_table([e.row() for e in self.epochs], headers=_HEADERS, right=_RIGHT, caption=self._title())

    def column(self, name: str) -> list[Any]:
        """One figure over all epochs, e.g. ``history.column("eval_accuracy")``."""
        check_choice("name", name, tuple(sorted(_FIELDS)))
        return [getattr(e, name) for e in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (and ``torch.load(weights_only=True)``-safe)."""
        return {
            "epochs": [asdict(e) for e in self.epochs],
            "compile_seconds": self.compile_seconds,
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
            "eval_weights": self.eval_weights,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict` (fields a newer version added are ignored).

        Raises:
            HistoryFormatError: ``data`` is not what :meth:`to_dict` writes (a field of the wrong
                type, a required one missing...).
        """

        def bad(why: str) -> HistoryFormatError:
            return HistoryFormatError(f"the history is malformed: {why}; re-run training or delete the file")

        if not isinstance(data, dict) or not isinstance(data.get("epochs", []), list):
            raise bad("expected {'epochs': [...], ...}")
        epochs = []
        for entry in data.get("epochs", []):
            if not isinstance(entry, dict):
                raise bad("an epoch is not a dict")
            values = {k: v for k, v in entry.items() if k in _FIELDS}
            wrong = [k for k, v in values.items() if not _admissible(k, v)]
            if wrong or not set(values) >= _REQUIRED:
                raise bad(f"epoch fields {sorted(wrong) or sorted(_REQUIRED - set(values))} are wrong or missing")
            epochs.append(EpochStats(**values))
        best, seconds, reason = data.get("best_epoch"), data.get("compile_seconds"), data.get("stop_reason")
        if not (_number(best, whole=True) or best is None) or not (_number(seconds) or seconds is None):
            raise bad("best_epoch and compile_seconds must be numbers")
        if not (reason is None or isinstance(reason, str)):
            raise bad("stop_reason must be text")
        weights = data.get("eval_weights", "raw")
        if weights not in ("raw", "ema"):
            raise bad("eval_weights must be 'raw' or 'ema'")
        return cls(epochs=epochs, compile_seconds=seconds, best_epoch=best, stop_reason=reason, eval_weights=weights)

    @classmethod
    def from_json(cls, path: PathLike) -> History:
        """Read a ``history.json`` written by ``train_loop(..., log_dir=...)``, or the run folder holding it.

        Raises:
            HistoryNotFoundError: no such file (or no ``history.json`` in the folder).
            HistoryFormatError: the file is not JSON, or not a history.
        """
        source = Path(path)
        if source.is_dir():
            source = source / "history.json"
        if not source.is_file():
            msg = f"no history at {source}: pass the log_dir of a train_loop(..., log_dir=...) run or its history.json"
            raise HistoryNotFoundError(msg)
        try:
            data = json.loads(source.read_bytes())
        except (ValueError, RecursionError) as exc:
            msg = f"{source} is not valid JSON ({type(exc).__name__}): it was damaged; re-run training to rewrite it"
            raise HistoryFormatError(msg) from exc
        return cls.from_dict(data)

    @overload
    def plot(self, path: None = None) -> Figure: ...

    @overload
    def plot(self, path: PathLike) -> Path: ...

    def plot(self, path: PathLike | None = None) -> Path | Figure:
        """Loss and accuracy curves, train and eval on the same axes, whole-number epoch ticks.

        With ``path``: writes a 1000x400 PNG there and returns the path. Without: returns the
        ``matplotlib.figure.Figure``, which a notebook displays inline as the cell's result.
        Draws on its own figure: pyplot and matplotlib's backend are left as they are. Needs
        matplotlib (``pip install 'cifarkit[plot]'``).
        """
        from matplotlib.ticker import MaxNLocator  # after new_figure: matplotlib is there

        epochs = self.column("epoch")
        fig = new_figure("History.plot", figsize=(10, 4), dpi=100)
        ax_loss, ax_acc = fig.subplots(1, 2)
        ax_loss.plot(epochs, self.column("loss_mean"), marker="o", label="train")
        ax_acc.plot(epochs, self.column("train_accuracy"), marker="o", label="train")
        if any(v is not None for v in self.column("eval_loss")):
            ax_loss.plot(epochs, self.column("eval_loss"), marker="s", label="eval")
            ax_acc.plot(epochs, self.column("eval_accuracy"), marker="s", label="eval")
        ax_loss.set(title="loss (mean per image)", xlabel="epoch")
        ax_acc.set(title="accuracy", xlabel="epoch", ylim=(0, 1))
        for ax in (ax_loss, ax_acc):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
        return save_or_return(fig, path)
