"""Saving and loading: both methods, diagnosis, integrity, atomicity, checkpoints and resume."""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cifarkit import (
    adapt_vgg16,
    build_cnn,
    inspect,
    load,
    save,
)
from cifarkit.errors import (
    CifarkitError,
    CorruptCheckpointError,
    InvalidOptionError,
    ModelClassNotFoundError,
    ModelFileNotFoundError,
    NonFiniteWeightsError,
    NotACheckpointError,
    PathIsDirectoryError,
    UnsafeLoadError,
    WeightsOnlyFileError,
)
from cifarkit.files.format import payload_digest


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- method 2: state_dict


def test_state_dict_file_is_plain_torch_and_documented(tmp_path: Path) -> None:
    model = build_cnn(activation="relu")
    path = save(model, tmp_path / "m.pt", classes=["a"] * 10)
    raw = torch.load(path, weights_only=True)  # no cifarkit needed to read it
    assert set(raw) == {"format", "format_version", "state_dict", "build", "classes", "preprocess", "versions",
                        "payload_sha256"}  # fmt: skip
    assert raw["preprocess"] is None  # a freshly built model was trained on nothing yet
    assert raw["format"] == "cifarkit.state_dict" and raw["format_version"] == 2
    assert raw["build"] == {"builder": "build_cnn", "kwargs": {"num_classes": 10, "activation": "relu", "dropout": 0.0}}
    assert raw["versions"]["torch"] == str(torch.__version__)
    assert raw["payload_sha256"] == payload_digest(raw)
    model.load_state_dict(raw["state_dict"])


@pytest.mark.parametrize("make", [lambda: build_cnn(), lambda: build_cnn(4, activation="relu", dropout=0.3)])
def test_cnn_round_trip_without_pickle_or_class(tmp_path: Path, make: Any) -> None:
    model = make()
    loaded = load(save(model, tmp_path / "m.pt"))
    assert type(loaded) is type(model) and same_weights(model, loaded)


@pytest.mark.parametrize("strategy", ["replace", "append"])
def test_modified_vgg_comes_back_modified(tmp_path: Path, strategy: str) -> None:
    model = adapt_vgg16(strategy=strategy, num_classes=7)  # type: ignore[arg-type]
    loaded = load(save(model, tmp_path / "vgg.pt"))
    assert same_weights(model, loaded)
    assert ("add_linear" in loaded.classifier._modules) == (strategy == "append")


def test_channels_last_and_wrapped_models_save_cleanly(tmp_path: Path) -> None:
    model = build_cnn().to(memory_format=torch.channels_last)
    path = save(torch.nn.DataParallel(model), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert not any(k.startswith("module.") for k in raw["state_dict"])
    assert all(t.is_contiguous() for t in raw["state_dict"].values())
    assert same_weights(model, load(path))


def test_plain_state_dict_needs_a_model(tmp_path: Path) -> None:
    model = build_cnn()
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)  # the tutorial's method 2, without cifarkit
    with pytest.raises(
        WeightsOnlyFileError, match=r"holds only weights.*load\(path, model=cifarkit.build_cnn\(\)\)"
    ) as info:
        load(path)
    assert isinstance(info.value, ValueError)
    target = build_cnn()
    assert load(path, model=target) is target and same_weights(model, target)


def test_safetensors_method(tmp_path: Path) -> None:
    model = build_cnn(3, activation="relu")
    path = save(model, tmp_path / "m.safetensors", method="safetensors", classes=["x", "y", "z"])
    assert path.read_bytes()[8:9] == b"{"  # no pickle: a JSON header
    loaded = load(path)
    assert same_weights(model, loaded)
    info = inspect(path)
    assert info.method == "safetensors" and info.class_names == ["x", "y", "z"] and info.build is not None


def test_bad_method() -> None:
    with pytest.raises(InvalidOptionError, match="method='pickle' is not valid"):
        save(build_cnn(), "x.pt", method="pickle")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- method 1: whole model


def test_whole_model_is_refused_unless_trusted(tmp_path: Path) -> None:
    model = build_cnn()
    path = save(model, tmp_path / "full.pt", method="full")
    with pytest.raises(UnsafeLoadError, match=r"pickled module.*arbitrary code.*trusted=True") as info:
        load(path)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert "cifarkit.models.cnn.CifarCNN" in str(info.value)
    loaded = load(path, trusted=True)
    assert type(loaded).__name__ == "CifarCNN" and same_weights(model, loaded)
    into = build_cnn()
    assert load(path, model=into, trusted=True) is into and same_weights(model, into)


class Lzp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)


def test_missing_class_becomes_model_class_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = sys.modules["__main__"]
    monkeypatch.setattr(Lzp, "__module__", "__main__")
    monkeypatch.setattr(main, "Lzp", Lzp, raising=False)
    path = tmp_path / "tutorial.pth"
    with pytest.warns(UserWarning, match="defined in __main__"):
        save(Lzp(), path, method="full")
    monkeypatch.delattr(main, "Lzp")  # a new script that lacks the class
    with pytest.raises(
        # the module's name as it runs: '__main__' under the pytest command, 'pytest.__main__' under python -m pytest
        ModelClassNotFoundError,
        match=r"class 'Lzp' cannot be found in module '(pytest\.)?__main__'.*import or define",
    ) as info:
        load(path, trusted=True)
    assert isinstance(info.value, ImportError)
    assert "method 'state_dict'" in str(info.value)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_malicious_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "payload": _Evil(marker)}, path)
    with pytest.raises(UnsafeLoadError):
        load(path)
    with pytest.raises(UnsafeLoadError):
        load(path, model=build_cnn())
    info = inspect(path)
    assert info.method == "full" and info.parameters is None
    assert not marker.exists()


