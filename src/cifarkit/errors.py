"""The cifarkit exception hierarchy and the validators of options (the bottom of the package:
every other module may import it).

Every error raised for a user's mistake is a :class:`CifarkitError` *and* the builtin exception
it refines, so code that already catches ``ValueError`` or ``FileNotFoundError`` keeps working::

    >>> from cifarkit.errors import ShapeError, CifarkitError
    >>> issubclass(ShapeError, ValueError) and issubclass(ShapeError, CifarkitError)
    True

Messages say what was found, what was expected, and what to do about it.
"""

from __future__ import annotations

import pickle

__all__ = [
    "AlreadyAdaptedError",
    "CalibrationError",
    "CifarkitError",
    "ClassIndexError",
    "CorruptCheckpointError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DistributedError",
    "DtypeError",
    "EmptyDataError",
    "ExportError",
    "HistoryFormatError",
    "HistoryNotFoundError",
    "ImageReadError",
    "InvalidOptionError",
    "MissingExtraError",
    "ModelClassNotFoundError",
    "ModelFileNotFoundError",
    "ModelRecordError",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "NotACheckpointError",
    "PathIsDirectoryError",
    "ShapeError",
    "StateDictMismatchError",
    "UnsafeLoadError",
    "WeightsOnlyFileError",
    "WeightsUnavailableError",
    "WriteError",
    "check_choice",
    "check_positive_int",
    "cut",
]


class CifarkitError(Exception):
    """Base class of every error cifarkit raises on purpose."""


def check_positive_int(name: str, value: object, *, minimum: int = 1, unit: str = "") -> int:
    """Return ``value`` if it is an int of at least ``minimum``; else raise :class:`InvalidOptionError`.

    The one check of counts (epochs, batch sizes, classes, patience...): ``True`` is refused
    although Python counts it as 1.

    Example:
        >>> check_positive_int("epochs", 3)
        3
        >>> check_positive_int("batch_size", True)
        Traceback (most recent call last):
        ...
        cifarkit.errors.InvalidOptionError: batch_size must be a positive int, got True
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int of at least {minimum}")
        msg = f"{name} must be {kind}{f' ({unit})' if unit else ''}, got {value!r}"
        raise InvalidOptionError(msg)
    return value


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (``...`` marks the cut): the one way messages
    quote long content.

    Example:
        >>> cut("x" * 100, 10)
        'xxxxxxx...'
    """
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise :class:`InvalidOptionError` listing the valid choices when ``value`` is not one.

    Example:
        >>> check_choice("strategy", "swap", ("replace", "append"))
        Traceback (most recent call last):
        ...
        cifarkit.errors.InvalidOptionError: strategy='swap' is not valid; choose one of 'replace', 'append'
    """
    if value not in choices:
        msg = f"{name}={value!r} is not valid; choose one of {', '.join(repr(c) for c in choices)}"
        raise InvalidOptionError(msg)


class ShapeError(CifarkitError, ValueError):
    """A tensor has the wrong shape (e.g. a model input that is not ``(N, 3, 32, 32)``)."""


class InvalidOptionError(CifarkitError, ValueError):
    """An option has a value outside its valid choices; the message lists them."""


class AlreadyAdaptedError(CifarkitError, ValueError):
    """A model was adapted once already (adapting twice would stack classification heads)."""


class DtypeError(CifarkitError, TypeError):
    """A tensor has the wrong dtype (e.g. integer input to L1/MSE with ``on_int='raise'``)."""


class ClassIndexError(CifarkitError, ValueError):
    """A class index (a label) lies outside ``[0, num_classes)`` of the model's head."""


class EmptyDataError(CifarkitError, ValueError):
    """A dataset or loader holds no images, or yields no batches."""


class WeightsUnavailableError(CifarkitError, FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable."""


class DatasetNotFoundError(CifarkitError, FileNotFoundError):
    """A dataset folder or file is missing."""


class DatasetFormatError(CifarkitError, ValueError):
    """A dataset file exists but does not hold what its format promises (or was tampered with)."""


class ModelFileNotFoundError(CifarkitError, FileNotFoundError):
    """A model or checkpoint file does not exist."""


class HistoryNotFoundError(CifarkitError, FileNotFoundError):
    """A run folder has no ``history.json`` (or the file given does not exist)."""


class HistoryFormatError(CifarkitError, ValueError):
    """A ``history.json`` (or a checkpoint's history) is not what :meth:`History.to_dict` writes."""


class WriteError(CifarkitError, OSError):
    """A file could not be written: disk full, a FIFO or device at the path, an fsync that failed.

    ``replaced`` says which state the path is in. ``False`` (every failure before the rename): the
    previous file (if any) is intact, and no temporary or new folder is left behind. ``True`` (the
    folder's ``fsync`` failed after the rename): the path holds the complete new file, but the
    rename may not survive a power cut. The message says the same.
    """

    replaced: bool = False


class PathIsDirectoryError(CifarkitError, IsADirectoryError):
    """A path given for a file (a model, a checkpoint, an exported program) is a directory."""


class CorruptCheckpointError(CifarkitError, ValueError):
    """A checkpoint file is empty, truncated, or fails its checksum."""


class NotACheckpointError(CifarkitError, ValueError):
    """A file is readable but is not a PyTorch checkpoint at all (an image, JSON, text...)."""


class WeightsOnlyFileError(CifarkitError, ValueError):
    """A file holds only a ``state_dict`` and no record of how to build the model."""


class UnsafeLoadError(CifarkitError, pickle.UnpicklingError):
    """A file is a pickled module and loading it would run arbitrary code.

    ``references`` lists the globals it names outside torch's allowlist (nothing was imported).
    """

    references: tuple[str, ...] = ()


class ModelClassNotFoundError(CifarkitError, ImportError):
    """The class of a pickled model cannot be imported (``Can't get attribute ... on __main__``)."""


class ModelRecordError(CifarkitError, ValueError):
    """A model's build record is missing, malformed, or names an unknown builder."""


class StateDictMismatchError(CifarkitError, RuntimeError):
    """A ``state_dict`` does not fit a model; the message carries a full diagnosis."""


class NonFiniteLossError(CifarkitError, FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteWeightsError(CifarkitError, ValueError):
    """A model's weights hold NaN or infinity (training diverged); it is not written to disk."""


class ImageReadError(CifarkitError, OSError):
    """An image file could not be read."""


class MissingExtraError(CifarkitError, ImportError):
    """An optional dependency (a ``cifarkit[...]`` extra) is not installed."""


class ExportError(CifarkitError, RuntimeError):
    """A model could not be exported, or its exported program answers differently from the model."""


class CalibrationError(CifarkitError, ValueError):
    """No usable calibration temperature could be fitted (the logits do not separate the classes)."""


class DistributedError(CifarkitError, RuntimeError):
    """A ``torch.distributed`` run failed (a peer died, a timeout, a bad launch environment)."""
