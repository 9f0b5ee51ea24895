"""Atomic writes, the safe readers and the digest: files on disk, crashes included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from cifarkit import build_cnn, save
from cifarkit.errors import NotACheckpointError, PathIsDirectoryError, UnsafeLoadError
from cifarkit.files.format import payload_digest, read_payload, read_state_dict, versions
from cifarkit.untrusted import sniff
from cifarkit.writing import atomic_write

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
    leftovers = list(path.parent.glob(".m.pt.*.tmp"))
    for stale in leftovers:  # as if the killed writers had died more than an hour ago
        os.utime(stale, (time.time() - 7200, time.time() - 7200))
    leftovers = len(leftovers)
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
    path = atomic_write(tmp_path / "f.bin", lambda f: f.write(b"old"))

    def boom(handle: Any) -> None:
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_write_refuses_a_directory_and_creates_parents(tmp_path: Path) -> None:
    with pytest.raises(PathIsDirectoryError, match="is a directory"):
        atomic_write(tmp_path, lambda f: f.write(b"x"))
    assert atomic_write(tmp_path / "a" / "b" / "c.bin", lambda f: f.write(b"x")).read_bytes() == b"x"


def test_digest_covers_names_dtypes_shapes_and_bytes() -> None:
    base = {"w": torch.zeros(2, 3)}
    variants = [{"v": torch.zeros(2, 3)}, {"w": torch.zeros(2, 3, dtype=torch.float64)}, {"w": torch.zeros(3, 2)},
                {"w": torch.zeros(2, 3).index_fill(1, torch.tensor([1]), 1e-30)}]  # fmt: skip
    assert len({payload_digest(d) for d in [base, *variants]}) == 5
    assert payload_digest(base) == payload_digest({"w": torch.zeros(3, 2).t()})  # layout does not matter


def test_sniff_and_readers(tmp_path: Path) -> None:
    path = save(build_cnn(), tmp_path / "m.pt")
    assert sniff(path) == "zip"
    payload = read_payload(path)
    assert payload["versions"] == versions() and set(read_state_dict(path)) == set(build_cnn().state_dict())
    (tmp_path / "notes.txt").write_text("[1, 2]")
    with pytest.raises(NotACheckpointError, match="JSON or text"):
        sniff(tmp_path / "notes.txt")
    torch.save(build_cnn(), tmp_path / "full.pt")
    with pytest.raises(UnsafeLoadError):
        read_payload(tmp_path / "full.pt")
    assert read_payload(tmp_path / "full.pt", trusted=True).__class__.__name__ == "CifarCNN"
