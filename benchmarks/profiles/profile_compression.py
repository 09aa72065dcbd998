"""Compression cost and ratio by value size, for choosing the serializer's defaults.

Run from the repository root, in the project's virtualenv (zstandard and lz4 come with the
test extra)::

    python -m benchmarks.profiles.profile_compression

The values are JSON documents shaped like API results (a list of user records with ids,
names, e-mails, timestamps, flags and nested tags), encoded with orjson as the serializer
does. Each codec compresses and decompresses each size repeatedly; the table gives the
median µs of each direction and the compressed size as a share of the raw size.
"""

from __future__ import annotations

import statistics
import sys
import time
import zlib
from collections.abc import Callable

import lz4.frame
import orjson
import zstandard

SIZES = (1_000, 10_000, 100_000, 1_000_000)


def document(size: int) -> bytes:
    """An orjson-encoded list of records, cut to about ``size`` bytes."""
    records = []
    i = 0
    while True:
        records.append(
            {
                "id": 100_000 + i,
                "name": f"user-{i:05d}",
                "email": f"user{i}@example.com",
                "created_at": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
                "active": i % 3 != 0,
                "score": round((i * 7919 % 1000) / 10, 1),
                "tags": ["beta", "eu"] if i % 2 else ["ga"],
            }
        )
        i += 1
        if i % 16 == 0 and len(orjson.dumps(records)) >= size:
            return orjson.dumps(records)


def timed(fn: Callable[[], object], budget_s: float = 0.15) -> float:
    """Median µs of ``fn`` over batches filling about ``budget_s``."""
    runs = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(runs) < 5:
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1e6)
    return statistics.median(runs)


def main() -> int:
    zc1 = zstandard.ZstdCompressor(level=1)
    zc3 = zstandard.ZstdCompressor(level=3)
    zd = zstandard.ZstdDecompressor()
    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "zlib-1": (lambda b: zlib.compress(b, 1), zlib.decompress),
        "zlib-6": (lambda b: zlib.compress(b, 6), zlib.decompress),
        "lz4": (lz4.frame.compress, lz4.frame.decompress),
        "zstd-1": (zc1.compress, zd.decompress),
        "zstd-3": (zc3.compress, zd.decompress),
    }
    print(f"{'size':>9} {'codec':<7} {'compress µs':>12} {'decompress µs':>14} {'ratio':>7}")
    for size in SIZES:
        raw = document(size)
        for name, (compress, decompress) in codecs.items():
            packed = compress(raw)
            assert decompress(packed) == raw
            c = timed(lambda compress=compress, raw=raw: compress(raw))
            d = timed(lambda decompress=decompress, packed=packed: decompress(packed))
            print(f"{len(raw):>9} {name:<7} {c:>12.1f} {d:>14.1f} {len(packed) / len(raw):>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
