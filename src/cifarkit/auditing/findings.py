"""What an audit found: :class:`AuditReport`, a list of :class:`AuditFinding` (each naming its
files) and the class balance, as a short table, HTML with thumbnails, and JSON."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from cifarkit.auditing.checks import Balance
from cifarkit.display import format_table, html_table
from cifarkit.errors import check_choice
from cifarkit.evaluation.interpretation import png_data_uri

__all__ = ["KINDS", "AuditFinding", "AuditReport"]

#: Every kind of finding, in the order a report lists them, with what to do about it.
KINDS: dict[str, str] = {
    "unreadable": "cannot be decoded or is truncated: remove it, or export it again",
    "wrong_extension": "its content is not what its extension says: rename it",
    "duplicate": "the same pixels twice in a class: keep one",
    "conflicting_labels": "the same pixels under two labels: keep one, in the right class",
    "leak": "the same pixels in two splits: the score on the other split is inflated; remove one",
    "near_duplicate": "the same picture resized, re-encoded, shifted or brightened: keep one",
    "near_leak": "a near copy in another split: remove it from one of them",
    "blank": "almost one colour: remove it",
    "too_small": "much smaller than the model's input: it is enlarged from little information",
    "odd_aspect": "stretched (side ratio over 3): it is squashed to a square",
    "grey": "grey in a colour set: check it belongs",
    "label_error": "the models trained without it say another class: check its label",
}


@dataclass(frozen=True)
class AuditFinding:
    """One problem: its ``kind`` (of :data:`KINDS`), the ``files`` involved (two for a pair), and
    what was found."""

    kind: str
    files: tuple[str, ...]
    detail: str
    #: For ``label_error``: the given label, the suggested one, the out-of-fold probability of it.
    given: str | None = None
    suggested: str | None = None
    probability: float | None = None


@dataclass
class AuditReport:
    """Everything :func:`~cifarkit.auditing.auditor.audit` found. Nothing is fixed: it says what
    to do.

    Attributes:
        findings: Each problem, naming its files, in the order of :data:`KINDS`.
        balance: The audited split's class counts, ratio and suggested weights.
        pictures: Pictures read in the audited split (and in the ``against`` splits).
        label_errors_checked: Whether likely label errors were looked for.
    """

    findings: list[AuditFinding]
    balance: Balance
    pictures: dict[str, int]
    label_errors_checked: bool
    thumbnails: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # file -> uint8 (3, 32, 32)

    @property
    def ok(self) -> bool:
        """Nothing found: no finding, and the classes balanced."""
        return not self.findings and not self.balance.flagged

    @property
    def imbalance(self) -> Balance:
        """The class counts, their ratio, the classes too small for a validation split and the
        suggested weights (what to do: :meth:`~cifarkit.auditing.checks.Balance.advice`)."""
        return self.balance

    def counts(self) -> dict[str, int]:
        """Findings per kind (every kind, zero included)."""
        return {kind: sum(f.kind == kind for f in self.findings) for kind in KINDS}

    def files(self, kind: str) -> list[str]:
        """The files of one kind of finding (both files of a pair), each once, in report order.

        Raises:
            InvalidOptionError: an unknown kind (the message lists them).

        Example:
            >>> report = AuditReport([AuditFinding("leak", ("a.png", "b.png"), "same pixels")],
            ...                      Balance({"x": 1}, 1.0, [], {"x": 1.0}), {"data": 1}, False)
            >>> report.files("leak"), report.files("blank")
            (['a.png', 'b.png'], [])
        """
        check_choice("kind", kind, tuple(KINDS))
        seen: dict[str, None] = {}
        for finding in self.findings:
            if finding.kind == kind:
                seen.update(dict.fromkeys(finding.files))
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: the counts, every finding, the balance and its advice."""
        return {
            "ok": self.ok,
            "pictures": self.pictures,
            "counts": self.counts(),
            "label_errors_checked": self.label_errors_checked,
            "findings": [asdict(f) for f in self.findings],
            "balance": {**asdict(self.balance), "flagged": self.balance.flagged, "advice": self.balance.advice()},
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=2, default=float)

    def _rows(self) -> list[tuple[str, str, str]]:
        counts = self.counts()
        return [(kind, str(n), KINDS[kind]) for kind, n in counts.items() if n]

    def _worst(self, per_kind: int = 3) -> list[AuditFinding]:
        shown: list[AuditFinding] = []
        for kind in KINDS:
            shown += [f for f in self.findings if f.kind == kind][:per_kind]
        return shown

    def __str__(self) -> str:
        total = ", ".join(f"{n:,} {split}" for split, n in self.pictures.items())
        lines = [f"audit of {total} pictures: " + ("nothing found" if self.ok else f"{len(self.findings)} finding(s)")]
        if self._rows():
            lines.append(format_table(self._rows(), headers=("kind", "found", "what to do")))
            lines.append("")
            lines.append(format_table([(f.kind, " <-> ".join(f.files), f.detail) for f in self._worst()],
                                      headers=("kind", "files", "found")))  # fmt: skip
        lines.append(f"class balance: {self.balance.advice()}")
        if not self.label_errors_checked:
            lines.append("label errors: not looked for (label_errors=False)")
        return "\n".join(lines)

    __repr__ = __str__

    def html_section(self) -> str:
        """The report as an HTML fragment (the counts, the worst cases with thumbnails, the
        balance): what a notebook shows and ``cifarkit report`` includes."""
        parts = [f"<p>{html.escape(str(self).splitlines()[0])}</p>"]
        if self._rows():
            parts.append(html_table(self._rows(), headers=("kind", "found", "what to do")))
        for finding in self._worst():
            images = "".join(
                f'<img src="{png_data_uri(self.thumbnails[name])}" width="64" height="64" alt="{html.escape(name)}">'
                for name in finding.files
                if name in self.thumbnails
            )
            names = "<br>".join(f"<code>{html.escape(name)}</code>" for name in finding.files)
            parts.append(
                '<figure style="display:inline-block;margin:4px;font-size:11px;max-width:260px">'
                f"{images}<figcaption><b>{finding.kind}</b>: {html.escape(finding.detail)}<br>{names}"
                "</figcaption></figure>"
            )
        parts.append(f"<p>Class balance: {html.escape(self.balance.advice())}</p>")
        rows = [(k, f"{v:,}", f"{self.balance.weights[k]:.2f}") for k, v in self.balance.counts.items()]
        parts.append(html_table(rows, headers=("class", "pictures", "suggested weight")))
        return "<div>" + "".join(parts) + "</div>"

    def _repr_html_(self) -> str:
        return self.html_section()
