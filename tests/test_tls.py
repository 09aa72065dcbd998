"""TLS (``rediss://``) against a real TLS endpoint on 127.0.0.1, certificates made here.

The endpoint is a TLS-capable server binary when one is found, else a TLS-terminating
proxy in front of the embedded valkey (tests/support/tls.py); the run's summary says which.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from coherent_cache import CacheConfig, CacheManager, ConfigurationError, InvalidationPublisher

from .conftest import eventually
from .support.tls import KEY_PASSWORD, Certificates, TlsEndpoints, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, a server certificate for 127.0.0.1, client certificates, another CA."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module", params=["endpoint", "proxy"])
def tls(certs: Certificates, request: pytest.FixtureRequest) -> Iterator[TlsEndpoints]:
    """Two TLS endpoints: server certificate only, and client certificate required.

    ``endpoint``: a TLS-capable server if one is found, else the proxy; ``proxy``: the
    proxy in any case, so the fallback a fresh machine relies on is tested everywhere.
    """
    endpoints = TlsEndpoints(certs, proxy=request.param == "proxy")
    try:
        endpoints.start()
        yield endpoints
    finally:
        endpoints.close()


def tls_config(url: str, namespace: str, **fields: Any) -> CacheConfig:
    return CacheConfig(redis_url=url, namespace=namespace, connect_timeout=2.0, **fields)


class TestServerVerification:
    """The client verifies the server against ssl_ca_certs."""

    async def test_verified_connection_works(
        self, tls: TlsEndpoints, certs: Certificates, namespace: str
    ) -> None:
        """With the right CA (and the host name check on) the manager is healthy and reads
        its writes through L2; the bus subscribes over TLS too."""
        config = tls_config(tls.url(), namespace, ssl_ca_certs=str(certs.ca))
        async with CacheManager(config) as a, CacheManager(config) as b:
            assert "healthy" == (await a.health())["status"], tls.kind
            assert await a.set("k", {"v": 1})
            assert {"v": 1} == await b.get("k")
            assert b.stats()["bus"]["connected"]

    async def test_bus_over_tls_keeps_instances_coherent(
        self, tls: TlsEndpoints, certs: Certificates, namespace: str
    ) -> None:
        """Invalidations travel over the TLS bus: B drops its L1 copy after A's write, and
        an InvalidationPublisher over TLS reaches B too."""
        config = tls_config(tls.url(), namespace, ssl_ca_certs=str(certs.ca))
        async with CacheManager(config) as a, CacheManager(config) as b:
            await a.set("k", 1)
            assert 1 == await b.get("k")
            await a.set("k", 2)
            await eventually(lambda: b.l1.get("k") is None)
            assert 2 == await b.get("k")
            async with InvalidationPublisher(config=config) as publisher:
                assert 2 == await publisher.delete("k")
            await eventually(lambda: b.l1.get("k") is None)

    async def test_wrong_ca_fails_cleanly(
        self, tls: TlsEndpoints, certs: Certificates, namespace: str
    ) -> None:
        """Against a CA that did not sign the server's certificate, start() returns (no
        exception), operations work from L1, health is degraded and the log names the
        certificate failure."""
        config = tls_config(tls.url(), namespace, ssl_ca_certs=str(certs.other_ca))
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            async with CacheManager(config) as cache:
                assert time.monotonic() - started < 10
                await cache.set("k", 1)
                assert 1 == await cache.get("k")
                assert None is await cache.get("other")
                assert "degraded" == (await cache.health())["status"]
        failures = [e for e in logs if e["event"] == "l2_unavailable"]
        assert failures and "CERTIFICATE_VERIFY_FAILED" in str(failures[0]), logs

    async def test_system_cas_do_not_trust_a_private_ca(
        self, tls: TlsEndpoints, namespace: str
    ) -> None:
        """Without ssl_ca_certs the system's CAs are used: a private CA is not trusted."""
        config = tls_config(tls.url(), namespace)
        async with CacheManager(config) as cache:
            assert "degraded" == (await cache.health())["status"]

    async def test_hostname_check(
        self, tls: TlsEndpoints, certs: Certificates, namespace: str
    ) -> None:
        """The certificate names 127.0.0.1 only: connecting to the same server as
        localhost fails the host name check, and passes with ssl_check_hostname off."""
        url = tls.url(host="localhost")
        strict = tls_config(url, namespace, ssl_ca_certs=str(certs.ca))
        async with CacheManager(strict) as cache:
            assert "degraded" == (await cache.health())["status"]
        lax = tls_config(url, namespace, ssl_ca_certs=str(certs.ca), ssl_check_hostname=False)
        async with CacheManager(lax) as cache:
            assert "healthy" == (await cache.health())["status"]


