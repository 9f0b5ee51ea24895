"""Saving and loading: both methods, diagnosis, integrity, atomicity, checkpoints and resume."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cifarkit import (
    adapt_vgg16,
    build_cnn,
    diagnose,
    inspect,
    load,
    load_checkpoint,
    save,
    save_checkpoint,
    synthetic_cifar10,
    train_loop,
)
from cifarkit.errors import (
    CheckpointIsDirectoryError,
    CheckpointNotFoundError,
    CifarkitError,
    CorruptCheckpointError,
    InvalidOptionError,
    ModelClassNotFoundError,
    NonFiniteLossError,
    NotACheckpointError,
    StateDictMismatchError,
    UnsafeLoadError,
    WeightsOnlyFileError,
)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- method 2: state_dict


def test_state_dict_file_is_plain_torch_and_documented(tmp_path: Path) -> None:
    model = build_cnn(activation="relu")
    path = save(model, tmp_path / "m.pt", classes=["a"] * 10)
    raw = torch.load(path, weights_only=True)  # no cifarkit needed to read it
    assert set(raw) == {"format", "format_version", "state_dict", "build", "classes", "versions", "sha256"}
    assert raw["format"] == "cifarkit.state_dict" and raw["format_version"] == 1
    assert raw["build"] == {"builder": "build_cnn", "kwargs": {"num_classes": 10, "activation": "relu", "dropout": 0.0}}
    assert raw["versions"]["torch"] == str(torch.__version__)
    assert len(raw["sha256"]) == 64
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
    assert "cifarkit.models.CifarCNN" in str(info.value)
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
        ModelClassNotFoundError, match=r"class 'Lzp' cannot be found in module '__main__'.*import or define"
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


# --------------------------------------------------------------------------- diagnosis


@pytest.fixture(scope="module")
def vggs() -> dict[str, nn.Module]:
    """One plain (ImageNet-head) VGG16 and one of each adaptation, built once: VGG16 is big."""
    return {"plain": torchvision.models.vgg16(), "replace": adapt_vgg16(), "append": adapt_vgg16(strategy="append")}


def test_diagnose_append_file_into_replace_model(vggs: dict[str, nn.Module]) -> None:
    saved = vggs["append"].state_dict()
    diag = diagnose(vggs["replace"], saved)
    assert diag.unexpected == ["classifier.add_linear.bias", "classifier.add_linear.weight"]
    assert [m[0] for m in diag.mismatched] == ["classifier.6.bias", "classifier.6.weight"]
    text = str(diag)
    assert (
        "strategy='append'" in text
        and "classifier.add_linear" in text
        and "size mismatch for classifier.6.weight" in text
    )


def test_diagnose_imagenet_head_into_adapted_model_and_back(vggs: dict[str, nn.Module]) -> None:
    imagenet = vggs["plain"].state_dict()
    diag = diagnose(vggs["replace"], imagenet)
    assert diag.mismatched == [("classifier.6.bias", (1000,), (10,)), ("classifier.6.weight", (1000, 4096), (10, 4096))]
    assert "un-adapted ImageNet head" in str(diag) and "adapt_vgg16(weights=path)" in str(diag)
    reverse = diagnose(vggs["plain"], vggs["replace"].state_dict())
    assert "saved after adapt_vgg16(strategy='replace')" in str(reverse)
    assert "saved from a 'replace'-adapted" in str(diagnose(vggs["append"], vggs["replace"].state_dict()))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped_automatically(tmp_path: Path, prefix: str) -> None:
    model = build_cnn()
    wrapped = {prefix + k: v for k, v in model.state_dict().items()}
    diag = diagnose(build_cnn(), wrapped)
    assert diag.ok and "".join(diag.stripped_prefixes) == prefix
    assert "stripped automatically" in str(diag)
    path = tmp_path / "ddp.pt"
    torch.save(wrapped, path)
    assert same_weights(model, load(path, model=build_cnn()))


def test_diagnose_wrong_architecture_and_activation(vggs: dict[str, nn.Module]) -> None:
    diag = diagnose(vggs["replace"], build_cnn().state_dict())
    assert "wrong architecture" in str(diag) and "build_cnn()" in str(diag)
    assert "wrong architecture" in str(diagnose(build_cnn(), vggs["replace"].state_dict()))
    assert "activation=" in str(diagnose(build_cnn(), build_cnn(activation="relu").state_dict()))
    assert "num_classes=3" in str(diagnose(build_cnn(), build_cnn(3).state_dict()))
    assert diagnose(build_cnn(), build_cnn().state_dict()).ok


def test_strict_raises_with_the_diagnosis_and_non_strict_loads_what_matches(tmp_path: Path) -> None:
    source = build_cnn(3)
    path = tmp_path / "three.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(
        StateDictMismatchError, match=r"(?s)size mismatch for sequential.8.weight.*num_classes=3"
    ) as info:
        load(path, model=build_cnn())
    assert isinstance(info.value, RuntimeError)
    target = build_cnn()
    with pytest.warns(UserWarning, match="partially"):
        load(path, model=target, strict=False)
    assert torch.equal(target.sequential[0].weight, source.sequential[0].weight)
    assert target.sequential[8].weight.shape == (10, 64)
    assert diagnose(build_cnn(), path).mismatched  # a path works as well as a dict


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
    with pytest.raises(CheckpointIsDirectoryError, match="is a directory"):
        load(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match="no such file"):
        load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointIsDirectoryError):
        save(build_cnn(), tmp_path)


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    torch.manual_seed(0)
    return save(build_cnn(), tmp_path_factory.mktemp("fuzz") / "m.pt").read_bytes()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_raise_only_cifarkit_errors(tmp_path: Path, good_bytes: bytes, data: st.DataObject) -> None:
    blob = bytearray(good_bytes)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    for _ in range(data.draw(st.integers(0, 8), label="mutations")):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.pt"
    path.write_bytes(bytes(blob))
    with contextlib.suppress(CifarkitError):
        load(path)


# --------------------------------------------------------------------------- atomic writes


_KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, random, signal, sys, time, torch
    torch.set_num_threads(1)  # no thread pool exists when we fork
    from pathlib import Path
    from cifarkit import build_cnn, load, save

    path = Path(sys.argv[1])
    torch.manual_seed(0)
    models = [build_cnn(), build_cnn()]
    marks = [float(m.sequential[0].weight.sum()) for m in models]
    save(models[0], path)
    rng = random.Random(1)
    results = []
    for round_ in range(25):
        pid = os.fork()
        if pid == 0:  # child: save the two models alternately, forever
            i = 0
            while True:
                save(models[i % 2], path)
                i += 1
        time.sleep(rng.uniform(0.01, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        mark = float(load(path).sequential[0].weight.sum())
        results.append(marks.index(mark))
    leftovers = len(list(path.parent.glob(".m.pt.*.tmp")))
    save(models[1], path)
    after = len(list(path.parent.glob(".m.pt.*.tmp")))
    print(json.dumps({"results": results, "leftovers": leftovers, "after": after}))
    """
)


