"""The web page against onnxruntime in Python: the site ``export(model, "site/")`` writes for the
tutorial CNN (runtime bundled), opened in Debian's headless Chromium.

- page load: from navigation to ``window.cifarkit.ready`` (model.json, the model and its sha256
  check, the runtime and its wasm, the session), as ``performance.now()`` reads it;
- ms per picture: the median of 100 calls of ``window.cifarkit.classify`` on one 32x32 PNG, as the
  page times it (``session.run`` only), served with the cross-origin isolation headers (threads)
  and without them (one thread);
- native: ``session.run`` of the same ``model.onnx`` on the same pixels in onnxruntime in Python,
  median of 100, one intra-op thread and the default.

Needs chromium and ``npm ci`` (the runtime of package-lock.json); drives the browser with the test
suite's helper (``tests/browser.py``). Not part of ``bench.py`` (it needs the browser)::

    python benchmarks/web_speed.py        # writes results/web.json
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import cifarkit
from cifarkit.exporting.web import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from browser import Browser  # noqa: E402  (the test suite's DevTools-pipe driver)

RUNTIME = ROOT / "node_modules" / "onnxruntime-web" / "dist"
CALLS = 100


def _plain_server(folder: Path) -> http.server.ThreadingHTTPServer:
    """A server without the isolation headers: the page then runs on one thread."""

    class Plain(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",  # noqa: RUF012
                          ".mjs": "text/javascript"}  # fmt: skip

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Plain, directory=str(folder)))


def _in_page(browser: Browser, server: Any, picture: str) -> dict[str, float]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    script = f"""(async () => {{
        await window.cifarkit.ready;
        const load = performance.now();
        await window.cifarkit.classify(["{picture}"]);
        const ms = [];
        for (let i = 0; i < {CALLS}; i++) ms.push((await window.cifarkit.classify(["{picture}"]))[0].ms);
        ms.sort((a, b) => a - b);
        return {{load_ms: load, ms_per_picture: ms[{CALLS // 2}], threads: window.cifarkit.threads}};
    }})()"""
    try:
        result: dict[str, float] = browser.evaluate(f"http://{host}:{port}/", script, timeout=300)
        return result
    finally:
        server.shutdown()
        server.server_close()


def _native(program: Path, pixels: np.ndarray, threads: int | None) -> float:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(program), options, providers=["CPUExecutionProvider"])
    session.run(["probabilities"], {"pixels": pixels})
    times = []
    for _ in range(CALLS):
        start = time.perf_counter()
        session.run(["probabilities"], {"pixels": pixels})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def web_speed() -> dict[str, Any]:
    torch.manual_seed(0)
    model = cifarkit.build_cnn(activation="relu")
    cifarkit.train_loop(model, cifarkit.synthetic_cifar10(512).loader(batch_size=64), progress=False)
    pixels = cifarkit.synthetic_cifar10(1, seed=3).images[0].permute(1, 2, 0).numpy()
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    picture = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        cifarkit.export(model, site, runtime=RUNTIME)
        browser = Browser()
        try:
            isolated = _in_page(browser, make_server(site, port=0), picture)
            one_thread = _in_page(browser, _plain_server(site), picture)
        finally:
            browser.close()
        program = site / "model.onnx"
        native_one = _native(program, pixels[None].copy(), 1)
        native_default = _native(program, pixels[None].copy(), None)
    return {
        "page_isolated": isolated,
        "page_one_thread": one_thread,
        "native_ms_one_thread": native_one,
        "native_ms_default": native_default,
        "browser_over_native_one_thread": one_thread["ms_per_picture"] / native_one,
        "onnxruntime_web": json.loads((ROOT / "package.json").read_text())["devDependencies"]["onnxruntime-web"],
    }


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench

    result = {"machine": bench.machine(), **web_speed()}
    out = Path(__file__).resolve().parent / "results" / "web.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
