"""Security: AUTH and least-privilege ACL users, HMAC-signed bus messages, size limits.

The ACL tests run against a server of this module started with ``requirepass``; the ACL
line they grant is read from docs/security.md, so the documented line is the tested one.
TLS has its own module (tests/test_tls.py).
"""

from __future__ import annotations

import functools
import hmac
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import structlog
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import SecretStr
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from coherent_cache import (
    CacheConfig,
    CacheManager,
    ConfigurationError,
    InvalidationPublisher,
    ValueTooLargeError,
)
from coherent_cache.serializer import CacheSerializer
from coherent_cache.testing import RedisServer

from .conftest import ManagerFactory, eventually

ROOT = Path(__file__).resolve().parent.parent
SECURITY_DOC = (ROOT / "docs" / "security.md").read_text()
OPERATIONS_DOC = (ROOT / "docs" / "operations.md").read_text()
ADMIN_PASSWORD = "admin-s3cret-pw"
APP_PASSWORD = "app-s3cret-pw"
KEY_A = "signing-key-A-0123456789abcdef"
KEY_B = "signing-key-B-0123456789abcdef"


def documented_acl_line() -> str:
    """The ``ACL SETUSER myapp ...`` line of docs/security.md (one line, in a code block)."""
    lines = [line for line in SECURITY_DOC.splitlines() if line.startswith("ACL SETUSER myapp ")]
    assert 1 == len(lines), "docs/security.md must show the ACL line exactly once"
    return lines[0]


def acl_command(namespace: str, password: str) -> list[str]:
    """The documented line for ``namespace`` (user name = namespace) and ``password``."""
    line = documented_acl_line().replace("myapp", namespace)
    return [part.replace(">app-password", ">" + password) for part in line.split()]


@pytest.fixture(scope="module")
def auth_server() -> Iterator[RedisServer]:
    """A server of this module that requires a password for the default user."""
    with RedisServer(extra_args=("--requirepass", ADMIN_PASSWORD)) as server:
        yield server


@pytest.fixture
async def admin(auth_server: RedisServer, namespace: str) -> AsyncIterator[Redis]:
    """An admin client; removes this test's keys and ACL user afterwards."""
    client = Redis(
        host=auth_server.host, port=auth_server.port, password=ADMIN_PASSWORD, socket_timeout=5
    )
    await client.execute_command("ACL", "LOG", "RESET")  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        for pattern in (f"{namespace}:*", f"{namespace}#*", "other:*"):
            async for name in client.scan_iter(match=pattern, count=1000):
                await client.unlink(name)
        await client.execute_command("ACL", "DELUSER", namespace)  # type: ignore[no-untyped-call]
        await client.aclose()


@pytest.fixture
async def app_url(admin: Redis, auth_server: RedisServer, namespace: str) -> str:
    """A URL with the credentials of a least-privilege user for ``namespace``."""
    await admin.execute_command(*acl_command(namespace, APP_PASSWORD))  # type: ignore[no-untyped-call]
    return f"redis://{namespace}:{APP_PASSWORD}@127.0.0.1:{auth_server.port}/0"


async def acl_denials(admin: Redis) -> list[Any]:
    """The server's ACL LOG: every command the server refused since the test began."""
    return list(await admin.execute_command("ACL", "LOG"))  # type: ignore[no-untyped-call]


