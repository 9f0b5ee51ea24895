"""The model in a web page: the folder ``export(model, "site/", format="web")`` writes, and a
static server for it (``cifarkit serve``).

The folder holds ``index.html`` (:mod:`~cifarkit.exporting.page`), ``model.onnx`` (the checked
program :func:`~cifarkit.exporting.programs.export` writes, fp32 or int8), ``model.json`` (the
classes, the preprocessing record, the temperature, the ``reject_below`` threshold, the cifarkit
and onnxruntime-web versions, and the sha256 of ``model.onnx``, which the page checks before it
runs the model) and, with ``runtime=``, onnxruntime-web's three files, copied from a distribution
folder (``node_modules/onnxruntime-web/dist`` after ``npm install onnxruntime-web``), checked to
come from one release. Without a runtime folder the page loads :data:`PINNED` from a CDN, each
file with its Subresource Integrity hash, and then needs the internet.

The folder is built beside the target and renamed into place: a failed export leaves nothing,
and a previous site at the target is replaced only by a complete new one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarkit.errors import InvalidOptionError, WriteError
from cifarkit.exporting.page import render
from cifarkit.files.format import versions
from cifarkit.preprocess import Preprocess
from cifarkit.writing import PathLike

__all__ = ["PINNED", "RUNTIME_ENV", "RUNTIME_FILES", "Runtime", "SiteServer", "find_runtime", "make_server", "serve",
           "write_site"]  # fmt: skip

#: The onnxruntime-web files the page uses: the wasm-only module, its emscripten glue, and the
#: WebAssembly binary (SIMD and threads; one thread where the page is not cross-origin isolated).
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
#: The environment variable naming a runtime folder when ``runtime=`` does not.
RUNTIME_ENV = "CIFARKIT_ORT_WEB"
#: The release a page without a runtime folder loads from the CDN, with each file's SRI hash.
PINNED = {
    "version": "1.30.0",
    "base": "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/",
    "integrity": {
        "ort.wasm.min.mjs": "sha384-SfFfy/pvthiOsgaw3KX0bV5TfQ6Iq+oY9KutMe4SxIuHH4cl+DCSD4rTsYOoG1tJ",
        "ort-wasm-simd-threaded.mjs": "sha384-XcXA/MtAf0WpB8e023xQH9CM7RIjiugakT7x99DIwpFf7k56BIFFcAPerIF7FDad",
        "ort-wasm-simd-threaded.wasm": "sha384-vjBJ1z7qrhkTyYsNqKeF6c7N+nOJSU94czEo+tvZcu8G75JparGq9kB+kTnEUNVM",
    },
}
_VERSION = re.compile(rb'"(1\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)"')
_WASM_VERSION = re.compile(rb"\x00(1\.\d+\.\d+)\x00")
#: The server's content types where Python's table is missing or wrong (a .wasm must be
#: application/wasm for streaming compilation; .mjs is JavaScript).
CONTENT_TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
                 ".json": "application/json", ".onnx": "application/octet-stream"}  # fmt: skip


@dataclass(frozen=True)
class Runtime:
    """onnxruntime-web as the page gets it: copied from ``folder`` (bundled) or from the CDN."""

    version: str
    folder: Path | None

    @property
    def bundled(self) -> bool:
        """True when the files are in the site (no request leaves it)."""
        return self.folder is not None

    def page_config(self) -> dict[str, Any]:
        """Where the page finds each file, and (from the CDN) its integrity hash."""

        def entry(name: str) -> dict[str, str]:
            if self.bundled:
                return {"url": f"./{name}"}
            return {"url": str(PINNED["base"]) + name, "integrity": _integrity(name)}

        module, glue, wasm = RUNTIME_FILES
        return {"bundled": self.bundled, "module": entry(module), "glue": entry(glue), "wasm": entry(wasm)}

    def describe(self) -> str:
        if self.folder is None:
            return (
                f"onnxruntime-web {self.version} from {PINNED['base']} (with Subresource Integrity): the page needs "
                "the internet; pass runtime= (a folder such as node_modules/onnxruntime-web/dist) to bundle it"
            )
        return f"onnxruntime-web {self.version}, bundled from {self.folder}: no request leaves the site"


def _integrity(name: str) -> str:
    table: dict[str, str] = PINNED["integrity"]  # type: ignore[assignment]
    return table[name]


def find_runtime(runtime: PathLike | None) -> Runtime:
    """The runtime the page will use: ``runtime`` (or ``$CIFARKIT_ORT_WEB``), checked, or the CDN.

    Raises:
        InvalidOptionError: the folder lacks one of :data:`RUNTIME_FILES`, or its files come from
            different releases (the versions inside ``ort.wasm.min.mjs``, the ``.wasm`` and, when
            beside it, the package's ``package.json`` differ).
    """
    chosen = runtime if runtime is not None else os.environ.get(RUNTIME_ENV) or None
    if chosen is None:
        return Runtime(str(PINNED["version"]), None)
    folder = Path(chosen)
    missing = [name for name in RUNTIME_FILES if not (folder / name).is_file()]
    if missing:
        msg = (
            f"the runtime folder {folder} lacks {', '.join(missing)}: give onnxruntime-web's dist folder "
            "(npm install onnxruntime-web, then runtime='node_modules/onnxruntime-web/dist'), or no runtime= "
            "for a page that loads it from a CDN"
        )
        raise InvalidOptionError(msg)
    found = {RUNTIME_FILES[0]: _version_in(folder / RUNTIME_FILES[0], _VERSION),
             RUNTIME_FILES[2]: _version_in(folder / RUNTIME_FILES[2], _WASM_VERSION)}  # fmt: skip
    package = folder.parent / "package.json"
    if package.is_file():
        with contextlib.suppress(ValueError, OSError):
            found["package.json"] = str(json.loads(package.read_text(encoding="utf-8")).get("version"))
    if None in found.values() or len(set(found.values())) != 1:
        seen = ", ".join(f"{name}: {version or 'no version found'}" for name, version in found.items())
        msg = (
            f"the runtime files in {folder} do not come from one onnxruntime-web release ({seen}); a .mjs and a "
            ".wasm of different releases fail in the browser. Copy the whole dist folder of one release"
        )
        raise InvalidOptionError(msg)
    return Runtime(next(iter(found.values())) or "", folder)


def _version_in(path: Path, pattern: re.Pattern[bytes]) -> str | None:
    match = pattern.search(path.read_bytes())
    return match.group(1).decode() if match else None


def site_target(path: PathLike) -> Path:
    """The folder to write: refuse a file, or a folder that holds something other than a site.

    Raises:
        InvalidOptionError: ``path`` is a file, or a non-empty folder without a cifarkit ``model.json``.
    """
    target = Path(path)
    if target.is_file() or (target.exists() and not target.is_dir()):
        raise InvalidOptionError(f"{target} is a file: format='web' writes a folder; name a new or empty folder")
    if target.is_dir() and any(target.iterdir()) and not _is_site(target):
        msg = (
            f"{target} holds files that are not a cifarkit site (no model.json written by cifarkit): name a new or "
            "empty folder, so that nothing of yours is replaced"
        )
        raise InvalidOptionError(msg)
    return target


def _is_site(folder: Path) -> bool:
    try:
        return "cifarkit" in json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def write_site(
    target: Path, program: Path, record: Preprocess, runtime: Runtime, *, reject_below: float | None,
    quantized: bool, title: str | None = None,
) -> int:  # fmt: skip
    """Build the site in a folder beside ``target`` and rename it into place; return its size in bytes.

    Raises:
        WriteError: the folder cannot be written (nothing is left behind).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".cifarkit-tmp", dir=target.parent))
    try:
        shutil.copyfile(program, staging / "model.onnx")
        if runtime.folder is not None:
            for name in RUNTIME_FILES:
                shutil.copyfile(runtime.folder / name, staging / name)
        digest = hashlib.sha256((staging / "model.onnx").read_bytes()).hexdigest()
        meta = {
            "cifarkit": versions()["cifarkit"],
            "onnxruntime_web": runtime.version,
            "classes": record.get("classes"),
            "preprocess": record,
            "temperature": record.get("temperature", 1.0),
            "reject_below": reject_below,
            "quantized": "int8" if quantized else None,
            "input": "pixels: uint8 (batch, height, width, 3), RGB",
            "outputs": ["probabilities", "logits"],
            "sha256": digest,
        }
        (staging / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        config = {"runtime": runtime.page_config(), "folder": target.name}
        page = render(config, title or "What is in this picture?")
        (staging / "index.html").write_text(page, encoding="utf-8")
        size = sum(f.stat().st_size for f in staging.iterdir())
        _move_into_place(staging, target)
        return size
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise WriteError(f"cannot write the site {target}: {exc}; nothing was written") from exc
        raise


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; a previous site there goes only once the new one is in."""
    if not target.exists():
        os.replace(staging, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old.cifarkit-tmp")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the right types and the headers for cross-origin isolation (threads)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **CONTENT_TYPES}  # noqa: RUF012 (as the base)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")  # a new export is seen at once
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # one line per request, on stderr
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


class SiteServer(http.server.ThreadingHTTPServer):
    """The server of :func:`make_server`; ``url`` is the address to open."""

    verbose = False

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}/"


def make_server(folder: PathLike, *, port: int = 8000, host: str = "127.0.0.1") -> SiteServer:
    """A server of ``folder`` bound to ``host`` (``port=0``: any free port); call ``serve_forever``.

    Raises:
        InvalidOptionError: ``folder`` is not a folder.
        WriteError: the port cannot be bound (in use, or privileged).
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidOptionError(f"{root} is not a folder: serve the folder that export(..., format='web') wrote")
    handler = functools.partial(SiteHandler, directory=str(root))
    try:
        return SiteServer((host, port), handler)
    except OSError as exc:
        raise WriteError(f"cannot serve on {host}:{port}: {exc}; try another --port") from exc


def serve(folder: PathLike, *, port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve ``folder`` until Ctrl-C (which stops it cleanly), printing the address and one line
    per request: what ``cifarkit serve site/`` runs, printing
    ``serving site/ at http://127.0.0.1:8000/ (Ctrl-C stops)``."""
    server = make_server(folder, port=port, host=host)
    server.verbose = True
    print(f"serving {folder} at {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()
