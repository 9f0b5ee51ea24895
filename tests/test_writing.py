"""Atomic writes as torch.save would behave, only safer: modes, links, odd paths, full disks, fsync."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from cifarkit import build_cnn, load, save
from cifarkit.errors import PathIsDirectoryError, WriteError
from cifarkit.writing import STALE_TEMPORARY_AGE_S, TEMP_SUFFIX, atomic_write, check_writable


@pytest.fixture
def umask() -> Iterator[Any]:
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_files_get_the_mode_torch_save_gives(tmp_path: Path, umask: Any, mask: int) -> None:
    umask(mask)
    torch.save({"w": torch.zeros(1)}, tmp_path / "torch.pt")
    save(build_cnn(), tmp_path / "ours.pt")
    assert _mode(tmp_path / "ours.pt") == _mode(tmp_path / "torch.pt") == 0o666 & ~mask


def test_a_resave_keeps_the_files_mode(tmp_path: Path, umask: Any) -> None:
    path = save(build_cnn(), tmp_path / "m.pt")
    path.chmod(0o640)
    save(build_cnn(), path)
    assert _mode(path) == 0o640


def test_a_symlink_is_followed_and_stays_a_link(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "links").mkdir()
    target = save(build_cnn(), tmp_path / "store" / "real.pt")
    link = tmp_path / "links" / "current.pt"
    link.symlink_to(target)
    model = build_cnn(activation="relu")
    written = save(model, link)
    assert written == target.resolve() and link.is_symlink() and link.resolve() == target.resolve()
    assert load(target).sequential[1].__class__.__name__ == "ReLU"  # the target holds the new model
    assert _temporaries(tmp_path / "store") == [] and _temporaries(tmp_path / "links") == []


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.pt"
    link.symlink_to(tmp_path / "missing.pt")
    save(build_cnn(), link)
    assert link.is_symlink() and (tmp_path / "missing.pt").is_file()


def test_a_fifo_is_refused_before_any_work(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    calls = []
    with pytest.raises(WriteError, match="is a FIFO"):
        atomic_write(fifo, calls.append)
    assert calls == [] and stat.S_ISFIFO(fifo.stat().st_mode)  # nothing serialised, FIFO untouched
    with pytest.raises(WriteError, match="is a FIFO"):
        save(build_cnn(), fifo)


def test_a_device_a_directory_and_a_path_under_a_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WriteError, match="character device"):
        check_writable("/dev/null")
    with pytest.raises(PathIsDirectoryError, match="is a directory"):
        save(build_cnn(), tmp_path)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(WriteError, match="is a file, not a folder"):
        save(build_cnn(), tmp_path / "file" / "deeper" / "m.pt")
    assert (tmp_path / "file").read_bytes() == b"x"


@pytest.mark.parametrize("length", [243, 255])
def test_long_valid_names_save_and_leave_no_temporary(tmp_path: Path, length: int) -> None:
    name = "m" * (length - 3) + ".pt"
    path = save(build_cnn(), tmp_path / name)
    assert path.name == name and load(path) is not None
    assert _temporaries(tmp_path) == []


def test_the_temporary_name_is_cut_to_the_limit_on_a_utf8_boundary(tmp_path: Path) -> None:
    seen = []

    def write(handle: Any) -> None:
        seen.extend(p.name for p in tmp_path.iterdir())
        handle.write(b"data")

    atomic_write(tmp_path / ("é" * 126 + ".b"), write)  # a 254-byte name: its temporary must be cut
    assert len(seen[0].encode()) <= 255 and seen[0].endswith(TEMP_SUFFIX)


def test_created_folders_and_the_target_folder_are_fsynced(tmp_path: Path, monkeypatch: Any) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "a" / "b" / "f.bin", lambda f: f.write(b"x"))
    folders = {str(tmp_path / "a" / "b"), str(tmp_path / "a"), str(tmp_path)}
    assert folders <= set(synced)
    assert any(name.endswith(TEMP_SUFFIX) for name in synced)  # the file itself, before the rename


def test_a_failed_fsync_is_a_write_error_and_the_old_file_stays(tmp_path: Path, monkeypatch: Any) -> None:
    path = atomic_write(tmp_path / "f.bin", lambda f: f.write(b"old"))

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(WriteError, match=r"could not write .*Input/output error"):
        atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"old" and _temporaries(tmp_path) == []


def test_a_failed_folder_fsync_is_reported(tmp_path: Path, monkeypatch: Any) -> None:
    real = os.fsync

    def folder_fails(fd: int) -> None:
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", folder_fails)
    with pytest.raises(WriteError, match="could not be synced") as info:
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"new"))
    assert info.value.replaced and "now holds the complete new file" in str(info.value)
    assert (tmp_path / "f.bin").read_bytes() == b"new"


def _fail_nth(monkeypatch: Any, module: Any, name: str, which: Any) -> list[int]:
    """Make ``module.name`` raise EIO on the calls ``which(call)`` selects; return the call count."""
    real, calls = getattr(module, name), [0]

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if which(args):
            raise OSError(errno.EIO, "Input/output error")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, broken)
    return calls


def _is_folder_fd(args: Any) -> bool:
    return os.path.isdir(os.readlink(f"/proc/self/fd/{args[0]}"))


@pytest.mark.parametrize(
    ("step", "module", "name", "which", "replaced"),
    [
        ("creating the temporary", "tempfile", "mkstemp", lambda args: True, False),
        ("writing", "", "", None, False),
        ("the file's fsync", "os", "fsync", lambda args: not _is_folder_fd(args), False),
        ("the rename", "os", "replace", lambda args: True, False),
        ("the folder's fsync", "os", "fsync", _is_folder_fd, True),
    ],
)
def test_an_io_error_at_any_step_leaves_the_old_file_or_the_whole_new_one_and_says_which(
    tmp_path: Path, monkeypatch: Any, step: str, module: str, name: str, which: Any, replaced: bool
) -> None:
    import tempfile

    def half_then_fail(handle: Any) -> None:
        handle.write(b"ne")
        raise OSError(errno.EIO, "Input/output error")  # as a disk write fails half-way

    for new_folder in (False, True):
        target = (tmp_path / step / "new" / "f.bin") if new_folder else (tmp_path / step / "f.bin")
        if not new_folder:
            atomic_write(target, lambda f: f.write(b"old"))
        with monkeypatch.context() as patch:
            if module:
                _fail_nth(patch, {"os": os, "tempfile": tempfile}[module], name, which)
            with pytest.raises(WriteError) as info:
                atomic_write(target, half_then_fail if not module else lambda f: f.write(b"new"))
        assert info.value.replaced is replaced, step
        if replaced:
            assert target.read_bytes() == b"new" and "complete new file" in str(info.value)
        elif new_folder:
            assert not target.parent.exists(), f"{step}: a folder this write created was left behind"
        else:
            assert target.read_bytes() == b"old" and "previous file (if any) is intact" in str(info.value)
        if target.parent.exists():
            assert _temporaries(target.parent) == [], step


def test_a_full_disk_is_a_write_error(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "f.bin", lambda f: f.write(b"old"))

    def full(handle: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match="the disk is full"):
        atomic_write(path, full)
    assert path.read_bytes() == b"old" and _temporaries(tmp_path) == []


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from pathlib import Path
    from cifarkit import build_cnn, save
    from cifarkit.errors import WriteError
    path = Path(sys.argv[1])
    save(build_cnn(), path)
    old = path.read_bytes()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        save(build_cnn(), path)  # torch's zip writer meets the error
    except WriteError as exc:
        print("WriteError", exc)
    assert path.read_bytes() == old
    print(sorted(p.name for p in path.parent.iterdir()))
    """
)