class TestLeastPrivilegeAcl:
    """The whole library works under the documented ACL user, and nothing more."""

    def test_doc_line_is_in_operations_too(self) -> None:
        """docs/operations.md shows the same ACL line as docs/security.md."""
        assert documented_acl_line() in OPERATIONS_DOC

    async def test_library_works_under_the_acl_user(
        self, app_url: str, admin: Redis, namespace: str
    ) -> None:
        """get/set/delete/clear_pattern/clear, tags, get_or_set with the loader lock, bus
        coherence between two managers, health and the fleet reports all work, and the
        server refused no command at all (its ACL LOG stays empty)."""
        config = CacheConfig(redis_url=app_url, namespace=namespace, lock_lease=1.0)
        async with CacheManager(config) as a, CacheManager(config) as b:
            assert "healthy" == (await a.health())["status"]
            assert await a.set("user:1", {"n": 1}, tags=["users"])
            assert {"n": 1} == await b.get("user:1")  # from L2, now in B's L1
            assert await a.set("user:1", {"n": 2})
            await eventually(lambda: b.l1.get("user:1") is None)  # the bus, under the ACL
            assert {"n": 2} == await b.get("user:1")
            assert await a.delete("user:1")
            await eventually(lambda: b.l1.get("user:1") is None)

            calls = 0

            async def load() -> str:
                nonlocal calls
                calls += 1
                return "loaded"

            assert "loaded" == await a.get_or_set("locked", load, lock=True)
            assert "loaded" == await b.get_or_set("locked", load, lock=True)
            assert 1 == calls

            await a.set("page:1", 1, tags=["pages"])
            await a.set("page:2", 2, tags=["pages"])
            # The L2 calls the manager makes elsewhere (warming, tag pruning, TTL reads).
            l2 = a.l2
            assert l2 is not None
            assert await l2.set_many({"m:1": 1, "m:2": 2}, ttl=60)
            assert {"m:1": 1, "m:2": 2} == await l2.get_many(["m:1", "m:2", "m:3"])
            assert await l2.exists("m:1")
            found = await l2.get_with_ttl("m:1")
            assert found is not None and 1 == found[0]
            assert found[1] is not None and 50 < found[1] <= 60
            await l2.delete_many(["page:1"])
            assert 1 == await l2.prune_tag("pages")
            assert 1 == await a.invalidate_tags("pages")
            await a.set("p:1", 1)
            await a.set("p:2", 2)
            assert 2 == await a.clear_pattern("p:*")
            await a.set("q", 1)
            assert 1 <= await a.clear()
            assert None is await b.get("q")
            for manager in (a, b):
                stats = manager.stats()
                assert (0, 0) == (stats["l2_cache"]["errors"], stats["bus"]["dropped"])
                assert "healthy" == (await manager.health())["status"]

            async def listed() -> list[str]:
                return sorted(report["origin"] for report in await a.fleet())

            # Both report (and pruned, on their first report) under the ACL user.
            await eventually(listed, expect=sorted([a.origin, b.origin]))
        assert [] == await acl_denials(admin)

    async def test_client_tracking_works_under_the_acl_user(
        self, app_url: str, admin: Redis, namespace: str
    ) -> None:
        """With ``client_tracking`` (and the bus off), the documented user turns tracking on
        and receives invalidations: a write by another client drops the L1 copy, and the
        server refused nothing."""
        config = CacheConfig(
            redis_url=app_url, namespace=namespace, client_tracking=True,
            enable_invalidation_bus=False,
        )  # fmt: skip
        async with CacheManager(config) as cache:
            assert cache.stats()["tracking"]["connected"]
            assert "healthy" == (await cache.health())["status"]
            assert await cache.set("user:1", 1)
            await eventually(lambda: cache.stats()["tracking"]["messages"] >= 1)
            assert 1 == await cache.get("user:1")
            await eventually(lambda: cache.l1.get("user:1") == 1)
            await admin.set(f"{namespace}:user:1", b"2")
            await eventually(lambda: cache.l1.get("user:1") is None)
        assert [] == await acl_denials(admin)

    async def test_user_cannot_touch_another_namespace(
        self, app_url: str, admin: Redis, namespace: str
    ) -> None:
        """The ACL user gets NOPERM reading or writing another namespace's keys, publishing
        or subscribing to its channel. SCAN is not filtered by key patterns: it shows the
        names (not values) of other keys (documented in docs/security.md)."""
        await admin.set("other:secret", "x")
        client = Redis.from_url(app_url, socket_timeout=5)
        try:
            for command in (
                ("GET", "other:secret"),
                ("SET", "other:secret", "poisoned"),
                ("UNLINK", "other:secret"),
                ("PUBLISH", "other:invalidate", '{"v":1,"op":"clear"}'),
                ("FLUSHALL",),
                ("KEYS", "*"),
                ("CONFIG", "GET", "requirepass"),
                ("SUBSCRIBE", "other:invalidate"),
            ):
                with pytest.raises(redis_errors.NoPermissionError):
                    await client.execute_command(*command)  # type: ignore[no-untyped-call]
            assert [b"other:secret"] == (await client.scan(0, match="other:*", count=1000))[1]
        finally:
            await client.aclose()
        assert b"x" == await admin.get("other:secret")

    async def test_manager_on_a_forbidden_namespace_degrades(
        self, app_url: str, namespace: str
    ) -> None:
        """A manager pointed at a namespace its user may not touch never raises: writes
        report False, reads miss, health is degraded (the bus cannot subscribe)."""
        config = CacheConfig(redis_url=app_url, namespace="other", connect_timeout=0.5)
        with structlog.testing.capture_logs() as logs:
            async with CacheManager(config) as cache:
                await cache.set("k", 1)
                assert 1 == await cache.get("k")  # from its own L1
                assert "degraded" == (await cache.health())["status"]
        assert any("NOPERM" in str(entry) or "NoPermission" in str(entry) for entry in logs)


