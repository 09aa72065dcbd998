"""Extra measurements: L1 memory per entry, L1 cost by size, serialisation and compression.

- **memory**: tracemalloc, bytes allocated per entry when an L1-only `CacheManager` holds
  ``n`` entries written with ``set``, against a bare ``cachetools.TTLCache`` holding the
  same keys and values, and against the keys and values alone.
- **scaling**: an L1-only manager holding 1,000 .. 1,000,000 entries (``memory_cache_size``
  = that size): ``await cache.get(k)`` over random live keys, and ``clear_pattern`` on L1
  with ``p:*`` (matches 10 keys) and ``m:*`` (matches half of them).
- **codecs**: encode/decode µs of orjson and msgpack, and compress/decompress µs and the
  compressed/original size ratio of zlib level 1 and 6, zstd level 3 and lz4 (frame,
  default level), on JSON-like values of about 100 B, 1 KB, 10 KB and 100 KB.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import anyio
import cachetools
import orjson

from coherent_cache import CacheConfig, CacheManager, CacheTier

TTL: Final = 600
SIZES_QUICK: Final = (1_000, 10_000, 100_000)
SIZES_FULL: Final = (1_000, 10_000, 100_000, 1_000_000)
FEW: Final = 10
VALUE_SIZES: Final = (100, 1_000, 10_000, 100_000)


def user(i: int) -> dict[str, Any]:
    """A small record, the shape used throughout the suite."""
    return {"id": i, "name": f"user-{i}", "active": True}


async def memory(n: int) -> dict[str, Any]:
    """Bytes per entry: coherent_cache L1 vs cachetools.TTLCache vs the keys + values alone."""

    def traced(fill: Callable[[], Any]) -> tuple[int, Any]:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, kept

    manager = CacheManager(CacheConfig(redis_url=None, namespace="bench-mem", memory_cache_size=n))
    async with manager:
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                await manager.set(f"user:{i}", user(i), TTL)
            gc.collect()
            ours = tracemalloc.get_traced_memory()[0] - before

            def fill_cachetools() -> Any:
                cache: cachetools.TTLCache[str, Any] = cachetools.TTLCache(n, TTL)
                for i in range(n):
                    cache[f"user:{i}"] = user(i)
                return cache

            bare, _ = traced(fill_cachetools)
            alone, _ = traced(lambda: [(f"user:{i}", user(i)) for i in range(n)])
        finally:
            tracemalloc.stop()
    return {
        "entries": n,
        "value": "{'id': i, 'name': f'user-{i}', 'active': True} under key f'user:{i}'",
        "coherent_cache_bytes_per_entry": round(ours / n, 1),
        "cachetools_ttlcache_bytes_per_entry": round(bare / n, 1),
        "keys_and_values_alone_bytes_per_entry": round(alone / n, 1),
        "ratio_to_cachetools": round(ours / bare, 2) if bare > 0 else None,
        "overhead_over_values_bytes": round((ours - alone) / n, 1),
        "cachetools_overhead_over_values_bytes": round((bare - alone) / n, 1),
    }


def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 3)


async def scaling(sizes: tuple[int, ...], *, repeats: int = 5) -> list[dict[str, Any]]:
    """L1 hit and L1 clear_pattern cost as the L1 grows."""
    rows: list[dict[str, Any]] = []
    shared = user(7)  # one value object: the cost of the structure, not of the values
    for size in sizes:
        config = CacheConfig(redis_url=None, namespace="bench-scale", memory_cache_size=size + FEW)
        manager = CacheManager(config)
        async with manager:
            l1 = manager.multi_tier.l1
            half = size // 2
            keys = [f"m:{i}" for i in range(half)] + [f"o:{i}" for i in range(size - half)]
            started = time.perf_counter()
            for key in keys:
                l1.set(key, shared, TTL)
            for i in range(FEW):
                l1.set(f"p:{i}", shared, TTL)
            fill_s = time.perf_counter() - started
            sample = random.Random(size).sample(keys, min(10_000, size))
            get = manager.get
            hits: list[float] = []
            for _ in range(repeats):
                gc.collect()
                t0 = time.perf_counter()
                for key in sample:
                    await get(key)
                hits.append((time.perf_counter() - t0) / len(sample))
            few: list[float] = []
            for _ in range(repeats):
                gc.collect()
                t0 = time.perf_counter()
                removed = await manager.clear_pattern("p:*", CacheTier.L1)
                few.append(time.perf_counter() - t0)
                assert removed == FEW, removed
                for i in range(FEW):
                    l1.set(f"p:{i}", shared, TTL)
            gc.collect()
            t0 = time.perf_counter()
            removed = await manager.clear_pattern("m:*", CacheTier.L1)
            many_s = time.perf_counter() - t0
            assert removed == half, (removed, half)
            rows.append(
                {
                    "entries": size,
                    "fill_s": round(fill_s, 3),
                    "get_hit_us": _median_us(hits),
                    "clear_pattern_few_us": _median_us(few),
                    "clear_pattern_few_matches": FEW,
                    "clear_pattern_many_us": round(many_s * 1e6, 1),
                    "clear_pattern_many_matches": half,
                }
            )
            del keys, sample
        await anyio.lowlevel.checkpoint()
    return rows


def sample_value(size: int) -> Any:
    """A JSON-like value whose orjson encoding is about ``size`` bytes: a list of records."""
    rng = random.Random(size)
    records: list[dict[str, Any]] = []
    while True:
        i = len(records)
        records.append(
            {
                "id": i,
                "name": f"user-{rng.randrange(10**6)}",
                "email": f"u{rng.randrange(10**6)}@example.com",
                "score": round(rng.random() * 100, 3),
                "active": rng.random() < 0.5,
                "tags": rng.sample(["a", "bb", "ccc", "dddd", "eeeee"], 2),
            }
        )
        if len(orjson.dumps(records)) >= size:
            break
    if len(records) == 1:  # ~100 B: one record, trimmed
        return records[0]
    return records


def _time(fn: Callable[[], Any], budget_s: float) -> float:
    """Median seconds per call of ``fn`` over batches filling about ``budget_s``."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed > 0.005:
            break
        n *= 4
    per_batch = max(1, round(n * (budget_s / 5) / elapsed))
    means = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        means.append((time.perf_counter() - t0) / per_batch)
    return statistics.median(means)


