"""Every cifarkit error is also the builtin it refines, and option errors list the choices."""

from __future__ import annotations

import inspect

import pytest

from cifarkit import errors


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
