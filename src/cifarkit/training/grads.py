"""See gradients and weight updates without a debugger.

The tutorial sets a breakpoint to watch ``.grad`` go from ``None`` to values after
``backward()`` and the weights change after ``step()``. :func:`grad_report` and
:func:`watch_step` print the same facts as tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cifarkit.device import unwrap_model
from cifarkit.display import format_table

__all__ = ["GradReport", "GradRow", "StepReport", "StepRow", "grad_report", "watch_step"]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class GradRow:
    """Gradient facts for one parameter (``None`` where the parameter has no gradient)."""

    name: str
    shape: tuple[int, ...]
    requires_grad: bool
    grad_is_none: bool
    grad_norm: float | None
    grad_mean_abs: float | None
    grad_max_abs: float | None
    param_norm: float


@dataclass(frozen=True)
class GradReport:
    """One :class:`GradRow` per named parameter and the global gradient norm."""

    rows: list[GradRow]
    total_norm: float

    def __str__(self) -> str:
        body = [
            (
                r.name,
                "x".join(map(str, r.shape)) or "scalar",
                "yes" if r.requires_grad else "no",
                "None" if r.grad_is_none else "set",
                _num(r.grad_norm),
                _num(r.grad_mean_abs),
                _num(r.grad_max_abs),
                _num(r.param_norm),
            )
            for r in self.rows
        ]
        headers = ("parameter", "shape", "trainable", "grad", "grad L2", "mean|g|", "max|g|", "param L2")
        table = format_table(body, headers=headers, right=range(2, len(headers)))
        return f"{table}\ntotal grad norm (L2): {self.total_norm:.6g}"

    def row(self, name: str) -> GradRow:
        """The row of the parameter called ``name``."""
        for r in self.rows:
            if r.name == name:
                return r
        msg = f"no parameter named {name!r}; names: {', '.join(r.name for r in self.rows[:5])}, ..."
        raise KeyError(msg)


def grad_report(model: nn.Module) -> GradReport:
    """Tabulate every parameter's gradient: ``None`` or its L2 norm, mean and max magnitude.

    ``total_norm`` is the global L2 norm over all gradients, computed as
    ``torch.nn.utils.clip_grad_norm_`` does (0.0 when no parameter has a gradient).

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn
        >>> model = build_cnn()
        >>> grad_report(model).row("sequential.0.weight").grad_is_none
        True
        >>> model(torch.randn(2, 3, 32, 32)).sum().backward()
        >>> grad_report(model).row("sequential.0.weight").grad_is_none
        False
    """
    rows = []
    grads = []
    with torch.no_grad():
        for name, p in unwrap_model(model).named_parameters():
            g = p.grad
            if g is not None:
                grads.append(g)
            rows.append(
                GradRow(
                    name=name,
                    shape=tuple(p.shape),
                    requires_grad=p.requires_grad,
                    grad_is_none=g is None,
                    grad_norm=None if g is None else float(torch.linalg.vector_norm(g.float())),
                    grad_mean_abs=None if g is None else float(g.abs().float().mean()),
                    grad_max_abs=None if g is None else float(g.abs().max()),
                    param_norm=float(torch.linalg.vector_norm(p.float())),
                )
            )
        total = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    return GradReport(rows=rows, total_norm=total)


@dataclass(frozen=True)
class StepRow:
    """One parameter's gradient norm and how far one optimizer step moved it."""

    name: str
    grad_norm: float | None
    update_norm: float
    param_norm: float

    @property
    def relative_update(self) -> float:
        """``update_norm / param_norm``: around 1e-3 is typical of healthy training."""
        return self.update_norm / self.param_norm if self.param_norm else float("inf")


@dataclass(frozen=True)
class StepReport:
    """What one ``zero_grad -> backward -> step`` did, per parameter."""

    loss: float
    rows: list[StepRow]
    total_grad_norm: float

    def __str__(self) -> str:
        body = [
            (r.name, _num(r.grad_norm), _num(r.update_norm), _num(r.param_norm), _num(r.relative_update))
            for r in self.rows
        ]
        headers = ("parameter", "grad L2", "||w1 - w0||", "||w0||", "ratio")
        table = format_table(body, headers=headers, right=range(2, len(headers)))
        return f"loss: {self.loss:.6g}\n{table}\ntotal grad norm (L2): {self.total_grad_norm:.6g}"


def watch_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> StepReport:
    """Run ``zero_grad -> backward -> step`` once and report each parameter's gradient and move.

    The move is ``||w_after - w_before||``: with plain SGD it equals ``lr * ||grad||``, so the
    effect of the learning rate is visible.

    Example:
        >>> import torch
        >>> from cifarkit import build_cnn, cross_entropy
        >>> model = build_cnn()
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> loss = cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        >>> report = watch_step(model, opt, loss)
        >>> r = report.rows[0]
        >>> abs(r.update_norm - 0.1 * r.grad_norm) < 1e-6
        True
    """
    named = [(n, p) for n, p in unwrap_model(model).named_parameters()]
    before = [p.detach().clone() for _, p in named]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = grad_report(model)
    optimizer.step()
    rows = []
    with torch.no_grad():
        for (name, p), w0, g in zip(named, before, grads.rows):
            rows.append(
                StepRow(
                    name=name,
                    grad_norm=g.grad_norm,
                    update_norm=float(torch.linalg.vector_norm((p - w0).float())),
                    param_norm=float(torch.linalg.vector_norm(w0.float())),
                )
            )
    return StepReport(loss=float(loss.detach()), rows=rows, total_grad_norm=grads.total_norm)
