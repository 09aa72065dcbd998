"""Client tracking (issue 16): writes by anyone make every tracking instance drop its L1 copy.

Instances run in separate OS processes (`tests.support.worker`) with the bus off, so only
tracking can invalidate them; the foreign writers are a plain redis-py client,
``valkey-cli``, a Lua script, the server's own expiry and a coherent_cache instance
without tracking or bus.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager, HealthReport
from coherent_cache._invalidation import TrustGate
from coherent_cache.fleet import build_report
from coherent_cache.l1 import InMemoryCache
from coherent_cache.serializer import CacheSerializer
from coherent_cache.testing import RedisServer, find_server_binary

from .conftest import FakeClock, ManagerFactory, eventually
from .support.multiproc import MISSING, Worker
from .support.proxy import HoldingProxy

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {
    "bus_health_check_interval": 0.2,
    "operation_timeout": 0.3,
    "connect_timeout": 0.5,
}
TRACKING: dict[str, Any] = {"client_tracking": True, "enable_invalidation_bus": False, **FAST}
BOUND = 5.0
"""The bus-latency bound the coherence tests use: an instance stops serving within it."""

KEYS = ("set", "del", "unlink", "expire", "pexpire", "lua", "cli", "expires", "peer", "keep")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One event loop for the module, so the instances' processes are started once."""
    return "asyncio"


@pytest.fixture(scope="module")
def ns() -> str:
    """The module's namespace (the tests use distinct keys in it)."""
    return f"trk{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
async def trackers(redis_url: str, ns: str) -> AsyncIterator[list[Worker]]:
    """Two tracking instances (bus off), each in its own process, after L2 holds ``KEYS``."""
    payload = CacheSerializer().serialize("old")
    async with Redis.from_url(redis_url) as client:
        for key in KEYS:
            await client.set(f"{ns}:{key}", payload)
    async with (
        Worker(redis_url=redis_url, namespace=ns, **TRACKING) as a,
        Worker(redis_url=redis_url, namespace=ns, **TRACKING) as b,
    ):
        yield [a, b]


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    """A plain redis-py client: the foreign writer."""
    async with Redis.from_url(redis_url, socket_timeout=5) as client:
        yield client


async def plant(workers: list[Worker], *keys: str) -> None:
    """Put ``"old"`` under ``keys`` into every worker's L1 (L1 only: nothing is sent)."""
    for worker in workers:
        for key in keys:
            await worker.call("set", key=key, value="old", tier="l1", ttl=300)
            assert "old" == await worker.call("peek", key=key)


async def all_gone(workers: list[Worker], key: str, within: float = BOUND) -> None:
    """Every worker stops serving ``key`` from L1 within ``within`` seconds."""
    for worker in workers:
        assert None is not await worker.call("wait_gone", key=key, within=within), key


