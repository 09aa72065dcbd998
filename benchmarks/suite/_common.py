"""Shared pieces of the benchmark suite: statistics, the machine description, versions."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any, Final

from redis.asyncio import Redis

import coherent_cache
from coherent_cache.testing import find_server_binary

ROOT: Final = Path(__file__).resolve().parents[2]
RESULTS_DIR: Final = ROOT / "benchmarks" / "results"
LIBRARIES: Final = (
    "coherent-cache",
    "cashews",
    "aiocache",
    "redis",
    "hiredis",
    "anyio",
    "cachetools",
    "orjson",
    "msgpack",
    "zstandard",
    "lz4",
    "matplotlib",
)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1), linear interpolation between closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def spread(values: list[float]) -> dict[str, float | int | None]:
    """median, p25, p75, min, max and n of ``values`` (None when empty)."""
    if not values:
        return {"n": 0, "median": None, "p25": None, "p75": None, "min": None, "max": None}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p25": percentile(values, 0.25),
        "p75": percentile(values, 0.75),
        "min": min(values),
        "max": max(values),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None unless both are positive."""
    if value is None or base is None or value <= 0 or base <= 0:
        return None
    return value / base


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries measured or used."""
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_model() -> str | None:
    """The ``model name`` of /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_state() -> dict[str, Any]:
    """The commit of the library imported and whether coherent_cache/ has uncommitted changes."""
    library = Path(coherent_cache.__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=library, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", ".").splitlines(),
        }
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}


def machine() -> dict[str, Any]:
    """What the numbers were measured on (server version added by `server_version`)."""
    try:
        server_binary = str(find_server_binary())
    except Exception as exc:  # reported, not fatal: --redis-url needs no binary
        server_binary = f"unavailable: {exc}"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "server_binary": server_binary,
        "git": git_state(),
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
    }


async def server_version(url: str) -> str:
    """``valkey 8.1.8`` or ``redis 7.0.15``, from INFO server."""
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    async with client:
        info = await client.info("server")
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"redis {info.get('redis_version')}"
