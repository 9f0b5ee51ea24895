"""What a model file holds, and what is wrong with it: ``inspect`` and the metadata checks ``load`` runs.

:func:`inspect` reads a file once and never unpickles a module, never builds a model and never
raises on a file it can parse: a failed checksum, a malformed or out-of-bounds record, class
names that are not strings... come back as :attr:`FileInfo.problems`. :func:`metadata_problems`
is the same check :func:`cifarkit.load` runs before it builds anything.

May import: cifarkit.display, cifarkit.errors, cifarkit.files, cifarkit.files.checksums,
cifarkit.files.reading, cifarkit.files.records, cifarkit.preprocess.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cifarkit.display import format_table
from cifarkit.errors import CorruptCheckpointError, ModelRecordError, NotACheckpointError, UnsafeLoadError
from cifarkit.files import PathLike
from cifarkit.files.checksums import excerpt
from cifarkit.files.reading import (
    CHECKPOINT_FORMAT,
    FORMAT,
    Checksum,
    checksum_status,
    digest_stripped,
    read_bytes,
    read_safetensors,
    torch_load,
    version_problem,
    weights_and_record,
)
from cifarkit.files.records import BuildRecord, validate_build_record
from cifarkit.preprocess import MAX_CLASSES, Preprocess, validate_record

__all__ = ["FileInfo", "file_preprocess", "inspect", "metadata_problems"]


def _model_part(obj: Any) -> Any:
    """A checkpoint's embedded model payload, or the payload itself."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj.get("model")
    return obj


def _field_problems(inner: Any) -> dict[str, str]:
    """Field of a cifarkit payload -> what is wrong with it (records, class names, versions)."""
    if not (isinstance(inner, Mapping) and inner.get("format") == FORMAT):
        return {}
    problems = {}
    for key, validate in (("build", validate_build_record), ("preprocess", validate_record)):
        if inner.get(key) is not None:
            try:
                validate(inner[key])
            except ModelRecordError as exc:
                problems[key] = str(exc)
    names = inner.get("classes")
    if names is not None and not (
        isinstance(names, list) and len(names) <= MAX_CLASSES and all(isinstance(n, str) for n in names)
    ):
        problems["classes"] = f"class names {excerpt(names)} are not a list of at most {MAX_CLASSES:,} strings"
    found = inner.get("versions", {})
    if not (isinstance(found, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())):
        problems["versions"] = f"versions {excerpt(found)} are not a dict of names to version strings"
    return problems


def metadata_problems(obj: Any) -> list[str]:
    """What is wrong with a cifarkit payload's records, class names and versions (nothing is built)."""
    return list(_field_problems(_model_part(obj)).values())


def file_preprocess(obj: Any) -> Preprocess | None:
    """The preprocessing record of a cifarkit payload (or a checkpoint's model), if any (checked before)."""
    inner = _model_part(obj)
    record = inner.get("preprocess") if isinstance(inner, Mapping) and inner.get("format") == FORMAT else None
    return None if record is None else validate_record(record)


