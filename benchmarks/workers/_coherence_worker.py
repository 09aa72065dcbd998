"""One process of the coherence benchmark, driven by JSON lines on stdin.

Run by ``benchmarks/standalone/coherence.py`` as
``python benchmarks/workers/_coherence_worker.py ROLE ARGS``, where ``ROLE`` is one of

- ``cache``: a `CacheManager` (ARGS: `CacheConfig` fields as JSON);
- ``raw-pub``: a plain ``redis.asyncio`` client that PUBLISHes (ARGS: url);
- ``raw-sub``: a plain ``redis.asyncio`` subscriber (ARGS: url, channel, reader).

Each input line is ``{"id": n, "op": ..., ...}``; the reply is ``{"id": n, "ok": true, ...}``
or ``{"id": n, "ok": false, "error": "..."}``. ``arm`` first sends
``{"id": n, "armed": true}`` once it waits, then the reply when the wait ends. The first
line is ``{"ready": true}``. Every timestamp is ``time.monotonic()`` of this process
(CLOCK_MONOTONIC, system-wide on Linux, so the driver compares them across processes).
Logs go to stderr; stdout carries the protocol only.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import anyio.lowlevel
import orjson
import structlog
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection

from coherent_cache import CacheConfig, CacheManager
from coherent_cache.bus import BusMessage

MISSING: Final = {"__missing__": True}
"""What ``get`` reports for an absent key."""

SETUP_TIMEOUT: Final = 5.0
"""Seconds a trial's set-up (fence, L1 fill) may take before the trial fails."""

Reply = dict[str, Any]
Send = Callable[[Reply], None]


def send(message: Reply) -> None:
    """Write one protocol line to stdout."""
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


async def spin_until(done: Callable[[], bool], within: float) -> float | None:
    """Yield to the event loop until ``done()``; the monotonic time it became true, or None.

    One checkpoint (``sleep(0)``) per check: every other task of the process (the bus
    listener, the L1 actor, a reader) gets to run between two checks, and the process
    stays on a CPU, so no scheduler wake-up sits inside the measured interval.
    """
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            return None
        await anyio.lowlevel.checkpoint()
    return time.monotonic()


