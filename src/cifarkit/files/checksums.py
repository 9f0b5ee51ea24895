"""SHA-256 digests of what a file holds, and the limits an untrusted structure is checked against.

A cifarkit file (format 2) carries one digest, ``payload_sha256``, over everything else in it:
tensors (name, dtype, shape, bytes), the build and preprocessing records, class names, versions
and, in a checkpoint, every field (optimizer, history, random states...). :func:`payload_digest`
computes it the same way for a torch file and for the JSON-in-metadata of a safetensors file
(lists and tuples hash alike, so a JSON round trip does not change the digest).

Before anything walks, hashes, prints or builds from an untrusted structure,
:func:`check_limits` bounds its nesting depth and its number of entries (shared references
counted each time they appear), so no file can make a walk recurse or grow without end.

May import: cifarkit.errors.
"""

from __future__ import annotations

import hashlib
import reprlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from cifarkit.errors import CorruptCheckpointError, cut

__all__ = [
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "check_limits",
    "excerpt",
    "payload_digest",
]

#: Deepest nesting of dicts and lists a file may hold (a checkpoint needs 6).
MAX_DEPTH = 32
#: Most entries (dict values, list items, scalars, tensors) a file's structure may hold.
MAX_ENTRIES = 2_000_000
_SCALARS = (str, bytes, int, float, bool, type(None))
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def excerpt(obj: object, limit: int = 200) -> str:
    """A short ``repr`` of untrusted content for an error message: at most ``limit`` characters.

    Example:
        >>> len(excerpt(["x" * 1000] * 1000)) <= 200
        True
    """
    try:
        text = _REPR.repr(obj)
    except Exception:  # a repr that fails is no reason to fail the message
        text = f"<{type(obj).__name__}>"
    return cut(text, limit)


def _children(obj: object) -> Iterator[object]:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield key
            yield value
    elif isinstance(obj, (list, tuple)):
        yield from obj


def check_limits(obj: object, what: str = "the file") -> None:
    """Raise :class:`~cifarkit.errors.CorruptCheckpointError` when ``obj`` nests deeper than
    :data:`MAX_DEPTH` or holds more than :data:`MAX_ENTRIES` entries. Iterative: no recursion.

    Example:
        >>> nested = []
        >>> for _ in range(100):
        ...     nested = [nested]
        >>> check_limits(nested, "the record")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.CorruptCheckpointError: the record nests deeper than 32 levels...
    """
    stack: list[tuple[object, int]] = [(obj, 0)]
    entries = 0
    while stack:
        node, depth = stack.pop()
        entries += 1
        if entries > MAX_ENTRIES:
            msg = f"{what} holds more than {MAX_ENTRIES:,} entries: it is damaged or crafted, not a cifarkit file"
            raise CorruptCheckpointError(msg)
        if isinstance(node, (Mapping, list, tuple)):
            if depth >= MAX_DEPTH:
                msg = f"{what} nests deeper than {MAX_DEPTH} levels: it is damaged or crafted, not a cifarkit file"
                raise CorruptCheckpointError(msg)
            stack.extend((child, depth + 1) for child in _children(node))


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a dense tensor, without a copy when it is already a contiguous CPU tensor."""
    if tensor.is_sparse or tensor.layout != torch.strided or tensor.is_meta or tensor.is_quantized:
        msg = f"a {tensor.layout} {tensor.device.type} tensor cannot be checksummed: files hold dense tensors"
        raise CorruptCheckpointError(msg)
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy().data) if flat.numel() else memoryview(b"")


def _key_order(key: object) -> tuple[str, str]:
    return type(key).__name__, str(key)


def payload_digest(payload: Mapping[str, Any], *, exclude: str = "payload_sha256") -> str:
    """SHA-256 over every entry of ``payload`` but ``exclude``: tensors, records, numbers, strings.

    Dict entries are hashed in sorted key order; a list and a tuple with the same items hash
    alike; every value carries its type (``1``, ``1.0``, ``True`` and ``"1"`` differ).

    Raises:
        CorruptCheckpointError: the payload exceeds :func:`check_limits`, or holds a sparse or
            meta tensor.

    Example:
        >>> a = payload_digest({"w": torch.zeros(2), "classes": ("cat", "dog")})
        >>> a == payload_digest({"classes": ["cat", "dog"], "w": torch.zeros(2)})
        True
        >>> a == payload_digest({"w": torch.zeros(2), "classes": ["cat", "cow"]})
        False
    """
    body = {key: value for key, value in payload.items() if key != exclude}
    check_limits(body)
    digest = hashlib.sha256()
    stack: list[object] = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):
            digest.update(f"T{node.dtype}{tuple(node.shape)}|".encode())
            digest.update(_tensor_bytes(node))
        elif isinstance(node, Mapping):
            keys = sorted(node, key=_key_order)
            digest.update(f"D{len(keys)}|".encode())
            for key in reversed(keys):  # a stack: push backwards to hash forwards
                stack.extend((node[key], key))
        elif isinstance(node, (list, tuple)):
            digest.update(f"L{len(node)}|".encode())
            stack.extend(reversed(node))
        elif isinstance(node, _SCALARS):
            text = repr(node)
            digest.update(f"{type(node).__name__}:{len(text)}:{text}|".encode())
        else:  # torch.dtype, torch.device...: what weights_only loading admits besides the above
            text = f"{type(node).__qualname__}:{node!r}"
            digest.update(f"O{len(text)}:{text}|".encode())
    return digest.hexdigest()
