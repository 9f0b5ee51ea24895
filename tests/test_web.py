"""export(..., format="web"): a folder that classifies pictures in a real headless Chromium exactly
as predict does, checks its model's hash, says how to serve it from file://; and cifarkit serve."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from browser import CHROMIUM, Browser
from cifarkit import ImageTensors, export, predict, save
from cifarkit.cli import main
from cifarkit.errors import InvalidOptionError
from cifarkit.evaluation.inference import class_probabilities
from cifarkit.exporting.web import PINNED, RUNTIME_ENV, RUNTIME_FILES, make_server
from conftest import SHAPES_MEAN

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "node_modules" / "onnxruntime-web" / "dist"  # npm ci (package-lock.json), by .ci/run
# Locally the browser tests wait for `npm ci` and chromium; under CI they run, and fail if either is missing.
needs_browser = pytest.mark.skipif(
    not os.environ.get("CI") and (CHROMIUM is None or not RUNTIME.is_dir()),
    reason="needs chromium and onnxruntime-web (apt-get install -y chromium; npm ci; .ci/run does both)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = Browser()
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def site(shapes_model: tuple[nn.Module, ImageTensors], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site with the runtime bundled, and 'unknown' below 0.6."""
    target = tmp_path_factory.mktemp("web") / "site"
    export(shapes_model[0], target, runtime=RUNTIME, reject_below=0.6)
    return target


def _served(folder: Path) -> Any:
    server = make_server(folder, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _picture_files(data: ImageTensors, folder: Path) -> list[Path]:
    """PNG pictures at other sizes than the model's 32x32 (and one at it), and one JPEG."""
    folder.mkdir(exist_ok=True)
    files = []
    for i, (size, suffix) in enumerate(
        [((41, 57), ".png"), ((45, 20), ".png"), ((32, 32), ".png"), ((50, 50), ".jpg")]
    ):
        path = folder / f"picture{i}{suffix}"
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).resize(size, Image.Resampling.BICUBIC).save(path)
        files.append(path)
    return files


def _data_url(path: Path) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


@needs_browser
def test_the_page_classifies_pictures_as_predict_does(
    shapes_model: tuple[nn.Module, ImageTensors], site: Path, browser: Browser, tmp_path: Path
) -> None:
    model, data = shapes_model
    assert sorted(p.name for p in site.iterdir()) == sorted(["index.html", "model.json", "model.onnx", *RUNTIME_FILES])
    meta = json.loads((site / "model.json").read_text())
    assert meta["sha256"] == hashlib.sha256((site / "model.onnx").read_bytes()).hexdigest()
    assert meta["classes"] == data.classes and meta["reject_below"] == 0.6 and meta["onnxruntime_web"] == "1.30.0"
    assert meta["preprocess"]["mean"] == SHAPES_MEAN and meta["quantized"] is None
    files = _picture_files(data, tmp_path)
    server = _served(site)
    try:
        script = ("window.cifarkit.ready.then(() => window.cifarkit.classify(" + json.dumps([_data_url(f) for f in files])
                  + ")).then((answers) => ({answers, threads: window.cifarkit.threads, "
                  "status: document.getElementById('status').textContent}))")  # fmt: skip
        shown = browser.evaluate(server.url, script)
    finally:
        server.shutdown()
        server.server_close()
    assert shown["status"].startswith("Ready: 10 classes, onnxruntime-web 1.30.0 (bundled)")
    assert shown["threads"] >= 1 and "cross-origin isolation" not in shown["status"]  # served isolated: threads
    answers, expected = shown["answers"], predict(model, [str(f) for f in files], device="cpu", reject_below=0.6)
    for path, answer, prediction in zip(files, answers, expected):
        got = np.asarray(answer["probabilities"])
        assert got.shape == (10,) and abs(got.sum() - 1) < 1e-5 and answer["ms"] >= 0
        assert answer["unknown"] == prediction.unknown and answer["label"] == (
            None if prediction.unknown else prediction.label
        )
        assert answer["index"] == prediction.index  # the top class, for JPEG too
        if path.suffix == ".png":  # PNG decodes to the same pixels in the browser as in Pillow
            pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None]
            want = class_probabilities(model, pixels, device="cpu")[0].numpy()
            assert np.abs(got - want).max() < 1e-4, (path.name, np.abs(got - want).max())
    assert any(a["unknown"] for a in answers) or all(max(a["probabilities"]) >= 0.6 for a in answers)


