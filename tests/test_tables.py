"""The one table formatter."""

from __future__ import annotations

import pytest

from cifarkit.tables import format_table


def test_columns_align_left_and_right() -> None:
    text = format_table([("a", "1"), ("long name", "1,000")], headers=("name", "n"), right=(1,))
    assert text.splitlines() == ["name           n", "---------  -----", "a              1", "long name  1,000"]


def test_key_value_listing_has_no_header_and_no_trailing_spaces() -> None:
    text = format_table([("file", "m.pt"), ("build record", "")])
    assert text.splitlines() == ["file          m.pt", "build record"]
    assert format_table([]) == ""


def test_ragged_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        format_table([("a", "b"), ("c",)])
