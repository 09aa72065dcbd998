"""InvalidationBus (the subscriber), InvalidationPublisher and the wire message, version 1.

One JSON object per ``PUBLISH`` on ``<namespace>:invalidate``::

    {"v": 1, "op": "delete", "keys": ["user:1"], "origin": "api-7f3a", "ts": 1763980000123}
    {"v": 1, "op": "clear_pattern", "pattern": "user_profile:*"}
    {"v": 1, "op": "clear"}
    {"v": 1, "op": "tags", "tags": ["products", "tenant:7"]}

``v`` and ``op`` are required, plus ``keys`` (a non-empty list of keys) for ``delete``,
``pattern`` for ``clear_pattern`` and ``tags`` (a non-empty list of tags, which follow the
rules of keys) for ``tags``. ``origin``, ``ts`` (milliseconds since the epoch) and
``traceparent`` (W3C) are optional. Keys, patterns and tags carry no namespace prefix. Unknown
fields are ignored; anything else is malformed and dropped by receivers. With
``bus_signing_keys`` set, messages end with an HMAC field ``"sig"`` (see `_signing`) and
receivers drop messages without a valid one.
"""

from __future__ import annotations

import enum
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self, TypedDict, final

import anyio
import orjson
from anyio.abc import TaskStatus
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from ._backoff import backoff_delay
from ._clients import bus_endpoint, bus_pool
from ._listen import await_subscribed, listen, resubscribe
from ._log import Logger, get_logger
from ._signing import OVERHEAD, verify
from .config import CacheConfig
from .errors import (
    CacheClosedError,
    ConfigurationError,
    InvalidKeyError,
    MalformedMessageError,
)
from .keys import validate_key, validate_pattern, validate_tag
from .serializer import now_ms

__all__ = [
    "BUS_PROTOCOL_VERSION",
    "BusMessage",
    "BusOp",
    "BusStats",
    "InvalidationBus",
    "InvalidationPublisher",
    "make_origin",
]

log = get_logger()

BUS_PROTOCOL_VERSION: Final = 1
MAX_KEYS_PER_MESSAGE: Final = 1000
"""Publishers split larger deletes into several messages."""


class BusOp(enum.StrEnum):
    """What a bus message asks receivers to drop from their L1."""

    DELETE = "delete"
    CLEAR_PATTERN = "clear_pattern"
    CLEAR = "clear"
    TAGS = "tags"


def make_origin(prefix: str | None = None) -> str:
    """A fresh origin id: ``<prefix or host>-<pid>-<6 random hex digits>``."""
    return f"{prefix or socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@final
