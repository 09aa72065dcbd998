"""A real headless Chromium on pages of an app served by uvicorn on 127.0.0.1.

`serve` runs an ASGI app with uvicorn in a thread (its own event loop, so the app's
lifespan and its `CacheManager` live there); `dump_dom` runs ``chromium --headless
--dump-dom`` on a URL and returns the DOM after the page's scripts ran;
`DevToolsPipe` drives a Chromium over ``--remote-debugging-pipe`` (the DevTools protocol
on two pipes, no websocket) for what needs real time, such as the docs' screenshot.
Chromium may only resolve 127.0.0.1: a page that tried to load anything from another
host would fail to. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import TracebackType
from typing import Any, Self

import orjson
import uvicorn

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
BROWSER_VARIABLE = "COHERENT_CACHE_TEST_CHROMIUM"
MISSING_REASON = (
    "needs a Chromium binary, which pip cannot install: `apt-get install chromium` (Debian/"
    f"Ubuntu) or set {BROWSER_VARIABLE} to a Chromium/Chrome executable; .ci/run installs "
    "it, and with CI=true a missing browser fails this test instead of skipping it"
)

FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--hide-scrollbars",
    # Nothing but loopback resolves: the page cannot load from another host, and Chromium
    # itself reaches no service.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def chromium() -> str | None:
    """The browser to drive: ``$COHERENT_CACHE_TEST_CHROMIUM`` when set, else the first of
    ``chromium``, ``chromium-browser``, ``google-chrome`` on PATH; ``None`` without one."""
    chosen = os.environ.get(BROWSER_VARIABLE)
    if chosen:
        return shutil.which(chosen)
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill Chromium and its helper processes (it runs in its own session)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def run_chromium(args: list[str], *, timeout: float = 45.0) -> subprocess.CompletedProcess[bytes]:
    """Run Chromium headless with `FLAGS`, a fresh profile and ``args``; kill it (and its
    helpers) after ``timeout`` seconds. Blocking: call it from a thread in async code."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError(MISSING_REASON)
    with tempfile.TemporaryDirectory(prefix="cc-chromium-") as profile:
        process = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise
        finally:
            _kill_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@dataclass
class Dumped:
    """What `dump_dom` read: the DOM after the scripts ran, and the page's console lines
    (JavaScript errors, Content-Security-Policy violations)."""

    dom: str
    console: list[str]