@dataclass(frozen=True)
class FileInfo:
    """What a model file holds (``cifarkit inspect``), problems included.

    ``checksum``: ``"ok"`` (everything in the file verified), ``"absent"`` (a plain
    ``state_dict`` or a pickled module: nothing to verify), ``"mismatch"`` (changed after it was
    saved). ``problems`` lists what makes the file unfit to load; empty for a sound file.
    """

    path: Path
    method: Literal["state_dict", "plain_state_dict", "full", "checkpoint", "safetensors"]
    size_bytes: int
    parameters: int | None
    tensors: int | None
    build: BuildRecord | None
    checksum: Checksum
    versions: dict[str, str]
    references: list[str]
    class_names: list[str] | None = None
    epoch: int | None = None
    preprocess: Preprocess | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problems found (a pickled module is sound, though it needs ``trusted=True``)."""
        return not self.problems

    def __str__(self) -> str:
        rows = [
            ("file", str(self.path)),
            ("method", self.method),
            ("size", f"{self.size_bytes:,} bytes ({self.size_bytes / 1e6:.2f} MB)"),
            ("parameters", "unknown (pickled module)" if self.parameters is None else f"{self.parameters:,}"),
            ("build record", json.dumps(self.build) if self.build else "none"),
            ("checksum", self.checksum),
            ("versions", ", ".join(f"{k} {v}" for k, v in self.versions.items()) or "unknown"),
        ]
        if self.class_names:
            shown = ", ".join(self.class_names[:20])
            more = f" ... ({len(self.class_names):,} in all)" if len(self.class_names) > 20 else ""
            rows.append(("class names", (shown if len(shown) <= 300 else shown[:297] + "...") + more))
        if self.preprocess is not None:
            p = self.preprocess
            norm = f"mean {p.get('mean')}, std {p.get('std')}" if p.get("mean") is not None else "none"
            rows.append(("preprocessing", f"size {p.get('input_size') or 'any'}, {p.get('scale')}, normalize: {norm}"))
        if self.references:
            rows.append(("pickled classes", ", ".join(self.references)))
            rows.append(("loading", "needs trusted=True: unpickling a module runs its code (only for your own files)"))
        if self.epoch is not None:
            rows.append(("epoch", str(self.epoch)))
        rows.extend(("problem", problem) for problem in self.problems)
        return format_table(rows)


def inspect(path: PathLike) -> FileInfo:
    """Describe a model file without running any pickled code, problems included.

    The file is read once. For a whole pickled module (method ``"full"``) the classes it
    references are listed but nothing is unpickled, so its parameter count is unknown. A file
    that parses is always described: a failed checksum, a malformed or out-of-bounds record,
    class names that are not strings... are listed in ``problems``, never built or allocated.

    Raises:
        ModelFileNotFoundError, NotACheckpointError: no such file, or not a checkpoint at all.
        CorruptCheckpointError: the file is truncated or damaged beyond parsing.

    Example:
        >>> import tempfile, pathlib
        >>> from cifarkit import build_cnn, save
        >>> info = inspect(save(build_cnn(), pathlib.Path(tempfile.mkdtemp()) / "m.pt"))
        >>> info.method, info.parameters, info.checksum, info.ok
        ('state_dict', 145578, 'ok', True)
    """
    file = Path(path)
    data, kind = read_bytes(file)
    size = len(data)
    if kind == "safetensors":
        return _describe(file, read_safetensors(file, data), size, is_safetensors=True)
    try:
        obj = torch_load(file, trusted=False, map_location="cpu", data=data)
    except UnsafeLoadError as exc:
        return FileInfo(
            path=file, method="full", size_bytes=size, parameters=None, tensors=None, build=None,
            checksum="absent", versions={}, references=list(exc.references),
        )  # fmt: skip
    del data
    return _describe(file, obj, size, is_safetensors=False)


def _describe(file: Path, obj: Any, size: int, *, is_safetensors: bool) -> FileInfo:
    method: Any = "safetensors" if is_safetensors else "plain_state_dict"
    inner, epoch, problems = obj, None, []
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        method, inner, epoch = "checkpoint", obj.get("model"), obj.get("epoch")
        problem = version_problem(obj)
        if problem is not None:
            problems.append(f"a checkpoint of {problem}")
        if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
            problems.append(f"epoch {excerpt(epoch, 60)} is not a whole number")
            epoch = None
    elif isinstance(obj, Mapping) and obj.get("format") == FORMAT and not is_safetensors:
        method = "state_dict"
    try:
        checksum, what = checksum_status(obj)
        state_dict, _ = weights_and_record(inner, file)
    except (CorruptCheckpointError, NotACheckpointError) as exc:  # too deep, not tensors, not weights
        return FileInfo(path=file, method=method, size_bytes=size, parameters=None, tensors=None, build=None,
                        checksum="absent", versions={}, references=[], problems=[*problems, str(exc)])  # fmt: skip
    if checksum == "mismatch":
        problems.append(f"fails its SHA-256 check: {what}")
    elif digest_stripped(obj) or digest_stripped(inner):
        problems.append("its checksum is missing (a cifarkit file of this format always has one: it was stripped)")
    bad = _field_problems(inner)
    problems.extend(bad.values())
    fields = inner if isinstance(inner, Mapping) and inner.get("format") == FORMAT else {}
    sound = {key: fields.get(key) for key in ("build", "preprocess", "classes") if key not in bad}
    return FileInfo(
        path=file,
        method=method,
        size_bytes=size,
        parameters=sum(t.numel() for t in state_dict.values()),
        tensors=len(state_dict),
        build=sound.get("build"),
        checksum=checksum,
        versions={} if "versions" in bad else dict(fields.get("versions", {})),
        references=[],
        class_names=sound.get("classes"),
        preprocess=sound.get("preprocess"),
        epoch=epoch,
        problems=problems,
    )
