"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the
browser reads commands on fd 3 and writes replies on fd 4, each a JSON message ended by a NUL),
with the standard library only: open a page, wait for it to load, evaluate a script in it and
await its promise."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    """The page's script threw, or the browser did not answer in time."""


class Browser:
    """One headless Chromium; :meth:`evaluate` opens a page in a new tab and runs a script in it."""

    def __init__(self, executable: str | None = CHROMIUM) -> None:
        if executable is None:
            raise BrowserError("no chromium on this machine (apt-get install -y chromium; .ci/run does)")
        self.profile = tempfile.mkdtemp(prefix="cifarkit-chromium-")
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()

        def wire() -> None:  # in the child: the pipes on the descriptors the protocol names
            commands, replies = os.dup(commands_r), os.dup(replies_w)  # either may be 3 or 4 already
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(commands_r)
        os.close(replies_w)
        self._buffer = b""
        self._id = 0

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:  # fmt: skip
        """Send one command and return its result (events on the way are dropped)."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise BrowserError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply["result"]
                    return result
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise BrowserError(f"{method}: no answer within {timeout} s")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise BrowserError("chromium closed the pipe")
            self._buffer += chunk

    def evaluate(self, url: str, expression: str, timeout: float = 90) -> Any:
        """Open ``url`` in a new tab, wait until it has loaded, and return the value of
        ``expression`` (a promise is awaited); the tab is closed after."""
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        try:
            session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            deadline = time.monotonic() + timeout
            while True:  # a new tab starts on about:blank; between the two pages there is no context
                try:
                    state = self._run(session, "location.href + ' ' + document.readyState", timeout)
                except BrowserError as exc:
                    if "execution context" not in str(exc):
                        raise
                    state = None
                if isinstance(state, str) and state.endswith(" complete") and not state.startswith("about:"):
                    break
                if time.monotonic() > deadline:
                    raise BrowserError(f"{url} did not load within {timeout} s ({state})")
                time.sleep(0.05)
            return self._run(session, expression, timeout)
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    def _run(self, session: str, expression: str, timeout: float) -> Any:
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        answer = self.send("Runtime.evaluate", params, session, timeout)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return answer["result"].get("value")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        os.close(self._commands)
        os.close(self._replies)
        shutil.rmtree(self.profile, ignore_errors=True)
