"""The listen loop of a subscribed connection, and the loop that resubscribes it: the bus's
and each client-tracking one's.

Both are RESP2 pub/sub connections whose silence must not be mistaken for health. The
loop reads replies; after ``bus_health_check_interval`` seconds without one it sends a
PING and reports the connection *suspect* since its last reply (L1 is bounded as if it
were lost) until an answer *alive* again; no answer within the interval plus
``operation_timeout`` ends it. With a Sentinel endpoint it also asks every few seconds
whether the primary moved, and ends the subscription if so.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import anyio
from anyio.abc import TaskStatus
from redis.asyncio.connection import AbstractConnection

from ._clients import BusEndpoint
from .config import CacheConfig

__all__ = ("await_subscribed", "listen", "resubscribe")


async def listen(
    conn: AbstractConnection,
    config: CacheConfig,
    *,
    endpoint: BusEndpoint | None,
    timer: Callable[[], float],
    last_seen: float,
    on_reply: Callable[[Any], None],
    on_seen: Callable[[float], None],
    on_suspect: Callable[[float], None] | None,
    on_alive: Callable[[], None] | None,
    lost: Callable[[str], Exception],
) -> NoReturn:
    """Read ``conn`` until it is lost; never returns.

    Args:
        last_seen: when the connection last answered (``timer`` time).
        on_reply: every reply (the PING's answer too) is handed here, in order.
        on_seen: the new last-answer time, after every reply.
        on_suspect: called with the last-answer time when a PING goes out after silence.
        on_alive: called when that PING (or anything) is answered.
        lost: builds the exception that ends the loop, from a reason.

    Raises:
        the exception ``lost`` builds (no answer to a PING, or the primary moved), or the
        connection's own error (redis-py's, ``OSError``, ``TimeoutError``).
    """
    interval = config.bus_health_check_interval
    deadline = interval + config.operation_timeout
    ping_sent: float | None = None
    check_every = endpoint.check_interval if endpoint is not None else None
    next_check = None if check_every is None else time.monotonic() + check_every
    while True:
        if endpoint is not None and next_check is not None and check_every is not None:
            if time.monotonic() >= next_check:
                # A check that fails or takes longer than operation_timeout changes nothing.
                with anyio.move_on_after(config.operation_timeout):
                    moved_to = await endpoint.moved_to()
                    if moved_to is not None:
                        raise lost(f"the primary moved to {moved_to}")
                next_check = time.monotonic() + check_every
        now = timer()
        if ping_sent is None:
            wait = last_seen + interval - now
            if wait <= 0:
                # Silence: ask, and meanwhile bound L1 as if the connection were lost since
                # the last reply (undone by the answer).
                with anyio.fail_after(config.operation_timeout):
                    await conn.send_command("PING")
                ping_sent = now
                if on_suspect is not None:
                    on_suspect(last_seen)
                continue
        else:
            wait = ping_sent + deadline - now
            if wait <= 0:
                raise lost(f"no reply to PING within {deadline:.2f}s")
        if next_check is not None:
            wait = min(wait, max(0.0, next_check - time.monotonic()))
        reply = await conn.read_response(timeout=wait)
        if reply is None:
            continue
        last_seen = timer()
        on_seen(last_seen)
        if ping_sent is not None:
            ping_sent = None
            if on_alive is not None:
                on_alive()
        on_reply(reply)


async def resubscribe(
    *,
    subscribe: Callable[[], Awaitable[AbstractConnection]],
    listen: Callable[[AbstractConnection], Awaitable[None]],
    on_subscribed: Callable[[], None],
    on_lost: Callable[[], None],
    on_failed: Callable[[BaseException, bool, int], None],
    on_stopping: Callable[[], None],
    errors: tuple[type[BaseException], ...],
    backoff: Callable[[int], float],
    task_status: TaskStatus[None],
    ready_within: float,
    attempts: int | None = None,
) -> None:
    """Subscribe, listen and resubscribe after ``backoff(attempt)``; report readiness once.

    ``subscribe`` connects and subscribes (bounded), ``listen`` reads until the
    connection is lost (`listen`). ``on_subscribed`` follows each confirmed subscription;
    ``on_lost`` each end of one, but not by cancellation (``on_stopping`` then);
    ``on_failed(exc, subscribed, attempt)`` reports each of ``errors`` that ended an
    attempt or a subscription (anything else propagates). ``task_status.started()`` is
    called after the first confirmed subscription, or once attempts have failed for
    ``ready_within`` seconds (at least one attempt). ``attempts``: return after this many
    failed attempts in a row; ``None``: never. Cancellation closes the connection and
    propagates.
    """
    ready = False
    attempt = 0
    give_up_at = time.monotonic() + ready_within
    while True:
        conn: AbstractConnection | None = None
        subscribed = False
        try:
            conn = await subscribe()
            subscribed = True
            on_subscribed()
            if not ready:
                ready = True
                task_status.started()
            attempt = 0
            await listen(conn)
        except errors as exc:
            on_failed(exc, subscribed, attempt)
        except anyio.get_cancelled_exc_class():
            subscribed = False  # stopping, not a loss
            on_stopping()
            raise
        finally:
            if subscribed:
                on_lost()
            if conn is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await conn.disconnect()
        if not ready and time.monotonic() >= give_up_at:
            ready = True
            task_status.started()
        attempt += 1
        if attempts is not None and attempt >= attempts:
            return
        await anyio.sleep(backoff(attempt))


async def await_subscribed(
    conn: AbstractConnection,
    command: str,
    confirmation: bytes,
    *,
    reply_timeout: float,
    lost: Callable[[str], Exception],
) -> None:
    """Read ``conn`` until the ``confirmation`` of ``command`` (``b"subscribe"`` for
    ``SUBSCRIBE``), each reply within ``reply_timeout`` (the caller bounds the whole);
    raise ``lost(...)`` if the server goes."""
    while True:
        reply = await conn.read_response(timeout=reply_timeout)
        if reply is None:
            raise lost(f"no reply to {command}")
        if isinstance(reply, list) and reply and reply[0] == confirmation:
            return
