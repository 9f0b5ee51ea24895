"""Hostile and damaged files (issue 14): each case of the report has its regression test here, and
hypothesis throws truncations, bit flips, random bytes and crafted records at every entry point.

The bar: the only exceptions are ``cifarkit.errors``, and peak memory stays within a small
multiple of the file's size plus the model's.
"""

from __future__ import annotations

import os
import pickle
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarkit import build_cnn, diagnose, inspect, load, load_checkpoint, load_cifar10, save, save_checkpoint
from cifarkit.cli import main
from cifarkit.errors import (
    CifarkitError,
    CorruptCheckpointError,
    DatasetFormatError,
    ModelRecordError,
    NonFiniteWeightsError,
    NotACheckpointError,
    StateDictMismatchError,
    UnsafeLoadError,
)
from cifarkit.files.format import read_state_dict
from conftest import write_cifar_folder
from crafted import peak_rss_growth, signed, write, zip_bomb

MiB = 1 << 20
CNN_BYTES = 145_578 * 4


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model file, a checkpoint and a pickled module to damage."""
    folder = tmp_path_factory.mktemp("sound")
    torch.manual_seed(0)
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return {
        "model": save(model, folder / "m.pt", classes=list("abcdefghij")),
        "checkpoint": save_checkpoint(folder / "ck.pt", model=model, optimizer=optimizer, epoch=1),
        "full": save(model, folder / "full.pt", method="full"),
        "safetensors": save(model, folder / "m.safetensors", method="safetensors", classes=list("abcdefghij")),
    }


def _raw(path: Path) -> dict[str, Any]:
    payload: dict[str, Any] = torch.load(path, weights_only=True)
    return payload


# --------------------------------------------------------------------------- build records


def test_a_huge_num_classes_is_refused_before_any_allocation(tmp_path: Path, files: dict[str, Path]) -> None:
    for count in (2_000_000, 10**12):
        record = {"builder": "build_cnn", "kwargs": {"num_classes": count}}
        path = write(tmp_path / f"{count}.pt", signed(_raw(files["model"]) | {"build": record}))
        with pytest.raises(ModelRecordError, match="num_classes must be an int from 1 to 100,000"):
            load(path)
        assert peak_rss_growth(lambda p=path: load(p)) < 32 * MiB  # type: ignore[misc]


def test_shapes_are_compared_before_the_model_is_allocated(tmp_path: Path, files: dict[str, Path]) -> None:
    # Within bounds (100,000 classes on VGG16 would be 1.6 GB) but the file's tensors say otherwise.
    record = {"builder": "adapt_vgg16", "kwargs": {"arch": "vgg16", "strategy": "replace", "num_classes": 100_000}}
    path = write(tmp_path / "big.pt", signed(_raw(files["model"]) | {"build": record}))
    with pytest.raises(StateDictMismatchError, match="cannot load"):
        load(path)
    assert peak_rss_growth(lambda: load(path)) < 64 * MiB  # VGG16 alone would be 528 MB


def test_a_record_never_names_a_source_of_weights(tmp_path: Path, files: dict[str, Path], torch_home: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for weights in ("imagenet", str(fifo)):
        record = {"builder": "adapt_vgg16", "kwargs": {"weights": weights}}
        path = write(tmp_path / "w.pt", signed(_raw(files["model"]) | {"build": record}))
        started = time.perf_counter()
        with pytest.raises(ModelRecordError, match="takes no argument 'weights'"):
            load(path)
        assert time.perf_counter() - started < 10  # no download attempt, no read of the FIFO
    assert not any(torch_home.rglob("*.pth"))  # nothing was written into the torch cache


def test_deep_and_shared_records_are_short_typed_errors(tmp_path: Path, files: dict[str, Path]) -> None:
    deep: Any = 0
    for _ in range(5_000):
        deep = [deep]
    shared: Any = ["x" * 1000]
    for _ in range(12):
        shared = [shared] * 8
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)  # pickling 5,000 levels recurses; torch's weights_only unpickler does not
    try:
        deep_file = write(
            tmp_path / "deep.pt", _raw(files["model"]) | {"build": {"builder": "build_cnn", "kwargs": deep}}
        )
    finally:
        sys.setrecursionlimit(limit)
    shared_file = write(
        tmp_path / "shared.pt", _raw(files["model"]) | {"build": {"builder": "build_cnn", "kwargs": shared}}
    )
    for path in (deep_file, shared_file):
        with pytest.raises(CifarkitError) as caught:
            load(path)
        assert len(str(caught.value)) < 1000


# --------------------------------------------------------------------------- one checksum over everything


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p["build"]["kwargs"].update(dropout=0.75),
        lambda p: p["classes"].__setitem__(0, "zebra"),
        lambda p: p["versions"].update(torch="1.0"),
        lambda p: p.update(
            preprocess={
                "input_size": [64, 64],
                "channels": "RGB",
                "scale": "uint8 / 255",
                "mean": None,
                "std": None,
                "classes": None,
            }
        ),
        lambda p: p["state_dict"]["sequential.7.bias"].mul_(-1),
    ],
    ids=["dropout", "classes", "versions", "preprocess", "tensor"],
)
def test_any_field_changed_fails_the_checksum(tmp_path: Path, files: dict[str, Path], edit: Any) -> None:
    raw = _raw(files["model"])
    edit(raw)
    path = write(tmp_path / "edited.pt", raw)
    with pytest.raises(CorruptCheckpointError, match="fails its SHA-256 check"):
        load(path)
    with pytest.raises(CorruptCheckpointError, match="fails its SHA-256 check"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.update(epoch=7),
        lambda c: c["optimizer"]["param_groups"][0].update(lr=10.0),
        lambda c: c["rng"]["torch"].__setitem__(0, 1),
        lambda c: c.update(extra={"note": "changed"}),
        lambda c: c["model"]["versions"].update(cifarkit="9"),
    ],
    ids=["epoch", "lr", "rng", "extra", "model-versions"],
)
def test_any_checkpoint_field_changed_fails_the_checksum(tmp_path: Path, files: dict[str, Path], edit: Any) -> None:
    raw = _raw(files["checkpoint"])
    edit(raw)
    with pytest.raises(CorruptCheckpointError, match="fails its SHA-256 check"):
        load_checkpoint(write(tmp_path / "edited.pt", raw), model=build_cnn())


def test_a_compression_bomb_is_refused_with_little_memory(tmp_path: Path) -> None:
    bomb = zip_bomb(tmp_path / "bomb.pt", inflated_mib=256)
    for entry in (load, read_state_dict, inspect, lambda p: load_checkpoint(p, model=build_cnn())):
        with pytest.raises(CorruptCheckpointError, match="compression bomb"):
            entry(bomb)
    assert peak_rss_growth(lambda: load(bomb)) < 32 * MiB


# --------------------------------------------------------------------------- damaged is not unsafe


@pytest.mark.parametrize("head", [b"PK\x03\x04", b"\x80\x02", b"\x80\x05"])
def test_random_bytes_are_damaged_not_a_pickled_module(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(head + random.Random(0).randbytes(4000))
    with pytest.raises(CorruptCheckpointError) as caught:
        load(path)
    assert "trusted=True" not in str(caught.value)


def test_only_a_well_formed_pickled_module_is_unsafe(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnsafeLoadError, match=r"cifarkit\.models\.cnn\.CifarCNN"):
        load(files["full"])
    data = bytearray(files["full"].read_bytes())
    pkl = data.find(b"data.pkl") + 200
    data[pkl : pkl + 64] = bytes(64)  # the pickle itself destroyed
    (tmp_path / "broken.pt").write_bytes(bytes(data))
    with pytest.raises((CorruptCheckpointError, UnsafeLoadError)):
        load(tmp_path / "broken.pt")


# --------------------------------------------------------------------------- checkpoints: all or nothing


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, ...]:
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in v.items()}
               for k, v in optimizer.state_dict()["state"].items()}  # fmt: skip
    return weights, moments, optimizer.param_groups[0]["lr"], torch.get_rng_state().clone(), random.getstate()


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    tensors_equal = all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    moments_equal = a[1].keys() == b[1].keys() and all(
        torch.equal(a[1][k]["momentum_buffer"], b[1][k]["momentum_buffer"]) for k in a[1]
    )
    return tensors_equal and moments_equal and a[2] == b[2] and torch.equal(a[3], b[3]) and a[4] == b[4]


def _fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(1)
    model = build_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    model(torch.ones(1, 3, 32, 32)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda c: c.update(history={"epochs": [{"epoch": 1, "surprise": 2}]}), CorruptCheckpointError),
        (lambda c: c.update(history={"epochs": [{"epoch": "one"}]}), CorruptCheckpointError),
        (lambda c: c.update(history={"epochs": [], "stop_reason": 3}), CorruptCheckpointError),
        (lambda c: c.update(history=[1, 2]), CorruptCheckpointError),
        (lambda c: c["rng"].update(torch=torch.zeros(3)), CorruptCheckpointError),
        (lambda c: c["rng"].update(python=[3, [1, 2], None]), CorruptCheckpointError),
        (lambda c: c["rng"].update(numpy=["MT19937", [1], 0, 0, 0.0]), CorruptCheckpointError),
        (lambda c: c.update(rng="random"), CorruptCheckpointError),
        (lambda c: c.update(optimizer="garbage"), CorruptCheckpointError),
        (lambda c: c.update(optimizer={"state": {}, "param_groups": [{"params": [0]}]}), CorruptCheckpointError),
        (lambda c: c["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(7)), CorruptCheckpointError),
        (lambda c: c["optimizer"]["param_groups"][0].update(lr="fast"), CorruptCheckpointError),
        (lambda c: c["optimizer"]["state"].update({99: {}}), CorruptCheckpointError),
        (lambda c: c.update(epoch="2"), CorruptCheckpointError),
        (lambda c: c.update(epoch=-1), CorruptCheckpointError),
        (lambda c: c.update(epoch=True), CorruptCheckpointError),
        (lambda c: c.pop("model"), NotACheckpointError),
        (lambda c: c["model"].update(classes=[1, 2]), CorruptCheckpointError),
        (lambda c: c.update(extra=[1]), CorruptCheckpointError),
        (lambda c: c["model"]["state_dict"].update({"sequential.0.bias": torch.zeros(5)}), StateDictMismatchError),
    ],
)
def test_a_damaged_checkpoint_leaves_model_optimizer_and_rng_as_they_were(
    tmp_path: Path, files: dict[str, Path], edit: Any, error: type[Exception]
) -> None:
    raw = _raw(files["checkpoint"])
    edit(raw)
    path = write(tmp_path / "damaged.pt", signed(raw))
    model, optimizer = _fresh()
    before = _state(model, optimizer)
    with pytest.raises(error):
        load_checkpoint(path, model=model, optimizer=optimizer)
    assert _same(before, _state(model, optimizer))


def test_a_failure_while_restoring_rolls_everything_back(files: dict[str, Path]) -> None:
    class Refuses:
        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: Any) -> None:
            raise RuntimeError("this scheduler refuses")

    raw = _raw(files["checkpoint"])
    assert raw["scheduler"] is None
    path = write(files["checkpoint"].parent / "with-scheduler.pt", signed(raw | {"scheduler": {"last_epoch": 3}}))
    model, optimizer = _fresh()
    before = _state(model, optimizer)
    with pytest.raises(CorruptCheckpointError, match=r"restoring it failed .*this scheduler refuses"):
        load_checkpoint(path, model=model, optimizer=optimizer, scheduler=Refuses())
    assert _same(before, _state(model, optimizer))


# --------------------------------------------------------------------------- CIFAR-10 batches


def _rewrite_batch(root: Path, name: str, change: dict[str, Any]) -> None:
    path = root / "cifar-10-batches-py" / name
    with path.open("rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    batch.update(change)
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.parametrize(
    ("name", "change", "why"),
    [
        ("test_batch", {b"labels": [10] * 40}, "ints from 0 to 9"),
        ("test_batch", {b"labels": [-1] * 40}, "ints from 0 to 9"),
        ("test_batch", {b"labels": [True] * 40}, "ints from 0 to 9"),
        ("test_batch", {b"labels": [0.5] * 40}, "ints from 0 to 9"),
        ("test_batch", {b"data": np.full((40, 3072), np.nan, dtype=np.float32)}, "uint8"),
        ("test_batch", {b"data": np.empty((40, 3072), dtype=object)}, "uint8"),
        ("test_batch", {b"data": np.zeros((40, 3071), dtype=np.uint8)}, r"\(N, 3072\)"),
        ("test_batch", {b"\xff\xfe": 1}, "not UTF-8"),
        ("batches.meta", {b"label_names": [b"\xff"] * 10}, "not UTF-8"),
        ("batches.meta", {b"label_names": "cats"}, "label_names"),
        ("batches.meta", {b"label_names": [b"a", b"b"]}, "ints from 0 to 1"),
    ],
)
def test_cifar_batches_are_checked(tmp_path: Path, name: str, change: dict[str, Any], why: str) -> None:
    write_cifar_folder(tmp_path, per_batch=40, flavour="py3")
    _rewrite_batch(tmp_path, name, change)
    with pytest.raises(DatasetFormatError, match=why):
        load_cifar10(tmp_path, train=False)


# --------------------------------------------------------------------------- saving and the command


def test_save_refuses_nan_weights_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = save(build_cnn(), tmp_path / "m.pt")
    good = path.read_bytes()
    model = build_cnn()
    with torch.no_grad():
        model.sequential[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="allow_nonfinite=True"):
        save(model, path)
    assert path.read_bytes() == good
    assert save(model, tmp_path / "nan.pt", allow_nonfinite=True).exists()


def _cli(argv: list[str], capsys: Any) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--seed", str(2**63)],
        ["train", "--seed", "-1"],
        ["train", "--device", "cuda:99"],
        ["doctor", "--device", "mps"],
        ["train", "--device", "tpu"],
        ["evaluate", "m.pt", "--device", "cuda"],
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], capsys: Any) -> None:
    if "cuda" in " ".join(argv) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("where", ["dir", "under-file", "fifo", "log-dir-file"])
def test_outputs_are_checked_before_training(tmp_path: Path, where: str, capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("cifarkit.cli.commands.train_loop", lambda *a, **k: pytest.fail("training started"))
    (tmp_path / "file").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo")
    option = {"dir": ["--out", str(tmp_path)], "under-file": ["--out", str(tmp_path / "file" / "m.pt")],
              "fifo": ["--checkpoint", str(tmp_path / "fifo")],
              "log-dir-file": ["--log-dir", str(tmp_path / "file")]}[where]  # fmt: skip
    with pytest.raises(SystemExit) as caught:
        main(["train", "--epochs", "1", "--train-count", "64", *option])
    assert caught.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_failures_exit_1_with_one_line(tmp_path: Path, files: dict[str, Path], capsys: Any) -> None:
    (tmp_path / "history.json").write_text('{"epochs": [{"epoch": "x"}]')
    assert _cli(["plot", str(tmp_path)], capsys)[0] == 1
    (tmp_path / "history.json").write_text('{"epochs": [{"epoch": "x"}]}')
    status, err = _cli(["plot", str(tmp_path)], capsys)
    assert status == 1 and "history is malformed" in err and len(err.strip().splitlines()) == 1
    record = {"builder": "build_cnn", "kwargs": {"num_classes": 2_000_000}}
    crafted = write(tmp_path / "crafted.pt", signed(_raw(files["model"]) | {"build": record}))
    for argv in (["inspect", str(crafted)], ["evaluate", str(crafted), "--count", "8"]):
        status, err = _cli(argv, capsys)
        assert status == 1 and len(err.strip().splitlines()) <= 1
    status, err = _cli(["evaluate", str(files["full"]), "--count", "8"], capsys)
    assert status == 1 and "trusted=True" in err and len(err.strip().splitlines()) == 1


def test_an_image_over_pillows_bomb_limit_is_a_read_error(tmp_path: Path, files: dict[str, Path], capsys: Any,
                                                          monkeypatch: Any) -> None:  # fmt: skip
    from PIL import Image

    from cifarkit import predict
    from cifarkit.errors import ImageReadError

    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 90,000 pixels is then over twice the limit
    with pytest.raises(ImageReadError, match="decompression bomb"):
        predict(build_cnn(), [tmp_path / "big.png"])
    status, err = _cli(["predict", str(files["model"]), str(tmp_path / "big.png")], capsys)
    assert status == 1 and "decompression bomb" in err


def test_a_diverging_run_exits_1(tmp_path: Path, capsys: Any) -> None:
    status, _ = _cli(["train", "--epochs", "1", "--train-count", "64", "--lr", "nan", "--quiet",
                        "--out", str(tmp_path / "m.pt")], capsys)  # fmt: skip
    assert status == 1 and not (tmp_path / "m.pt").exists()


# --------------------------------------------------------------------------- fuzzing

MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
    st.tuples(st.just("random"), st.binary(min_size=0, max_size=2048)),
    st.tuples(st.just("head"), st.sampled_from([b"PK\x03\x04", b"\x80\x02", b"\x80\x05"]), st.binary(max_size=512)),
)


def _mutate(data: bytes, mutation: tuple[Any, ...]) -> bytes:
    kind = mutation[0]
    if kind == "truncate":
        return data[: int(mutation[1] * len(data))]
    if kind == "flip":
        at = int(mutation[1] * len(data))
        return data[:at] + bytes([data[at] ^ (1 << mutation[2])]) + data[at + 1 :]
    if kind == "random":
        return bytes(mutation[1])
    return bytes(mutation[1]) + bytes(mutation[2])


def _entry_points(path: Path) -> list[Any]:
    return [
        lambda: load(path),
        lambda: load(path, model=build_cnn()),
        lambda: inspect(path),
        lambda: diagnose(build_cnn(), path),
        lambda: load_checkpoint(path, model=build_cnn()),
    ]


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(source=st.sampled_from(["model", "checkpoint", "full", "safetensors"]), mutation=MUTATION)
def test_fuzzed_files_raise_only_cifarkit_errors_within_memory(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, source: str, mutation: tuple[Any, ...]
) -> None:
    data = _mutate(files[source].read_bytes(), mutation)
    path = tmp_path_factory.mktemp("fuzz") / "f.pt"
    path.write_bytes(data)
    budget = 4 * len(data) + 4 * CNN_BYTES + 48 * MiB
    for entry in _entry_points(path):
        try:
            growth = peak_rss_growth(entry)
            entry()
        except CifarkitError:
            pass
        assert growth < budget, (mutation[0], growth)


@FUZZ
@given(mutation=MUTATION)
def test_fuzzed_files_through_the_command(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, mutation: tuple[Any, ...], capsys: Any
) -> None:
    path = tmp_path_factory.mktemp("cli") / "f.pt"
    path.write_bytes(_mutate(files["model"].read_bytes(), mutation))
    for argv in (["inspect", str(path)], ["evaluate", str(path), "--count", "4"]):
        status = main(argv)
        err = capsys.readouterr().err
        assert status in (0, 1) and "Traceback" not in err and len(err.strip().splitlines()) <= 1


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(field=st.sampled_from(["build", "classes", "preprocess", "versions", "format_version"]), value=JSONISH)
def test_crafted_records_with_valid_checksums_raise_only_cifarkit_errors(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, field: str, value: Any
) -> None:
    path = write(tmp_path_factory.mktemp("rec") / "f.pt", signed(_raw(files["model"]) | {field: value}))
    for entry in _entry_points(path)[:4]:
        try:
            growth = peak_rss_growth(entry)
            entry()
        except CifarkitError:
            pass
        assert growth < 4 * path.stat().st_size + 4 * CNN_BYTES + 48 * MiB
    assert isinstance(inspect(path).problems, list)  # a parsable file is always described


@FUZZ
@given(
    field=st.sampled_from(["epoch", "history", "rng", "optimizer", "extra", "best", "loader", "scheduler"]),
    value=JSONISH,
)
def test_crafted_checkpoint_fields_raise_only_cifarkit_errors(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, field: str, value: Any
) -> None:
    path = write(tmp_path_factory.mktemp("ck") / "f.pt", signed(_raw(files["checkpoint"]) | {field: value}))
    model, optimizer = _fresh()
    before = _state(model, optimizer)
    try:
        load_checkpoint(path, model=model, optimizer=optimizer)
    except CifarkitError:
        assert _same(before, _state(model, optimizer))


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, per_batch=20)
    return root


@FUZZ
@given(name=st.sampled_from(["batches.meta", "test_batch"]), mutation=MUTATION)
def test_fuzzed_cifar_batches_raise_only_dataset_errors(
    cifar_folder: Path, tmp_path_factory: pytest.TempPathFactory, name: str, mutation: tuple[Any, ...]
) -> None:
    root = tmp_path_factory.mktemp("cifar-fuzz")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    for source in (cifar_folder / "cifar-10-batches-py").iterdir():
        data = source.read_bytes()
        (folder / source.name).write_bytes(_mutate(data, mutation) if source.name == name else data)
    try:
        growth = peak_rss_growth(lambda: load_cifar10(root, train=False))
        load_cifar10(root, train=False)
    except DatasetFormatError:
        pass
    assert growth < 48 * MiB


@pytest.mark.parametrize(
    "tensor",
    [torch.zeros(32, 3, 5, 5).to_sparse(), torch.empty(32, 3, 5, 5, device="meta")],
    ids=["sparse", "meta"],
)
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_tensors_without_dense_data_are_refused(tmp_path: Path, tensor: torch.Tensor) -> None:
    weights = build_cnn().state_dict() | {"sequential.0.weight": tensor}
    path = write(tmp_path / "odd.pt", weights)
    with pytest.raises(CorruptCheckpointError, match="dense tensors"):
        load(path, model=build_cnn())
    with pytest.raises(CorruptCheckpointError, match="dense tensors"):
        diagnose(build_cnn(), path)


@pytest.mark.parametrize(
    ("change", "why"),
    [({"classes": [1, 2]}, "class names"), ({"versions": ["torch"]}, "versions"), ({"versions": None}, "versions")],
)
def test_wrong_typed_metadata_is_a_record_error(
    tmp_path: Path, files: dict[str, Path], change: dict[str, Any], why: str
) -> None:
    path = write(tmp_path / "meta.pt", signed(_raw(files["model"]) | change))
    with pytest.raises(ModelRecordError, match=why):
        load(path)


def test_a_stripped_checksum_is_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    for source in ("model", "checkpoint"):
        raw = _raw(files[source])
        del raw["payload_sha256"]
        raw["classes" if source == "model" else "epoch"] = ["x"] * 10 if source == "model" else 9
        path = write(tmp_path / f"{source}.pt", raw)
        with pytest.raises(CorruptCheckpointError, match="checksum is missing"):
            read_state_dict(path) if source == "model" else load_checkpoint(path, model=build_cnn())
        assert any("checksum is missing" in p for p in inspect(path).problems)


def test_a_legacy_format_pickled_module_is_unsafe_and_legacy_weights_load(tmp_path: Path) -> None:
    model = build_cnn()
    torch.save(model, tmp_path / "legacy-full.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeLoadError, match=r"cifarkit\.models\.cnn\.CifarCNN"):
        load(tmp_path / "legacy-full.pt")
    assert inspect(tmp_path / "legacy-full.pt").method == "full"
    torch.save(model.state_dict(), tmp_path / "legacy-weights.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(load(tmp_path / "legacy-weights.pt", model=build_cnn()).sequential[0].weight,
                       model.sequential[0].weight)  # fmt: skip


def test_a_crafted_safetensors_header_is_refused(tmp_path: Path, files: dict[str, Path]) -> None:
    data = files["safetensors"].read_bytes()
    huge = (10**12).to_bytes(8, "little") + data[8:]
    (tmp_path / "huge.safetensors").write_bytes(huge)
    with pytest.raises(CifarkitError):
        load(tmp_path / "huge.safetensors")
    header_size = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + header_size].replace(b'"build":"{', b'"build":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[{')
    crafted = len(header).to_bytes(8, "little") + header + data[8 + header_size :]
    (tmp_path / "deep.safetensors").write_bytes(crafted)
    with pytest.raises(CifarkitError):
        load(tmp_path / "deep.safetensors")


def test_a_mismatch_message_quotes_little_of_the_files_keys(tmp_path: Path) -> None:
    weights = {("k" * 100_000) + str(i): torch.zeros(1) for i in range(1000)}
    path = write(tmp_path / "keys.pt", weights)
    with pytest.raises(StateDictMismatchError) as caught:
        load(path, model=build_cnn())
    assert len(str(caught.value)) < 3000
