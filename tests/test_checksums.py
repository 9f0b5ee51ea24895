"""The whole-payload digest and the limits every untrusted structure meets first."""

from __future__ import annotations

import time

import pytest
import torch

from cifarkit.errors import CorruptCheckpointError
from cifarkit.files.format import payload_digest
from cifarkit.untrusted import MAX_DEPTH, check_limits, excerpt


def test_the_digest_ignores_order_and_sequence_kind_but_not_types_or_values() -> None:
    base = {"w": torch.arange(4.0), "classes": ["cat", "dog"], "n": 1, "nested": {"a": (1.5, None)}}
    same = {"nested": {"a": [1.5, None]}, "n": 1, "classes": ("cat", "dog"), "w": torch.arange(4.0)}
    assert payload_digest(base) == payload_digest(same)
    variants = [
        {**base, "n": 1.0},
        {**base, "n": True},
        {**base, "n": "1"},
        {**base, "w": torch.arange(4.0).double()},
        {**base, "w": torch.arange(4.0).reshape(2, 2)},
        {**base, "w": torch.tensor([0.0, 1.0, 2.0, 3.0000002])},
        {**base, "classes": ["cat", "dog", ""]},
        {**base, "nested": {"b": (1.5, None)}},
        {**base, "extra": None},
    ]
    digests = {payload_digest(v) for v in variants}
    assert len(digests) == len(variants) and payload_digest(base) not in digests


def test_the_digest_key_itself_is_left_out() -> None:
    payload = {"x": 1}
    assert payload_digest({**payload, "payload_sha256": "anything"}) == payload_digest(payload)


def test_strings_cannot_be_confused_by_their_separators() -> None:
    assert payload_digest({"a": ["x|", "y"]}) != payload_digest({"a": ["x", "|y"]})


def test_tensors_are_hashed_whatever_the_key_order() -> None:
    sd = {"b": torch.ones(2), "a": torch.zeros(3, dtype=torch.bfloat16)}
    assert payload_digest({"state_dict": sd}) == payload_digest({"state_dict": dict(reversed(sd.items()))})
    assert payload_digest({"state_dict": sd}) != payload_digest({"state_dict": {**sd, "b": torch.ones(2) * 2}})


@pytest.mark.parametrize("tensor", [torch.zeros(3).to_sparse(), torch.empty(3, device="meta")], ids=["sparse", "meta"])
def test_tensors_without_dense_data_are_refused(tensor: torch.Tensor) -> None:
    with pytest.raises(CorruptCheckpointError, match="dense tensors"):
        payload_digest({"w": tensor})


def test_deep_nesting_is_refused_without_recursion() -> None:
    nested: object = "leaf"
    for _ in range(100_000):  # far past Python's recursion limit
        nested = [nested]
    with pytest.raises(CorruptCheckpointError, match=f"deeper than {MAX_DEPTH}"):
        check_limits(nested)
    with pytest.raises(CorruptCheckpointError, match="deeper"):
        payload_digest({"build": nested})
    assert len(excerpt(nested)) <= 200


def test_shared_references_cannot_blow_up_a_walk_or_a_message() -> None:
    bomb: object = ["x" * 100]
    for _ in range(25):  # 10**25 entries once the references are followed
        bomb = [bomb] * 10
    started = time.perf_counter()
    with pytest.raises(CorruptCheckpointError, match="more than"):
        check_limits(bomb)
    assert time.perf_counter() - started < 30  # bounded by MAX_ENTRIES, not by 10**25
    assert len(excerpt(bomb)) <= 200 and len(excerpt(bomb, 50)) <= 50


def test_an_object_whose_repr_fails_still_gets_an_excerpt() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert excerpt(Broken()).startswith("<Broken")
