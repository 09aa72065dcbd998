"""Commands sent on a connection of one's own: no pool checkout, no pipeline object.

A `redis.asyncio` pipeline of two commands checks a connection out of the
``BlockingConnectionPool`` (a ``Condition`` and a timeout), builds a command stack, packs
each argument through the general encoder and reads each reply under a timer of its own.
For the calls that matter most to latency, one at a time (a read made alone, a write and
its bus message), that plumbing cost more than the round trip's own client work
(docs/benchmarks.md, "Performance round 2 (issue 20)"). `OwnConnection` sends them on a
connection made by the client's pool (same address, credentials, TLS and socket timeouts)
but never checked in or out; a call that finds it busy uses the client as before, so
calls never wait for it.

Sentinel pools re-resolve the primary and drop their connections on a failover; a
connection outside them read stale data in the failover test
(tests/deployments/test_sentinel_failover.py), so under Sentinel (and in a cluster, which
has no single pool) there is no own connection and every call uses the client.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, final

from redis import exceptions as redis_errors
from redis.asyncio.sentinel import SentinelConnectionPool

__all__ = ()


def own_pool(client: Any) -> Any:
    """The pool to make an own connection from, or ``None`` (cluster, Sentinel)."""
    pool = getattr(client, "connection_pool", None)
    return None if isinstance(pool, SentinelConnectionPool) else pool


def checkout_args(pool: Any) -> tuple[str, ...]:
    """The arguments of ``pool.get_connection``: none since redis-py 5.3 (which deprecates
    its ``command_name``), a command name before (where it is required)."""
    found = inspect.signature(pool.get_connection).parameters.get("command_name")
    return ("GET",) if found is not None and found.default is inspect.Parameter.empty else ()


async def exchange(conn: Any, packed: bytes | list[bytes], count: int) -> list[Any]:
    """Send ``packed`` (``count`` commands) on ``conn``; read the ``count`` replies.

    The caller bounds the whole exchange with its deadline (replies are read with
    ``timeout=math.inf``: no timer per reply; redis-py disconnects the connection when a
    send or read fails or is cancelled, so no half-read reply stays behind). An error
    reply takes its command's place; a connection the server closed while idle (a
    restart, an idle timeout) fails on first use and is retried once on a fresh
    connection, as the client's ``Retry(NoBackoff(), 1)`` does.
    """
    for attempt in (0, 1):
        try:
            await conn.send_packed_command(packed)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response(timeout=math.inf))
                except redis_errors.ResponseError as exc:  # the connection is in step
                    replies.append(exc)
            return replies
        except redis_errors.ConnectionError:
            await conn.disconnect()
            if attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@final
class OwnConnection:
    """One connection of one's own for calls that do not overlap (see the module).

    Args:
        client: the ``redis.asyncio`` client whose pool makes the connection.
    """

    __slots__ = ("_client", "_conn", "_pool", "busy")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pool: Any = own_pool(client)
        self._conn: Any = None
        self.busy = self._pool is None
        """Whether a call is using it (always, when there is none: cluster, Sentinel)."""

    async def call(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` in one write and return their replies; the caller checked
        that it is not `busy` and bounds the call with its deadline.

        Raises:
            redis.exceptions.ResponseError: the first error reply (the others are read).
        """
        return await self.call_packed(lambda conn: (conn.pack_commands(commands), len(commands)))

    async def call_packed(
        self, pack: Callable[[Any], tuple[bytes | list[bytes], int]]
    ) -> list[Any]:
        """`call` with the commands packed by ``pack(connection)``: (the bytes, how many
        commands); for callers that build the RESP themselves (`_autopipeline`).

        Raises:
            redis.exceptions.ResponseError: the first error reply (the others are read).
        """
        self.busy = True
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._pool.make_connection()
            packed, count = pack(conn)
            replies = await exchange(conn, packed, count)
        finally:
            self.busy = self._pool is None  # always busy without an own connection
        for reply in replies:
            if isinstance(reply, redis_errors.ResponseError):
                raise reply
        return replies

    async def send(self, *commands: tuple[Any, ...]) -> list[Any]:
        """`call` when the connection is free, else one pipeline of the client (no
        transaction; the replies through redis-py's response callbacks)."""
        if not self.busy:
            return await self.call(*commands)
        async with self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                _ = pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute()
            return replies

    async def connect(self) -> None:
        """Open the connection now, so that the first call does not pay a handshake."""
        if self._pool is not None:
            if self._conn is None:
                self._conn = self._pool.make_connection()
            await self._conn.connect()

    async def aclose(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()
