"""``inspect`` describes whatever it can parse, problems included, and never builds or unpickles."""

from __future__ import annotations

import builtins
import io
from pathlib import Path
from typing import Any

import pytest
import torch

from cifarkit import build_cnn, inspect, save, save_checkpoint
from cifarkit.cli import main
from cifarkit.errors import CorruptCheckpointError
from cifarkit.files.format import metadata_problems, payload_digest
from crafted import signed, write


@pytest.fixture
def raw(tmp_path: Path) -> dict[str, Any]:
    payload: dict[str, Any] = torch.load(save(build_cnn(), tmp_path / "good.pt", classes=list("abcdefghij")))
    return payload


def _crafted(tmp_path: Path, payload: dict[str, Any], name: str = "crafted.pt") -> Path:
    return write(tmp_path / name, signed(payload))


def test_a_sound_file_has_no_problems(tmp_path: Path) -> None:
    info = inspect(save(build_cnn(), tmp_path / "m.pt", classes=list("abcdefghij")))
    assert info.ok and info.checksum == "ok" and info.class_names == list("abcdefghij")
    assert main(["inspect", str(info.path)]) == 0


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"build": {"builder": "build_cnn", "kwargs": {"num_classes": 2_000_000}}}, "num_classes must be an int"),
        ({"build": {"builder": "adapt_vgg16", "kwargs": {"weights": "imagenet"}}}, "takes no argument 'weights'"),
        ({"build": {"builder": "build_cnn", "kwargs": {"weights": "/dev/stdin"}}}, "takes no argument 'weights'"),
        ({"classes": [1, 2, 3]}, "class names"),
        ({"classes": "abc"}, "class names"),
        ({"versions": ["torch", "2.6"]}, "versions"),
        ({"versions": {"torch": 2.6}}, "versions"),
        ({"preprocess": {"mean": [0.5]}}, "mean and std go together"),
    ],
)
def test_implausible_metadata_is_reported_not_built(
    tmp_path: Path, raw: dict[str, Any], change: dict[str, Any], problem: str, capsys: Any
) -> None:
    path = _crafted(tmp_path, raw | change)
    info = inspect(path)
    assert not info.ok and any(problem in p for p in info.problems), info.problems
    assert info.checksum == "ok"  # the attacker re-signed it: the content is what is wrong
    assert main(["inspect", str(path)]) == 1
    assert problem.split()[0] in capsys.readouterr().out


def test_a_changed_byte_is_a_checksum_problem(tmp_path: Path, raw: dict[str, Any]) -> None:
    raw["state_dict"]["sequential.0.bias"][0] += 1
    info = inspect(write(tmp_path / "edited.pt", raw))
    assert info.checksum == "mismatch" and "fails its SHA-256 check" in info.problems[0]
    stripped = {k: v for k, v in raw.items() if k != "payload_sha256"}
    info = inspect(write(tmp_path / "stripped.pt", stripped))
    assert info.checksum == "absent" and "checksum is missing" in info.problems[0]


def crafted_digest(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with a valid ``payload_sha256``: what is tested is the version, not the checksum."""
    return payload | {"payload_sha256": payload_digest(payload)}


def test_a_file_of_another_format_version_is_named_as_such(tmp_path: Path, raw: dict[str, Any]) -> None:
    for version in (1, 3):  # a development state before the first release, and a newer one
        old = {k: v for k, v in raw.items() if k != "payload_sha256"} | {"format_version": version}
        info = inspect(write(tmp_path / f"v{version}.pt", crafted_digest(old)))
        assert (
            not info.ok
            and f"format version {version}; this cifarkit reads model files of version 2" in info.problems[0]
        )
        assert "Re-save the model" in info.problems[0]


def test_a_deep_or_shared_record_is_a_problem_with_a_short_message(tmp_path: Path, raw: dict[str, Any]) -> None:
    deep: Any = 1
    for _ in range(200):
        deep = {"k": deep}
    raw_deep = {k: v for k, v in raw.items() if k != "payload_sha256"} | {"build": deep}
    info = inspect(write(tmp_path / "deep.pt", raw_deep))
    assert not info.ok and "deeper than" in info.problems[0]
    shared: Any = ["x" * 1000]
    for _ in range(12):
        shared = [shared] * 8
    info = inspect(write(tmp_path / "shared.pt", raw | {"classes": shared}))
    assert not info.ok and all(len(p) < 1000 for p in info.problems)


def test_a_checkpoint_with_an_odd_epoch_is_a_problem(tmp_path: Path) -> None:
    model = build_cnn()
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=torch.optim.SGD(model.parameters()), epoch=3)
    assert inspect(path).ok and inspect(path).epoch == 3
    raw = torch.load(path)
    info = inspect(_crafted(tmp_path, raw | {"epoch": "three"}))
    assert not info.ok and "epoch" in info.problems[0] and info.epoch is None
    info = inspect(_crafted(tmp_path, raw | {"format_version": 99}, "v99.pt"))
    assert not info.ok and "format version 99; this cifarkit resumes checkpoints of version 4 only" in info.problems[0]


def test_a_pickled_module_is_sound_and_says_it_needs_trust(tmp_path: Path) -> None:
    path = save(build_cnn(), tmp_path / "full.pt", method="full")
    info = inspect(path)
    assert info.ok and info.method == "full" and "cifarkit.models.cnn.CifarCNN" in info.references
    assert "trusted=True" in str(info)
    assert main(["inspect", str(path)]) == 0


def test_a_damaged_file_exits_1(tmp_path: Path, capsys: Any) -> None:
    data = save(build_cnn(), tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError):
        inspect(tmp_path / "cut.pt")
    assert main(["inspect", str(tmp_path / "cut.pt")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_inspect_opens_the_file_once(tmp_path: Path, monkeypatch: Any) -> None:
    path = save(build_cnn(), tmp_path / "m.pt")
    full = save(build_cnn(), tmp_path / "full.pt", method="full")
    opened: list[str] = []
    real_open = io.open

    def counting(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting)
    monkeypatch.setattr(builtins, "open", counting)
    inspect(path)
    inspect(full)
    assert opened.count(str(path)) == 1 and opened.count(str(full)) == 1


def test_metadata_problems_of_foreign_payloads_are_none() -> None:
    assert metadata_problems({"w": torch.zeros(1)}) == []
    assert metadata_problems("not a payload") == []