def valkey_cli(redis_url: str, *args: str) -> str:
    """Run ``valkey-cli`` (shipped next to the server binary) against ``redis_url``."""
    parts = urlsplit(redis_url)
    cli = find_server_binary().parent / "valkey-cli"
    if not cli.exists():
        cli = find_server_binary().parent / "redis-cli"
    done = subprocess.run(
        [str(cli), "-h", str(parts.hostname), "-p", str(parts.port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout


class TestForeignWrites:
    async def test_every_kind_of_write_drops_the_l1_copy(
        self, trackers: list[Worker], raw: Redis, redis_url: str, ns: str
    ) -> None:
        """SET, DEL, UNLINK, EXPIRE, PEXPIRE, a Lua script and valkey-cli, each by a client
        that is not a cache instance, make both instances drop the key."""
        await plant(trackers, *KEYS)
        await raw.set(f"{ns}:set", b"new")
        await all_gone(trackers, "set")
        await raw.delete(f"{ns}:del")
        await all_gone(trackers, "del")
        await raw.unlink(f"{ns}:unlink")
        await all_gone(trackers, "unlink")
        await raw.expire(f"{ns}:expire", 100)
        await all_gone(trackers, "expire")
        await raw.pexpire(f"{ns}:pexpire", 100_000)
        await all_gone(trackers, "pexpire")
        await raw.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, f"{ns}:lua", "new")
        await all_gone(trackers, "lua")
        await anyio.to_thread.run_sync(valkey_cli, redis_url, "SET", f"{ns}:cli", "new")
        await all_gone(trackers, "cli")
        for worker in trackers:  # the untouched keys stay
            assert "old" == await worker.call("peek", key="peer")
            stats = (await worker.call("stats"))["tracking"]
            assert stats["enabled"] and stats["connected"] and 1 == stats["channels"]
            assert stats["keys_dropped"] >= 7 and stats["messages"] >= 7

    async def test_expiry_in_l2_drops_the_l1_copy(
        self, trackers: list[Worker], raw: Redis, ns: str
    ) -> None:
        """A key that expires in Redis is dropped from L1 when it expires, not at L1's TTL."""
        await raw.pexpire(f"{ns}:expires", 400)
        await anyio.sleep(0.1)  # let the PEXPIRE's own invalidation arrive first
        await plant(trackers, "expires")  # an L1 copy for 300 s
        await all_gone(trackers, "expires")
        assert 0 == await raw.exists(f"{ns}:expires")

    async def test_a_cache_instance_without_bus_writing(
        self, trackers: list[Worker], redis_url: str, ns: str
    ) -> None:
        """A coherent_cache instance with the bus off (and no tracking) writes: the
        tracking instances drop the key, and then read its value."""
        await plant(trackers, "peer")
        async with Worker(
            redis_url=redis_url, namespace=ns, enable_invalidation_bus=False, **FAST
        ) as writer:
            await writer.call("set", key="peer", value="new")
            await all_gone(trackers, "peer")
            for worker in trackers:
                assert "new" == await worker.call("get", key="peer")

    async def test_other_namespaces_drop_nothing(
        self, trackers: list[Worker], raw: Redis, ns: str
    ) -> None:
        """Writes under ``<ns>2:``, ``<ns>x``, ``other:`` and ``<ns>#...`` drop nothing; a
        later write under ``<ns>:`` (its message comes after theirs) is seen."""
        await plant(trackers, "set", "marker")
        for name in (f"{ns}2:set", f"{ns}xset", f"{ns}", "other:set"):
            await raw.set(name, b"new")
            await raw.delete(name)
        await raw.set(f"{ns}:marker", b"new")
        await all_gone(trackers, "marker")
        for worker in trackers:
            assert "old" == await worker.call("peek", key="set")
        await raw.delete(f"{ns}2:set", f"{ns}xset")


class TestLossAndRecovery:
    async def test_client_kill_of_every_connection_recovers(
        self, trackers: list[Worker], raw: Redis, ns: str
    ) -> None:
        """CLIENT KILL of every normal and pub/sub connection: each instance counts a loss,
        flushes L1 on recovery, reports healthy again, and tracking works again."""
        await plant(trackers, "set", "peer")
        await raw.client_kill_filter(_type="pubsub")
        await raw.client_kill_filter(_type="normal", skipme=True)
        for worker in trackers:

            async def recovered(worker: Worker = worker) -> bool:
                stats = (await worker.call("stats"))["tracking"]
                return bool(stats["losses"] >= 1 and stats["recoveries"] >= 1)

            await eventually(recovered, within=10, interval=0.05)
            for key in ("set", "peer"):  # flushed on recovery
                assert MISSING == await worker.call("peek", key=key)

            async def healthy(worker: Worker = worker) -> str:
                return str((await worker.call("health"))["status"])

            await eventually(healthy, expect="healthy", within=10, interval=0.05)
        await plant(trackers, "set")
        await raw.set(f"{ns}:set", b"newer")
        await all_gone(trackers, "set")


async def test_flushdb_flushes_l1(private_server: RedisServer) -> None:
    """FLUSHDB (here from valkey-cli) empties every instance's L1. On a server of this
    test's own: the module's may be an external one (COHERENT_CACHE_TEST_REDIS_URL)."""
    url, ns = private_server.url, f"trk{uuid.uuid4().hex[:10]}"
    async with (
        Worker(redis_url=url, namespace=ns, **TRACKING) as a,
        Worker(redis_url=url, namespace=ns, **TRACKING) as b,
    ):
        await plant([a, b], "set", "peer", "not-in-redis")
        await anyio.to_thread.run_sync(valkey_cli, url, "FLUSHDB")
        for key in ("set", "peer", "not-in-redis"):
            await all_gone([a, b], key)
        for worker in (a, b):
            assert (await worker.call("stats"))["tracking"]["flushes"] >= 2


async def test_health_names_the_tracking_channel(make_manager: ManagerFactory) -> None:
    """While a tracking connection is down, health is degraded with a reason naming
    tracking, and the stats say it is not connected."""
    cache = await make_manager(**TRACKING)
    assert cache.tracking is not None
    stats = (await cache.get_stats())["tracking"]
    assert stats["enabled"] and stats["connected"]
    report = await cache.health()
    assert "healthy" == report["status"]
    assert "connected" == fleet_state(cache, report)
    for channel in cache.tracking.channels.values():
        channel.connected = False
    report = await cache.health()
    assert not cache.stats()["tracking"]["connected"]
    assert "degraded" == report["status"]
    assert any(reason.startswith("tracking disconnected") for reason in report["reasons"])
    assert "disconnected" == fleet_state(cache, report)


def fleet_state(cache: CacheManager, report: HealthReport) -> str | None:
    """The ``tracking`` field of the instance's fleet report."""
    fleet = build_report(
        cache.stats(), report, config=cache.config, origin=cache.origin, started_at=0.0
    )
    return fleet["tracking"]


async def test_tracking_off_reports_disabled(make_manager: ManagerFactory) -> None:
    """Without client_tracking: ``tracking`` stats say disabled, with zeros."""
    cache = await make_manager()
    assert cache.tracking is None
    stats = (await cache.get_stats())["tracking"]
    assert not stats["enabled"] and 0 == stats["messages"] == stats["channels"]
    assert None is fleet_state(cache, await cache.health())


async def test_own_write_and_bus_drop_the_key_once(make_manager: ManagerFactory) -> None:
    """With bus and tracking on, another instance's delete reaches this one twice (the bus
    message and its UNLINK's tracking message): the key is dropped, counted once."""
    a = await make_manager(client_tracking=True, **FAST)
    b = await make_manager(client_tracking=True, **FAST)
    await a.set("k", 1)
    assert b.tracking is not None

    async def held() -> bool:
        return bool(1 == await b.get("k") and b.l1.peek("k") == 1)

    await eventually(held)
    before = b.stats()["tracking"]
    applied = b.stats()["bus"]["mailbox"]["applied"]
    await a.delete("k")
    await eventually(lambda: b.stats()["tracking"]["messages"] > before["messages"])
    await eventually(lambda: b.stats()["bus"]["applied"] > 0)
    # Both messages are counted on arrival; the L1 actor may apply them a moment later.
    await eventually(
        lambda: b.l1.peek("k") is None and b.stats()["bus"]["mailbox"]["applied"] >= applied + 2
    )
    assert 1 >= b.stats()["tracking"]["keys_dropped"] - before["keys_dropped"]


class TestTrustGate:
    def test_l1_is_trusted_only_while_every_channel_is_up(self, clock: FakeClock) -> None:
        """Bus and tracking lost and recovered independently: L1 stays distrusted while
        either is down, bounded from the earliest loss of those still down."""
        l1 = InMemoryCache(maxsize=10, ttl=300, timer=clock)
        gate = TrustGate(l1, max_stale=5.0)
        l1.set("k", 1)
        gate.down("bus", clock())
        clock.tick(2)
        gate.down("tracking", clock())
        gate.up("bus")
        assert l1.distrusted  # tracking still down
        clock.tick(2)
        l1.set("fresh", 2)
        clock.tick(2)  # k: 4 s after the tracking loss; it was written before it
        assert 1 == l1.get("k") and 2 == l1.get("fresh")
        clock.tick(1.5)
        assert l1.get("k") is None and 2 == l1.get("fresh")
        gate.up("tracking")
        assert not l1.distrusted
        clock.tick(100)
        assert 2 == l1.get("fresh")

    def test_channel_view_is_shaped_like_the_l1(self, clock: FakeClock) -> None:
        """The bus's view (`ChannelTrust`) distrusts and trusts through the gate."""
        l1 = InMemoryCache(maxsize=10, ttl=300, timer=clock)
        gate = TrustGate(l1, max_stale=5.0)
        bus, tracking = gate.channel("bus"), gate.channel("tracking")
        bus.distrust(clock(), 5.0)
        tracking.distrust(clock(), 5.0)
        bus.trust()
        assert l1.distrusted and ["tracking"] == gate.down_channels
        tracking.trust()
        assert not l1.distrusted and [] == gate.down_channels


async def test_prefix_mapping_is_exact() -> None:
    """Only keys under ``<namespace>:`` map back (to the key after it); others count as
    ignored; a nil payload is a flush."""
    config = CacheConfig(redis_url="redis://127.0.0.1:1", namespace="shop", client_tracking=True)
    async with CacheManager(config) as cache:
        tracking = cache.tracking
        assert tracking is not None and b"shop:" == tracking.prefix
        cache.l1.set("a", 1)
        cache.l1.set("b", 2)
        tracking.invalidate([b"shop2:a", b"shopa", b"shop:", b"\xffshop:b"])
        tracking.invalidate([b"shop:a", b"shop:\xff"])
        await eventually(lambda: cache.l1.peek("a") is None)
        assert 2 == cache.l1.peek("b")
        assert 5 == tracking.stats()["ignored"]
        tracking.invalidate(None)
        await eventually(lambda: cache.l1.peek("b") is None)
        assert 1 == tracking.stats()["keys_dropped"]


async def test_stalled_tracking_connection_is_a_loss(proxy: HoldingProxy, namespace: str) -> None:
    """Replies to the tracking connection stop (a stall, held by a proxy; the bus is off):
    the PING deadline declares it lost, L1 serves its entries at most
    ``max_stale_on_bus_loss`` after the last reply, health names tracking; once replies
    flow again it recovers (L1 flushed, healthy, a counted recovery)."""
    config = CacheConfig(
        redis_url=proxy.url, namespace=namespace, max_stale_on_bus_loss=0.5, **TRACKING
    )
    async with CacheManager(config) as cache:
        assert cache.tracking is not None and cache.tracking.connected
        cache.l1.set("k", 1)
        proxy.hold(subscribers_only=True)
        await eventually(lambda: cache.l1.peek("k") is None, within=5)
        await eventually(lambda: cache.stats()["tracking"]["losses"] >= 1, within=5)
        report = await cache.health()
        assert any(reason.startswith("tracking disconnected") for reason in report["reasons"])
        cache.l1.set("fresh", 2)  # a write during the loss is served, for a bounded time
        assert 2 == cache.l1.peek("fresh")
        proxy.release()
        await eventually(lambda: cache.stats()["tracking"]["recoveries"] >= 1, within=10)

        async def healthy() -> str:
            return str((await cache.health())["status"])

        await eventually(healthy, expect="healthy", within=10)
        assert not cache.l1.distrusted
        assert cache.l1.peek("fresh") is None  # flushed on recovery
