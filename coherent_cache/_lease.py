"""The cross-instance lease lock of ``get_or_set(lock=True)``: one Redis key per cache key.

``<namespace>#lock:<key>`` holds the holder's random token for ``lease`` seconds. Taking,
renewing and releasing are Lua scripts, so each is one atomic compare-and-act: a holder
never renews or deletes a lease that expired and was taken by someone else. Every call
goes through `RedisCache`'s guarded call (breaker, ``operation_timeout``).
"""

from __future__ import annotations

import math
from typing import Final, final

from ._clients import GuardedCall, L2Client
from .errors import BackendError
from .keys import redis_lock_key

__all__ = ()

# Taking the lock is idempotent per token: a retry after a timed-out attempt that did
# reach the server finds its own token and holds the lock, instead of waiting out a lease
# that nobody renews.
ACQUIRE: Final = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_ms(lease: float) -> int:
    """A lock lease in whole milliseconds, at least 1."""
    return max(1, math.ceil(lease * 1000))


@final
class LeaseLocks:
    """The lease locks of one namespace.

    Args:
        client: the L2 client.
        namespace: the cache namespace (lock keys are ``<namespace>#lock:<key>``).
        call: the guarded call every Redis command goes through.
    """

    __slots__ = ("call", "client", "namespace")

    def __init__(self, client: L2Client, namespace: str, call: GuardedCall) -> None:
        self.client = client
        self.namespace = namespace
        self.call = call

    async def try_lock(self, key: str, token: str, lease: float) -> bool:
        """Take the lease lock of ``key`` for ``lease`` seconds if nobody else holds it.

        Idempotent per ``token``: if an earlier attempt with the same token reached the
        server (its reply timed out), this one finds the token and holds the lock.

        Raises:
            BackendError: Redis failed.
        """
        name = redis_lock_key(self.namespace, key)
        result = await self.call(
            "LOCK", lambda: self.client.eval(ACQUIRE, 1, name, token, lease_ms(lease))
        )
        return bool(result)

    async def renew(self, key: str, token: str, lease: float) -> bool:
        """Extend our lease of ``key``'s lock; ``False`` if it is no longer ours.

        Raises:
            BackendError: Redis failed.
        """
        name = redis_lock_key(self.namespace, key)
        result = await self.call(
            "RENEW", lambda: self.client.eval(RENEW, 1, name, token, lease_ms(lease))
        )
        return bool(result)

    async def unlock(self, key: str, token: str) -> bool:
        """Release ``key``'s lock if we still hold it (compare-and-delete).

        A failure returns ``False``: the lease expires by itself.
        """
        name = redis_lock_key(self.namespace, key)
        try:
            result = await self.call("UNLOCK", lambda: self.client.eval(RELEASE, 1, name, token))
        except BackendError:
            return False  # the lease expires by itself
        return bool(result)
