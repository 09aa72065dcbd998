"""One process of the tracking row (`benchmarks.suite.tracking`) and the BCAST cost benchmark
(`benchmarks.standalone.tracking_cost`).

``python -m benchmarks.workers._tracking_worker '<json args>'``; the args' ``role`` is one of

- ``writer``: the foreign writer, a plain ``redis.asyncio`` client (RESP2) that SETs keys;
  ARGS ``{"url"}``;
- ``cache``: a `CacheManager` with ``client_tracking=True``; ARGS: `CacheConfig` fields;
- ``raw2``: the raw limit over RESP2: a connection subscribed to ``__redis__:invalidate``,
  a second one with ``CLIENT TRACKING ON REDIRECT <subscriber> BCAST PREFIX <prefix>`` that
  also serves the reads, and a dict; ARGS ``{"url", "prefix"}``;
- ``raw3``: the raw limit over RESP3: one connection with ``CLIENT TRACKING ON BCAST PREFIX
  <prefix>`` reading the ``invalidate`` push messages, a second one for the reads, a dict.

The raw clients are the least code that keeps a local copy coherent with server-assisted
invalidation: redis-py connections (its pure-Python parser, as everywhere in the suite),
one reader task that pops the named keys from the dict.

Commands, one JSON object a line on stdin, answered with one JSON line on stdout (the
first line is ``{"ready": true}``):

- writer ``{"op": "set", "key": k, "value": hex}``: SET k; replies ``started`` (just
  before the command is sent) and ``returned``, ``time.monotonic()`` (CLOCK_MONOTONIC is
  system-wide on Linux, so the driver compares them across processes);
- writer ``{"op": "flood", "prefix": p, "keys": n, "rate": r, "seconds": s}``: SET keys
  ``p0..p<n-1>`` in rotation at ``r`` per second for ``s`` seconds, every 10 ms the writes
  due, in one pipeline or (``"single": true``) one SET at a time; replies ``writes`` and
  ``seconds``;
- receivers ``{"op": "watch", "key": k, "within": s}``: read ``k`` until the local copy
  holds it, reply ``{"armed": true}``, then spin (one event-loop checkpoint per check) until
  the local copy no longer holds it and reply ``gone`` (``time.monotonic()``), or null
  after ``within`` seconds (missed), with probes: ``read``, when the listener had the
  invalidation message parsed, and (cache) ``dropped``, when the L1 actor applied it;
- receivers ``{"op": "counts"}``: invalidation messages and keys received so far (the
  cache's ``get_stats()["tracking"]``) and this process's CPU seconds;
- ``{"op": "exit"}``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import anyio.lowlevel
import orjson
import structlog
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

MISSING: Final[Any] = object()
Reply = dict[str, Any]
Handler = Callable[[Reply, Callable[[Reply], None]], Awaitable[Reply]]
INVALIDATE: Final = "__redis__:invalidate"


def say(message: Reply) -> None:
    """Write one protocol line."""
    PROTOCOL.write(orjson.dumps(message).decode() + "\n")
    PROTOCOL.flush()


async def spin_until_gone(held: Callable[[], bool], within: float) -> float | None:
    """Yield to the event loop until ``held()`` is false; when that was seen, or None."""
    deadline = time.monotonic() + within
    while held():
        if time.monotonic() > deadline:
            return None
        await anyio.lowlevel.checkpoint()
    return time.monotonic()


async def watch(
    key: str,
    within: float,
    held: Callable[[], bool],
    fill: Callable[[], Awaitable[Any]],
    probes: Callable[[], Reply] = dict,
) -> Reply:
    """Fill until held, say armed, spin until dropped; with the probes' times."""
    fills = 0
    with anyio.fail_after(5):
        while not held():
            fills += 1
            await fill()
    say({"armed": True, "fills": fills})
    return {"gone": await spin_until_gone(held, within), **probes()}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process."""
    times = os.times()
    return times.user + times.system


# -- writer ----------------------------------------------------------------------------


async def writer(args: Reply) -> Handler:
    client = Redis.from_url(args["url"], protocol=2, socket_timeout=10)
    with anyio.fail_after(10):
        await client.ping()

    async def handle(cmd: Reply, _: Callable[[Reply], None]) -> Reply:
        if cmd["op"] == "set":
            value = bytes.fromhex(cmd["value"])
            key = cmd["key"]
            started = time.monotonic()
            await client.set(key, value)
            return {"started": started, "returned": time.monotonic()}
        if cmd["op"] == "flood":
            return await flood(client, cmd)
        raise ValueError(f"unknown op {cmd['op']!r}")

    return handle


async def flood(client: Redis, cmd: Reply) -> Reply:
    """SETs at a steady rate, every 10 ms the writes due: one pipeline of them, or
    (``single``) one SET at a time, each awaited."""
    prefix, count = cmd["prefix"], int(cmd["keys"])
    rate, seconds = float(cmd["rate"]), float(cmd["seconds"])
    value = bytes.fromhex(cmd.get("value", "00"))
    single = bool(cmd.get("single"))
    tick = 0.01
    writes = 0
    started = time.monotonic()
    end = started + seconds
    due = started
    while (now := time.monotonic()) < end:
        want = int((now - started) * rate) - writes
        if want > 0 and single:
            for _ in range(want):
                await client.set(f"{prefix}{writes % count}", value)
                writes += 1
        elif want > 0:
            pipe = client.pipeline(transaction=False)
            for i in range(want):
                pipe.set(f"{prefix}{(writes + i) % count}", value)
            await pipe.execute()
            writes += want
        due += tick
        await anyio.sleep(max(0.0, due - time.monotonic()))
    return {"writes": writes, "seconds": time.monotonic() - started}


# -- the raw limits --------------------------------------------------------------------


class RawClient:
    """A dict kept coherent by BCAST tracking; counts messages and keys."""

    def __init__(self) -> None:
        self.local: dict[bytes, bytes] = {}
        self.messages = 0
        self.keys = 0
        self.read_at: float | None = None

    def invalidated(self, keys: list[bytes] | None) -> None:
        self.read_at = time.monotonic()
        self.messages += 1
        if keys is None:  # FLUSHDB / FLUSHALL
            self.local.clear()
            return
        self.keys += len(keys)
        for key in keys:
            self.local.pop(key, None)


async def raw(args: Reply, protocol: int, tg: anyio.abc.TaskGroup) -> Handler:
    url, prefix = args["url"], args["prefix"]
    state = RawClient()
    pool = ConnectionPool.from_url(url, protocol=protocol, socket_timeout=None)
    listener: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
    reads: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
    with anyio.fail_after(10):
        await listener.connect()  # type: ignore[no-untyped-call]
        await reads.connect()  # type: ignore[no-untyped-call]
        if protocol == 2:
            await listener.send_command("CLIENT", "ID")
            client_id = await listener.read_response()
            await listener.send_command("SUBSCRIBE", INVALIDATE)
            await listener.read_response()
            await reads.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", prefix
            )
            await reads.read_response()
        else:

            async def push(message: list[Any]) -> list[Any]:
                return message

            listener._parser.set_invalidation_push_handler(push)  # type: ignore[attr-defined]
            await listener.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", prefix)
            await listener.read_response()

    async def listen() -> None:
        while True:
            if protocol == 2:
                got = await listener.read_response(timeout=None)
                if isinstance(got, list) and len(got) == 3 and got[0] == b"message":
                    state.invalidated(got[2])
            else:
                got = await listener.read_response(timeout=None, push_request=True)
                if isinstance(got, list) and len(got) == 2 and got[0] == b"invalidate":
                    state.invalidated(got[1])

    tg.start_soon(listen)

    async def fill(key: bytes) -> None:
        await reads.send_command("GET", key)
        value = await reads.read_response()
        if value is not None:
            state.local[key] = value

    async def handle(cmd: Reply, _: Callable[[Reply], None]) -> Reply:
        if cmd["op"] == "watch":
            key = cmd["key"].encode()
            state.read_at = None
            return await watch(
                cmd["key"],
                float(cmd["within"]),
                lambda: key in state.local,
                lambda: fill(key),
                lambda: {"read": state.read_at},
            )
        if cmd["op"] == "counts":
            return {"messages": state.messages, "keys": state.keys, "cpu": cpu_seconds()}
        raise ValueError(f"unknown op {cmd['op']!r}")

    return handle


# -- coherent_cache --------------------------------------------------------------------


async def cache_role(args: Reply, stack: Any) -> Handler:
    from coherent_cache import CacheConfig, CacheManager

    cache = CacheManager(CacheConfig(**args))
    probe: dict[str, float | None] = {"read": None, "dropped": None}
    tracking = cache.tracking
    if tracking is not None:
        # Probes: when the tracking connection handed a message on (parsed), and when the
        # L1 actor applied it (its tally callback). One wrapper call each, ~0.2 µs.
        invalidate = tracking.invalidate
        tally = tracking._count_dropped

        def probe_invalidate(payload: Any) -> None:
            probe["read"] = time.monotonic()
            invalidate(payload)

        def probe_tally(dropped: int) -> None:
            probe["dropped"] = time.monotonic()
            tally(dropped)

        tracking.invalidate = probe_invalidate  # type: ignore[method-assign]
        tracking._count_dropped = probe_tally  # type: ignore[method-assign]
    await stack.enter_async_context(cache)

    async def handle(cmd: Reply, _: Callable[[Reply], None]) -> Reply:
        if cmd["op"] == "watch":
            key = cmd["key"]
            probe["read"] = probe["dropped"] = None
            return await watch(
                key,
                float(cmd["within"]),
                lambda: cache.l1.peek(key, MISSING) is not MISSING,
                lambda: cache.get(key, default=None),
                lambda: dict(probe),
            )
        if cmd["op"] == "counts":
            tracking = dict((await cache.get_stats()).get("tracking") or {})
            return {
                "messages": tracking.get("messages"),
                "keys": None,  # keys_dropped counts live L1 entries only
                "tracking": tracking,
                "cpu": cpu_seconds(),
            }
        raise ValueError(f"unknown op {cmd['op']!r}")

    return handle


async def main(args: Reply) -> None:
    from contextlib import AsyncExitStack

    role = args.pop("role")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    async with AsyncExitStack() as stack:
        # Exited in reverse: the manager (entered later) stops before the reader tasks.
        tg = await stack.enter_async_context(anyio.create_task_group())
        if role == "writer":
            handle = await writer(args)
        elif role in ("raw2", "raw3"):
            handle = await raw(args, 2 if role == "raw2" else 3, tg)
        elif role == "cache":
            handle = await cache_role(args, stack)
        else:
            raise SystemExit(f"unknown role {role!r}")
        say({"ready": True})
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            if not line.strip():
                continue
            cmd = orjson.loads(line)
            if cmd["op"] == "exit":
                break
            try:
                answer = await handle(cmd, say)
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            say(answer)
        if role != "cache":
            tg.cancel_scope.cancel()  # the raw listeners; the manager stops by itself


# The protocol owns the real stdout; anything else printed (a library's log line) goes to
# stderr, so it cannot corrupt a reply.
PROTOCOL = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver owns this process's lifetime
    anyio.run(main, orjson.loads(sys.argv[1]))
