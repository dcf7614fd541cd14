"""Open a report's ``report.html`` in headless Chromium, check it and screenshot it.

    python examples/screenshot_report.py REPORT_DIR OUT.png [--width 1280] [--json]

Runs ``/usr/bin/chromium`` (or ``$CHROMIUM``) headless with a throw-away profile and no
background networking, and drives it over the DevTools protocol through a pipe
(``--remote-debugging-pipe``: no port, no websocket library). It records every request the
page makes and every console message and exception, measures each figure where the browser
drew it (a screenshot of the image's own region, which must hold more than background), and
writes a PNG of the whole page. Exit status 1, with the problems listed, when the page
requests anything besides itself and its inline images, logs an error, or shows a blank or
missing figure; 2 when Chromium is missing or fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MiB
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)
MIN_FOREGROUND = 0.01  # a figure must colour at least 1 % of its area beyond the background
MIN_COLOURS = 8  # ... with at least this many distinct colours


class BrowserError(RuntimeError):
    """Chromium is missing, did not start, or stopped answering."""


class DevToolsPipe:
    """A Chromium process driven over the DevTools protocol on file descriptors 3 and 4
    (commands in, replies and events out, each a JSON text ended by a NUL byte)."""

    def __init__(self, binary: str, profile: Path, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_descriptors() -> None:  # in the child, before exec
            high_read = os.dup2(to_browser_read, 200)
            high_write = os.dup2(from_browser_write, 201)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(3, 4),
            preexec_fn=wire_descriptors,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its reply; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str | None = None) -> dict:
        """The first event named ``method`` (of ``session``), waiting for it if need be."""
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def _receive(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"Chromium did not answer within {self.timeout_s:g} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                error = self.process.stderr.read().decode(errors="replace")[-2000:]
                raise BrowserError(f"Chromium closed the pipe: {error}")
            self._buffer += chunk
        text, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(text)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class FigureCheck:
    """One ``<img>`` of the page as the browser drew it."""

    alt: str
    loaded: bool
    natural_size: tuple[int, int]
    shown_size: tuple[int, int]
    foreground: float  # share of the drawn region differing from its most common colour
    colours: int  # distinct colours in the drawn region

    @property
    def rendered(self) -> bool:
        return (
            self.loaded
            and min(self.shown_size) >= 50
            and self.foreground >= MIN_FOREGROUND
            and self.colours >= MIN_COLOURS
        )


@dataclass
class PageCheck:
    """What the browser saw: the figures, the requests beyond the page and its inline
    images, and console errors and exceptions."""

    page: str
    figures: list[FigureCheck] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    screenshot: str | None = None

    def problems(self) -> list[str]:
        found = [f"request: {url}" for url in self.requests]
        found += [f"console: {text}" for text in self.console]
        found += [
            f"figure not rendered: {f.alt!r} (loaded {f.loaded}, shown {f.shown_size}, "
            f"foreground {f.foreground:.3f}, colours {f.colours})"
            for f in self.figures
            if not f.rendered
        ]
        if not self.figures:
            found.append("the page shows no figure")
        return found

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problems"] = self.problems()
        return data


def _region_stats(png: bytes) -> tuple[float, int]:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    return 1.0 - counts.max() / counts.sum(), len(colours)


_FIGURES_JS = """JSON.stringify(Array.from(document.images).map(img => {
  const r = img.getBoundingClientRect();
  return {alt: img.alt, complete: img.complete, nw: img.naturalWidth, nh: img.naturalHeight,
          x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height};
}))"""


def _console_text(event: dict[str, Any]) -> str | None:
    """The text of a console error or exception event, or None for other events."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}"
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
    return None


def inspect_report(
    report_dir: str | Path,
    output: str | Path | None = None,
    *,
    width: int = 1280,
    chromium: str | None = None,
    timeout_s: float = 120.0,
) -> PageCheck:
    """Open ``report_dir/report.html`` in headless Chromium and check it (see the module
    documentation); with ``output``, also write a PNG of the whole page there."""
    page = Path(report_dir).resolve() / "report.html"
    if not page.is_file():
        raise FileNotFoundError(f"{page} does not exist: write the report first")
    binary = chromium or os.environ.get("CHROMIUM", DEFAULT_CHROMIUM)
    if not Path(binary).is_file():
        raise BrowserError(f"Chromium not found at {binary} (install it or set $CHROMIUM)")
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    browser = DevToolsPipe(binary, profile, timeout_s)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", session)
        found = json.loads(
            browser.send(
                "Runtime.evaluate", {"expression": _FIGURES_JS, "returnByValue": True}, session
            )["result"]["value"]
        )
        check = PageCheck(page.as_uri())
        for figure in found:
            shown = (round(figure["w"]), round(figure["h"]))
            foreground, colours = 0.0, 0
            if min(shown) > 0:
                clip = {"x": figure["x"], "y": figure["y"], "width": figure["w"],
                        "height": figure["h"], "scale": 1}  # fmt: skip
                shot = browser.send(
                    "Page.captureScreenshot",
                    {"format": "png", "clip": clip, "captureBeyondViewport": True},
                    session,
                )
                foreground, colours = _region_stats(base64.b64decode(shot["data"]))
            check.figures.append(
                FigureCheck(
                    figure["alt"],
                    bool(figure["complete"] and figure["nw"] > 0),
                    (figure["nw"], figure["nh"]),
                    shown,
                    float(foreground),
                    int(colours),
                )
            )
        if output is not None:
            size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = browser.send(
                "Page.captureScreenshot",
                {"format": "png", "clip": clip, "captureBeyondViewport": True},
                session,
            )
            output = Path(output)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(base64.b64decode(shot["data"]))
            check.screenshot = str(output)
        for event in browser.events:
            if event.get("sessionId") != session:
                continue
            if event.get("method") == "Network.requestWillBeSent":
                url = event["params"]["request"]["url"]
                if url != page.as_uri() and not url.startswith("data:"):
                    check.requests.append(url)
            text = _console_text(event)
            if text:
                check.console.append(text)
        return check
    finally:
        browser.close()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", help="folder holding report.html")
    parser.add_argument("output", help="PNG file to write (the whole page)")
    parser.add_argument("--width", type=int, default=1280, help="page width in CSS pixels")
    parser.add_argument(
        "--chromium", help=f"browser binary (default $CHROMIUM or {DEFAULT_CHROMIUM})"
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = parser.parse_args(argv)
    try:
        check = inspect_report(
            args.report_dir, args.output, width=args.width, chromium=args.chromium
        )
    except (FileNotFoundError, BrowserError) as err:
        print(f"screenshot_report: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(check.to_dict(), indent=1))
    else:
        print(f"wrote {check.screenshot}; {len(check.figures)} figures, "
              f"{sum(f.rendered for f in check.figures)} rendered")  # fmt: skip
        for problem in check.problems():
            print(f"problem: {problem}")
    return 1 if check.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
