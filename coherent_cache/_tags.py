"""The tag index of the L2: one Redis set per tag, of the keys written with that tag.

``<namespace>#tag:<tag>`` holds the cache keys (without the namespace) of the entries
written with ``tag``. A tagged write adds its key in the same pipeline as the ``SET``
(`TAG_ADD`, which also keeps the index alive as long as its longest-lived member);
`TagIndex.invalidate` removes every indexed entry, batch by batch; `TagIndex.prune` drops
members whose entries expired, and `TagIndex.run_pruner` does so in the background for
indexes that grew large. Every call goes through `RedisCache`'s guarded call (breaker,
``operation_timeout``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, final

import anyio
from anyio.abc import TaskStatus
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from ._clients import GuardedCall, L2Client
from .errors import BackendError
from .keys import redis_key, redis_tag_key

__all__ = ()

TAG_PRUNE_MIN: Final = 1000
"""A tag index is pruned of dead members once it holds more than this many (and twice as
many as after its last pruning)."""

# Add a key to a tag index and keep the index alive as long as its longest-lived member:
# a new index gets the member's TTL, an existing one is only ever extended, and a member
# without expiry makes the index persistent. Returns the index size.
TAG_ADD: Final = """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl < 0 then
  redis.call('PERSIST', KEYS[1])
elseif existed == 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  local current = redis.call('PTTL', KEYS[1])
  if current >= 0 and current < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return redis.call('SCARD', KEYS[1])
