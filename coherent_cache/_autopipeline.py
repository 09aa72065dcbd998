"""Auto-pipelining of L2 reads: GETs issued while another read is in flight share a round trip.

Like ioredis' ``enableAutoPipelining``: a read issued while the batcher is idle goes out at
once, alone (a sequential caller pays nothing extra); reads issued while one is in flight
are queued, and the queue is sent at the next event-loop turn as one batch (one
connection, one write, the replies read in order): on a standalone server its commands
packed directly on a pooled connection and its replies read under the batch's one
deadline (`_send_batch`), elsewhere a ``pipeline(transaction=False)``.
So 100 tasks reading at once cost two or three round trips instead of 100 connection
checkouts, and at most ``max_batches`` pooled connections serve any number of readers.

Each caller keeps its own deadline (carried with its queued read: a batch ends by its
earliest caller's deadline, and a read that waited it out for a free batch fails unsent;
a read made alone runs under ``asyncio.timeout``) and its own outcome: an error reply
(``WRONGTYPE``...) fails only the caller whose key it was; a lost connection or a batch
timeout fails the callers of that batch, each with its own exception object. A caller
that gave up is skipped when the replies arrive. Works with ``redis.asyncio.Redis`` and
``RedisCluster`` alike (both pipeline without a transaction).

Concurrency style: plain asyncio (a bare future per queued read, the flush scheduled with
``loop.call_soon``, one ``loop.create_task`` per batch, ``asyncio.timeout``), not the
anyio used elsewhere, for a measured reason: this design took 100 concurrent L2 reads from
1.27-1.37x to 0.31-0.55x the raw ``redis.asyncio`` default pool, and 1,000 from 1.7-2.1x
to 0.56-0.74x (docs/benchmarks.md, "Hot-path optimisations", auto-pipelining row), and
``anyio.fail_after`` cost about twice ``asyncio.timeout`` there. An anyio version (a task
group and a memory stream or event per read) has not been measured as fast, and
redis.asyncio ties this tier to asyncio anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, Final, final

from redis import exceptions as redis_errors

from ._direct import OwnConnection, checkout_args, exchange, own_pool

__all__ = ()

GET: Final = 0
GET_PTTL: Final = 1


def _copy_error(exc: BaseException) -> BaseException:
    """A fresh exception per caller (one object raised in many tasks mixes tracebacks)."""
    if isinstance(exc, TimeoutError):
        return TimeoutError("auto-pipelined batch timed out")
    if isinstance(exc, redis_errors.RedisError | OSError):
        try:
            return type(exc)(*exc.args)
        except Exception:  # pragma: no cover - an exception class with another signature
            pass
    return redis_errors.ConnectionError(f"auto-pipelined batch failed: {exc!r}")


@final
class ReadBatcher:
    """Coalesces concurrent ``GET`` (and ``GET`` + ``PTTL``) reads into pipelines.

    Args:
        client: the ``redis.asyncio`` client (standalone or cluster).
        timeout: deadline of one batch's round trip.
        max_batches: batches in flight at once (each holds one pooled connection).
        max_batch: most reads in one pipeline.
    """

    __slots__ = (
        "_alone",
        "_batches",
        "_checkout",
        "_client",
        "_direct",
        "_pool",
        "_queue",
        "_scheduled",
        "_tasks",
        "_timeout",
        "batched",
        "max_batch",
        "max_batches",
        "pipelines",
    )

    def __init__(
        self, client: Any, *, timeout: float, max_batches: int = 4, max_batch: int = 512
    ) -> None:
        self._client = client
        # A read made alone uses a connection of its own, made by the client's pool (same
        # address, credentials, TLS and timeouts) but never checked in or out: the
        # BlockingConnectionPool checkout (a Condition and a timeout) and the client's
        # command plumbing were a fifth of a sequential read. Reads made alone never
        # overlap (see `get`), so one connection serves them all. RedisCluster has no
        # single pool: there, as with Sentinel, a read made alone is a plain client call.
        # Sentinel: the pool re-resolves the primary and drops its connections on a
        # failover; a connection of our own outside it read stale data in the failover test
        # (tests/deployments/test_sentinel_failover.py), so reads made alone use the client.
        self._pool: Any = own_pool(client)
        self._checkout = () if self._pool is None else checkout_args(self._pool)
        self._alone = OwnConnection(client)
        self._timeout = timeout
        self.max_batches = max_batches
        self.max_batch = max_batch
        self._queue: list[tuple[str, int, asyncio.Future[Any], float]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._batches = 0
        self._direct = 0
        self.pipelines = 0
        """Pipelines sent (statistics for benchmarks and tests)."""
        self.batched = 0
        """Reads sent inside a pipeline rather than alone."""

    def get(self, name: str) -> Awaitable[Any]:
        """``GET name``: the payload or ``None``, within the batcher's ``timeout``.

        Not a coroutine function: a read that joins a batch is its bare future (no
        coroutine frame per read: fewer objects for the cyclic GC under many tasks).

        Raises:
            TimeoutError: no reply within ``timeout`` of the call.
        """
        if self._direct or self._batches or self._queue:
            return self._enqueue(name, GET)
        return self._get_alone(name)

    async def _get_alone(self, name: str) -> Any:
        self._direct += 1
        try:
            async with asyncio.timeout(self._timeout):
                if self._pool is None:
                    return await self._client.get(name)
                return (await self._send_alone(name, GET))[0]
        finally:
            self._direct -= 1

    def get_with_pttl(self, name: str) -> Awaitable[tuple[Any, Any]]:
        """``GET name`` and ``PTTL name`` in one round trip: ``(payload, pttl)``, within the
        batcher's ``timeout`` (a bare future when it joins a batch, as `get`).

        Raises:
            TimeoutError: no reply within ``timeout`` of the call.
        """
        if self._direct or self._batches or self._queue:
            return self._enqueue(name, GET_PTTL)
        return self._get_with_pttl_alone(name)

    async def _get_with_pttl_alone(self, name: str) -> tuple[Any, Any]:
        self._direct += 1
        try:
            async with asyncio.timeout(self._timeout):
                if self._pool is None:
                    async with self._client.pipeline(transaction=False) as pipe:
                        _ = pipe.get(name)
                        _ = pipe.pttl(name)
                        payload, pttl = await pipe.execute()
                        return payload, pttl
                payload, pttl = await self._send_alone(name, GET_PTTL)
                return payload, pttl
        finally:
            self._direct -= 1

    async def _send_alone(self, name: str, kind: int) -> list[Any]:
        """``GET name`` (and ``PTTL name``) on the batcher's own connection
        (`_direct.OwnConnection`: one retry on a fresh connection, the caller's deadline):
        the replies.

        Raises:
            redis.exceptions.ResponseError: the first error reply (the others are read).
        """
        return await self._alone.call_packed(
            lambda conn: _pack_reads(conn.encoder, ((name, kind),))
        )

    async def connect(self) -> None:
        """Open the connection of reads made alone now (nothing to do in a cluster)."""
        await self._alone.connect()

    async def aclose(self) -> None:
        """Close the batcher's own connection."""
        await self._alone.aclose()

    def _enqueue(self, name: str, kind: int) -> asyncio.Future[Any]:
        # A bare asyncio future and call_soon, for the measured reason in the module
        # docstring (docs/benchmarks.md, auto-pipelining: 100 tasks 1.27-1.37x -> 0.31-0.55x raw).
        # The caller's deadline rides with its read (its batch ends by the earliest one):
        # no timer per caller (docs/benchmarks.md, "Performance round 2").
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((name, kind, future, loop.time() + self._timeout))
        if not self._scheduled:
            # Flushed at the next turn: every read issued in this turn joins the batch.
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._queue and self._batches < self.max_batches:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            live = []
            for item in batch:
                future = item[2]
                if future.done():
                    continue  # its caller gave up
                if item[3] <= now:  # waited out its deadline for a free batch slot
                    future.set_exception(TimeoutError("auto-pipelined read timed out queued"))
                else:
                    live.append(item)
            if live:
                self._batches += 1
                # loop.create_task, not an anyio task group: the measured design of the
                # module docstring (docs/benchmarks.md, auto-pipelining: 100 tasks
                # 1.27-1.37x -> 0.31-0.55x raw). The batch ends by itself: `_run` is bounded
                # by its earliest caller's deadline and fails every caller's future on any
                # error.
                task = loop.create_task(self._run(live))
                self._tasks.add(task)  # the loop keeps only a weak reference
                task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[str, int, asyncio.Future[Any], float]]) -> None:
        try:
            # The queue is in call order, so batch[0] has the earliest deadline: when it
            # passes, every caller of the batch fails together (as they would have, each
            # with its own timer, at about the same time). asyncio.timeout_at:
            # anyio.fail_after cost about twice as much (docs/benchmarks.md,
            # auto-pipelining row).
            async with asyncio.timeout_at(batch[0][3]):
                if self._pool is not None:
                    replies = await self._send_batch(batch)
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for name, kind, _future, _deadline in batch:
                            _ = pipe.get(name)
                            if kind == GET_PTTL:
                                _ = pipe.pttl(name)
                        replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _name, _kind, future, _deadline in batch:
                if not future.done():
                    future.set_exception(_copy_error(exc))
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._batches -= 1
            self.pipelines += 1
            self.batched += len(batch)
            if self._queue and not self._scheduled:
                self._flush()
        i = 0
        for _name, kind, future, _deadline in batch:
            if kind == GET_PTTL:
                reply: Any = (replies[i], replies[i + 1])
                error = next((r for r in reply if isinstance(r, Exception)), None)
                i += 2
            else:
                reply = replies[i]
                error = reply if isinstance(reply, Exception) else None
                i += 1
            if future.done():
                continue  # its caller gave up (timeout or cancellation)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(reply)

    async def _send_batch(
        self, batch: list[tuple[str, int, asyncio.Future[Any], float]]
    ) -> list[Any]:
        """A batch on one pooled connection: its commands packed in one write, each reply
        read in order (an error reply kept in its place), the whole under the batch's one
        deadline (`_run`) rather than redis-py's timer per reply; the same single retry on
        a fresh connection as the client's pipelines."""
        pool = self._pool
        conn = await pool.get_connection(*self._checkout)
        try:
            packed, count = _pack_reads(conn.encoder, batch)
            return await exchange(conn, packed, count)
        finally:
            await pool.release(conn)


def _pack_reads(encoder: Any, reads: Iterable[tuple[Any, ...]]) -> tuple[bytes, int]:
    """The RESP of ``GET`` (and ``PTTL``) commands of ``(name, kind, ...)`` reads, and
    how many commands.

    redis-py's ``pack_commands`` encodes each argument through its general encoder; the
    names here are always str and the commands fixed, so the bytes are built directly
    (the same bytes, a third of the cost).
    """
    parts: list[bytes] = []
    encoding, errors = encoder.encoding, encoder.encoding_errors
    count = 0
    for read in reads:  # (name, kind, ...)
        name, kind = read[0], read[1]
        key = name.encode(encoding, errors)
        arg = b"$%d\r\n%b\r\n" % (len(key), key)
        parts.append(b"*2\r\n$3\r\nGET\r\n" + arg)
        count += 1
        if kind == GET_PTTL:
            parts.append(b"*2\r\n$4\r\nPTTL\r\n" + arg)
            count += 1
    return b"".join(parts), count
