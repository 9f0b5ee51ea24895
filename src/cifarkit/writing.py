"""Paths and writing to them: :data:`PathLike`, what every cifarkit function takes as a file path,
and the atomic writer: a path holds the old file or the complete new one, never a torn one.

:func:`atomic_write` is how every cifarkit file reaches the disk (model files, checkpoints, run
logs, figures, reports, exported programs). It behaves like a careful ``torch.save``:

* the new file gets the mode ``torch.save`` would give it (``0o666`` less the umask), and a file
  written over keeps its mode;
* a symlink is followed: its target is replaced (atomically, in the target's own directory) and
  the link stays a link;
* a directory, FIFO, device or socket at the path is refused before anything is serialised
  (:func:`check_writable`, which the CLI also runs before training);
* the temporary file lives next to the target and its name never exceeds the file system's name
  limit; the file and its directory (and any directory just created) are ``fsync``-ed;
* an error at any step (opening the temporary, writing, ``fsync``, the rename) is a
  :class:`~cifarkit.errors.WriteError` with the old file intact, no temporary and no folder it
  created left behind (``error.replaced`` is false); only when the rename succeeded and the
  folder's ``fsync`` failed afterwards does the path hold the complete *new* file, and the error
  says so (``error.replaced`` is true);
* temporaries of killed writers (SIGKILL, power cut) are removed by a later write once they are
  older than :data:`STALE_TEMPORARY_AGE_S` (one hour). Age, not a process id, decides: a writer on
  another host or in another container sharing the volume keeps its fresh temporary.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from cifarkit.errors import CifarkitError, PathIsDirectoryError, WriteError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["STALE_TEMPORARY_AGE_S", "TEMP_SUFFIX", "PathLike", "atomic_write", "check_writable"]

#: What every cifarkit function takes as a file path (the one alias).
PathLike = str | os.PathLike[str]

#: A cifarkit temporary untouched for this many seconds belongs to a writer that died.
STALE_TEMPORARY_AGE_S = 3600.0
#: Temporaries are named ``.<target name>.<8 random characters>.cifarkit.tmp``.
TEMP_SUFFIX = ".cifarkit.tmp"
_RANDOM = r"[a-z0-9_]{8}"  # what tempfile.mkstemp puts between prefix and suffix
_NO_DIR_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES, errno.EPERM}


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_writable(path: PathLike) -> Path:
    """Check that a file can be written at ``path``; return the file that will be (a symlink's target).

    Nothing is created. Refused: a directory, FIFO, device or socket at the path; a path under a
    regular file; a folder that exists but cannot be written.

    Raises:
        PathIsDirectoryError: the path is a directory.
        WriteError: anything else above.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> check_writable(folder / "new" / "model.pt").name
        'model.pt'
        >>> check_writable(folder)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cifarkit.errors.PathIsDirectoryError: cannot write to ...: it is a directory; ...
    """
    given = Path(path)
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    try:
        info = target.stat()
    except (FileNotFoundError, NotADirectoryError):  # new, or under a file (checked below)
        info = None
    except OSError as exc:
        msg = f"cannot write to {given}: {exc.strerror or exc}"
        raise WriteError(msg) from exc
    if info is not None and stat.S_ISDIR(info.st_mode):
        msg = f"cannot write to {given}: it is a directory; pass a file path such as {given}/model.pt"
        raise PathIsDirectoryError(msg)
    if info is not None and not stat.S_ISREG(info.st_mode):
        msg = f"refusing to write to {given}: it is {_kind(info.st_mode)}, not a file; choose another path"
        raise WriteError(msg)
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        msg = f"cannot write to {given}: {ancestor} is a file, not a folder; choose another path"
        raise WriteError(msg)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        msg = f"cannot write to {given}: the folder {ancestor} is not writable (permission denied)"
        raise WriteError(msg)
    return target


def _name_max(folder: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    return 255


def _temp_prefix(target: Path) -> str:
    """``.<name>.``, the name cut (on a UTF-8 boundary) so the whole temporary name fits the limit."""
    room = _name_max(target.parent) - len(f"..{'x' * 8}{TEMP_SUFFIX}")
    name = target.name.encode()[:room].decode(errors="ignore")
    return f".{name}."


def _remove_stale_temporaries(target: Path, prefix: str) -> None:
    """Remove cifarkit's own temporaries for ``target`` untouched for :data:`STALE_TEMPORARY_AGE_S`."""
    ours = re.compile(re.escape(prefix) + rf"{_RANDOM}{re.escape(TEMP_SUFFIX)}$")
    now = time.time()
    for candidate in target.parent.iterdir():
        if not ours.match(candidate.name):
            continue
        with contextlib.suppress(OSError):
            info = candidate.lstat()
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_TEMPORARY_AGE_S:
                candidate.unlink()


def _new_mode(existing: os.stat_result | None) -> int:
    """An existing file's mode, else ``0o666`` less the umask (what ``open``/``torch.save`` give)."""
    if existing is not None:
        return stat.S_IMODE(existing.st_mode)
    with contextlib.suppress(OSError, ValueError, IndexError):
        status = Path("/proc/self/status").read_text()
        return 0o666 & ~int(status.split("Umask:")[1].split()[0], 8)
    umask = os.umask(0o022)  # the only portable way to read it: set, then restore at once
    os.umask(umask)
    return 0o666 & ~umask


class _TempFile(io.FileIO):
    """The temporary file: writes every byte (looping over short writes) and remembers an ``OSError``.

    torch's zip writer reports a failed write as a bare ``RuntimeError``; the remembered error
    says what really happened (``ENOSPC``...).
    """

    error: OSError | None = None

    def write(self, data: ReadableBuffer, /) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                written = super().write(view[done:])
                if not written:
                    raise OSError(errno.EIO, "the file system accepted no bytes")
                done += written
        except OSError as exc:
            self.error = exc
            raise
        return done


def _write_error(target: Path, exc: OSError, step: str) -> WriteError:
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EFBIG: "the file is larger than allowed"}.get(exc.errno or 0, exc.strerror or str(exc))  # fmt: skip
    msg = f"could not {step} {target}: {why}. Nothing was changed: the previous file (if any) is intact"
    error = WriteError(msg)
    error.errno = exc.errno  # for code that checks errno.ENOSPC; the message stays the one above
    error.replaced = False
    return error


