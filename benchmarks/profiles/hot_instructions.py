"""Instructions per L1 hit and per decorator hit, counted by valgrind (not timed).

``python -m benchmarks.profiles.hot_instructions`` runs this module under
``valgrind --tool=callgrind`` with 0 and with ``--n`` operations of each kind, on an
L1-only manager, and prints the difference divided by ``--n``: CPU instructions per
``await cache.get(k)`` hit and per decorated-function hit. Unlike a timing, the count
is repeatable on a noisy shared machine (the same total twice, whatever else runs), so
it compares two versions of the hot paths exactly: run it in each checkout
(``PYTHONPATH=<checkout>``). Needs ``valgrind`` on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys

KINDS = ("get", "decorator")


async def run(kind: str, n: int) -> None:
    """``n`` hits of ``kind`` on an L1-only manager (the measured process)."""
    from coherent_cache import CacheConfig, CacheManager

    config = CacheConfig(redis_url=None, enable_monitoring=False, namespace="hot")
    async with CacheManager(config) as cache:
        await cache.set("k", {"a": 1})

        @cache.cached(ttl=60, key_prefix="f")
        async def f(x: int) -> dict[str, int]:
            return {"x": x}

        await f(7)
        if kind == "get":
            for _ in range(n):
                await cache.get("k")
        else:
            for _ in range(n):
                await f(7)


def count(kind: str, n: int) -> int:
    """Instructions of a whole run of ``n`` hits of ``kind`` under callgrind."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.profiles.hot_instructions",
        "--child",
        kind,
        str(n),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    for line in done.stderr.splitlines():
        if "Collected" in line:
            return int(line.split()[-1])
    raise RuntimeError(f"no callgrind total in: {done.stderr[-500:]}")


def main() -> None:
    """Print instructions per hit of each kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="hits per measured run")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(run(args.child[0], int(args.child[1])))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    for kind in KINDS:
        per_op = (count(kind, args.n) - count(kind, 0)) / args.n
        print(f"{kind}: {per_op:,.0f} instructions per hit")


if __name__ == "__main__":
    main()
