"""`import coherent_cache` loads only what a plain get/set needs (issue 20).

What a plain manager never uses is imported on first use: the FastAPI integration, the
CLI and the test helpers, the decorators and the warmer (`CacheManager.cached`,
``warm_cache``, ...; ``from coherent_cache import CacheWarmer``), the optional codecs,
pydantic's ``TypeAdapter`` (typed values only), the installed distributions' metadata
(``__version__`` is a constant), the W3C trace-context propagator (traced calls and
traced bus messages only). These tests pin the laziness, not the time (the time is
measured by ``python -m benchmarks.standalone.import_time``; docs/benchmarks.md, "Import
time"). Each runs in a fresh interpreter, where nothing was imported before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import coherent_cache

NEVER_AT_IMPORT = (
    "fastapi",
    "starlette",
    "coherent_cache.integrations",
    "coherent_cache.cli",
    "coherent_cache.testing",
    "coherent_cache._demo_instance",
    "coherent_cache.decorators",
    "coherent_cache._calls",
    "coherent_cache.warming",
    "coherent_cache._warm_input",
    "msgpack",
    "zstandard",
    "lz4",
    "hiredis",
    "opentelemetry.sdk",
    "pydantic.type_adapter",
    "email.parser",
    "opentelemetry.trace.propagation.tracecontext",
)
"""Modules (and their submodules) `import coherent_cache` must not load itself."""

PROBE = """
import json, sys
import anyio, redis.asyncio, orjson, cachetools, structlog, pydantic, opentelemetry.trace
before = set(sys.modules)
import coherent_cache
after_import = set(sys.modules) - before

async def plain_use():
    config = coherent_cache.CacheConfig(redis_url=None, namespace="lazy")
    async with coherent_cache.create_cache_manager(config) as cache:
        await cache.set("k", {"a": 1})
        assert {"a": 1} == await cache.get("k")

anyio.run(plain_use)
after_use = set(sys.modules) - before
print(json.dumps({"import": sorted(after_import), "use": sorted(after_use)}))
"""


def loaded(names: list[str]) -> list[str]:
    """The modules of ``names`` that are one of NEVER_AT_IMPORT or inside one."""
    return sorted(
        name
        for name in names
        if any(name == m or name.startswith(m + ".") for m in NEVER_AT_IMPORT)
    )


def run_probe(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; its last stdout line, decoded."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    decoded: dict[str, list[str]] = json.loads(result.stdout.splitlines()[-1])
    return decoded


class TestImportIsLazy:
    def test_import_and_a_plain_get_set_load_none_of_the_optional_parts(self) -> None:
        """After `import coherent_cache` (its dependencies imported first, so only what the
        package itself adds counts) and after an L1 manager's start, set and get, none of
        the lazy modules is loaded."""
        got = run_probe(PROBE)
        assert ([], []) == (loaded(got["import"]), loaded(got["use"]))
        assert "coherent_cache.manager" in got["import"]  # the probe measured something

    def test_the_lazy_parts_work_when_used(self) -> None:
        """Typed values build their TypeAdapter on first use, a bus message's trace
        context is read with the propagator made then, the manager's decorators and
        warming methods and the package's warming names resolve to the real ones; the
        CLI, the FastAPI integration and the test helpers import as before."""
        code = """
import json, sys, uuid
import anyio
import coherent_cache
assert "CacheWarmer" in dir(coherent_cache) and "coherent_cache.warming" not in sys.modules
from coherent_cache import CacheWarmer, WarmHandle, WarmResult, WarmSchedule
from coherent_cache import warming
assert (CacheWarmer, WarmResult) == (warming.CacheWarmer, warming.WarmResult)
assert isinstance(coherent_cache.CacheManager.warm_cache, warming.WarmerMethod)

async def use():
    config = coherent_cache.CacheConfig(redis_url=None, namespace="lazy")
    async with coherent_cache.create_cache_manager(config) as cache:
        calls = []

        @cache.cached(ttl=60, key_prefix="f")
        async def f(x: int) -> int:
            calls.append(x)
            return x * 2

        assert (14, 14, [7]) == (await f(7), await f(7), calls)
        result = await cache.warm_cache([("w", 1)])
        assert isinstance(result, WarmResult) and 1 == await cache.get("w")

anyio.run(use)
from coherent_cache import _telemetry
from coherent_cache._typed import value_decoder
decode = value_decoder(uuid.UUID)
assert decode is not None
value = decode("12345678-1234-5678-1234-567812345678")
assert isinstance(value, uuid.UUID), value
link = _telemetry.link_from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
assert link is not None and link.context.trace_id == 0x0af7651916cd43dd8448eb211c80319c
from coherent_cache import cli, testing
from coherent_cache.integrations.fastapi import cache_lifespan
print(json.dumps({"loaded": sorted(sys.modules)}))
"""
        got = run_probe(code)["loaded"]
        wanted = [
            "coherent_cache._calls",
            "coherent_cache.cli",
            "coherent_cache.decorators",
            "coherent_cache.integrations.fastapi",
            "coherent_cache.testing",
            "fastapi",
            "opentelemetry.trace.propagation.tracecontext",
            "coherent_cache.warming",
            "pydantic.type_adapter",
        ]
        assert wanted == [name for name in wanted if name in got]


class TestVersion:
    def test_version_is_the_installed_distributions(self) -> None:
        """``__version__`` is a constant in the source (coherent_cache/_version.py, which
        pyproject.toml reads): the same as the installed distribution's metadata."""
        assert version("coherent-cache") == coherent_cache.__version__
