"""A real headless Chromium (Debian's /usr/bin/chromium) driven over the DevTools protocol.

    with Browser.start(tmp_path) as browser:
        browser.open("http://127.0.0.1:4200/deployments")
        browser.wait_for("document.body.innerText.includes('migrate-fleet')")
        browser.screenshot(Path("deployments.png"))

Only what the UI checks need: open a page, evaluate JavaScript in it (click, type, read the
DOM), wait for a condition, take a screenshot. The DevTools messages are those of
https://chromedevtools.github.io/devtools-protocol/ (Page.navigate, Runtime.evaluate,
Page.captureScreenshot, Emulation.setDeviceMetricsOverride).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect
from websockets.sync.connection import Connection

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH, HEIGHT = 1600, 1000


class Browser:
    """One page of a headless Chromium."""

    def __init__(self, socket: Connection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    @classmethod
    @contextmanager
    def start(cls, profile: Path, width: int = WIDTH, height: int = HEIGHT) -> Iterator[Browser]:
        """Chromium with its own profile directory, stopped on the way out."""
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a previous run's port
        process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--window-size={width},{height}", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = _devtools_port(profile / "DevToolsActivePort", process)
            pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            url = next(page["webSocketDebuggerUrl"] for page in pages if page["type"] == "page")
            with connect(url, max_size=64 * 2**20, open_timeout=10) as socket:
                browser = cls(socket)
                browser.send("Page.enable")
                yield browser
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events that arrive meanwhile are dropped)."""
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=60))
            if message.get("id") != call_id:
                continue
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            return dict(message.get("result", {}))

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 30, what: str = "") -> Any:
        """Wait until the JavaScript `condition` is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(condition)
            except RuntimeError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(f"{what or condition} not seen after {timeout:.0f}s; the page "
                                   f"shows:\n{text[:3000]}")
            time.sleep(0.25)

    def resize(self, width: int, height: int) -> None:
        """The viewport's size (a taller page shows what lies below the fold)."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def text(self) -> str:
        return str(self.evaluate("document.body.innerText"))

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """A PNG of the viewport (or of the whole page, `full_page`)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, "
                                 "document.documentElement.scrollHeight]")
            params |= {"captureBeyondViewport": True,
                       "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}}
        shot = self.send("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _devtools_port(active_port: Path, process: subprocess.Popen[bytes]) -> int:
    """The port Chromium chose, from the DevToolsActivePort file it writes in its profile."""
    deadline = time.monotonic() + 30
    while not (active_port.exists() and active_port.read_text().strip()):
        if process.poll() is not None:
            raise RuntimeError(f"{CHROMIUM} exited ({process.returncode}) before it listened")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{CHROMIUM} wrote no {active_port} within 30s")
        time.sleep(0.1)
    return int(active_port.read_text().splitlines()[0])
