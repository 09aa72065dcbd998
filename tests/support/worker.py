"""A cache instance in its own OS process, driven by JSON lines on stdin (tests, benchmarks).

Run as ``python -m tests.support.worker '<CacheConfig fields as JSON>'``; an extra
``"_spans_file"`` field (opt-in) makes the worker export its spans to that file, one JSON
object a line. Otherwise, with ``OTEL_EXPORTER_OTLP_ENDPOINT`` in its environment, the
worker exports its spans over OTLP exactly as the example app of the compose stack does
(``examples.tracing.setup_tracing``: configured by the ``OTEL_*`` variables only), and
flushes them when it exits. Each input line is a command ``{"id": n, "op": ..., ...}``;
each output line is ``{"id": n, "ok": true, ...}`` or ``{"id": n, "ok": false, "error":
"..."}``. The first output line is ``{"ready": true, "origin": ...}`` once the manager has started.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import structlog

from coherent_cache import CacheConfig, CacheManager, CacheTier

MISSING = {"__missing__": True}


async def handle(cache: CacheManager, cmd: dict[str, Any]) -> dict[str, Any]:
    """Run one command against the manager."""
    op = cmd["op"]
    tier = CacheTier(cmd.get("tier", "both"))
    if op == "get":
        return {"value": await cache.get(cmd["key"], tier, default=MISSING)}
    if op == "peek":
        return {"value": cache.l1.peek(cmd["key"], MISSING)}
    if op == "set":
        value = await cache.set(
            cmd["key"], cmd["value"], cmd.get("ttl", 60), tier, tags=cmd.get("tags", ())
        )
        return {"value": value}
    if op == "fleet":
        return {"value": await cache.fleet()}
    if op == "invalidate_tags":
        return {"value": await cache.invalidate_tags(*cmd["tags"])}
    if op == "load":
        # `callers` concurrent get_or_set calls; the loader counts itself in Redis (INCR
        # of `counter`), so the test sees loader calls across processes.
        assert cache.l2 is not None
        client = cache.l2.client

        async def loader() -> Any:
            await client.incr(cmd["counter"])
            await anyio.sleep(float(cmd.get("delay", 0.2)))
            return {"loaded_by": cache.origin}

        results: list[Any] = []

        async def one() -> None:
            results.append(
                await cache.get_or_set(cmd["key"], loader, ttl=60, lock=bool(cmd.get("lock")))
            )

        async with anyio.create_task_group() as tg:
            for _ in range(int(cmd.get("callers", 1))):
                tg.start_soon(one)
        return {"value": results}
    if op == "hot":
        return {"value": await _hot_key(cache, cmd)}
    if op == "delete":
        return {"value": await cache.delete(cmd["key"], tier)}
    if op == "clear_pattern":
        return {"value": await cache.clear_pattern(cmd["pattern"], tier)}
    if op == "clear":
        return {"value": await cache.clear(tier)}
    if op == "stats":
        return {"value": await cache.get_stats()}
    if op == "health":
        return {"value": await cache.health()}
    if op == "wait_bus":
        # Poll the subscriber state until it matches, within a deadline.
        want = bool(cmd.get("connected", True))
        recovered = int(cmd.get("recovered", 0))
        bus = cache.bus
        assert bus is not None
        with anyio.fail_after(float(cmd.get("within", 10))):
            while bus.connected is not want or bus.stats()["recoveries"] < recovered:  # noqa: ASYNC110 - the bus exposes state, not events
                await anyio.sleep(0.01)
        return {"value": True}
    if op == "wait_gone":
        # Spin until the L1 no longer serves the key; report when that happened.
        deadline = time.monotonic() + float(cmd.get("within", 5))
        while cache.l1.peek(cmd["key"], MISSING) is not MISSING:
            if time.monotonic() > deadline:
                return {"value": None}
            await anyio.lowlevel.checkpoint()
        return {"value": time.monotonic()}
    if op == "run_load":
        # The fault suite's bounded mixed workload; the log goes to a file, not the pipe.
        from tests.faults.load import run_load

        result = await run_load(cache, cmd["args"])
        log = result.pop("log")  # type: ignore[misc]
        await anyio.Path(cmd["log_path"]).write_bytes(
            b"".join(orjson.dumps(entry) + b"\n" for entry in log)
        )
        return {"value": result}
    if op == "wait_recovered":
        # Wait until L2 answered and the bus resubscribed `recoveries` times; say when.
        bus = cache.bus
        assert bus is not None and cache.l2 is not None
        recovered = int(cmd.get("recoveries", 1))
        l2_at = bus_at = None
        with anyio.fail_after(float(cmd.get("within", 10))):
            while l2_at is None or bus_at is None:
                now = time.monotonic()
                if l2_at is None and (cache.l2.connected or await cache.l2.ping()):
                    l2_at = now
                if bus_at is None and bus.connected and bus.stats()["recoveries"] >= recovered:
                    bus_at = now
                await anyio.sleep(0.005)
        return {"value": {"l2_at": l2_at, "bus_at": bus_at}}
    if op == "typed_call":
        # A decorated function of tests/support/typed_values.py, twice (L2 then L1 here):
        # whether each result has the declared type and value, and whether it loaded.
        from tests.support.typed_values import CASES, conforms, functions

        calls: list[str] = []
        tp, expected = CASES[cmd["case"]]
        func = functions(cache, calls)[cmd["case"]]
        results = [await func(int(cmd.get("arg", 1))) for _ in range(2)]
        return {
            "value": {
                "typed": [conforms(r, tp) for r in results],
                "equal": [r == expected for r in results],
                "calls": calls,
            }
        }
    if op == "rss":
        return {"value": _rss_bytes()}
    raise ValueError(f"unknown op {op!r}")


async def _hot_key(cache: CacheManager, cmd: dict[str, Any]) -> dict[str, Any]:
    """`callers` tasks reading one key with get_or_set(refresh_ahead=...) for `duration` s.

    The loader records its start time in the Redis list `counter`. Reports the slowest read
    and the loader misses counted after `warmup` s (a miss is a caller that waited for a
    load, or joined one).
    """
    assert cache.l2 is not None
    client = cache.l2.client
    engine = cache.load_engine
    key, delay = cmd["key"], float(cmd.get("delay", 0.05))

    async def loader() -> Any:
        await client.rpush(cmd["counter"], time.time())
        await anyio.sleep(delay)
        return {"loaded_by": cache.origin}

    options = {"ttl": cmd["ttl"], "lock": bool(cmd.get("lock")), "refresh_ahead": cmd["refresh"]}
    started = time.monotonic()
    warm_until, end = started + float(cmd["warmup"]), started + float(cmd["duration"])
    slowest = [0.0]
    misses_at_warm: list[int] = []

    async def reader() -> None:
        while (now := time.monotonic()) < end:
            await cache.get_or_set(key, loader, **options)
            if now >= warm_until:
                if not misses_at_warm:
                    misses_at_warm.append(engine.stats()["misses"])
                slowest[0] = max(slowest[0], time.monotonic() - now)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for _ in range(int(cmd["callers"])):
            tg.start_soon(reader)
    return {
        "misses_after_warmup": engine.stats()["misses"] - misses_at_warm[0],
        "slowest_after_warmup": slowest[0],
        "refreshes": engine.stats()["refreshes"],
    }


def _rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status."""
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _tracer_provider(spans_file: str | None) -> Any:
    """An SDK tracer provider writing finished spans to ``spans_file`` as JSON lines."""
    if spans_file is None:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(spans_file, "a", buffering=1)  # lives as long as the process
    exporter = ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def main(fields: dict[str, Any]) -> None:
    """Start a manager and serve commands until stdin closes or an ``exit`` command."""
    from tests.faults.disable import apply_from_env

    apply_from_env()  # fault-suite checks only: COHERENT_CACHE_TEST_DISABLE
    stdin = anyio.wrap_file(sys.stdin)
    provider = _tracer_provider(fields.pop("_spans_file", None))
    if provider is None:
        from examples.tracing import setup_tracing

        provider = setup_tracing()  # None unless OTEL_EXPORTER_OTLP_ENDPOINT is set
    try:
        await _serve(CacheConfig(**fields), provider, stdin)
    finally:
        if provider is not None:
            provider.shutdown()  # exports what is still batched (bounded by its timeout)


async def _serve(config: CacheConfig, provider: Any, stdin: Any) -> None:
    async with CacheManager(config, tracer_provider=provider) as cache:
        sys.stdout.write(orjson.dumps({"ready": True, "origin": cache.origin}).decode() + "\n")
        sys.stdout.flush()
        async for line in stdin:
            if not line.strip():
                continue
            cmd = orjson.loads(line)
            if cmd["op"] == "exit":
                break
            try:
                reply = {"id": cmd["id"], "ok": True, **await handle(cache, cmd)}
            except Exception as exc:
                reply = {"id": cmd["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(orjson.dumps(reply).decode() + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    # stdout carries the protocol: logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    anyio.run(main, orjson.loads(sys.argv[1]))