def dump_dom(url: str, *, budget_ms: int = 5000, timeout: float = 45.0) -> Dumped:
    """The DOM of ``url`` after ``budget_ms`` of virtual time (its timers and fetches ran)."""
    done = run_chromium(
        [
            "--enable-logging=stderr",
            "--v=0",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        timeout=timeout,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(
            f"chromium exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}"
        )
    console = [
        line for line in done.stderr.decode(errors="replace").splitlines() if ":CONSOLE" in line
    ]
    return Dumped(done.stdout.decode(), console)


@dataclass
class Row:
    """One rendered instance row of the dashboard (``tr.instance``)."""

    origin: str
    """Its ``data-origin`` attribute."""
    status: str
    """Its ``data-status`` attribute."""
    cells: dict[str, str] = field(default_factory=dict)
    """Text of each cell by the cell's first class name (``status``, ``instance`` ...)."""
    fields: dict[str, str] = field(default_factory=dict)
    """Text of each element marked ``data-field`` (``origin``, ``host``, ``pid`` ...)."""


class DashboardDom(HTMLParser):
    """The parts of a dumped dashboard DOM a test reads: instance rows, reasons rows,
    the main element's attributes, the title, and every tag name met. Text inside SVG
    (the sparklines' tooltips) is left out."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[Row] = []
        self.reasons: dict[str, str] = {}
        self.main: dict[str, str] = {}
        self.tags: list[str] = []
        self.title = ""
        self.error: str | None = None
        """The text of the error banner (``div#error``) while it is shown, else ``None``."""
        self._in_error = False
        self._row: Row | None = None
        self._reasons_of: str | None = None
        self._open: list[tuple[str, str | None, list[str]]] = []  # inside a row: tag, field
        self._in_title = False
        self._in_svg = 0
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "svg":
            self._in_svg += 1
        attr = {k: v or "" for k, v in attrs}
        classes = attr.get("class", "").split()
        if tag == "main":
            self.main = attr
        elif tag == "div" and attr.get("id") == "error":
            self._in_error = "hidden" not in attr
            self.error = "" if self._in_error else None
        elif tag == "title" and not self._in_svg:
            self._in_title = True
        elif tag == "tr" and "instance" in classes:
            self._row = Row(attr.get("data-origin", ""), attr.get("data-status", ""))
            self.rows.append(self._row)
        elif tag == "tr" and "reasons" in classes:
            self._reasons_of = attr.get("data-origin", "")
        elif self._row is not None or self._reasons_of is not None:
            if tag == "td":
                self._open.append(("td", "td:" + (classes[0] if classes else ""), []))
            else:
                self._open.append((tag, attr.get("data-field"), []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in_svg -= 1
        if tag == "title":
            self._in_title = False
        if tag == "div":
            self._in_error = False
        if tag == "tr":
            self._row, self._reasons_of, self._open = None, None, []
            return
        while self._open:
            open_tag, name, texts = self._open.pop()
            if name is not None:
                text = "".join(texts).strip()
                if self._row is not None:
                    if name.startswith("td:"):
                        self._row.cells[name[3:]] = text
                    else:
                        self._row.fields[name] = text
                elif self._reasons_of is not None and name == "reasons":
                    self.reasons[self._reasons_of] = text
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._in_svg:
            return
        if self._in_title:
            self.title += data
        if self._in_error and self.error is not None:
            self.error += data
        for _, _, texts in self._open:
            texts.append(data)


class Served:
    """An ASGI app served by uvicorn on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app: Any, *, within: float = 30.0) -> None:
        self.app = app
        self.within = within
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, lifespan="on", log_level="warning", loop="asyncio", http="h11", ws="none"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + self.within
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("uvicorn did not start (see its log above)")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.within)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError(f"uvicorn did not stop within {self.within}s")


_TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


_CONTENT_HEIGHT = "Math.ceil(document.body.getBoundingClientRect().bottom)"


class DevToolsPipe:
    """A headless Chromium driven over ``--remote-debugging-pipe``: DevTools protocol
    messages as NUL-terminated JSON on fds 3 (to Chromium) and 4 (from it)."""

    def __init__(self, *, window: tuple[int, int] = (1280, 800), timeout: float = 30.0) -> None:
        self.window = window
        self.timeout = timeout
        self._ids = 0
        self._buffer = b""
        self._process: subprocess.Popen[bytes] | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._to = self._from = -1

    def __enter__(self) -> Self:
        exe = chromium()
        if exe is None:
            raise FileNotFoundError(MISSING_REASON)
        self._profile = tempfile.TemporaryDirectory(prefix="cc-chromium-")
        to_read, self._to = os.pipe()
        self._from, from_write = os.pipe()
        # The child's ends above 4, so putting them on fds 3 and 4 overwrites neither.
        to_read, from_write = (self._above_4(fd) for fd in (to_read, from_write))
        width, height = self.window

        # A Python trampoline puts the pipes on the child's fds 3 and 4 and execs Chromium
        # (dash, Debian's sh, cannot redirect fds above 9).
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TRAMPOLINE,
                str(to_read),
                str(from_write),
                exe,
                *FLAGS,
                f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_read, from_write),
            start_new_session=True,
        )
        os.close(to_read)
        os.close(from_write)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            _kill_group(self._process)
        for fd in (self._to, self._from):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._profile is not None:
            self._profile.cleanup()

    @staticmethod
    def _above_4(fd: int) -> int:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return moved

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events met on the way are dropped)."""
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to, orjson.dumps(message) + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._ids:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    def _receive(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = orjson.loads(raw)
        return message

    def open(self, url: str) -> str:
        """Open ``url`` in a new page; return the page's session id."""
        target = self.call("Target.createTarget", url=url)["targetId"]
        session: str = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)[
            "result"
        ]
        return result.get("value")

    def screenshot(self, session: str, *, full_height: bool = False) -> bytes:
        """A PNG of the page's viewport (``full_height``: as tall as the page's content,
        up to the window's height)."""
        import base64

        width, height = self.window
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        params: dict[str, Any] = {"format": "png"}
        if full_height:
            used = int(self.evaluate(session, _CONTENT_HEIGHT) or height)
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": width,
                "height": min(used, height),
                "scale": 1,
            }
        data = self.call("Page.captureScreenshot", session, **params)["data"]
        return base64.b64decode(data)


@contextlib.contextmanager
def served(app: Any) -> Iterator[Served]:
    """``with served(app) as s:`` the app at ``s.url`` until the block ends."""
    with Served(app) as server:
        yield server