@needs_browser
def test_a_tampered_model_is_refused_and_a_file_page_says_how_to_serve_it(
    site: Path, browser: Browser, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(site, copy)
    program = bytearray((copy / "model.onnx").read_bytes())
    program[-100] ^= 0xFF  # one byte of a weight
    (copy / "model.onnx").write_bytes(bytes(program))
    server = _served(copy)
    refusal = "window.cifarkit.ready.then(() => 'loaded', (e) => [String(e.message), document.getElementById('status').textContent])"
    try:
        message, status = browser.evaluate(server.url, refusal)
    finally:
        server.shutdown()
        server.server_close()
    assert "model.onnx does not match model.json" in message and message == status
    message, status = browser.evaluate((site / "index.html").as_uri(), refusal)
    assert "opened as a file" in message and "cifarkit serve" in status


def test_the_server_sends_types_and_isolation_headers_on_this_machine_only(site: Path) -> None:
    server = _served(site)
    try:
        assert server.server_address[0] == "127.0.0.1"
        for name, kind in [("", "text/html"), ("ort-wasm-simd-threaded.wasm", "application/wasm"),
                           ("ort.wasm.min.mjs", "text/javascript"), ("model.json", "application/json")]:  # fmt: skip
            with urllib.request.urlopen(server.url + name) as response:
                assert response.headers["Content-Type"].startswith(kind), name
                assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        server.shutdown()
        server.server_close()


def test_cifarkit_serve_stops_cleanly_on_ctrl_c(site: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "cifarkit", "serve", str(site), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()  # "serving ... at http://127.0.0.1:PORT/ (Ctrl-C stops)"
    url = line.split(" at ")[1].split(" ")[0]
    with urllib.request.urlopen(url + "model.json") as response:
        assert json.loads(response.read())["sha256"]
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "stopped" in out and "Traceback" not in err, err


def test_without_a_runtime_folder_the_page_loads_the_pinned_release_with_integrity(
    shapes_model: tuple[nn.Module, ImageTensors], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    model, calibration = shapes_model
    report = export(model, str(tmp_path / "site") + "/", quantize="int8", calibration=calibration)  # the slash: web
    assert report.format == "web" and "needs the internet" in str(report) and report.int8 is not None
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == ["index.html", "model.json", "model.onnx"]
    page = (tmp_path / "site" / "index.html").read_text()
    meta = json.loads((tmp_path / "site" / "model.json").read_text())
    assert (
        meta["quantized"] == "int8"
        and meta["sha256"] == hashlib.sha256((tmp_path / "site" / "model.onnx").read_bytes()).hexdigest()
    )
    for name in RUNTIME_FILES:
        integrity = PINNED["integrity"][name]  # type: ignore[index]
        assert f"{PINNED['base']}{name}" in page and integrity in page
        if RUNTIME.is_dir():  # the pin is the release of package-lock.json, byte for byte
            digest = base64.b64encode(hashlib.sha384((RUNTIME / name).read_bytes()).digest()).decode()
            assert integrity == f"sha384-{digest}"


def test_the_runtime_folder_is_checked(shapes_model: tuple[nn.Module, ImageTensors], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model = shapes_model[0]
    with pytest.raises(InvalidOptionError, match=r"lacks ort\.wasm\.min\.mjs.*npm install onnxruntime-web"):
        export(model, tmp_path / "a", runtime=tmp_path)
    mixed = tmp_path / "dist"
    mixed.mkdir()
    (mixed / RUNTIME_FILES[0]).write_bytes(b'const version = "1.29.0";')
    (mixed / RUNTIME_FILES[1]).write_bytes(b"// glue")
    (mixed / RUNTIME_FILES[2]).write_bytes(b"\0asm\x01\0\0\0 ... \x001.30.0\x00 ...")
    with pytest.raises(InvalidOptionError, match=r"do not come from one onnxruntime-web release.*1\.29\.0.*1\.30\.0"):
        export(model, tmp_path / "b", runtime=mixed)
    monkeypatch.setenv(RUNTIME_ENV, str(mixed))  # the environment variable names a folder as well
    with pytest.raises(InvalidOptionError, match="one onnxruntime-web release"):
        export(model, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist"]  # nothing written, no staging folder left


def test_a_folder_is_replaced_only_by_a_whole_site(shapes_model: tuple[nn.Module, ImageTensors], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    model = shapes_model[0]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidOptionError, match="not a cifarkit site"):
        export(model, mine, format="web")
    assert (mine / "notes.txt").read_text() == "keep me"
    site = tmp_path / "site"
    export(model, site, format="web")
    first = (site / "model.json").read_text()
    import cifarkit.exporting.web as web

    def broken(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(web, "render", broken)
    with pytest.raises(RuntimeError, match="disk went away"):
        export(model, site, format="web", reject_below=0.5)
    assert (site / "model.json").read_text() == first  # the previous site, whole
    monkeypatch.undo()
    export(model, site, format="web", reject_below=0.5)
    assert json.loads((site / "model.json").read_text())["reject_below"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "site"]  # no staging or old folders
    with pytest.raises(InvalidOptionError, match="for format='web'"):
        export(model, tmp_path / "m.onnx", reject_below=0.5)
    with pytest.raises(InvalidOptionError, match="between 0 and 1"):
        export(model, tmp_path / "other", reject_below=1.5)


def test_the_command_line_writes_a_site(
    shapes_model: tuple[nn.Module, ImageTensors], tmp_path: Path, capsys: Any
) -> None:
    save(shapes_model[0], tmp_path / "cnn.pt")
    code = main(["export", str(tmp_path / "cnn.pt"), "-o", str(tmp_path / "site"), "--reject-below", "0.4"])
    assert code == 0 and "site" in capsys.readouterr().out
    assert json.loads((tmp_path / "site" / "model.json").read_text())["reject_below"] == 0.4
    assert main(["export", str(tmp_path / "cnn.pt"), "-o", str(tmp_path / "site"), "--format", "web"]) == 0  # again