def _fsync_folder(folder: Path, target: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a folder one may not open cannot be synced; nothing else to do
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:  # file systems without directory fsync are fine
            msg = (
                f"{target} now holds the complete new file, but its folder {folder} could not be synced "
                f"({exc.strerror or exc}): the rename may not survive a power cut. Write it again, or check the disk"
            )
            error = WriteError(msg)
            error.errno = exc.errno
            error.replaced = True
            raise error from exc
    finally:
        os.close(fd)


def _make_folders(folder: Path) -> tuple[list[Path], list[Path]]:
    """Create ``folder`` and missing parents; return every folder whose entries changed, deepest
    first, and the folders created (deepest first), to remove again if the write fails."""
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return [folder, *(m.parent for m in missing)], missing


def _remove_created(created: list[Path]) -> None:
    for folder in created:  # deepest first; a folder someone else filled meanwhile stays
        with contextlib.suppress(OSError):
            folder.rmdir()


def atomic_write(
    path: PathLike, write: Callable[[IO[bytes]], object], *, verify: Callable[[Path], object] | None = None
) -> Path:
    """Write a file so that ``path`` holds either the old or the complete new content.

    ``write`` fills a temporary file in the same folder; it is flushed, ``fsync``-ed, given its
    mode, checked by ``verify`` (called with the temporary file's path; raising refuses the file)
    and renamed over the target with ``os.replace``, then the folder is ``fsync``-ed. On any
    exception, ``KeyboardInterrupt`` included, the temporary (and any folder this call created) is
    removed and the target untouched. See the module's description for symlinks, modes, stale
    temporaries and the one failure after which the new file is in place.

    Returns:
        The file written (a symlink's target when ``path`` is a symlink).

    Raises:
        PathIsDirectoryError: ``path`` is a directory.
        WriteError: ``path`` is a FIFO/device/socket or under a file; the disk is full; ``fsync``
            failed; any other ``OSError`` while writing. ``error.replaced`` says whether the path
            holds the new file (only when the folder's ``fsync`` failed after the rename).

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "hello.bin"
        >>> atomic_write(target, lambda f: f.write(b"hi")).read_bytes()
        b'hi'
    """
    target = check_writable(path)
    created: list[Path] = []
    try:
        synced, created = _make_folders(target.parent)
        existing = target.stat() if target.exists() else None
        prefix = _temp_prefix(target)
        _remove_stale_temporaries(target, prefix)
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as exc:
        _remove_created(created)
        raise _write_error(target, exc, "write") from exc
    try:
        with _TempFile(fd, "wb") as handle:
            try:
                write(handle)
                handle.flush()
                if hasattr(os, "fchmod"):  # POSIX; Windows files have no mode bits worth keeping
                    os.fchmod(handle.fileno(), _new_mode(existing))
                os.fsync(handle.fileno())
            except CifarkitError:
                raise
            except OSError as exc:
                raise _write_error(target, exc, "write") from exc
            except RuntimeError as exc:  # torch's zip writer hides the OSError it met
                if handle.error is None:
                    raise
                raise _write_error(target, handle.error, "write") from exc
        if verify is not None:
            verify(Path(tmp_name))
        try:
            os.replace(tmp_name, target)
        except OSError as exc:
            raise _write_error(target, exc, "replace") from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        _remove_created(created)
        raise
    for folder in synced:
        _fsync_folder(folder, target)
    return target