"""


@final
class TagIndex:
    """The tag indexes of one namespace, and the state of their background pruning.

    Args:
        client: the L2 client.
        namespace: the cache namespace (indexes are ``<namespace>#tag:<tag>``).
        call: the guarded call every Redis command goes through.
        cluster: whether ``client`` is a cluster client (an index and its members then
            live in different slots: no MULTI/EXEC across them).
    """

    def __init__(
        self, client: L2Client, namespace: str, call: GuardedCall, *, cluster: bool
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.call = call
        self.cluster = cluster
        self._prune_due: set[str] = set()
        self._prune_at: dict[str, int] = {}
        self._prune_wakeup = anyio.Event()

    # -- tagged writes ---------------------------------------------------------------------

    def add(
        self, pipe: Pipeline | ClusterPipeline, key: str, tags: Iterable[str], px: int | None
    ) -> None:
        """Queue, in ``pipe``, the addition of ``key`` (written with a TTL of ``px`` ms,
        ``None``: no expiry) to the index of each of ``tags``; each reply is the index size
        (pass them to `added`)."""
        for tag in tags:
            _ = pipe.eval(
                TAG_ADD, 1, redis_tag_key(self.namespace, tag), key, -1 if px is None else px
            )

    def added(self, tags: Iterable[str], sizes: Iterable[Any]) -> None:
        """After a tagged write: mark for pruning the indexes that grew past their threshold
        (``sizes``: the replies of `add`'s commands) and wake `run_pruner`."""
        for tag, size in zip(tags, sizes, strict=True):
            if int(size) > self._prune_at.get(tag, TAG_PRUNE_MIN):
                self._prune_due.add(tag)
                self._prune_wakeup.set()

    # -- background pruning ----------------------------------------------------------------

    async def run_pruner(
        self,
        *,
        batch: int,
        on_pruned: Callable[[str, int, int], None],
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Prune tag indexes that grew past their threshold, one at a time, forever.

        A tag's index is pruned when it holds more than `TAG_PRUNE_MIN` members and twice
        as many as after its last pruning, so pruning costs O(1) amortised per tagged
        write (``batch``: members per ``SSCAN``, see `prune`). After each pruning, calls
        ``on_pruned(tag, pruned, size)``. Error handling: a Redis failure leaves the tag
        due; the next tagged write wakes the loop again.
        """
        task_status.started()
        while True:
            await self._prune_wakeup.wait()
            self._prune_wakeup = anyio.Event()
            while self._prune_due:
                tag = self._prune_due.pop()
                try:
                    pruned = await self.prune(tag, batch=batch)
                    size = await self._scard(tag)
                except BackendError:
                    continue
                self._prune_at[tag] = max(TAG_PRUNE_MIN, 2 * size)
                on_pruned(tag, pruned, size)

    async def prune(self, tag: str, *, batch: int) -> int:
        """Drop members of ``tag``'s index whose entries are gone; return how many.

        Reads the index with ``SSCAN`` (``batch`` members per call), checks the members'
        entries with pipelined ``EXISTS`` and ``SREM``s the dead ones.

        Raises:
            BackendError: Redis failed (the members dropped so far stay dropped).
        """
        index = redis_tag_key(self.namespace, tag)
        pruned = 0
        cursor = 0
        while True:
            cursor, members = await self._sscan(index, cursor, batch)
            if members:
                names = self._member_keys(members)

                async def check(names: list[str] = names) -> list[Any]:
                    async with self.client.pipeline(transaction=False) as pipe:
                        for name in names:
                            _ = pipe.exists(name)
                        return list(await pipe.execute())

                alive = await self.call("EXISTS*", check)
                dead = [m for m, ok in zip(members, alive, strict=True) if not ok]
                if dead:
                    pruned += await self._srem(index, dead)
            if cursor == 0:
                return pruned

    # -- invalidation ----------------------------------------------------------------------

    async def invalidate(
        self, tags: Iterable[str], *, batch: int
    ) -> tuple[int, BackendError | None]:
        """Remove every entry indexed under any of ``tags``, and the indexes.

        Reads each tag's index with ``SSCAN``, ``SREM``s the members seen from the index
        and ``UNLINK``s their entries, in batches of ``batch`` (a key indexed concurrently
        stays indexed), each call under ``operation_timeout``.

        Returns:
            ``(removed, error)``: the entries removed, and the failure that stopped the
            invalidation midway (``None`` when it completed).
        """
        removed = 0
        try:
            for tag in tags:
                index = redis_tag_key(self.namespace, tag)
                cursor = 0
                while True:
                    cursor, members = await self._sscan(index, cursor, batch)
                    if members:
                        # SREM exactly the members seen, then UNLINK them; never the whole
                        # index. A writer does SET, then SADD: whatever the interleaving,
                        # a key written concurrently is either deleted or still indexed
                        # (an UNLINK of the index orphaned such keys; the fault suite
                        # caught that race). Redis deletes the set once it is empty.
                        removed += await self._remove_members(index, members)
                    if cursor == 0:
                        break
        except BackendError as exc:
            return removed, exc
        return removed, None

    async def _remove_members(self, index: str, members: Sequence[bytes | str]) -> int:
        """SREM ``members`` from ``index`` and UNLINK their entries; return entries removed.

        Outside a cluster both run in one MULTI/EXEC, so a concurrent invalidate_tags of the
        same tag (on another instance) never sees a member gone from the index while its
        entry still exists, and then reads that entry back. In a cluster the index and the
        entries live in different slots: SREM first, then UNLINK (a concurrent invalidation
        of the same tag may return before the UNLINK lands; see docs/reliability.md).
        """
        names = self._member_keys(members)
        if self.cluster:
            await self._srem(index, members)
            return int(await self.call("UNLINK", lambda: self.client.unlink(*names)))

        async def srem_and_unlink() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                _ = pipe.srem(index, *members)
                _ = pipe.unlink(*names)
                return list(await pipe.execute())

        replies = await self.call("SREM+UNLINK", srem_and_unlink)
        return int(replies[1])

    # -- index commands --------------------------------------------------------------------

    def _member_keys(self, members: Sequence[bytes | str]) -> list[str]:
        """The Redis keys of a tag index's members (cache keys without the namespace)."""
        return [
            redis_key(self.namespace, m.decode() if isinstance(m, bytes) else m) for m in members
        ]

    async def _sscan(self, index: str, cursor: int, count: int) -> tuple[int, list[bytes | str]]:
        next_cursor, members = await self.call(
            "SSCAN", lambda: self.client.sscan(index, cursor=cursor, count=count)
        )
        return int(next_cursor), list(members)

    async def _scard(self, tag: str) -> int:
        index = redis_tag_key(self.namespace, tag)
        return int(await self.call("SCARD", lambda: self.client.scard(index)))

    async def _srem(self, index: str, members: Sequence[bytes | str]) -> int:
        return int(await self.call("SREM", lambda: self.client.srem(index, *members)))