class TestAuth:
    """Passwords in the URL or in redis_username/redis_password; wrong ones degrade."""

    async def test_username_and_password_fields(
        self, app_url: str, auth_server: RedisServer, namespace: str
    ) -> None:
        """redis_username/redis_password with a URL without credentials connect the ACL
        user (the bus too)."""
        config = CacheConfig(
            redis_url=f"redis://127.0.0.1:{auth_server.port}/0",
            redis_username=namespace,
            redis_password=SecretStr(APP_PASSWORD),
            namespace=namespace,
        )
        async with CacheManager(config) as cache:
            assert "healthy" == (await cache.health())["status"]
            assert await cache.set("k", 1)

    def test_credentials_in_both_places_are_an_error(self) -> None:
        """A password (or user) both in the URL and in the fields is refused: redis-py
        would silently let the URL win. The message quotes neither password."""
        with pytest.raises(ConfigurationError) as info:
            CacheConfig(
                redis_url="redis://:url-pw@127.0.0.1/0", redis_password=SecretStr("field-pw")
            )
        assert "redis_password" == info.value.field
        assert "url-pw" not in str(info.value) and "field-pw" not in str(info.value)
        with pytest.raises(ConfigurationError, match="redis_username"):
            CacheConfig(redis_url="redis://u@127.0.0.1/0", redis_username="v")

    async def test_wrong_password_degrades_with_a_clear_reason(
        self, app_url: str, namespace: str
    ) -> None:
        """With a wrong password start() returns (no exception), the manager serves from
        L1, health is degraded, and the log names the authentication failure without the
        password (right or wrong) anywhere."""
        wrong = "wr0ng-pass-" + APP_PASSWORD
        url = app_url.replace(APP_PASSWORD, wrong)
        config = CacheConfig(redis_url=url, namespace=namespace, connect_timeout=0.5)
        seen: list[str] = []
        with structlog.testing.capture_logs() as logs:
            cache = CacheManager(config)
            started = time.monotonic()
            async with cache:
                assert time.monotonic() - started < 5
                await cache.set("k", 1)
                assert 1 == await cache.get("k")
                health = await cache.health()
                assert "degraded" == health["status"]
                seen += [repr(cache), repr(config), str(config), str(cache.stats()), str(health)]
        seen += [str(entry) for entry in logs]
        assert any(
            entry.get("error") == "AuthenticationError" and entry["event"] == "l2_unavailable"
            for entry in logs
        ), logs
        assert not [text for text in seen if APP_PASSWORD in text]


def _sign_independently(body: bytes, channel: str, key: str) -> bytes:
    """Sign a message as docs/protocol.md describes it, without the library's code."""
    mac = hmac.new(
        key.encode(), b"coherent_cache.bus.v1\n" + channel.encode() + b"\n" + body, "sha256"
    ).hexdigest()
    return body[:-1] + b',"sig":"' + mac.encode() + b'"}'