# --------------------------------------------------------------------------- integrity & bad files


def _data_offset(path: Path, member_suffix: str) -> tuple[int, int]:
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with path.open("rb") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(handle.read(2), "little"), int.from_bytes(handle.read(2), "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_flipped_byte_in_tensor_data_is_detected(tmp_path: Path) -> None:
    path = save(build_cnn(), tmp_path / "m.pt")
    start, size = _data_offset(path, "data/2")
    data = bytearray(path.read_bytes())
    data[start + size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        load(path)


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (b"", CorruptCheckpointError, "empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), NotACheckpointError, "PNG image"),
        (b'{"weights": [1, 2, 3]}', NotACheckpointError, "JSON"),
        (bytes(range(7, 200)), NotACheckpointError, "not a PyTorch checkpoint"),
        (b"PK\x03\x04" + bytes(100), CorruptCheckpointError, "truncated or damaged"),
    ],
)  # fmt: skip
def test_bad_files_get_specific_errors_naming_the_path(
    tmp_path: Path, content: bytes, error: type[Exception], match: str
) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(error, match=match) as info:
        load(path)
    assert str(path) in str(info.value)


def test_truncated_directory_and_missing(tmp_path: Path) -> None:
    good = save(build_cnn(), tmp_path / "m.pt").read_bytes()
    truncated = tmp_path / "half.pt"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptCheckpointError, match=r"half\.pt"):
        load(truncated)
    with pytest.raises(PathIsDirectoryError, match="is a directory"):
        load(tmp_path)
    with pytest.raises(ModelFileNotFoundError, match="no such file"):
        load(tmp_path / "nope.pt")
    with pytest.raises(PathIsDirectoryError):
        save(build_cnn(), tmp_path)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_cnn()
    return save(model, tmp_path_factory.mktemp("fuzz") / "m.pt").read_bytes(), model.state_dict()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_raise_cifarkit_errors_or_load_the_exact_weights(
    tmp_path: Path, good_file: tuple[bytes, dict[str, torch.Tensor]], data: st.DataObject
) -> None:
    good_bytes, weights = good_file
    blob = bytearray(good_bytes)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    for _ in range(data.draw(st.integers(0, 8), label="mutations")):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.pt"
    path.write_bytes(bytes(blob))
    try:
        loaded = load(path)
    except CifarkitError:
        return
    # A damaged file that still loads must give back exactly the saved weights (the flip hit
    # bytes that carry no tensor data), never garbage.
    state = loaded.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)


def test_save_refuses_non_finite_weights_unless_allowed(tmp_path: Path) -> None:
    model = build_cnn()
    path = save(model, tmp_path / "m.pt")
    before = path.read_bytes()
    with torch.no_grad():
        model.sequential[8].bias[3] = float("inf")
    for method in ("state_dict", "full", "safetensors"):
        with pytest.raises(NonFiniteWeightsError, match=r"sequential\.8\.bias.*allow_nonfinite=True"):
            save(model, path, method=method)  # type: ignore[arg-type]
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    save(model, path, allow_nonfinite=True)
    assert torch.isinf(load(path).sequential[8].bias[3])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_model_saved_on_cuda_loads_on_cpu(tmp_path: Path) -> None:
    model = build_cnn().cuda()
    path = save(model, tmp_path / "gpu.pt")
    loaded = load(path)
    assert next(loaded.parameters()).device.type == "cpu"
    assert same_weights(model.cpu(), loaded)
    assert next(load(path, map_location="cuda").parameters()).is_cuda
    back = save(load(path), tmp_path / "from_cpu.pt")  # and back: a CPU-saved file loads on the GPU
    assert same_weights(model, load(back, map_location="cuda").cpu())


# --------------------------------------------------------------------------- inspect


def test_inspect_both_methods_and_their_sizes(tmp_path: Path) -> None:
    model = build_cnn()
    method2 = inspect(save(model, tmp_path / "m2.pt"))
    method1 = inspect(save(model, tmp_path / "m1.pt", method="full"))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    plain = inspect(tmp_path / "plain.pt")
    assert (method2.method, method2.parameters, method2.checksum, method2.tensors) == ("state_dict", 145_578, "ok", 10)
    assert method2.build is not None and method2.versions["torch"] == str(torch.__version__)
    assert (plain.method, plain.checksum, plain.build) == ("plain_state_dict", "absent", None)
    assert method1.method == "full" and "cifarkit.models.cnn.CifarCNN" in method1.references
    assert method1.size_bytes > plain.size_bytes  # method 1 is larger, as the tutorial noted
    assert "145,578" in str(method2) and "build_cnn" in str(method2)
