"""Hostile input from anyone who can write to the Redis: 1,000 malformed bus messages and
1,000 hostile payloads written straight into cache keys. Two instances take them while
serving: each is a counted drop or a counted miss (then a loader result), nothing executes,
no exception reaches a caller, and the bus listener keeps working."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from coherent_cache import CacheManager
from coherent_cache.bus import BusMessage

from ..conftest import ManagerFactory, eventually

COUNT = 1000


class Exploit:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def hostile_payloads(rng: random.Random, marker: Path) -> list[bytes]:
    """``COUNT`` payloads: random bytes, a valid header with garbage, huge declared lengths
    (MessagePack str32/array32 of 4 GiB, a truncated zlib stream), and live pickles."""
    exploit = pickle.dumps(Exploit(marker), protocol=pickle.HIGHEST_PROTOCOL)
    makers = [
        lambda: rng.randbytes(rng.randrange(0, 200)),
        lambda: b"\xc5\x01" + rng.randbytes(rng.randrange(1, 200)),  # JSON header, garbage
        lambda: b"\xc5\x02" + b'{"f": 1, "t": 7, "v": [' * 50,  # envelope header, garbage
        lambda: b"\xc5\x03\xdb\xff\xff\xff\xff" + rng.randbytes(16),  # msgpack str32 4 GiB
        lambda: b"\xc5\x04\xdd\xff\xff\xff\xff" + rng.randbytes(16),  # msgpack array32 4 GiB
        lambda: b"\xc5\x11" + rng.randbytes(64),  # zlib flag, not a zlib stream
        lambda: b"\xc5\x11\x78\x9c" + b"\xff" * 32,  # zlib header, broken stream
        lambda: exploit,  # a pickle, as is
        lambda: b"\xc5\x01" + exploit,  # a pickle behind a valid header
        lambda: b"\x80\x04" + rng.randbytes(32),  # pickle protocol 4 opcode, garbage
    ]
    return [makers[i % len(makers)]() for i in range(COUNT)]


def malformed_messages(rng: random.Random) -> list[bytes]:
    """``COUNT`` bus messages receivers must drop."""
    makers = [
        lambda: rng.randbytes(rng.randrange(0, 300)),
        lambda: orjson.dumps({"v": 2, "op": "delete", "keys": ["k"]}),
        lambda: orjson.dumps({"v": 1, "op": "explode", "keys": ["k"]}),
        lambda: orjson.dumps({"v": 1, "op": "delete", "keys": []}),
        lambda: orjson.dumps({"v": 1, "op": "delete", "keys": [1, 2]}),
        lambda: orjson.dumps({"v": 1, "op": "clear_pattern", "pattern": 7}),
        lambda: orjson.dumps([1, "op", "delete"]),
        lambda: b'{"v": 1, "op": "delete", "keys": ["k"' + b"," * rng.randrange(1, 50),
        lambda: pickle.dumps({"v": 1, "op": "clear"}),
        lambda: orjson.dumps({"v": 1, "op": "delete", "keys": ["x" * 2000]}),  # key too long
    ]
    return [makers[i % len(makers)]() for i in range(COUNT)]


class TestHostileInput:
    async def test_malformed_bus_messages_are_dropped_and_counted(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """1,000 malformed messages: all dropped and counted by both instances, the
        listener stays subscribed and still applies the valid message sent after them."""
        a: CacheManager = await make_manager()
        b: CacheManager = await make_manager()
        await a.set("victim", 1)
        assert 1 == await b.get("victim")  # now in b's L1
        channel = f"{namespace}:invalidate"
        for message in malformed_messages(random.Random(7)):
            await raw_redis.publish(channel, message)
        await raw_redis.publish(channel, BusMessage.delete(("victim",)).encode())
        for cache in (a, b):

            def dropped(c: CacheManager = cache) -> int:
                return c.stats()["bus"]["dropped"]

            def victim_gone(c: CacheManager = cache) -> bool:
                return c.l1.peek("victim", None) is None

            await eventually(dropped, expect=COUNT, within=20)
            await eventually(victim_gone)
            bus = cache.stats()["bus"]
            assert bus["connected"] and bus["losses"] == 0
            assert "healthy" == (await cache.health())["status"]

    async def test_hostile_payloads_are_misses_and_nothing_executes(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str, tmp_path: Path
    ) -> None:
        """1,000 hostile payloads in cache keys: every get is a miss, every get_or_set
        returns the loader's result, each is counted as rejected, no pickle runs."""
        marker = tmp_path / "pwned"
        payloads = hostile_payloads(random.Random(11), marker)
        # The pickle is live: unpickling it would create the marker file.
        pickle.loads(payloads[7])
        assert marker.exists()
        marker.unlink()

        a: CacheManager = await make_manager()
        b: CacheManager = await make_manager()
        async with raw_redis.pipeline(transaction=False) as pipe:
            for i, payload in enumerate(payloads):
                _ = pipe.set(f"{namespace}:bad:{i}", payload)
            await pipe.execute()

        async def loader() -> str:
            return "loaded"

        for i in range(COUNT):
            assert None is await a.get(f"bad:{i}")
            assert "loaded" == await b.get_or_set(f"bad:{i}", loader, ttl=60)
        assert not marker.exists()
        assert a.stats()["l2_cache"]["rejected_payloads"] >= COUNT
        assert b.stats()["l2_cache"]["rejected_payloads"] >= COUNT
        # b's loads replaced the hostile payloads with valid entries a can read now.
        assert "loaded" == await a.get("bad:0")