@dataclass(frozen=True, slots=True)
class BusMessage:
    """One invalidation on the bus (wire format version 1)."""

    DEFAULT_MAX_SIZE: ClassVar[int] = 1024 * 1024
    """The default ``max_bus_message_size``: receivers drop larger messages."""

    op: BusOp
    keys: tuple[str, ...] = ()
    pattern: str | None = None
    origin: str | None = None
    ts: int | None = None
    traceparent: str | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def delete(
        cls, keys: Iterable[str], *, origin: str | None = None, traceparent: str | None = None
    ) -> BusMessage:
        """A ``delete`` of ``keys``, stamped with the current time."""
        return cls(
            BusOp.DELETE, keys=tuple(keys), origin=origin, ts=now_ms(), traceparent=traceparent
        )

    @classmethod
    def delete_batches(
        cls,
        keys: Iterable[str],
        *,
        origin: str | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
        max_keys: int = MAX_KEYS_PER_MESSAGE,
    ) -> list[BusMessage]:
        """``delete`` messages for ``keys``: each encodes to at most ``max_size`` bytes.

        Receivers drop messages over their ``max_bus_message_size``, so a long list of
        keys is split by encoded size (JSON escaping included) as well as by count. All
        messages carry the same timestamp.

        Raises:
            InvalidKeyError: a key is invalid, cannot be encoded as JSON (a lone
                surrogate), or does not fit in a ``max_size`` message on its own.
        """
        ts = now_ms()
        empty = len(cls(BusOp.DELETE, origin=origin, ts=ts).encode())  # with "keys":[]
        batches: list[BusMessage] = []
        current: list[str] = []
        size = empty
        for key in keys:
            validate_key(key)
            try:
                item = len(orjson.dumps(key))
            except orjson.JSONEncodeError as exc:
                raise InvalidKeyError(
                    f"a cache key must be valid Unicode to go on the bus ({exc})", key=key
                ) from None
            if empty + item > max_size:
                raise InvalidKeyError(
                    f"a cache key of {item} bytes as JSON does not fit in a bus message of "
                    f"at most {max_size} bytes (max_bus_message_size)",
                    key=key[:64] + "...",
                )
            if current and (size + 1 + item > max_size or len(current) >= max_keys):
                batches.append(cls(BusOp.DELETE, keys=tuple(current), origin=origin, ts=ts))
                current, size = [], empty
            size += item + (1 if current else 0)
            current.append(key)
        if current:
            batches.append(cls(BusOp.DELETE, keys=tuple(current), origin=origin, ts=ts))
        return batches

    @classmethod
    def clear_pattern(
        cls, pattern: str, *, origin: str | None = None, traceparent: str | None = None
    ) -> BusMessage:
        """A ``clear_pattern`` of ``pattern``, stamped with the current time."""
        return cls(
            BusOp.CLEAR_PATTERN,
            pattern=pattern,
            origin=origin,
            ts=now_ms(),
            traceparent=traceparent,
        )

    @classmethod
    def clear(cls, *, origin: str | None = None, traceparent: str | None = None) -> BusMessage:
        """A ``clear`` of the whole namespace, stamped with the current time."""
        return cls(BusOp.CLEAR, origin=origin, ts=now_ms(), traceparent=traceparent)

    @classmethod
    def invalidate_tags(
        cls, tags: Iterable[str], *, origin: str | None = None, traceparent: str | None = None
    ) -> BusMessage:
        """A ``tags`` message: drop every entry carrying any of ``tags``."""
        return cls(
            BusOp.TAGS, tags=tuple(tags), origin=origin, ts=now_ms(), traceparent=traceparent
        )

    def encode(self) -> bytes:
        """The JSON bytes to PUBLISH."""
        body: dict[str, Any] = {"v": BUS_PROTOCOL_VERSION, "op": self.op.value}
        if self.op is BusOp.DELETE:
            body["keys"] = list(self.keys)
        elif self.op is BusOp.CLEAR_PATTERN:
            body["pattern"] = self.pattern
        elif self.op is BusOp.TAGS:
            body["tags"] = list(self.tags)
        for name in ("origin", "ts", "traceparent"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return orjson.dumps(body)

    @classmethod
    def decode(cls, data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> BusMessage:
        """Parse and validate one message.

        Raises:
            MalformedMessageError: oversized, not JSON, not an object, unknown ``v`` or
                ``op``, missing or mistyped fields, invalid keys or pattern.
        """
        if len(data) > max_size:
            raise MalformedMessageError(f"{len(data)} bytes, over the {max_size} byte limit")
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessageError(f"not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise MalformedMessageError(f"not a JSON object but {type(body).__name__}")
        version = body.get("v")
        if type(version) is not int or version != BUS_PROTOCOL_VERSION:
            raise MalformedMessageError(f"unsupported version {version!r}")
        raw_op = body.get("op")
        try:
            op = BusOp(raw_op if isinstance(raw_op, str) else "")
        except ValueError:
            raise MalformedMessageError(f"unknown op {body.get('op')!r}") from None
        keys: tuple[str, ...] = ()
        pattern: str | None = None
        tags: tuple[str, ...] = ()
        try:
            if op is BusOp.DELETE:
                raw_keys = body.get("keys")
                if not isinstance(raw_keys, list) or not raw_keys:
                    raise MalformedMessageError("'keys' must be a non-empty list of strings")
                keys = tuple(validate_key(k) for k in raw_keys)
            elif op is BusOp.CLEAR_PATTERN:
                pattern = validate_pattern(body.get("pattern"))
            elif op is BusOp.TAGS:
                raw_tags = body.get("tags")
                if not isinstance(raw_tags, list) or not raw_tags:
                    raise MalformedMessageError("'tags' must be a non-empty list of strings")
                tags = tuple(validate_tag(t) for t in raw_tags)
        except InvalidKeyError as exc:
            raise MalformedMessageError(str(exc)) from None
        origin = body.get("origin")
        ts = body.get("ts")
        traceparent = body.get("traceparent")
        if origin is not None and not isinstance(origin, str):
            raise MalformedMessageError("'origin' must be a string")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
            raise MalformedMessageError("'ts' must be a number")
        if traceparent is not None and not isinstance(traceparent, str):
            raise MalformedMessageError("'traceparent' must be a string")
        return cls(
            op,
            keys=keys,
            pattern=pattern,
            origin=origin,
            ts=None if ts is None else int(ts),
            traceparent=traceparent,
            tags=tags,
        )


class BusStats(TypedDict):
    """Figures of the subscriber side of the bus."""

    enabled: bool
    connected: bool
    channel: str
    origin: str
    received: int
    applied: int
    own_skipped: int
    dropped: int
    unauthenticated: int
    losses: int
    recoveries: int
    connect_attempts: int
    last_loss_at: float | None
    last_recovery_at: float | None


class BusConnectionLost(Exception):
    """The subscriber connection is dead (error, EOF, or an unanswered PING)."""


@final
class InvalidationBus:
    """The subscriber of one instance: applies other instances' invalidations to its L1.

    It owns one dedicated connection (RESP2, no hidden retries: every reconnect goes
    through `run`, so none can slip by unnoticed). The connection counts as dead on any
    read or write error, on EOF, and when a PING sent after ``bus_health_check_interval``
    seconds of silence gets no reply within that interval plus ``operation_timeout``
    (redis-py's own pub/sub health check does not wait for the reply).

    Args:
        config: the manager's settings (URL, credentials, channel, timeouts).
        origin: this instance's origin id; messages carrying it are skipped.
        on_message: called with each valid message from another origin.
        on_subscribed: called right after every confirmed SUBSCRIBE (flush L1 there).
        on_lost: called whenever a confirmed subscription ends, with the time the
            connection was last known alive (its last reply), not the time the loss was
            noticed: the staleness bound counts from there.
        on_suspect: called with the time of the last reply when a PING goes out after
            ``bus_health_check_interval`` of silence (the connection may be dead).
        on_alive: called when a reply arrives after such a PING.
        timer: monotonic clock.
        logger: the logger of its events (a structlog one too); the package logger when omitted.
    """

    def __init__(
        self,
        config: CacheConfig,
        *,
        origin: str,
        on_message: Callable[[BusMessage], None],
        on_subscribed: Callable[[], None],
        on_lost: Callable[[float], None],
        on_suspect: Callable[[float], None] | None = None,
        on_alive: Callable[[], None] | None = None,
        timer: Callable[[], float] = time.monotonic,
        logger: Logger | None = None,
    ) -> None:
        assert config.redis_url is not None
        self.config = config
        self.channel = config.channel
        self.origin = origin
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._on_suspect = on_suspect
        self._on_alive = on_alive
        self._timer = timer
        self._last_seen = timer()
        self._random = random.Random()
        self._pool = bus_pool(config)
        self._endpoint = bus_endpoint(config, self._pool)
        self.connected = False
        self._received = 0
        self._applied = 0
        self._own = 0
        self._dropped = 0
        self._unauthenticated = 0
        self._signing_keys = config.signing_keys()
        self._max_age_ms = (
            None if config.bus_signature_max_age is None else config.bus_signature_max_age * 1000
        )
        self._losses = 0
        self._recoveries = 0
        self._attempts = 0
        self._last_loss: float | None = None
        self._last_recovery: float | None = None
        self._ever_subscribed = False
        self.log: Logger = logger if logger is not None else log
        """The logger (the manager binds its namespace and origin to it)."""

    def stats(self) -> BusStats:
        """Counters and state of the subscriber."""
        return {
            "enabled": True,
            "connected": self.connected,
            "channel": self.channel,
            "origin": self.origin,
            "received": self._received,
            "applied": self._applied,
            "own_skipped": self._own,
            "dropped": self._dropped,
            "unauthenticated": self._unauthenticated,
            "losses": self._losses,
            "recoveries": self._recoveries,
            "connect_attempts": self._attempts,
            "last_loss_at": self._last_loss,
            "last_recovery_at": self._last_recovery,
        }

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(
            attempt, base=0.05, cap=self.config.reconnect_backoff_max, rng=self._random
        )

    async def run(
        self,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        ready_within: float = 0.0,
    ) -> None:
        """Subscribe, listen and resubscribe forever; report readiness once.

        ``task_status.started()`` is called after the first confirmed subscription, or
        once attempts have failed for ``ready_within`` seconds (at least one attempt; then
        the manager serves from a distrusted L1 while this loop keeps reconnecting).

        Error handling: any connection error, timeout or dead-connection verdict ends the
        subscription; the loss is reported through ``on_lost``, counted and logged, and a
        new connection is tried after a jittered exponential backoff (50 ms doubling up to
        ``reconnect_backoff_max``). Malformed messages are dropped and counted without
        ending the subscription. Cancellation closes the connection and propagates.
        """
        try:
            await resubscribe(
                subscribe=self._subscribe,
                listen=self._listen,
                on_subscribed=self._mark_subscribed,
                on_lost=self._mark_lost,
                on_failed=self._failed,
                on_stopping=self._stopping,
                errors=(BusConnectionLost, TimeoutError, redis_errors.RedisError, OSError),
                backoff=self._backoff,
                task_status=task_status,
                ready_within=ready_within,
            )
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await self._pool.disconnect()
                await self._endpoint.aclose()

    def _failed(self, exc: BaseException, subscribed: bool, attempt: int) -> None:
        self._endpoint.failed()
        level = self.log.warning if subscribed or attempt == 0 else self.log.debug
        level(
            "bus_disconnected" if subscribed else "bus_connect_failed",
            channel=self.channel,
            node=self._endpoint.address,
            attempt=attempt,
            error=type(exc).__name__,
            detail=str(exc),
        )

    def _stopping(self) -> None:
        self.connected = False

    async def _subscribe(self) -> AbstractConnection:
        """Connect where the deployment says (`_clients.bus_endpoint`) and subscribe."""
        self._attempts += 1
        cfg = self.config
        endpoint = self._endpoint
        deadline = endpoint.attempts_per_connect * (cfg.connect_timeout + cfg.operation_timeout)
        with anyio.fail_after(deadline + cfg.operation_timeout):
            conn = await endpoint.connect()
            try:
                await conn.send_command(endpoint.subscribe_command, self.channel)
                await await_subscribed(
                    conn,
                    endpoint.subscribe_command,
                    endpoint.subscribed_kind,
                    reply_timeout=cfg.operation_timeout,
                    lost=BusConnectionLost,
                )
                return conn
            except BaseException:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await conn.disconnect()
                raise

    def _mark_subscribed(self) -> None:
        self._last_seen = self._timer()
        self.connected = True
        if self._ever_subscribed:
            self._recoveries += 1
            self._last_recovery = time.time()
        self._ever_subscribed = True
        self._on_subscribed()
        self.log.info(
            "bus_subscribed",
            channel=self.channel,
            node=self._endpoint.address,
            recoveries=self._recoveries,
        )

    def _mark_lost(self) -> None:
        self.connected = False
        self._losses += 1
        self._last_loss = time.time()
        self._on_lost(self._last_seen)

    async def _listen(self, conn: AbstractConnection) -> None:
        self._last_seen = self._timer()
        await listen(
            conn,
            self.config,
            endpoint=self._endpoint,
            timer=self._timer,
            last_seen=self._last_seen,
            on_reply=self._handle,
            on_seen=self._seen,
            on_suspect=self._on_suspect,
            on_alive=self._on_alive,
            lost=BusConnectionLost,
        )

    def _seen(self, when: float) -> None:
        self._last_seen = when

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind in self._endpoint.lost_kinds:
            # The server ended the subscription (a sharded channel's slot moved).
            raise BusConnectionLost(f"the server sent {kind!r}")
        if kind != self._endpoint.message_kind or len(reply) != 3:
            return  # pong, subscribe confirmations
        self._received += 1
        data = reply[2]
        if self._signing_keys and len(data) <= self.config.max_bus_message_size:
            refused = verify(data, self.channel, self._signing_keys)
            if refused is not None:
                self._refuse(refused)
                return
        try:
            message = BusMessage.decode(data, max_size=self.config.max_bus_message_size)
        except MalformedMessageError as exc:
            self._dropped += 1
            self.log.warning("bus_message_dropped", channel=self.channel, reason=exc.reason)
            return
        if self._max_age_ms is not None and (
            message.ts is None or abs(now_ms() - message.ts) > self._max_age_ms
        ):
            self._refuse("ts outside bus_signature_max_age", origin=message.origin)
            return
        if message.origin == self.origin:
            self._own += 1
            return
        self._applied += 1
        self._on_message(message)

    def _refuse(self, reason: str, *, origin: str | None = None) -> None:
        """Drop a message that signing rejects; count it and say why (never the key)."""
        self._dropped += 1
        self._unauthenticated += 1
        self.log.warning(
            "bus_message_unauthenticated", channel=self.channel, reason=reason, origin=origin
        )


@final
class InvalidationPublisher:
    """Invalidate every instance's cache from a service that has no L1 of its own.

    ``delete``, ``clear_pattern`` and ``clear`` remove the L2 entries (unless
    ``l2=False``) and then PUBLISH the bus message, so every connected instance drops its
    L1 copy. Unlike `CacheManager`, failures raise: an invalidation that did not happen
    must be visible to the caller. Every Redis call is bounded by ``operation_timeout``.

    Messages are built and checked before anything is sent, so an invalid key or pattern
    raises and changes nothing. With ``bus_signing_keys`` in ``config``, every message is
    signed with the first key. A delete of many keys goes out as several messages, each
    at most ``max_bus_message_size`` bytes and `MAX_KEYS_PER_MESSAGE` keys (receivers
    drop larger messages); the L2 keys of each message are unlinked right before it is
    published.

    Args:
        redis_url: the server of the caches.
        namespace: the caches' namespace.
        channel: the bus channel; when omitted, the config's ``invalidation_channel`` or
            ``<namespace>:invalidate``.
        origin: the origin id written into messages (default: host, pid, random). A
            manager skips messages carrying its own origin.
        config: settings to use instead of ``redis_url``/``namespace`` (timeouts, TLS,
            credentials, ``max_bus_message_size``).

    Raises:
        ConfigurationError: no URL was given, ``redis_url`` or ``namespace`` contradicts
            ``config``, or a setting (channel, origin, URL, namespace) is invalid.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str = "cache",
        *,
        channel: str | None = None,
        origin: str | None = None,
        config: CacheConfig | None = None,
    ) -> None:
        from .l2 import RedisCache

        if config is None:
            if redis_url is None:
                raise ConfigurationError(
                    "InvalidationPublisher needs redis_url or config", field="redis_url"
                )
            config = CacheConfig(
                redis_url=redis_url, namespace=namespace, invalidation_channel=channel
            )
        else:
            # Silently preferring one of two contradicting settings would invalidate the
            # wrong server or namespace.
            if redis_url is not None and redis_url != config.redis_url:
                raise ConfigurationError(
                    "redis_url differs from config.redis_url: pass one of them",
                    field="redis_url",
                )
            if namespace not in ("cache", config.namespace):
                raise ConfigurationError(
                    f"namespace {namespace!r} differs from config.namespace "
                    f"{config.namespace!r}: pass one of them",
                    field="namespace",
                )
            if config.redis_url is None:
                raise ConfigurationError(
                    "InvalidationPublisher needs a config with a redis_url", field="redis_url"
                )
            if channel is not None and channel != config.invalidation_channel:
                config = CacheConfig(**{**config.model_dump(), "invalidation_channel": channel})
        if origin is not None and (not 0 < len(origin) <= 256 or not origin.isprintable()):
            raise ConfigurationError("origin must be 1-256 printable characters", field="origin")
        self.config = config
        self.channel = config.channel
        self.origin = origin or make_origin(config.origin_prefix)
        self._l2 = RedisCache(config)
        self._closed = False
        # Messages are signed on the way out (RedisCache.publish) when keys are set.
        self._max_body = config.max_bus_message_size - (OVERHEAD if config.bus_signing_keys else 0)

    def __repr__(self) -> str:
        return (
            f"<InvalidationPublisher channel={self.channel!r} url={self.config.redacted_url()!r}"
            f"{' closed' if self._closed else ''}>"
        )

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; later calls raise `CacheClosedError`."""
        self._closed = True
        await self._l2.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosedError("this InvalidationPublisher is closed; create a new one")

    def _encode(self, message: BusMessage) -> bytes:
        """The message's bytes, checked against ``max_bus_message_size``.

        Raises:
            InvalidKeyError: the key or pattern cannot be encoded, or makes the message
                too large for receivers.
        """
        try:
            data = message.encode()
        except orjson.JSONEncodeError as exc:
            raise InvalidKeyError(
                f"the bus message cannot be encoded as JSON ({exc})", key=message.pattern
            ) from None
        limit = self.config.max_bus_message_size
        if len(data) > self._max_body:
            raise InvalidKeyError(
                f"the bus message would be {len(data) + limit - self._max_body} bytes, over "
                f"max_bus_message_size={limit}: receivers would drop it",
                key=message.pattern,
            )
        return data

    async def delete(self, *keys: str, l2: bool = True) -> int:
        """Drop ``keys`` everywhere; return how many subscribers received the last message.

        Raises:
            InvalidKeyError: a key is invalid (nothing is sent).
            BackendError: Redis failed or timed out.
            CacheClosedError: the publisher was closed.
        """
        self._check_open()
        messages = BusMessage.delete_batches(keys, origin=self.origin, max_size=self._max_body)
        encoded = [(message.keys, self._encode(message)) for message in messages]
        receivers = 0
        for batch, data in encoded:
            if l2:
                await self._l2.delete_many(batch, raise_errors=True)
            receivers = await self._l2.publish(self.channel, data)
        return receivers

    async def clear_pattern(self, pattern: str, *, l2: bool = True) -> int:
        """Drop keys matching ``pattern`` everywhere; return the number of subscribers.

        Raises:
            InvalidKeyError: the pattern is invalid (nothing is sent).
            BackendError: Redis failed or timed out (L2 keys may be partly removed).
            CacheClosedError: the publisher was closed.
        """
        self._check_open()
        validate_pattern(pattern)
        data = self._encode(BusMessage.clear_pattern(pattern, origin=self.origin))
        if l2:
            await self._l2.clear_pattern(pattern, raise_errors=True)
        return await self._l2.publish(self.channel, data)

    async def clear(self, *, l2: bool = True) -> int:
        """Drop the whole namespace everywhere; return the number of subscribers.

        Raises:
            BackendError: Redis failed or timed out (L2 keys may be partly removed).
            CacheClosedError: the publisher was closed.
        """
        self._check_open()
        data = self._encode(BusMessage.clear(origin=self.origin))
        if l2:
            await self._l2.clear_pattern("*", raise_errors=True)
        return await self._l2.publish(self.channel, data)

    async def publish(self, message: BusMessage) -> int:
        """PUBLISH an already built message as is (L2 untouched); return the subscribers.

        Raises:
            MalformedMessageError: the message breaks the wire format (receivers would
                drop it), e.g. a ``delete`` without keys or over ``max_bus_message_size``.
            BackendError: Redis failed or timed out.
            CacheClosedError: the publisher was closed.
        """
        self._check_open()
        try:
            data = message.encode()
        except orjson.JSONEncodeError as exc:
            raise MalformedMessageError(f"not encodable as JSON ({exc})") from None
        BusMessage.decode(data, max_size=self._max_body)
        return await self._l2.publish(self.channel, data)