def test_torchs_zip_writer_failing_mid_file_is_a_write_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "WriteError could not write" in out.stdout and "larger than allowed" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "['m.pt']"  # old file kept, no temporary


def test_stale_temporaries_are_judged_by_age_only(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    old = time.time() - STALE_TEMPORARY_AGE_S - 60
    stale = tmp_path / f".m.pt.abcd1234{TEMP_SUFFIX}"
    fresh = tmp_path / f".m.pt.wxyz9876{TEMP_SUFFIX}"  # a live writer on another host: same pid space or not
    mine_not = tmp_path / ".m.pt.notes.tmp"  # looks alike but is not ours
    for file in (stale, fresh, mine_not):
        file.write_bytes(b"partial")
    for file in (stale, mine_not):
        os.utime(file, (old, old))
    atomic_write(path, lambda f: f.write(b"x"))
    assert not stale.exists()
    assert fresh.exists() and mine_not.exists()


def test_check_writable_names_the_link_target(tmp_path: Path) -> None:
    link = tmp_path / "link.pt"
    link.symlink_to(tmp_path / "target.pt")
    assert check_writable(link) == tmp_path / "target.pt"
    assert check_writable(tmp_path / "new" / "m.pt") == tmp_path / "new" / "m.pt"
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_refused_up_front(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(WriteError, match="not writable"):
            check_writable(folder / "m.pt")
    finally:
        folder.chmod(0o700)