def test_sigkill_during_save_never_leaves_half_a_model(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(figures["results"]) == 25  # each kill left a file that loads as model A or B
    assert figures["after"] == 0  # temporaries of killed writers are cleaned by the next save


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    from cifarkit.persist import atomic_write

    path = atomic_write(tmp_path / "f.bin", lambda f: f.write(b"old"))

    def boom(handle: Any) -> None:
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_model_saved_on_cuda_loads_on_cpu(tmp_path: Path) -> None:
    model = build_cnn().cuda()
    path = save(model, tmp_path / "gpu.pt")
    loaded = load(path)
    assert next(loaded.parameters()).device.type == "cpu"
    assert same_weights(model.cpu(), loaded)
    assert next(load(path, map_location="cuda").parameters()).is_cuda


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
    assert method1.method == "full" and "cifarkit.models.CifarCNN" in method1.references
    assert method1.size_bytes > plain.size_bytes  # method 1 is larger, as the tutorial noted
    assert "145,578" in str(method2) and "build_cnn" in str(method2)


# --------------------------------------------------------------------------- checkpoints & resume


def _run(epochs: int, checkpoint: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    data = synthetic_cifar10(192, seed=0).loader(batch_size=64, seed=3, augment=True)
    return train_loop(
        model, data, epochs=epochs, optimizer=optimizer, checkpoint=checkpoint, device="cpu", progress=False
    )


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(7)
        model = build_cnn(activation="relu", dropout=0.3)
        return model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)

    straight, opt_straight = fresh()
    history = _run(4, None, straight, opt_straight)

    checkpoint = tmp_path / "ck.pt"
    first, opt_first = fresh()
    _run(2, checkpoint, first, opt_first)
    torch.manual_seed(999)  # a new process: different global RNG, restored from the checkpoint
    resumed, opt_resumed = fresh()
    resumed_history = _run(4, checkpoint, resumed, opt_resumed)

    assert same_weights(straight, resumed)
    momentum = [opt_straight.state[p]["momentum_buffer"] for p in straight.parameters()]
    assert all(torch.equal(a, opt_resumed.state[q]["momentum_buffer"]) for a, q in zip(momentum, resumed.parameters()))
    assert resumed_history.column("loss_sum") == history.column("loss_sum")
    assert load_checkpoint(checkpoint, model=build_cnn(activation="relu", dropout=0.3)).epoch == 4


def test_checkpoint_contents_and_errors(tmp_path: Path) -> None:
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = save_checkpoint(
        tmp_path / "ck.pt", model=model, optimizer=optimizer, epoch=3, extra={"note": "hi", "step": 7}
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "cifarkit.checkpoint" and raw["epoch"] == 3
    restored = load_checkpoint(path, model=build_cnn(), optimizer=torch.optim.SGD(build_cnn().parameters(), lr=0.5))
    assert restored.extra == {"note": "hi", "step": 7} and restored.history is None
    assert inspect(path).method == "checkpoint" and inspect(path).epoch == 3
    assert same_weights(model, load(path))  # a checkpoint is also a model file
    with pytest.raises(NotACheckpointError, match="not a training checkpoint"):
        load_checkpoint(save(model, tmp_path / "m.pt"), model=build_cnn())
    with torch.no_grad():
        model.sequential[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="previous file is kept"):
        save_checkpoint(path, model=model, optimizer=optimizer, epoch=4)
    assert torch.load(path, weights_only=True)["epoch"] == 3