class TestClientCertificates:
    """An endpoint that requires a client certificate (tls-auth-clients yes)."""

    async def test_without_client_certificate_degrades(
        self, tls: TlsEndpoints, certs: Certificates, namespace: str
    ) -> None:
        """No client certificate: the handshake fails, start() degrades, nothing raises."""
        config = tls_config(tls.url(mtls=True), namespace, ssl_ca_certs=str(certs.ca))
        async with CacheManager(config) as cache:
            await cache.set("k", 1)
            assert "degraded" == (await cache.health())["status"]
            assert not cache.stats()["l2_cache"]["connected"]

    async def test_with_client_certificate(
        self, tls: TlsEndpoints, certs: Certificates, namespace: str
    ) -> None:
        """With ssl_certfile/ssl_keyfile the manager is healthy, L2 and bus alike."""
        config = tls_config(
            tls.url(mtls=True),
            namespace,
            ssl_ca_certs=str(certs.ca),
            ssl_certfile=str(certs.client_cert),
            ssl_keyfile=str(certs.client_key),
        )
        async with CacheManager(config) as a, CacheManager(config) as b:
            assert "healthy" == (await a.health())["status"]
            await a.set("k", 1)
            assert 1 == await b.get("k")
            await a.delete("k")
            await eventually(lambda: b.l1.get("k") is None)

    async def test_encrypted_key_with_password_never_leaks(
        self, tls: TlsEndpoints, certs: Certificates, namespace: str
    ) -> None:
        """An encrypted client key opens with ssl_password; the password appears in no
        repr, str, stats, health or log line."""
        config = tls_config(
            tls.url(mtls=True),
            namespace,
            ssl_ca_certs=str(certs.ca),
            ssl_certfile=str(certs.client_cert),
            ssl_keyfile=str(certs.client_key_encrypted),
            ssl_password=SecretStr(KEY_PASSWORD),
        )
        seen: list[str] = [repr(config), str(config)]
        with structlog.testing.capture_logs() as logs:
            async with CacheManager(config) as cache:
                health = await cache.health()
                assert "healthy" == health["status"]
                seen += [repr(cache), str(cache.stats()), str(health)]
        seen += [str(entry) for entry in logs]
        assert not [text for text in seen if KEY_PASSWORD in text]


class TestTlsConfiguration:
    """TLS options are checked when the config is built."""

    def test_missing_file(self, tmp_path: Path) -> None:
        """A CA, certificate or key file that does not exist is a ConfigurationError
        naming the field."""
        for field in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            fields: dict[str, Any] = {field: str(tmp_path / "x")}
            with pytest.raises(ConfigurationError) as info:
                CacheConfig(redis_url="rediss://127.0.0.1:1/0", **fields)
            assert field == info.value.field

    def test_tls_options_need_rediss(self, certs: Certificates) -> None:
        """TLS options with a redis:// URL (or none) are an error rather than ignored."""
        for url in ("redis://127.0.0.1:1/0", None):
            with pytest.raises(ConfigurationError, match="rediss://") as info:
                CacheConfig(redis_url=url, ssl_ca_certs=str(certs.ca))
            assert "ssl_ca_certs" == info.value.field

    def test_key_needs_certificate(self, certs: Certificates) -> None:
        """ssl_keyfile without ssl_certfile is an error."""
        with pytest.raises(ConfigurationError, match="ssl_certfile"):
            CacheConfig(redis_url="rediss://127.0.0.1:1/0", ssl_keyfile=str(certs.client_key))

    def test_options_reach_redis_py(self, certs: Certificates) -> None:
        """tls_options() holds redis-py's SSLConnection arguments; none for redis://."""
        config = CacheConfig(
            redis_url="rediss://127.0.0.1:1/0",
            ssl_ca_certs=str(certs.ca),
            ssl_cert_reqs="none",
            ssl_password=SecretStr("pw"),
            ssl_certfile=str(certs.client_cert),
        )
        assert {
            "ssl_ca_certs": str(certs.ca),
            "ssl_certfile": str(certs.client_cert),
            "ssl_cert_reqs": "none",
            "ssl_check_hostname": False,
            "ssl_password": "pw",
        } == config.tls_options()
        assert {} == CacheConfig(redis_url="redis://127.0.0.1:1/0").tls_options()
