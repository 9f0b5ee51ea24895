"""Auditing the data before training: files that do not decode or are misnamed, duplicates and
leaks between splits, near copies, odd pictures, class imbalance and likely label errors, each
finding named by its files (:func:`audit`).

==================================== ==============================================================
:mod:`~cifarkit.auditing.auditor`     :func:`audit`: every check in one pass, one report
:mod:`~cifarkit.auditing.checks`      the cheap checks: files, exact and perceptual hashes (the
                                      near-duplicate rule), odd pictures, the class balance
:mod:`~cifarkit.auditing.labels`      out-of-fold probabilities and cleanlab's confident learning
:mod:`~cifarkit.auditing.findings`    :class:`AuditReport`: a table, HTML with thumbnails, JSON
==================================== ==============================================================

It sits above training: finding label errors trains a model on each fold.
"""

from __future__ import annotations

from cifarkit.auditing.auditor import audit
from cifarkit.auditing.checks import Balance
from cifarkit.auditing.findings import KINDS, AuditFinding, AuditReport

__all__ = ["KINDS", "AuditFinding", "AuditReport", "Balance", "audit"]