def codecs(*, budget_s: float) -> list[dict[str, Any]]:
    """Encode/decode and compress/decompress µs by value size, with compression ratios."""
    formats: list[tuple[str, Callable[[Any], bytes], Callable[[bytes], Any]]] = [
        ("orjson", orjson.dumps, orjson.loads)
    ]
    compressors: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = [
        ("zlib-1", lambda b: zlib.compress(b, 1), zlib.decompress),
        ("zlib-6", lambda b: zlib.compress(b, 6), zlib.decompress),
    ]
    try:
        import msgpack

        formats.append(("msgpack", msgpack.packb, msgpack.unpackb))
    except ImportError:
        pass
    try:
        import zstandard

        zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
        compressors.append(("zstd-3", zc.compress, zd.decompress))
    except ImportError:
        pass
    try:
        import lz4.frame

        compressors.append(("lz4", lz4.frame.compress, lz4.frame.decompress))
    except ImportError:
        pass
    rows: list[dict[str, Any]] = []
    for size in VALUE_SIZES:
        value = sample_value(size)
        raw = orjson.dumps(value)
        for name, dumps, loads in formats:
            encoded = dumps(value)
            rows.append(
                {
                    "size": size,
                    "json_bytes": len(raw),
                    "codec": name,
                    "kind": "format",
                    "bytes": len(encoded),
                    "ratio": round(len(encoded) / len(raw), 3),
                    "encode_us": round(_time(partial(dumps, value), budget_s) * 1e6, 2),
                    "decode_us": round(_time(partial(loads, encoded), budget_s) * 1e6, 2),
                }
            )
        for name, compress, decompress in compressors:
            packed = compress(raw)
            assert decompress(packed) == raw
            rows.append(
                {
                    "size": size,
                    "json_bytes": len(raw),
                    "codec": name,
                    "kind": "compression",
                    "bytes": len(packed),
                    "ratio": round(len(packed) / len(raw), 3),
                    "encode_us": round(_time(partial(compress, raw), budget_s) * 1e6, 2),
                    "decode_us": round(_time(partial(decompress, packed), budget_s) * 1e6, 2),
                }
            )
    return rows
