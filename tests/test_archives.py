"""What a file's bytes are, read without unpickling: kinds, zip directories, referenced globals."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from cifarkit import build_cnn
from cifarkit.errors import CorruptCheckpointError, NotACheckpointError
from cifarkit.untrusted import check_zip, file_kind, pickled_globals, references
from crafted import peak_rss_growth, zip_bomb


def _saved(obj: object, **options: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_kinds_by_first_bytes() -> None:
    assert file_kind(_saved({"w": torch.zeros(1)})[:16], 1000, Path("m.pt")) == "zip"
    assert file_kind(b"\x80\x02abc", 100, Path("m.pt")) == "pickle"
    with pytest.raises(CorruptCheckpointError, match="empty"):
        file_kind(b"", 0, Path("m.pt"))
    with pytest.raises(NotACheckpointError, match="PNG image"):
        file_kind(b"\x89PNG\r\n", 100, Path("m.png"))


def test_a_torch_zip_passes_and_a_damaged_one_does_not() -> None:
    data = _saved({"w": torch.zeros(3)})
    check_zip(data, Path("m.pt"))
    with pytest.raises(CorruptCheckpointError, match="zip directory cannot be read"):
        check_zip(data[: len(data) - 30], Path("m.pt"))
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(NotACheckpointError, match=r"no data\.pkl"):
        check_zip(plain.getvalue(), Path("a.zip"))


def test_a_compression_bomb_is_refused_before_anything_inflates(tmp_path: Path) -> None:
    bomb = zip_bomb(tmp_path / "bomb.pt", inflated_mib=256)
    data = bomb.read_bytes()
    assert len(data) < 2 << 20  # 256 MiB in a file of a few hundred KB
    with pytest.raises(CorruptCheckpointError, match="compression bomb"):
        check_zip(data, bomb)
    assert peak_rss_growth(lambda: check_zip(data, bomb)) < 16 << 20


def test_pickled_globals_lists_what_a_pickle_names_without_importing_it() -> None:
    legacy = _saved(build_cnn(), _use_new_zipfile_serialization=False)
    names = pickled_globals(legacy, pickles=4)
    assert names is not None and "cifarkit.models.cnn.CifarCNN" in names
    assert "cifarkit.models.cnn.CifarCNN" in (references(legacy, "pickle") or [])
    assert "cifarkit.models.cnn.CifarCNN" in (references(_saved(build_cnn()), "zip") or [])
    assert pickled_globals(pickle.dumps({"a": [1, 2]}), pickles=1) == []


@pytest.mark.parametrize("junk", [b"\x80\x05\xff\xfe garbage", b"\x80\x02" + bytes(range(256)) * 4])
def test_a_malformed_pickle_has_no_references(junk: bytes) -> None:
    assert pickled_globals(junk, pickles=4) is None
    assert references(junk, "pickle") is None
