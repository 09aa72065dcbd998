"""Applying the invalidation bus's messages to this instance's L1, and the trust of L1
while any invalidation channel (the bus, client tracking) is down."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, final

from opentelemetry.trace import SpanKind

from . import _telemetry
from ._telemetry import Telemetry
from .bus import BusMessage, BusOp, InvalidationBus
from .config import CacheConfig
from .l1 import (
    FlushAll,
    InMemoryCache,
    InvalidateKeys,
    InvalidatePattern,
    InvalidateTags,
    L1Actor,
)

__all__ = ("BusApplier", "ChannelTrust", "TrustGate", "make_bus")


class Distrust(Protocol):
    """What a channel's loss handling calls: `InMemoryCache` or a `ChannelTrust`."""

    def distrust(self, since: float, max_stale: float) -> None: ...

    def trust(self) -> None: ...


@final
class TrustGate:
    """L1 is trusted only while every invalidation channel is up.

    Each channel (``bus``, ``tracking``, one per node in a cluster) reports itself down
    with the time it was last known alive and up again once it recovered (after its
    flush). While any is down, L1 is distrusted (`InMemoryCache.distrust`) since the
    earliest of the down channels' times; when the last one is back, L1 is trusted.
    """

    def __init__(self, l1: InMemoryCache, max_stale: float) -> None:
        self._l1 = l1
        self._max_stale = max_stale
        self._down: dict[str, float] = {}

    def channel(self, name: str) -> ChannelTrust:
        """The `Distrust` view of channel ``name``."""
        return ChannelTrust(self, name)

    def down(self, name: str, since: float) -> None:
        """Channel ``name`` is down (or suspected) since ``since``; an earlier time stays."""
        self._down.setdefault(name, since)
        self._l1.distrust(min(self._down.values()), self._max_stale)

    def up(self, name: str) -> None:
        """Channel ``name`` is up (or was removed): trust L1 once no channel is down."""
        if self._down.pop(name, None) is None and self._down:
            return
        self._l1.trust()
        if self._down:  # the others still bound L1, from their own earliest loss
            self._l1.distrust(min(self._down.values()), self._max_stale)

    @property
    def down_channels(self) -> list[str]:
        """The channels down now."""
        return sorted(self._down)


@final
class ChannelTrust:
    """One channel's side of a `TrustGate`, shaped like `InMemoryCache`'s distrust/trust."""

    __slots__ = ("_gate", "_name")

    def __init__(self, gate: TrustGate, name: str) -> None:
        self._gate = gate
        self._name = name

    def distrust(self, since: float, max_stale: float = 0.0) -> None:
        """This channel is down since ``since`` (the gate's ``max_stale`` applies)."""
        self._gate.down(self._name, since)

    def trust(self) -> None:
        """This channel is up again."""
        self._gate.up(self._name)


@final
class BusApplier:
    """The bus's ``on_message`` and ``on_lost``, run on the bus listener's task.

    A message is handed to the L1 actor, in a ``cache.invalidate.apply`` span linked to the
    sender's trace when tracing is on; a loss (or suspected loss) bounds how long L1
    entries stay trusted (``max_stale_on_bus_loss``).
    """

    def __init__(
        self,
        actor: L1Actor,
        l1: Distrust,
        telemetry: Telemetry,
        *,
        channel: str,
        max_stale: float,
    ) -> None:
        self._actor = actor
        self._l1 = l1
        self._telemetry = telemetry
        self._channel = channel
        self._max_stale = max_stale

    def lost(self, when: float) -> None:
        """The bus was lost (or is suspected lost) at ``when``: distrust older L1 entries."""
        self._l1.distrust(when, self._max_stale)

    def __call__(self, message: BusMessage) -> None:
        tel = self._telemetry
        if not (tel.active or tel.poll()) or not tel.tracing_on:
            self.apply(message)
            return
        link = _telemetry.link_from_traceparent(message.traceparent)
        attributes: dict[str, Any] = {
            "cache.bus.op": message.op.value,
            "messaging.destination.name": self._channel,
        }
        if message.origin is not None:
            attributes["cache.bus.origin"] = message.origin
        if message.keys:
            attributes["cache.bus.key_count"] = len(message.keys)
        with tel.span(
            "cache.invalidate.apply",
            attributes,
            links=[link] if link is not None else None,
            kind=SpanKind.CONSUMER,
        ):
            self.apply(message)

    def apply(self, message: BusMessage) -> None:
        """Submit the L1 invalidation ``message`` asks for."""
        if message.op is BusOp.DELETE:
            self._actor.submit(InvalidateKeys(message.keys))
        elif message.op is BusOp.CLEAR_PATTERN:
            assert message.pattern is not None
            self._actor.submit(InvalidatePattern(message.pattern))
        elif message.op is BusOp.TAGS:
            self._actor.submit(InvalidateTags(message.tags))
        else:
            self._actor.submit(FlushAll())


def make_bus(
    config: CacheConfig,
    *,
    origin: str,
    actor: L1Actor,
    trust: ChannelTrust,
    telemetry: Telemetry,
    on_subscribed: Callable[[], None],
    timer: Callable[[], float],
    logger: Any,
) -> InvalidationBus:
    """The manager's bus subscriber: messages go to ``actor`` (`BusApplier`), a loss or a
    silence distrusts L1 through ``trust`` and an answer trusts it again."""
    applier = BusApplier(
        actor, trust, telemetry, channel=config.channel, max_stale=config.max_stale_on_bus_loss
    )
    return InvalidationBus(
        config,
        origin=origin,
        on_message=applier,
        on_subscribed=on_subscribed,
        on_lost=applier.lost,
        on_suspect=applier.lost,
        on_alive=trust.trust,
        timer=timer,
        logger=logger,
    )