class SendProbe:
    """Times of the last command write of this process (all redis.asyncio connections).

    ``begin`` is taken when ``send_packed_command`` is entered, ``end`` when it returned
    (the bytes are in the kernel). Patched into the class, so it sees every client.
    """

    def __init__(self) -> None:
        self.begin: float | None = None
        self.end: float | None = None
        original = AbstractConnection.send_packed_command

        async def probe(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
            self.begin = time.monotonic()
            await original(conn, command, check_health)
            self.end = time.monotonic()

        setattr(AbstractConnection, "send_packed_command", probe)  # noqa: B010 - method-assign

    def reset(self) -> None:
        """Forget the last write."""
        self.begin = self.end = None


async def wait_until(
    done: Callable[[], bool], within: float, *, mode: str, event: anyio.Event
) -> float | None:
    """Like `spin_until` with ``mode="spin"``; with ``"block"``, sleep until ``event``.

    ``block`` is an idle instance: the process sleeps in epoll, so the measured interval
    includes the OS waking it up, and it leaves the CPU to the other processes.
    """
    if mode == "spin":
        return await spin_until(done, within)
    with anyio.move_on_after(within):
        await event.wait()
    return time.monotonic() if done() else None


# -- role: cache -----------------------------------------------------------------------


class CacheRole:
    """A cache instance (A or B) with probes on the sending and the receiving path.

    Install before the manager starts. The probes wrap the bus connection's
    ``read_response`` (a reply read and parsed), the bus listener's callback (message
    decoded and checked, before the L1 mailbox) and `MultiTierCache.invalidate_local` (the
    L1 actor dropping a key), plus every connection's command write (`SendProbe`). Each
    records ``time.monotonic()``; a wrapper adds one call or coroutine frame, about 0.2 µs
    here (the raw publisher carries the same `SendProbe`).
    """

    def __init__(self, cache: CacheManager) -> None:
        self.cache = cache
        self.sends = SendProbe()
        self.read_at: float | None = None
        self.bus_read_at: float | None = None
        self.bus_at: float | None = None
        self.dropped_at: float | None = None
        self.watch: tuple[str, anyio.Event] | None = None
        bus = cache.bus
        assert bus is not None, "the benchmark needs the invalidation bus"
        pool = bus._pool
        make: Callable[[], AbstractConnection] = pool.make_connection

        def probe_make() -> AbstractConnection:
            conn = make()
            read = conn.read_response

            async def probe_read(*args: Any, **kwargs: Any) -> Any:
                reply = await read(*args, **kwargs)
                self.read_at = time.monotonic()
                return reply

            setattr(conn, "read_response", probe_read)  # noqa: B010 - method-assign
            return conn

        setattr(pool, "make_connection", probe_make)  # noqa: B010 - method-assign
        deliver: Callable[[BusMessage], None] = bus._on_message

        def probe_deliver(message: BusMessage) -> None:
            self.bus_at = time.monotonic()
            self.bus_read_at = self.read_at
            deliver(message)

        bus._on_message = probe_deliver
        multi = cache.multi_tier
        drop: Callable[..., None] = multi.invalidate_local

        def probe_drop(key: str, **options: Any) -> None:
            drop(key, **options)
            self.dropped_at = time.monotonic()
            if self.watch is not None and self.watch[0] == key:
                self.watch[1].set()

        setattr(multi, "invalidate_local", probe_drop)  # noqa: B010 - mypy forbids method-assign

    def _fenced(self, applied: int) -> bool:
        """Whether ``applied`` messages were received and the L1 actor applied them all."""
        bus = self.cache.stats()["bus"]
        mailbox = bus["mailbox"]
        return (
            bus["applied"] >= applied
            and mailbox["applied"] + mailbox["overflows"] >= (bus["applied"])
        )

    async def handle(self, cmd: Reply, reply: Send) -> Reply:
        """Run one command."""
        cache = self.cache
        op = cmd["op"]
        if op == "act":
            self.sends.reset()
            self.read_at = None
            kind = cmd["kind"]
            result: Any
            if kind == "delete":
                t0 = time.monotonic()
                result = await cache.delete(cmd["key"])
                t1 = time.monotonic()
            elif kind == "set":
                value, ttl = cmd["value"], cmd["ttl"]
                t0 = time.monotonic()
                result = await cache.set(cmd["key"], value, ttl)
                t1 = time.monotonic()
            elif kind == "clear_pattern":
                t0 = time.monotonic()
                result = await cache.clear_pattern(cmd["pattern"])
                t1 = time.monotonic()
            else:
                raise ValueError(f"unknown kind {kind!r}")
            published = cache.stats()["bus"]["published"]
            return {
                "t0": t0,
                "t1": t1,
                "send_begin": self.sends.begin,
                "sent": self.sends.end,
                "echo_read": self.read_at,
                "value": result,
                "published": published,
            }
        if op == "arm":
            return await self._arm(cmd, reply)
        if op == "get":
            return {"value": await cache.get(cmd["key"], default=MISSING)}
        if op == "clear":
            return {"value": await cache.clear()}
        if op == "stats":
            return {"value": cache.stats()}
        raise ValueError(f"unknown op {op!r}")

    async def _arm(self, cmd: Reply, reply: Send) -> Reply:
        """Hold ``key`` in L1, say so, wait until L1 stops serving it, read it back.

        First waits (``fence``) until every message the driver expects from A has been
        received and applied, so no earlier invalidation can drop the key during the spin.
        The fill can still be discarded by the fill-race guard; then it is retried.
        """
        cache, key, within = self.cache, cmd["key"], float(cmd["within"])
        if await spin_until(lambda: self._fenced(int(cmd["applied"])), SETUP_TIMEOUT) is None:
            raise TimeoutError(f"fence: {cmd['applied']} messages not applied in time")
        fills = 0
        with anyio.fail_after(SETUP_TIMEOUT):
            while cache.l1.peek(key, MISSING) is MISSING:
                fills += 1
                if await cache.get(key, default=MISSING) is MISSING:
                    raise LookupError(f"{key!r} is not in L2")
        self.bus_at = self.bus_read_at = self.dropped_at = None
        event = anyio.Event()
        self.watch = (key, event)
        reply({"id": cmd["id"], "armed": True, "fills": fills})
        gone = await wait_until(
            lambda: cache.l1.peek(key, MISSING) is MISSING, within, mode=cmd["mode"], event=event
        )
        self.watch = None
        after = await cache.get(key, default=MISSING) if gone is not None else None
        return {
            "gone": gone,
            "read": self.bus_read_at,
            "bus": self.bus_at,
            "dropped": self.dropped_at,
            "value": after,
        }


# -- role: raw publisher and subscriber ------------------------------------------------


class RawPublisher:
    """PUBLISH with a plain ``redis.asyncio.Redis`` client."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.sends = SendProbe()

    async def handle(self, cmd: Reply, reply: Send) -> Reply:
        """Run one command."""
        if cmd["op"] != "publish":
            raise ValueError(f"unknown op {cmd['op']!r}")
        payload, channel = cmd["payload"].encode(), cmd["channel"]
        self.sends.reset()
        t0 = time.monotonic()
        receivers = await self.client.publish(channel, payload)
        t1 = time.monotonic()
        return {
            "t0": t0,
            "t1": t1,
            "send_begin": self.sends.begin,
            "sent": self.sends.end,
            "value": receivers,
        }


class RawSubscriber:
    """A subscriber whose reader task stores the last payload read and when it was read."""

    def __init__(self) -> None:
        self.last: bytes | None = None
        self.read_at: float | None = None
        self.watch: tuple[bytes, anyio.Event] | None = None

    def received(self, payload: bytes) -> None:
        """Record a message."""
        self.read_at = time.monotonic()
        self.last = payload
        if self.watch is not None and self.watch[0] == payload:
            self.watch[1].set()

    async def handle(self, cmd: Reply, reply: Send) -> Reply:
        """Run one command."""
        if cmd["op"] != "arm":
            raise ValueError(f"unknown op {cmd['op']!r}")
        payload: bytes = cmd["payload"].encode()
        self.read_at = None
        event = anyio.Event()
        self.watch = (payload, event)
        reply({"id": cmd["id"], "armed": True})
        seen = await wait_until(
            lambda: self.last == payload, float(cmd["within"]), mode=cmd["mode"], event=event
        )
        self.watch = None
        return {"gone": seen, "read": self.read_at}


async def read_pubsub(client: Redis, channel: str, sub: RawSubscriber, ready: anyio.Event) -> None:
    """The usual ``redis.asyncio`` loop: ``PubSub.get_message`` with a timeout."""
    pubsub = client.pubsub()
    try:
        with anyio.fail_after(5):
            await pubsub.subscribe(channel)
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is not None and msg["type"] == "subscribe":
                    break
        ready.set()
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None and msg["type"] == "message":
                sub.received(msg["data"])
    except (redis_errors.ConnectionError, OSError) as exc:
        # The server went away (e.g. a Ctrl-C reached it first): later arms time out.
        print(f"raw-sub pubsub reader stopped: {exc}", file=sys.stderr)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


async def read_connection(url: str, channel: str, sub: RawSubscriber, ready: anyio.Event) -> None:
    """A bare connection: SUBSCRIBE, then ``read_response`` in a loop (as the bus does)."""
    pool = ConnectionPool.from_url(url, protocol=2)
    conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
    try:
        with anyio.fail_after(5):
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("SUBSCRIBE", channel)
            while True:
                got = await conn.read_response(timeout=1.0)
                if isinstance(got, list) and got and got[0] == b"subscribe":
                    break
        ready.set()
        while True:
            got = await conn.read_response(timeout=1.0)
            if isinstance(got, list) and len(got) == 3 and got[0] == b"message":
                sub.received(got[2])
    except (redis_errors.ConnectionError, OSError) as exc:
        print(f"raw-sub connection reader stopped: {exc}", file=sys.stderr)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await conn.disconnect()
            await pool.disconnect()


# -- the command loop ------------------------------------------------------------------


async def serve(handle: Callable[[Reply, Send], Awaitable[Reply]]) -> None:
    """Answer commands from stdin until it closes or an ``exit`` command arrives."""
    send({"ready": True})
    stdin = anyio.wrap_file(sys.stdin)
    async for line in stdin:
        if not line.strip():
            continue
        cmd = orjson.loads(line)
        if cmd["op"] == "exit":
            return
        try:
            answer = {"id": cmd["id"], "ok": True, **await handle(cmd, send)}
        except Exception as exc:
            answer = {"id": cmd["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        send(answer)


async def main(role: str, args: Reply) -> None:
    """Set up the role, then serve commands."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    if role == "cache":
        cache = CacheManager(CacheConfig(**args))
        instance = CacheRole(cache)  # before start: the probes wrap the bus connection
        async with cache:
            await serve(instance.handle)
    elif role == "raw-pub":
        client = Redis.from_url(args["url"], protocol=2)
        async with client:
            with anyio.fail_after(5):
                await client.ping()
            await serve(RawPublisher(client).handle)
    elif role == "raw-sub":
        sub = RawSubscriber()
        ready = anyio.Event()
        client = Redis.from_url(args["url"], protocol=2)
        async with client, anyio.create_task_group() as tg:
            if args["reader"] == "pubsub":
                tg.start_soon(read_pubsub, client, args["channel"], sub, ready)
            else:
                tg.start_soon(read_connection, args["url"], args["channel"], sub, ready)
            with anyio.fail_after(10):
                await ready.wait()
            await serve(sub.handle)
            tg.cancel_scope.cancel()
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    # The driver owns this process's lifetime (an "exit" command, or EOF on stdin if the
    # driver dies): a Ctrl-C sent to the whole terminal's process group is its to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    anyio.run(main, sys.argv[1], orjson.loads(sys.argv[2]))
