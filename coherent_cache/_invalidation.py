"""Applying the invalidation bus's messages to this instance's L1."""

from __future__ import annotations

from typing import Any, final

from opentelemetry.trace import SpanKind

from . import _telemetry
from ._telemetry import Telemetry
from .bus import BusMessage, BusOp
from .keys import key_prefix
from .l1 import (
    FlushAll,
    InMemoryCache,
    InvalidateKeys,
    InvalidatePattern,
    InvalidateTags,
    L1Actor,
)

__all__ = ("BusApplier",)


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
        l1: InMemoryCache,
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
        attributes.update(_target_attributes(tel, message))
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


def _target_attributes(tel: Telemetry, message: BusMessage) -> dict[str, Any]:
    """What the message invalidates, as the sender's span shows it: ``cache.key_prefix``
    (of its one key, of keys that all share one prefix, or of its pattern), plus
    ``cache.key`` for a single key or a pattern only with ``trace_full_keys``."""
    if message.op is BusOp.CLEAR_PATTERN and message.pattern is not None:
        return tel.key_attributes(message.pattern)
    if message.op is not BusOp.DELETE or not message.keys:
        return {}
    if len(message.keys) == 1:
        return tel.key_attributes(message.keys[0])
    first = key_prefix(message.keys[0])
    head = first + ":"
    if all(key.startswith(head) or key == first for key in message.keys):
        return {"cache.key_prefix": first}
    return {}
