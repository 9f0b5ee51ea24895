"""Every cifarkit error is also the builtin it refines, and option errors list the choices."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch

import cifarkit
from cifarkit import errors
from cifarkit.errors import InvalidOptionError


@pytest.mark.parametrize(
    "cls", [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.CifarkitError)]
)
def test_each_error_subclasses_a_builtin(cls: type[Exception]) -> None:
    if cls is errors.CifarkitError:
        return
    builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
    assert builtin or cls is errors.UnsafeLoadError, f"{cls.__name__} refines no builtin exception"
    assert cls.__doc__, f"{cls.__name__} has no docstring"


def test_the_classes_this_release_added() -> None:
    assert issubclass(errors.NonFiniteWeightsError, ValueError)
    assert issubclass(errors.EmptyDataError, ValueError)
    assert issubclass(errors.ClassIndexError, ValueError)
    assert issubclass(errors.HistoryNotFoundError, FileNotFoundError)


def test_check_choice_lists_the_valid_values() -> None:
    errors.check_choice("mode", "min", ("min", "max"))
    with pytest.raises(errors.InvalidOptionError, match="mode='avg' is not valid; choose one of 'min', 'max'"):
        errors.check_choice("mode", "avg", ("min", "max"))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: cifarkit.synthetic_cifar10(True), "n"),
        (lambda: cifarkit.synthetic_cifar10(4).loader(batch_size=True), "batch_size"),
        (lambda: cifarkit.build_cnn(True), "num_classes"),
        (lambda: cifarkit.adapt_vgg16(num_classes=True), "num_classes"),
        (
            lambda: cifarkit.train_loop(cifarkit.build_cnn(), cifarkit.synthetic_cifar10(4).loader(), epochs=True),
            "epochs",
        ),
        (
            lambda: cifarkit.train_loop(
                cifarkit.build_cnn(), cifarkit.synthetic_cifar10(4).loader(), epochs=1, accumulate=True
            ),
            "accumulate",
        ),
        (
            lambda: cifarkit.one_cycle(
                torch.optim.SGD(cifarkit.build_cnn().parameters()), max_lr=0.1, epochs=True, steps_per_epoch=2
            ),
            "epochs",
        ),
    ],
)
def test_one_count_check_everywhere_refuses_bools(call: Callable[[], object], name: str) -> None:
    with pytest.raises(InvalidOptionError, match=rf"{name} must be a (positive|non-negative) int.*got True"):
        call()
