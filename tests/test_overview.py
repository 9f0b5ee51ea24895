"""The parameter summary: counts and the per-layer table."""

from __future__ import annotations

import pytest
import torchvision

from cifarkit import build_cnn, summary
from cifarkit.models.pretrained import adapt


def test_summary_counts_and_table() -> None:
    s = summary(build_cnn())
    assert (s.total, s.trainable, s.frozen) == (145_578, 145_578, 0)
    assert s.size_mb == pytest.approx(145_578 * 4 / 1e6)
    assert [r.params for r in s.rows if r.params] == [2432, 25632, 51264, 65600, 650]
    text = str(s)
    assert "sequential.0" in text and "Conv2d" in text and "2,432" in text and "145,578" in text


def test_summary_shows_as_text_and_html() -> None:
    s = summary(build_cnn())
    assert repr(s) == str(s) and str(s).endswith("size (fp32): 0.58 MB")
    html = s._repr_html_()
    assert html.count("<tr>") == len(s.rows) + 1 and "total params: 145,578" in html


def test_summary_counts_frozen_features_of_an_adapted_network() -> None:
    s = summary(adapt("resnet18", num_classes=3, freeze_features=True))
    head = 512 * 3 + 3
    assert s.total == sum(p.numel() for p in torchvision.models.resnet18().parameters()) - 513_000 + head
    assert (s.trainable, s.frozen) == (head, s.total - head)
