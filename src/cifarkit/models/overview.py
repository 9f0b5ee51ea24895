"""A model's parameters at a glance: counts and a per-layer table (the tutorial's ``print(model)``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from cifarkit.display import format_table, html_table

__all__ = ["LayerRow", "ModelSummary", "summary"]


@dataclass(frozen=True)
class LayerRow:
    """One leaf module in a :class:`ModelSummary`."""

    name: str
    kind: str
    params: int
    trainable: int
    output: str


@dataclass(frozen=True)
class ModelSummary:
    """Parameter counts and a per-layer table; ``print()`` it for the tutorial's ``print(model)``."""

    total: int
    trainable: int
    size_mb: float
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def frozen(self) -> int:
        """Parameters with ``requires_grad=False``."""
        return self.total - self.trainable

    def _rows(self) -> list[tuple[str, ...]]:
        return [(r.name, r.kind, f"{r.params:,}", f"{r.trainable:,}", r.output) for r in self.rows]

    def _totals(self) -> str:
        return (
            f"total params: {self.total:,}  trainable: {self.trainable:,}  "
            f"frozen: {self.frozen:,}  size (fp32): {self.size_mb:.2f} MB"
        )

    def __str__(self) -> str:
        return f"{format_table(self._rows(), headers=_SUMMARY_HEADERS, right=(2, 3))}\n{self._totals()}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return html_table(self._rows(), headers=_SUMMARY_HEADERS, right=(2, 3), caption=self._totals())


_SUMMARY_HEADERS = ("layer", "type", "params", "trainable", "detail")


def summary(model: nn.Module) -> ModelSummary:
    """Count parameters and list every leaf layer.

    ``size_mb`` is the fp32 size of the parameters in megabytes (10**6 bytes).

    Example:
        >>> from cifarkit import build_cnn
        >>> s = summary(build_cnn())
        >>> s.total, s.trainable, round(s.size_mb, 3)
        (145578, 145578, 0.582)
        >>> print(s)  # doctest: +ELLIPSIS
        layer         type       params  trainable  detail
        ...
        total params: 145,578  trainable: 145,578  frozen: 0  size (fp32): 0.58 MB
    """
    rows = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves are listed
        params = list(module.parameters(recurse=False))
        rows.append(
            LayerRow(
                name=name or type(module).__name__,
                kind=type(module).__name__,
                params=sum(p.numel() for p in params),
                trainable=sum(p.numel() for p in params if p.requires_grad),
                output=module.extra_repr(),
            )
        )
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(total=total, trainable=trainable, size_mb=total * 4 / 1e6, rows=rows)
