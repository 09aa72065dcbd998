"""Removing a namespace's keys by glob pattern (``clear_pattern``, ``clear``): SCAN MATCH +
UNLINK in batches of `SCAN_COUNT`, never ``KEYS``, each call under ``operation_timeout``.

On one server (standalone, Sentinel) each round trip is one script, `SWEEP_BATCH`: the
server takes up to `SWEEP_STEPS` SCAN steps, UNLINKs what matched after each and, once
the cursor is back to 0, PUBLISHes the bus message. A keyspace of up to 8,000 keys is
cleared and announced in one round trip instead of at least three (SCAN, UNLINK,
PUBLISH): ``clear_pattern`` was the slowest invalidation of the coherence benchmark
(docs/benchmarks.md). The server does the same work per step as before (one SCAN of
`SCAN_COUNT` and one UNLINK), and the message still leaves after the last UNLINK, so
another instance that drops its copy cannot read the old entry back from L2.

In a cluster each primary is walked on its own cursor with SCAN and UNLINK (a script
may only touch keys of its own slot), and the caller publishes after the last batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Final, final

from redis.asyncio.cluster import ClusterNode, RedisCluster

from ._clients import GuardedCall, L2Client
from ._direct import OwnConnection

__all__ = ()

SCAN_COUNT: Final = 1000
"""Keys asked for per SCAN call (and deleted per UNLINK) by ``clear_pattern``; also the
default batch of `invalidate_tags` and `prune_tag`, and the tag pruner's."""

SWEEP_STEPS: Final = 8
"""SCAN steps (of `SCAN_COUNT` keys each) one `SWEEP_BATCH` call takes at most: a keyspace
of up to 8,000 keys is swept in one round trip, and one call keeps the server for about
as long as 8 SCAN calls would (0.3 ms for 8,000 keys on the 2-core test machine)."""

# ARGV: cursor, match, count, channel ('' for no message), message, steps. UNLINK in
# chunks: a SCAN may return more names than COUNT, and Lua's unpack has a stack limit.
SWEEP_BATCH: Final = """
local cursor = ARGV[1]
local removed = 0
local steps = 0
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[2], 'COUNT', ARGV[3])
  cursor = reply[1]
  local names = reply[2]
  for i = 1, #names, 1000 do
    removed = removed + redis.call('UNLINK', unpack(names, i, math.min(i + 999, #names)))
  end
  steps = steps + 1
until cursor == '0' or steps >= tonumber(ARGV[6])
local published = 0
if cursor == '0' and ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  published = 1
end
return {cursor, removed, published}
"""


@dataclass
class Progress:
    """How far a sweep got (read it after a `BackendError` too)."""

    removed: int = 0
    """Keys unlinked so far."""
    published: bool = False
    """Whether the bus message was PUBLISHed by the sweep itself (one server only)."""


@final
class KeyspaceSweep:
    """The pattern sweeps of one `RedisCache`.

    Args:
        client: the L2 client.
        call: the guarded call every Redis command goes through.
        writes: the cache's own connection (the scripts go there when it is free).
    """

    __slots__ = ("_call", "_client", "_writes")

    def __init__(self, client: L2Client, call: GuardedCall, writes: OwnConnection) -> None:
        self._client = client
        self._call = call
        self._writes = writes

    async def sweep(
        self, match: str, progress: Progress, notify: tuple[str, bytes] | None = None
    ) -> None:
        """UNLINK every key matching the glob ``match``, counting in ``progress``; on one
        server, PUBLISH ``notify`` (channel, signed message) right after the last UNLINK.

        Raises:
            BackendError: Redis failed midway (``progress`` says how far it got).
        """
        if isinstance(self._client, RedisCluster):
            for node in await self.nodes():
                cursor = 0
                while True:
                    cursor, names = await self.scan(cursor, match, node)
                    if names:
                        progress.removed += await self.unlink(names)
                    if cursor == 0:
                        break
            return
        channel, message = notify if notify is not None else ("", b"")
        cursor = 0
        while True:
            command = (
                "EVAL",
                SWEEP_BATCH,
                0,
                cursor,
                match,
                SCAN_COUNT,
                channel,
                message,
                SWEEP_STEPS,
            )
            reply: Any = (await self._call("SCAN+UNLINK", partial(self._writes.send, command)))[0]
            cursor, removed, published = int(reply[0]), int(reply[1]), bool(reply[2])
            progress.removed += removed
            progress.published = published
            if cursor == 0:
                return

    async def nodes(self) -> list[ClusterNode | None]:
        """Where a keyspace SCAN runs: every primary of a cluster, else the one server.

        Raises:
            BackendError: the cluster's topology could not be read.
        """
        client = self._client
        if isinstance(client, RedisCluster):
            _ = await self._call("CLUSTER SLOTS", client.initialize)  # a no-op once known
            primaries: list[ClusterNode | None] = list(client.get_primaries())
            return primaries
        return [None]

    async def scan(
        self, cursor: int, match: str, node: ClusterNode | None = None
    ) -> tuple[int, list[bytes | str]]:
        """One SCAN call (on ``node`` of a cluster): the next cursor and the names."""
        client = self._client

        async def scan() -> Any:
            if isinstance(client, RedisCluster):
                # A cluster client without a node would SCAN every primary from the same
                # cursor; each primary has its own cursor, so each is walked on its own.
                # The cluster's SCAN reply maps each node name to its cursor.
                reply: Any = await client.scan(
                    cursor=cursor, match=match, count=SCAN_COUNT, target_nodes=node
                )
                cursors, names = reply
                return next(iter(cursors.values()), 0), names
            return await client.scan(cursor=cursor, match=match, count=SCAN_COUNT)

        next_cursor, names = await self._call("SCAN", scan)
        return int(next_cursor), list(names)

    async def unlink(self, names: list[bytes | str]) -> int:
        """UNLINK ``names``; how many existed."""
        return int(await self._call("UNLINK", lambda: self._client.unlink(*names)))
