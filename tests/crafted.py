"""Hostile files for the tests: crafted payloads with valid checksums, zip bombs, peak memory."""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cifarkit.files.format import payload_digest


def signed(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with a fresh, valid ``payload_sha256``: what an attacker who edits a file can do."""
    body = {k: v for k, v in payload.items() if k != "payload_sha256"}
    return body | {"payload_sha256": payload_digest(body)}


def write(path: Path, payload: Any) -> Path:
    torch.save(payload, path)
    return path


def zip_bomb(path: Path, inflated_mib: int) -> Path:
    """A torch-like zip whose tensor entry is ``inflated_mib`` MiB of zeros deflated to a few hundred KB."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buffer)
    original = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for info in original.infolist():
            if info.filename.endswith("data/0"):
                with bomb.open(info.filename, "w", force_zip64=True) as entry:
                    chunk = bytes(1 << 20)
                    for _ in range(inflated_mib):
                        entry.write(chunk)
            else:
                bomb.writestr(info.filename, original.read(info.filename))
    return path


def peak_rss_growth(action: Callable[[], object]) -> int:
    """Bytes the process's peak resident memory grew by while ``action`` ran (Linux ``VmHWM``)."""

    def hwm() -> int:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024

    def rss() -> int:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = rss()
    with contextlib.suppress(Exception):  # the caller checks what it raised; this measures memory
        action()
    return hwm() - before
