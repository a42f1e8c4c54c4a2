"""The discovery report in a real browser (Debian's headless chromium): no console error, images loaded."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Discovery, chromium, devtools_url

pytestmark = pytest.mark.slow


class DevTools:
    """Just enough of the Chrome DevTools protocol: send a command, collect events."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=30)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == method for e in self.events):
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)


def _open_page(browser: subprocess.Popen[str]) -> DevTools:
    assert browser.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        url = devtools_url(browser.stderr.readline())
        if url:
            break
    else:
        raise TimeoutError("chromium did not print its DevTools address")
    port = url.split(":")[2].split("/")[0]
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
        pages = [p for p in json.load(resp) if p["type"] == "page"]
    return DevTools(pages[0]["webSocketDebuggerUrl"])


def test_the_report_renders_with_images_and_no_console_errors(discovery: Discovery, tmp_path: Path) -> None:
    report = discovery.out / "report.html"
    html = report.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    browser = subprocess.Popen(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", "--remote-allow-origins=*",
         "--window-size=1200,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        page = _open_page(browser)
        page.call("Runtime.enable")
        page.call("Log.enable")
        page.call("Page.enable")
        page.call("Page.navigate", url=report.as_uri())
        page.wait_for("Page.loadEventFired")
        state = page.call(
            "Runtime.evaluate",
            returnByValue=True,
            expression="""({
                title: document.title,
                images: Array.from(document.images).map(
                    i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
                tables: document.querySelectorAll('table').length,
                text: document.body.innerText,
            })""",
        )["result"]["value"]
        errors = [
            e for e in page.events
            if (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
            or e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]  # fmt: skip
        page.ws.close()
    finally:
        browser.terminate()
        browser.communicate(timeout=20)  # reads and closes its stderr
    assert errors == []
    assert state["title"] == "Sync-break discovery: trading vs risk"
    images = state["images"]
    assert len(images) == 4  # hotspots, heat map, business dates, scores
    assert all(complete and width > 300 and height > 150 for _, complete, width, height in images), images
    assert state["tables"] >= 4
    for needle in ("RATES-NY", "CP0007", "2026-10-16", "Wilson", "missing in risk"):
        assert needle in state["text"]
