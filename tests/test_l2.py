"""RedisCache against a real server: storage, TTL, SCAN-based pattern clears, bad payloads."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import Redis

from coherent_cache import CacheConfig, InvalidKeyError, RedisCache, SerializationError
from coherent_cache._sweep import SWEEP_STEPS
from coherent_cache.keys import compile_pattern
from coherent_cache.l2 import SCAN_COUNT
from coherent_cache.serializer import COMPRESSION_NONE, COMPRESSION_ZLIB


@pytest.fixture
async def l2(redis_url: str, namespace: str, raw_redis: Redis) -> AsyncIterator[RedisCache]:
    """A connected RedisCache on this test's namespace."""
    async with RedisCache(CacheConfig(redis_url=redis_url, namespace=namespace)) as cache:
        yield cache


class TestStorage:
    async def test_set_get_delete_round_trip(self, l2: RedisCache) -> None:
        """A value written is read back equal, and is gone after delete."""
        value = {"id": 7, "tags": ["a", "b"], "nested": {"x": None}}
        assert True is await l2.set("user:7", value, ttl=60)
        assert value == await l2.get("user:7")
        assert True is await l2.delete("user:7")
        assert None is await l2.get("user:7")
        assert False is await l2.delete("user:7")

    async def test_keys_are_stored_under_the_namespace(
        self, l2: RedisCache, raw_redis: Redis, namespace: str
    ) -> None:
        """The Redis key is `<namespace>:<key>`, with the TTL asked for."""
        await l2.set("k", 1, ttl=30)
        assert 1 == await raw_redis.exists(f"{namespace}:k")
        ttl_ms = await raw_redis.pttl(f"{namespace}:k")
        assert 29_000 < ttl_ms <= 30_000

    async def test_ttl_none_means_no_expiry(
        self, l2: RedisCache, raw_redis: Redis, namespace: str
    ) -> None:
        """`ttl=None` writes a key without expiry."""
        await l2.set("forever", "x", ttl=None)
        assert -1 == await raw_redis.pttl(f"{namespace}:forever")

    async def test_get_with_ttl_reports_remaining_seconds(self, l2: RedisCache) -> None:
        """Value and remaining TTL come back in one call; a key without expiry reports None."""
        await l2.set("a", "v", ttl=20)
        await l2.set("b", "w", ttl=None)
        found_a = await l2.get_with_ttl("a")
        assert found_a is not None
        assert "v" == found_a[0]
        assert found_a[1] is not None and 19 < found_a[1] <= 20
        assert ("w", None) == await l2.get_with_ttl("b")
        assert None is await l2.get_with_ttl("missing")

    async def test_many(self, l2: RedisCache) -> None:
        """set_many writes all items in one pipeline; get_many returns only the hits."""
        assert await l2.set_many({"m1": 1, "m2": [2], "m3": {"three": 3}}, ttl=60)
        assert {"m1": 1, "m3": {"three": 3}} == await l2.get_many(["m1", "nope", "m3"])
        assert 2 == await l2.delete_many(["m1", "m2", "nope"])

    async def test_set_many_with_one_bad_value_writes_nothing(self, l2: RedisCache) -> None:
        """A batch containing an unencodable value raises before anything is sent."""
        with pytest.raises(SerializationError):
            await l2.set_many({"ok": 1, "bad": {"x": object()}})
        assert {} == await l2.get_many(["ok", "bad"])

    @pytest.mark.parametrize(("size", "codec"), [(100, COMPRESSION_NONE), (5000, COMPRESSION_ZLIB)])
    async def test_compression_round_trips_through_redis(
        self, l2: RedisCache, raw_redis: Redis, namespace: str, size: int, codec: int
    ) -> None:
        """Payloads above compression_threshold are stored compressed and read back equal."""
        value = {"text": "abc" * (size // 3)}
        await l2.set("c", value, ttl=60)
        stored = await raw_redis.get(f"{namespace}:c")
        assert isinstance(stored, bytes)
        assert codec == stored[1] >> 4
        if codec != COMPRESSION_NONE:
            assert len(stored) < size
        assert value == await l2.get("c")


class TestBadPayloads:
    @pytest.mark.parametrize(
        "payload",
        [b"plain text", b'{"json": "from another app"}', b"\xc5\x01{broken", b"\xc5\x11garbage"],
    )
    async def test_corrupt_or_foreign_bytes_are_a_counted_miss(
        self, l2: RedisCache, raw_redis: Redis, namespace: str, payload: bytes
    ) -> None:
        """Bytes put straight into Redis that are not ours read as a miss and are counted."""
        await raw_redis.set(f"{namespace}:bad", payload)
        assert "default" == await l2.get("bad", "default")
        assert None is await l2.get_with_ttl("bad")
        assert {} == await l2.get_many(["bad"])
        stats = l2.stats()
        assert 3 == stats["rejected_payloads"]
        assert 0 == stats["hits"]
        assert 3 == stats["misses"]


class TestClearPattern:
    async def test_ten_thousand_keys_across_scan_batches(
        self, redis_url: str, namespace: str, raw_redis: Redis, l2: RedisCache
    ) -> None:
        """clear_pattern removes exactly the matching keys of its own namespace, in batches."""
        other = RedisCache(CacheConfig(redis_url=redis_url, namespace=f"{namespace}x"))
        try:
            await l2.set_many({f"user:{i}": i for i in range(10_000)}, ttl=300)
            await l2.set_many({f"order:{i}": i for i in range(500)}, ttl=300)
            await other.set_many({f"user:{i}": i for i in range(100)}, ttl=300)
            assert 10_000 > SCAN_COUNT * SWEEP_STEPS  # more than one sweep call

            assert 10_000 == await l2.clear_pattern("user:*")

            assert 500 == len([k async for k in raw_redis.scan_iter(f"{namespace}:*", count=1000)])
            assert 100 == len([k async for k in raw_redis.scan_iter(f"{namespace}x:*", count=1000)])
            assert 5 == await l2.get("order:5")
        finally:
            await other.clear()
            await other.aclose()

    async def test_the_message_leaves_once_after_the_last_unlink(
        self, l2: RedisCache, raw_redis: Redis, namespace: str
    ) -> None:
        """With ``notify``, the bus message is PUBLISHed once, after every batch: a
        subscriber that receives it finds no matching key left (reading then cannot bring
        an old value back)."""
        keys = SCAN_COUNT * SWEEP_STEPS * 2 + 1  # three script calls on one server
        await l2.set_many({f"user:{i}": i for i in range(keys)}, ttl=300)
        await l2.set("order:1", 1, ttl=300)
        published = l2.published
        async with raw_redis.pubsub() as pubsub:
            await pubsub.subscribe(l2.config.channel)
            with anyio.fail_after(5):
                assert "subscribe" == (await pubsub.get_message(timeout=5))["type"]
            removed: list[int] = []

            async def clear() -> None:
                removed.append(await l2.clear_pattern("user:*", notify=b"the message"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(clear)
                with anyio.fail_after(10):
                    message = await pubsub.get_message(timeout=10)
                left = [k async for k in raw_redis.scan_iter(f"{namespace}:user:*", count=1000)]
            assert message is not None and b"the message" == message["data"]
            assert [] == left
            assert [keys] == removed
            await raw_redis.publish(l2.config.channel, b"next")
            with anyio.fail_after(5):
                following = await pubsub.get_message(timeout=5)
            assert following is not None and b"next" == following["data"]  # only once
        assert published + 1 == l2.published
        assert 1 == await l2.get("order:1")

    async def test_glob_metacharacters_in_pattern(self, l2: RedisCache) -> None:
        """`?`, character classes and escapes follow Redis glob rules."""
        for key in ["a1", "a2", "ab", "a*", "b1"]:
            await l2.set(key, key, ttl=60)
        assert 2 == await l2.clear_pattern("a[0-9]")
        assert 1 == await l2.clear_pattern("a\\*")
        assert {"ab": "ab", "b1": "b1"} == await l2.get_many(["a1", "a2", "ab", "a*", "b1"])

    async def test_clear_only_touches_own_namespace(
        self, redis_url: str, namespace: str, raw_redis: Redis, l2: RedisCache
    ) -> None:
        """clear() empties this namespace and leaves a prefix-sharing namespace alone."""
        neighbour = f"{namespace}-2"
        await raw_redis.set(f"{neighbour}:k", b"x")
        await l2.set("k", 1, ttl=60)
        try:
            assert 1 == await l2.clear()
            assert 1 == await raw_redis.exists(f"{neighbour}:k")
        finally:
            await raw_redis.delete(f"{neighbour}:k")


class TestNamespaces:
    async def test_two_namespaces_on_one_server_are_isolated(
        self, redis_url: str, namespace: str, l2: RedisCache
    ) -> None:
        """The same key in two namespaces holds two values; deleting one leaves the other."""
        async with RedisCache(CacheConfig(redis_url=redis_url, namespace=f"{namespace}b")) as b:
            await l2.set("shared", "from a", ttl=60)
            await b.set("shared", "from b", ttl=60)
            assert "from a" == await l2.get("shared")
            assert "from b" == await b.get("shared")
            await l2.delete("shared")
            assert "from b" == await b.get("shared")
            await b.clear()


class TestStats:
    async def test_seed_shape(self, l2: RedisCache) -> None:
        """get_stats has the seed's l2_cache keys and counts hits and misses."""
        await l2.set("s", 1, ttl=60)
        await l2.get("s")
        await l2.get("nope")
        stats = await l2.get_stats()
        assert {"hits", "misses", "hit_rate", "connected", "errors"} <= set(stats)
        assert (1, 1, 0.5, True, 0) == (
            stats["hits"],
            stats["misses"],
            stats["hit_rate"],
            stats["connected"],
            stats["errors"],
        )


class TestGlobAgreesWithRedis:
    async def test_random_patterns_match_what_scan_matches(
        self, l2: RedisCache, raw_redis: Redis, namespace: str
    ) -> None:
        """compile_pattern (the L1 side of clear_pattern) selects exactly the keys Redis
        does, non-ASCII range bounds, escapes in classes and [^...] included; a pattern it
        refuses (unterminated class, trailing backslash, a range from an ASCII to a
        non-ASCII byte) is refused by clear_pattern before anything is deleted."""
        rng = random.Random(20261125)
        alphabet = ["a", "b", "c", "e", "-", "]", "^", "\\", "é", "ü", "€", "1", ":"]
        keys = sorted({"".join(rng.choices(alphabet, k=rng.randint(1, 4))) for _ in range(80)})
        await l2.set_many(dict.fromkeys(keys, 1), ttl=300)
        pieces = [
            *("a", "b", "é", "*", "?", "[ab]", "[^a]", "[a-c]", "[c-a]", "\\*", ":", "]"),
            *("[é-ü]", "[^é-ü]", "[€-é]", "[e-ü]", "[ü-e]", "[^a-é]", "[\x01-é]"),
            *("[\\]a]", "[\\-a]", "[a\\-c]", "[\\^]", "[^\\]]", "[\\é]", "[a-\\]"),
            *("[^é]", "[^]", "[]", "[a-]]", "[", "[a", "[^", "[a-", "\\", "-", "^"),
        ]
        reasons = {"unterminated": 0, "backslash": 0, "non-ASCII": 0}
        checked = 0
        for _ in range(300):
            pattern = "".join(rng.choices(pieces, k=rng.randint(1, 4)))
            try:
                match = compile_pattern(pattern)
            except InvalidKeyError as exc:
                reason = next(r for r in reasons if r in str(exc))
                reasons[reason] += 1
                with pytest.raises(InvalidKeyError):
                    await l2.clear_pattern(pattern)
                continue
            redis_side = {
                name.decode()[len(namespace) + 1 :]
                async for name in raw_redis.scan_iter(f"{namespace}:{pattern}", count=1000)
            }
            assert redis_side == {k for k in keys if match(k)}, pattern
            checked += 1
        assert checked > 150
        assert all(count > 5 for count in reasons.values()), reasons
        # Nothing was deleted by the refused clears.
        assert len(keys) == len(
            [k async for k in raw_redis.scan_iter(f"{namespace}:*", count=1000)]
        )


class TestLeaseLock:
    async def test_taking_the_lock_is_idempotent_per_token(
        self, l2: RedisCache, raw_redis: Redis, namespace: str
    ) -> None:
        """A retry with the same token (after a reply that timed out) holds the lock; another
        token does not, and only the holder's token releases it."""
        assert await l2.try_lock("k", "mine", 5.0)
        assert await l2.try_lock("k", "mine", 5.0)
        assert not await l2.try_lock("k", "theirs", 5.0)
        assert b"mine" == await raw_redis.get(f"{namespace}#lock:k")
        assert 0 < await raw_redis.pttl(f"{namespace}#lock:k") <= 5000
        assert not await l2.unlock("k", "theirs")
        assert await l2.unlock("k", "mine")
        assert await l2.try_lock("k", "theirs", 5.0)

    async def test_renew_extends_only_our_own_lease(
        self, l2: RedisCache, raw_redis: Redis, namespace: str
    ) -> None:
        """renew_lock pushes our lease out and refuses a token that does not hold it."""
        assert await l2.try_lock("r", "mine", 0.5)
        assert await l2.renew_lock("r", "mine", 30.0)
        assert 5000 < await raw_redis.pttl(f"{namespace}#lock:r")
        assert not await l2.renew_lock("r", "theirs", 30.0)


class TestAutoPipelining:
    """Concurrent reads share pipelines; each caller keeps its own result and error."""

    @pytest.fixture
    async def l2(self, redis_url: str, namespace: str) -> AsyncIterator[RedisCache]:
        """A RedisCache whose timeout a loaded machine does not reach (no outage here)."""
        config = CacheConfig(redis_url=redis_url, namespace=namespace, operation_timeout=5.0)
        async with RedisCache(config) as cache:
            yield cache

    async def test_concurrent_reads_are_coalesced_and_correct(self, l2: RedisCache) -> None:
        """100 tasks reading at once get their own values through a few pipelines."""
        for i in range(100):
            assert await l2.set(f"k{i}", {"i": i}, 60)
        before = l2._reads.pipelines
        results: dict[int, object] = {}

        async def read(i: int) -> None:
            results[i] = await l2.get(f"k{i}")

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(read, i)
        assert {i: {"i": i} for i in range(100)} == results
        pipelines = l2._reads.pipelines - before
        assert 1 <= pipelines <= 10  # not 100 round trips

    async def test_one_bad_reply_fails_only_its_caller(
        self, l2: RedisCache, raw_redis: Redis, namespace: str
    ) -> None:
        """A WRONGTYPE reply in a batch is a miss for its caller; the others still hit."""
        for i in range(20):
            if i != 7:
                await l2.set(f"k{i}", i, 60)
        await raw_redis.rpush(f"{namespace}:k7", "not a string")  # GET answers WRONGTYPE
        before = l2.stats()["errors"]
        results: dict[int, object] = {}

        async def read(i: int) -> None:
            results[i] = await l2.get(f"k{i}", "default")

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(read, i)
        assert {i: ("default" if i == 7 else i) for i in range(20)} == results
        assert 1 == l2.stats()["errors"] - before
        assert "closed" == l2.stats()["breaker"]

    async def test_read_through_of_many_keys_at_once(
        self, l2: RedisCache, raw_redis: Redis, namespace: str
    ) -> None:
        """GET + PTTL reads batched together keep each key's value and remaining TTL."""
        for i in range(50):
            await l2.set(f"t{i}", i, 10 + i)
        found: dict[int, tuple[object, float | None] | None] = {}

        async def read(i: int) -> None:
            found[i] = await l2.get_with_ttl(f"t{i}")

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(read, i)
        for i in range(50):
            entry = found[i]
            assert entry is not None
            value, ttl = entry
            assert value == i
            assert ttl is not None and 9 < ttl <= 10 + i

    async def test_thousand_concurrent_readers_without_error(
        self, redis_url: str, namespace: str
    ) -> None:
        """1,000 concurrent reads on a 20-connection pool: no error, every value right."""
        config = CacheConfig(
            redis_url=redis_url, namespace=namespace, max_connections=20, operation_timeout=5.0
        )
        async with RedisCache(config) as l2:
            await l2.set("shared", "v", 60)
            errors_before = l2.stats()["errors"]
            results: list[object] = []

            async def read() -> None:
                results.append(await l2.get("shared"))

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(1000):
                        tg.start_soon(read)
            assert (["v"] * 1000, 0) == (results, l2.stats()["errors"] - errors_before)

    async def test_read_alone_survives_a_connection_the_server_closed(
        self, l2: RedisCache, raw_redis: Redis
    ) -> None:
        """A read made alone after the server closed every client connection (a restart,
        an idle timeout) retries once on a fresh connection: a hit, no error counted."""
        await l2.set("k", "v", 60)
        assert "v" == await l2.get("k")
        errors = l2.stats()["errors"]
        # Every connection but the killer's own (CLIENT KILL skips the caller by default).
        await raw_redis.client_kill_filter(_type="normal", skipme=True)
        assert ("v", "v") == (await l2.get("k"), await l2.get("k"))
        assert (errors, "closed") == (l2.stats()["errors"], l2.stats()["breaker"])


class TestConcurrentTagInvalidation:
    async def test_no_entry_outlives_either_of_two_concurrent_invalidations(
        self, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """Two instances invalidating one tag at once: when either call returns, no entry of
        the tag is left in Redis (each batch's SREM and UNLINK are one transaction, so one
        instance never sees a member gone from the index whose entry still exists)."""
        config = CacheConfig(redis_url=redis_url, namespace=namespace, operation_timeout=5.0)
        async with RedisCache(config) as a, RedisCache(config) as b:
            for attempt in range(5):
                names = [f"t{attempt}:{i}" for i in range(3000)]
                assert await a.set_many({name: i for i, name in enumerate(names)}, 60)
                async with raw_redis.pipeline(transaction=False) as pipe:
                    for name in names:
                        _ = pipe.sadd(f"{namespace}#tag:shared", name)
                    await pipe.execute()
                left: list[int] = []

                async def invalidate(cache: RedisCache, names: list[str], left: list[int]) -> None:
                    await cache.invalidate_tags(["shared"], batch=50)
                    left.append(await raw_redis.exists(*(f"{namespace}:{n}" for n in names)))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(invalidate, a, names, left)
                    tg.start_soon(invalidate, b, names, left)
                assert [0, 0] == left