class TestSignedBus:
    """bus_signing_keys: only holders of a key can invalidate other instances."""

    async def test_signed_managers_stay_coherent(self, make_manager: ManagerFactory) -> None:
        """Two managers with the same key apply each other's invalidations."""
        a = await make_manager(bus_signing_keys=(SecretStr(KEY_A),))
        b = await make_manager(bus_signing_keys=(SecretStr(KEY_A),))
        await a.set("k", 1)
        assert 1 == await b.get("k")
        await a.delete("k")
        await eventually(lambda: b.l1.get("k") is None)
        assert (0, 0) == (b.stats()["bus"]["dropped"], b.stats()["bus"]["unauthenticated"])

    async def test_publisher_without_the_key_cannot_flush(
        self, make_manager: ManagerFactory, raw_redis: Redis, redis_url: str, namespace: str
    ) -> None:
        """A client that can PUBLISH but has no key (unsigned, signed with another key, or
        a signed message altered) cannot drop entries: each message is dropped, counted
        and logged without the key."""
        b = await make_manager(bus_signing_keys=(SecretStr(KEY_A),))
        await b.set("k", 1)
        channel = b.config.channel
        unsigned = orjson.dumps({"v": 1, "op": "clear"})
        wrong_key = _sign_independently(unsigned, channel, KEY_B)
        altered = _sign_independently(
            orjson.dumps({"v": 1, "op": "delete", "keys": ["x"]}), channel, KEY_A
        ).replace(b'"x"', b'"k"')
        other_channel = _sign_independently(unsigned, "elsewhere:invalidate", KEY_A)
        with structlog.testing.capture_logs() as logs:
            for data in (unsigned, wrong_key, altered, other_channel):
                await raw_redis.publish(channel, data)
            await eventually(lambda: b.stats()["bus"]["unauthenticated"], expect=4)
        assert 1 == b.l1.get("k")
        assert 4 == b.stats()["bus"]["dropped"]
        refused = [e for e in logs if e["event"] == "bus_message_unauthenticated"]
        assert ["unsigned", "bad signature", "bad signature", "bad signature"] == [
            e["reason"] for e in refused
        ]
        assert not [e for e in logs if KEY_A in str(e) or KEY_B in str(e)]

    async def test_independently_signed_message_is_accepted(
        self, make_manager: ManagerFactory, raw_redis: Redis
    ) -> None:
        """A message signed from docs/protocol.md's description alone (stdlib hmac, a
        JSON body with spaces, as another language might write it) is applied."""
        b = await make_manager(bus_signing_keys=(SecretStr(KEY_A),))
        await b.set("k", 1)
        body = b'{"v": 1, "op": "delete", "keys": ["k"], "origin": "go-service"}'
        await raw_redis.publish(
            b.config.channel, _sign_independently(body, b.config.channel, KEY_A)
        )
        await eventually(lambda: b.l1.get("k") is None)
        assert 0 == b.stats()["bus"]["unauthenticated"]

    async def test_key_rotation(self, make_manager: ManagerFactory) -> None:
        """Mid-rotation, an instance signing with the new key ([new, old]) and one still
        signing with the old key ([old, new]) accept each other's messages."""
        new = await make_manager(bus_signing_keys=[KEY_B, KEY_A])
        old = await make_manager(bus_signing_keys=[KEY_A, KEY_B])
        for writer, reader in ((new, old), (old, new)):
            await reader.set("k", 1)
            await writer.delete("k")
            await eventually(functools.partial(reader.l1.get, "k"), expect=None)
        assert 0 == new.stats()["bus"]["unauthenticated"] + old.stats()["bus"]["unauthenticated"]

    async def test_unsigned_instance_is_ignored_by_signed_one(
        self, make_manager: ManagerFactory
    ) -> None:
        """Turning signing on is all-or-nothing: an instance without keys is not trusted,
        while it still accepts signed messages (it ignores the "sig" field)."""
        signed = await make_manager(bus_signing_keys=(SecretStr(KEY_A),))
        plain = await make_manager()
        await signed.set("k", 1)
        await plain.delete("k")
        await eventually(lambda: signed.stats()["bus"]["unauthenticated"], expect=1)
        assert 1 == signed.l1.get("k")
        await plain.set("j", 1)  # publishes an (unsigned) delete of "j" too
        await eventually(lambda: signed.stats()["bus"]["unauthenticated"], expect=2)
        await signed.delete("j")
        await eventually(lambda: plain.l1.get("j") is None)

    async def test_publisher_and_cli_sign(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str
    ) -> None:
        """InvalidationPublisher and `coherent-cache invalidate` sign with the configured
        key, so signed instances apply their invalidations."""
        b = await make_manager(bus_signing_keys=(SecretStr(KEY_A),))
        await b.set("k1", 1)
        await b.set("k2", 2)
        config = CacheConfig(
            redis_url=redis_url, namespace=namespace, bus_signing_keys=(SecretStr(KEY_A),)
        )
        async with InvalidationPublisher(config=config) as publisher:
            assert 1 == await publisher.delete("k1")
        await eventually(lambda: b.l1.get("k1") is None)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("COHERENT_CACHE_")},
            "COHERENT_CACHE_BUS_SIGNING_KEYS": KEY_A,
        }
        with anyio.fail_after(30):
            result = await anyio.run_process(
                [sys.executable, "-m", "coherent_cache.cli", "invalidate", "--redis-url",
                 redis_url, "--namespace", namespace, "--key", "k2"],
                check=False, env=env,
            )  # fmt: skip
        output = (result.stdout + result.stderr).decode()
        assert 0 == result.returncode, output
        assert KEY_A not in output
        await eventually(lambda: b.l1.get("k2") is None)
        assert 0 == b.stats()["bus"]["unauthenticated"]

    async def test_watch_verifies_signatures(
        self, raw_redis: Redis, redis_url: str, namespace: str
    ) -> None:
        """`coherent-cache watch` with the key shows an unsigned message as invalid
        (reason "unsigned") and a signed one as valid, without printing the key."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("COHERENT_CACHE_")},
            "COHERENT_CACHE_BUS_SIGNING_KEYS": KEY_A,
        }
        command = [sys.executable, "-m", "coherent_cache.cli", "watch", "--redis-url",
                   redis_url, "--namespace", namespace, "--count", "2"]  # fmt: skip
        channel = f"{namespace}:invalidate"
        body = b'{"v":1,"op":"delete","keys":["k"]}'
        async with await anyio.open_process(command, env=env) as process:
            assert process.stdout is not None and process.stderr is not None
            stderr = BufferedByteReceiveStream(process.stderr)
            with anyio.fail_after(20):
                assert b"watching" in await stderr.receive_until(b"\n", 1 << 16)
                await raw_redis.publish(channel, body)
                await raw_redis.publish(channel, _sign_independently(body, channel, KEY_A))
                assert 0 == await process.wait()
                out = b"".join([chunk async for chunk in process.stdout])
        lines = [orjson.loads(line) for line in out.splitlines()]
        assert [(False, "unsigned"), (True, None)] == [
            (line["valid"], line.get("reason")) for line in lines
        ]
        assert KEY_A.encode() not in out

    async def test_max_age_drops_replays(
        self, make_manager: ManagerFactory, raw_redis: Redis
    ) -> None:
        """With bus_signature_max_age, a correctly signed message with an old (replayed) or
        missing ts is dropped; a fresh one is applied."""
        b = await make_manager(bus_signing_keys=[KEY_A], bus_signature_max_age=30)
        await b.set("k", 1)
        channel = b.config.channel
        old_ts = int(time.time() * 1000) - 60_000
        for body in (
            {"v": 1, "op": "delete", "keys": ["k"], "ts": old_ts},
            {"v": 1, "op": "delete", "keys": ["k"]},
        ):
            await raw_redis.publish(
                channel, _sign_independently(orjson.dumps(body), channel, KEY_A)
            )
        await eventually(lambda: b.stats()["bus"]["unauthenticated"], expect=2)
        assert 1 == b.l1.get("k")
        fresh = {"v": 1, "op": "delete", "keys": ["k"], "ts": int(time.time() * 1000)}
        await raw_redis.publish(channel, _sign_independently(orjson.dumps(fresh), channel, KEY_A))
        await eventually(lambda: b.l1.get("k") is None)

    def test_max_age_needs_keys(self) -> None:
        """bus_signature_max_age without bus_signing_keys is a configuration error."""
        with pytest.raises(ConfigurationError) as info:
            CacheConfig(bus_signature_max_age=30)
        assert "bus_signature_max_age" == info.value.field

    def test_short_key_rejected_without_quoting_it(self) -> None:
        """A signing key under 16 bytes is a ConfigurationError that does not quote it."""
        with pytest.raises(ConfigurationError) as info:
            CacheConfig(bus_signing_keys=(SecretStr("short-key"),))
        assert "bus_signing_keys" == info.value.field
        assert "short-key" not in str(info.value)

    def test_keys_from_environment(self) -> None:
        """COHERENT_CACHE_BUS_SIGNING_KEYS is comma-separated; the first key signs."""
        config = CacheConfig.from_env(
            {"COHERENT_CACHE_BUS_SIGNING_KEYS": f"{KEY_B}, {KEY_A}"}, redis_url=None
        )
        assert (KEY_B.encode(), KEY_A.encode()) == config.signing_keys()


class TestSizeLimits:
    """max_value_size on writes and reads; key length; bus message size."""

    async def test_oversized_write_raises_and_writes_nothing(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """set() of a value over max_value_size raises ValueTooLargeError naming the limit;
        neither tier holds the key afterwards."""
        cache = await make_manager(max_value_size=1000, enable_compression=False)
        with pytest.raises(ValueTooLargeError, match="max_value_size 1000") as info:
            await cache.set("big", "x" * 2000)
        assert (1000, "big") == (info.value.limit, info.value.key)
        assert None is cache.l1.get("big")
        assert 0 == await raw_redis.exists(f"{namespace}:big")

    async def test_oversized_payload_in_redis_is_a_counted_miss(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A valid payload larger than this instance's max_value_size, written straight
        into Redis (e.g. by a writer with a larger limit or an attacker), is a miss counted
        in rejected_payloads, never decoded into L1."""
        cache = await make_manager(max_value_size=1000)
        payload = CacheSerializer(compression=False).serialize("y" * 5000)
        await raw_redis.set(f"{namespace}:big", payload)
        assert "default" == await cache.get("big", default="default")
        assert 1 == cache.stats()["l2_cache"]["rejected_payloads"]
        assert None is cache.l1.get("big")

    def test_key_limit_documented(self) -> None:
        """docs/security.md states the key limit that validate_key enforces."""
        assert re.search(r"1024 bytes", SECURITY_DOC)


class TestSecretsInErrors:
    """ConfigurationError messages never quote a secret, whatever check fails."""

    @pytest.mark.parametrize(
        "fields",
        [
            {"sentinel_master": "m"},  # a check across fields (its input: the whole config)
            {"ssl_cert_reqs": "none"},  # TLS option on a redis:// URL
            {"redis_password": SecretStr("pw-field-s3cret")},  # password in URL and field
            {"namespace": "a:b"},  # a plain field error next to the secrets
            {"bus_signing_keys": "s3cret-but-too-short"[:12]},
        ],
    )
    def test_no_secret_in_message(self, fields: dict[str, Any]) -> None:
        """Secrets in the URL, redis_password, ssl_password and bus_signing_keys stay out of
        the message of any ConfigurationError."""
        base: dict[str, Any] = {
            "redis_url": "redis://:url-s3cret@127.0.0.1:6379/0",
            "bus_signing_keys": (SecretStr("signing-s3cret-0123456789"),),
        }
        with pytest.raises(ConfigurationError) as info:
            CacheConfig(**{**base, **fields})
        assert "s3cret" not in str(info.value)
        assert "s3cret" not in repr(info.value.args)
