"""Guarded losses: torch.nn.functional is the oracle."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cifarkit import CrossEntropyLoss, L1Loss, MSELoss, cross_entropy, l1_loss, mse_loss
from cifarkit.errors import DtypeError, InvalidOptionError, ShapeError

FLOATS = [torch.float16, torch.float32, torch.float64]
INTS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]
REDUCTIONS = ["mean", "sum", "none"]
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


def make(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if not dtype.is_floating_point:
        return torch.randint(0, 100, shape, generator=g).to(dtype)
    return (torch.randn(shape, generator=g) * 3).to(dtype)


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b) or ((a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num()))


# --------------------------------------------------------------------------- the tutorial's numbers


def test_tutorial_numbers_from_integer_tensors() -> None:
    x, y = torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5])
    assert l1_loss(x, y).item() == pytest.approx(0.6667, abs=1e-4)
    assert l1_loss(x, y, reduction="sum").item() == 2.0
    assert mse_loss(x, y).item() == pytest.approx(1.3333, abs=1e-4)
    assert L1Loss(reduction="sum")(x, y).item() == 2.0 and MSELoss()(x, y).item() == pytest.approx(4 / 3)
    logits = torch.tensor([0.1, 0.2, 0.3])
    expected = -logits[1] + torch.log(torch.exp(logits).sum())
    assert cross_entropy(logits, torch.tensor([1])[0]).item() == pytest.approx(1.1019, abs=1e-4)
    assert cross_entropy(logits.reshape(1, 3), torch.tensor([1])).item() == pytest.approx(expected.item(), abs=1e-6)
    assert CrossEntropyLoss()(logits, torch.tensor(1)).item() == pytest.approx(1.1019, abs=1e-4)


def test_plain_torch_fails_where_the_guard_casts() -> None:
    x, y = torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5])
    with pytest.raises(RuntimeError, match="could not infer output dtype"):
        nn.L1Loss()(x, y)
    with pytest.raises((RuntimeError, NotImplementedError), match="not implemented for 'Long'"):
        nn.MSELoss()(x, y)


def test_on_int_raise() -> None:
    with pytest.raises(DtypeError, match=r"torch.int64.*on_int='cast' or call \.float\(\)"):
        l1_loss(torch.tensor([1, 2]), torch.tensor([1, 2]), on_int="raise")
    with pytest.raises(DtypeError):
        MSELoss(on_int="raise")(torch.tensor([1.0, 2.0]), torch.tensor([1, 2]))
    assert isinstance(DtypeError(), TypeError)


# --------------------------------------------------------------------------- oracle properties


@settings(max_examples=60, deadline=None)
@given(shape=shapes, a=st.sampled_from(FLOATS + INTS), b=st.sampled_from(FLOATS + INTS),
       reduction=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**16), fn=st.sampled_from(["l1", "mse"]))  # fmt: skip
def test_regression_losses_match_functional(shape: tuple[int, ...], a: torch.dtype, b: torch.dtype,
                                            reduction: str, seed: int, fn: str) -> None:  # fmt: skip
    ours, oracle = (l1_loss, F.l1_loss) if fn == "l1" else (mse_loss, F.mse_loss)
    x, y = make(shape, a, seed), make(shape, b, seed + 1)
    got = ours(x, y, reduction=reduction)  # type: ignore[arg-type]
    if x.is_floating_point() and y.is_floating_point():
        same(got, oracle(x, y, reduction=reduction))  # untouched: bit-identical
    else:
        dtype = x.dtype if x.is_floating_point() else y.dtype if y.is_floating_point() else torch.float32
        same(got, oracle(x.to(dtype), y.to(dtype), reduction=reduction))
        assert got.dtype == dtype


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 6), extra=st.sampled_from([(), (3,), (2, 2)]),
       dtype=st.sampled_from(FLOATS), reduction=st.sampled_from(REDUCTIONS), seed=st.integers(0, 2**16),
       smoothing=st.sampled_from([0.0, 0.1]), weighted=st.booleans(), ignore=st.booleans())  # fmt: skip
def test_cross_entropy_matches_functional(n: int, c: int, extra: tuple[int, ...], dtype: torch.dtype, reduction: str,
                                          seed: int, smoothing: float, weighted: bool, ignore: bool) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c, *extra), generator=g).to(dtype)
    y = torch.randint(0, c, (n, *extra), generator=g)
    if ignore:
        y.view(-1)[0] = 0 if c == 0 else -100
    w = torch.rand(c, generator=g).to(dtype) if weighted else None
    kwargs = {"weight": w, "reduction": reduction, "label_smoothing": smoothing}
    same(cross_entropy(x, y, **kwargs), F.cross_entropy(x, y, **kwargs))  # type: ignore[arg-type]
    same(CrossEntropyLoss(w, reduction=reduction, label_smoothing=smoothing)(x, y),  # type: ignore[arg-type]
         nn.CrossEntropyLoss(w, reduction=reduction, label_smoothing=smoothing)(x, y))  # fmt: skip
    probs = torch.softmax(torch.randn((n, c, *extra), generator=g), 1).to(dtype)
    same(cross_entropy(x, probs, reduction=reduction), F.cross_entropy(x, probs, reduction=reduction))  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", ["l1", "mse", "ce"])
def test_gradients_flow_the_same_way(fn: str) -> None:
    x1 = torch.randn(4, 5, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    if fn == "ce":
        y = torch.tensor([0, 4, 2, 1])
        cross_entropy(x1, y).backward()
        F.cross_entropy(x2, y).backward()
    else:
        y = torch.randint(0, 3, (4, 5))
        (l1_loss if fn == "l1" else mse_loss)(x1, y).backward()
        (F.l1_loss if fn == "l1" else F.mse_loss)(x2, y.float()).backward()
    assert x1.grad is not None and torch.equal(x1.grad, x2.grad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- guards


def test_shape_guard_instead_of_silent_broadcast() -> None:
    x, y = torch.randn(4, 1), torch.randn(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.mse_loss(x, y)  # torch only warns, and broadcasts to (4, 4)
    assert any("different to the input size" in str(w.message) for w in caught)
    with pytest.raises(ShapeError, match=r"input of shape \(4, 1\) and target of shape \(4,\)"):
        mse_loss(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mse_loss(x, y, broadcast=True)
    assert torch.equal(got, ((x - y) ** 2).mean())
    with pytest.raises(ShapeError, match="do not broadcast"):
        l1_loss(torch.randn(3), torch.randn(4), broadcast=True)


@pytest.mark.parametrize(
    ("logits", "target", "error", "match"),
    [
        (torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0]), DtypeError,
         r"class indices must be integers; got torch.float32 .* use target.long\(\), or pass probabilities of shape \(4, 3\)"),
        (torch.randn(4, 3), torch.tensor([0, 1, 3, 1]), ValueError, r"indices in \[0, 3\] .* C=3"),
        (torch.randn(4, 3), torch.tensor([-1, 1, 2, 1]), ValueError, r"must be in \[0, 2\]"),
        (torch.randn(4, 3), torch.tensor([0, 1]), ShapeError, r"target must be \(N,\) class indices"),
        (torch.randn(4, 3), torch.eye(3, dtype=torch.long)[[0, 1, 2, 1]], ShapeError, "one-hot"),
        (torch.randn(4, 3), torch.tensor([[0], [1], [2], [1]]), ShapeError, r"squeeze\(1\)"),
        (torch.randn(3), torch.tensor([0, 1, 2]), ShapeError, "single sample needs a scalar"),
        (torch.tensor(1.0), torch.tensor(0), ShapeError, "scalar as logits"),
        (torch.tensor([[1, 2, 3]]), torch.tensor([1]), DtypeError, "logits must be floating point"),
        (torch.randn(2, 3), torch.tensor([True, False]), DtypeError, "got torch.bool"),
    ],
)  # fmt: skip
def test_cross_entropy_guards(logits: torch.Tensor, target: torch.Tensor, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        cross_entropy(logits, target)


def test_cross_entropy_accepts_other_integer_index_dtypes_and_ignore_index() -> None:
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    assert torch.equal(cross_entropy(x, y.int()), F.cross_entropy(x, y))  # torch alone refuses int32
    y_ignored = torch.tensor([0, -100, 2, 1])
    assert torch.equal(cross_entropy(x, y_ignored), F.cross_entropy(x, y_ignored))


def test_module_classes_are_torch_subclasses_with_options() -> None:
    assert isinstance(L1Loss(), nn.L1Loss) and isinstance(MSELoss(), nn.MSELoss)
    assert isinstance(CrossEntropyLoss(), nn.CrossEntropyLoss)
    with pytest.raises(InvalidOptionError, match="reduction='avg' is not valid"):
        L1Loss(reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="on_int"):
        l1_loss(torch.ones(1), torch.ones(1), on_int="ignore")  # type: ignore[arg-type]
