"""cached / cache_invalidate against a real server: keys, hits, methods, sync functions,
conditions, auto-excluded context objects, invalidation across processes, seed examples."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from coherent_cache import (
    CacheConfig,
    CacheManager,
    CacheTier,
    ConfigurationError,
    InvalidKeyError,
    InvalidTTLError,
)
from coherent_cache.decorators import AUTO_EXCLUDED_TYPES, CachedFunction, cache_invalidate, cached

from .conftest import FakeClock, ManagerFactory
from .support.multiproc import MISSING, Worker

PREFIX = "tests.test_decorators"


class Calls:
    """Counts calls and records the arguments and threads they ran with."""

    def __init__(self) -> None:
        self.args: list[tuple[Any, ...]] = []
        self.threads: list[int] = []

    @property
    def count(self) -> int:
        return len(self.args)

    def record(self, *args: Any) -> None:
        self.args.append(args)
        self.threads.append(threading.get_ident())


def _local(cache: CacheManager, key: str) -> Any:
    """What this instance's L1 holds for ``key`` (MISSING when nothing)."""
    return cache.l1.peek(key, MISSING)


async def _in_l2(raw_redis: Redis, namespace: str, key: str) -> bool:
    return 1 == await raw_redis.exists(f"{namespace}:{key}")


def _unstarted() -> CacheManager:
    """A manager without Redis, for checks made when decorating."""
    return CacheManager(CacheConfig(redis_url=None))


# Stand-ins named like the real classes, so nothing has to be installed.
class AsyncSession:
    __module__ = "sqlalchemy.ext.asyncio.session"
    __qualname__ = "AsyncSession"

    async def execute(self, query: Select) -> FakeResult:
        raise NotImplementedError

    async def get(self, model: type, ident: int) -> User | None:
        raise NotImplementedError

    async def commit(self) -> None:
        raise NotImplementedError


class Request:
    __module__ = "starlette.requests"
    __qualname__ = "Request"


class AsyncClient:
    __module__ = "httpx"
    __qualname__ = "AsyncClient"


class Opaque:
    """An object with a default repr: no deterministic key."""


class TestHitsAndMisses:
    async def test_second_call_is_a_hit(self, make_manager: ManagerFactory) -> None:
        """The function runs on the first call only; later calls return the cached value."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60)
        async def get_user(user_id: int) -> dict[str, Any]:
            calls.record(user_id)
            return {"id": user_id}

        assert [{"id": 1}, {"id": 1}, {"id": 2}] == [
            await get_user(1),
            await get_user(1),
            await get_user(2),
        ]
        assert [(1,), (2,)] == calls.args

    async def test_cached_in_both_tiers(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """With the default tier the result lands in L1 and in Redis under the call's key."""
        cache = await make_manager()

        @cache.cached(ttl=60, key_prefix="user")
        async def get_user(user_id: int) -> dict[str, int]:
            return {"id": user_id}

        await get_user(7)
        assert ({"id": 7}, True) == (
            _local(cache, "user:7"),
            await _in_l2(raw_redis, namespace, "user:7"),
        )

    async def test_l1_expiry_with_fake_clock(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """An L1-tier entry expires after its ttl on the manager's clock; then it reloads."""
        cache = await make_manager(timer=clock)
        calls = Calls()

        @cache.cached(ttl=10, tier=CacheTier.L1)
        async def load(n: int) -> int:
            calls.record(n)
            return n * 2

        await load(1)
        clock.tick(9)
        await load(1)
        assert 1 == calls.count
        clock.tick(2)
        assert 2 == await load(1)
        assert 2 == calls.count

    async def test_l2_expiry_real_time(self, make_manager: ManagerFactory) -> None:
        """An L2-tier entry expires after its real ttl in Redis; then the function runs again."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=0.2, tier=CacheTier.L2)
        async def load(n: int) -> int:
            calls.record(n)
            return n

        await load(1)
        await load(1)
        assert 1 == calls.count
        with anyio.fail_after(5):
            while calls.count < 2:
                await anyio.sleep(0.02)
                await load(1)
        assert 2 == calls.count

    async def test_loader_error_reaches_caller_and_is_not_cached(
        self, make_manager: ManagerFactory
    ) -> None:
        """An exception from the function reaches the caller; the next call runs it again."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60)
        async def flaky(n: int) -> int:
            calls.record(n)
            if calls.count == 1:
                raise LookupError("first call fails")
            return n

        with pytest.raises(LookupError, match="first call fails"):
            await flaky(3)
        assert (3, 2) == (await flaky(3), calls.count)


class TestKeys:
    async def test_positional_keyword_and_default_calls_share_one_entry(
        self, make_manager: ManagerFactory
    ) -> None:
        """f(1), f(user_id=1) and f(1, "full") (the default) have one key and one load."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60, key_prefix="profile")
        async def get_profile(user_id: int, view: str = "full") -> str:
            calls.record(user_id, view)
            return f"{user_id}/{view}"

        keys = {
            get_profile.cache_key(1),
            get_profile.cache_key(user_id=1),
            get_profile.cache_key(1, "full"),
            get_profile.cache_key(view="full", user_id=1),
        }
        assert {"profile:1:full"} == keys
        await get_profile(1)
        await get_profile(user_id=1)
        await get_profile(view="full", user_id=1)
        assert 1 == calls.count

    @pytest.mark.parametrize(
        "args",
        [
            (7,),
            ("a:b", 2, "c"),
            ("",),
            ("", ""),
            (-0.0, 1e100, 3),
            (float("nan"),),
            (True, None),
            ("é",),
            ("x" * 300,),
            (7, 2**70),
            (b"\x01",),
        ],
        ids=repr,
    )
    async def test_calls_use_the_cache_key_of_their_arguments(
        self, make_manager: ManagerFactory, args: tuple[Any, ...]
    ) -> None:
        """A call stores under cache_key(...) whatever its argument types (fast or general
        key path), defaults applied, so a second call hits."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60, key_prefix="mixed")
        async def f(a: Any, b: Any = 2, c: Any = "c") -> list[Any]:
            calls.record(a, b, c)
            return [calls.count]

        key = f.cache_key(*args)
        assert [1] == await f(*args)
        assert ([1], [1], 1) == (await cache.get(key, CacheTier.L2), await f(*args), calls.count)

    async def test_keyword_order_does_not_matter(self, make_manager: ManagerFactory) -> None:
        """Keyword arguments in any order give the same key, for named and **kwargs alike."""
        cache = await make_manager()

        @cache.cached(key_prefix="search")
        async def search(*, query: str, page: int, **filters: Any) -> list[str]:
            return []

        assert search.cache_key(query="q", page=2, size="L", color="red") == search.cache_key(
            color="red", page=2, size="L", query="q"
        )

    async def test_exact_format(self, make_manager: ManagerFactory) -> None:
        """Named values in signature order, *args in order, **kwargs sorted as name=value."""
        cache = await make_manager()

        @cache.cached(key_prefix="p")
        async def f(a: int, *rest: int, b: str = "x", **extra: Any) -> None:
            return None

        assert "p:1:2:3:x:c=[1,2]:z=true" == f.cache_key(1, 2, 3, z=True, c=[1, 2])

    async def test_default_prefix_is_module_and_qualname(
        self, make_manager: ManagerFactory
    ) -> None:
        """Without key_prefix the key starts with the function's module.qualname."""
        cache = await make_manager()

        @cache.cached()
        async def lookup(n: int) -> int:
            return n

        qualname = "TestKeys.test_default_prefix_is_module_and_qualname.<locals>.lookup"
        assert f"{PREFIX}.{qualname}:5" == lookup.cache_key(5)

    async def test_no_arguments_key_is_the_prefix(self, make_manager: ManagerFactory) -> None:
        """A function without parameters caches under its prefix alone."""
        cache = await make_manager()

        @cache.cached(ttl=86400, key_prefix="config")
        async def get_system_config() -> dict[str, str]:
            return {"config": "..."}

        assert ("config", {"config": "..."}) == (
            get_system_config.cache_key(),
            await get_system_config(),
        )

    async def test_structured_values_are_canonical(self, make_manager: ManagerFactory) -> None:
        """Dicts key the same whatever their insertion order; sets whatever their iteration."""
        cache = await make_manager()

        @dataclass
        class Filters:
            min_price: int
            tags: frozenset[str]

        @cache.cached(key_prefix="search")
        async def search(query: str, filters: Any) -> list[str]:
            return []

        assert search.cache_key("q", {"b": 1, "a": [1, 2]}) == search.cache_key(
            "q", {"a": [1, 2], "b": 1}
        )
        assert 'search:q:{"min_price":5,"tags":["a","b"]}' == search.cache_key(
            "q", Filters(5, frozenset({"b", "a"}))
        )

    async def test_long_key_is_hashed_after_the_prefix(self, make_manager: ManagerFactory) -> None:
        """A key over 200 bytes becomes prefix + ':' + 32 hex digits (BLAKE2b), stable."""
        cache = await make_manager()

        @cache.cached(key_prefix="search")
        async def search(query: str) -> str:
            return query

        key = search.cache_key("x" * 500)
        head, _, digest = key.partition(":")
        assert ("search", 32, key) == (head, len(digest), search.cache_key("x" * 500))
        assert "x" * 500 == await search("x" * 500)

    async def test_key_builder_replaces_the_generated_key(
        self, make_manager: ManagerFactory
    ) -> None:
        """key_builder gets the call's arguments and its string is the whole key."""
        cache = await make_manager()
        seen: list[tuple[Any, ...]] = []

        def build(user_id: int, session: object) -> str:
            seen.append((user_id, session))
            return f"u{user_id}"

        @cache.cached(key_builder=build)
        async def get_user(user_id: int, session: object) -> int:
            return user_id

        token = Opaque()
        assert ("u4", 4) == (get_user.cache_key(4, token), await get_user(4, session=token))
        assert [(4, token), (4, token)] == seen
        assert 4 == await cache.get("u4")

    async def test_exclude_leaves_a_parameter_out(self, make_manager: ManagerFactory) -> None:
        """A parameter named in exclude is not part of the key (a single str works too)."""
        cache = await make_manager()

        @cache.cached(key_prefix="item", exclude=("conn",))
        async def get_item(conn: Opaque, item_id: int) -> int:
            return item_id

        @cache.cached(key_prefix="item", exclude="conn")
        async def get_item2(conn: Opaque, item_id: int) -> int:
            return item_id

        assert ["item:3", "item:3"] == [
            get_item.cache_key(Opaque(), 3),
            get_item2.cache_key(Opaque(), 3),
        ]


class TestUnkeyableArguments:
    async def test_error_names_parameter_function_and_remedies(
        self, make_manager: ManagerFactory
    ) -> None:
        """An argument with no deterministic encoding raises InvalidKeyError before the call,
        naming the parameter and the function and telling how to exclude it."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached()
        async def get_thing(thing: Opaque, n: int) -> int:
            calls.record(thing, n)
            return n

        with pytest.raises(InvalidKeyError) as info:
            await get_thing(Opaque(), 1)
        message = str(info.value)
        assert (True, True, True, True, 0) == (
            "'thing'" in message,
            "get_thing" in message,
            "exclude=('thing',)" in message,
            "key_builder" in message,
            calls.count,
        )

    async def test_nested_unkeyable_value(self, make_manager: ManagerFactory) -> None:
        """An opaque object inside a list is as unkeyable as one passed directly."""
        cache = await make_manager()

        @cache.cached()
        async def total(items: list[Any]) -> int:
            return len(items)

        with pytest.raises(InvalidKeyError, match="parameter 'items'"):
            total.cache_key([1, Opaque()])


class TestAutoExcluded:
    async def test_async_session_like_object_is_not_in_the_key(
        self, make_manager: ManagerFactory
    ) -> None:
        """A subclass of a class named sqlalchemy...AsyncSession is left out of the key."""
        cache = await make_manager()

        class MySession(AsyncSession):
            pass

        @cache.cached(ttl=60, key_prefix="db_user")
        async def get_user_from_db(session: AsyncSession, user_id: int) -> int:
            return user_id

        assert "db_user:9" == get_user_from_db.cache_key(MySession(), 9)
        assert 9 == await get_user_from_db(MySession(), 9)

    @pytest.mark.parametrize(
        "qualified", sorted(AUTO_EXCLUDED_TYPES), ids=sorted(AUTO_EXCLUDED_TYPES)
    )
    async def test_every_listed_type_is_excluded(
        self, make_manager: ManagerFactory, qualified: str
    ) -> None:
        """Each name in AUTO_EXCLUDED_TYPES excludes instances of a class so named."""
        cache = await make_manager()
        module, _, name = qualified.rpartition(".")
        ctx_type = type(name, (), {"__module__": module, "__qualname__": name})

        @cache.cached(key_prefix="k")
        async def f(ctx: Any, n: int) -> int:
            return n

        assert "k:1" == f.cache_key(ctx_type(), 1)

    async def test_context_objects_in_var_args_are_skipped(
        self, make_manager: ManagerFactory
    ) -> None:
        """Context objects passed through *args or **kwargs are skipped as well."""
        cache = await make_manager()

        @cache.cached(key_prefix="k")
        async def f(*args: Any, **kwargs: Any) -> None:
            return None

        assert "k:1:b=2" == f.cache_key(Request(), 1, client=AsyncClient(), b=2)


class TestMethods:
    async def test_instance_method(self, make_manager: ManagerFactory) -> None:
        """self is not in the key: instances share entries; cache_key and invalidate bind."""
        cache = await make_manager()
        calls = Calls()

        class Repo:
            @cache.cached(ttl=60, key_prefix="repo")
            async def get(self, item_id: int) -> int:
                calls.record(item_id)
                return item_id * 10

        first, second = Repo(), Repo()
        assert [10, 10] == [await first.get(1), await second.get(item_id=1)]
        assert ("repo:1", 1) == (first.get.cache_key(1), calls.count)
        assert True is await first.get.invalidate(1)
        assert (10, 2) == (await second.get(1), calls.count)
        assert 10 == await Repo.get(first, 1)

    @pytest.mark.parametrize("order", ["classmethod_outside", "cached_outside"])
    async def test_classmethod(self, make_manager: ManagerFactory, order: str) -> None:
        """A classmethod caches without cls in the key, in either decorator order."""
        cache = await make_manager()
        calls = Calls()

        class Outside:
            @classmethod
            @cache.cached(key_prefix="model")
            async def find(cls, n: int) -> str:
                calls.record(cls, n)
                return f"{cls.__name__}:{n}"

        class Inside:
            @cache.cached(key_prefix="model")
            @classmethod
            async def find(cls, n: int) -> str:
                calls.record(cls, n)
                return f"{cls.__name__}:{n}"

        # mypy does not bind cls through a descriptor object: reach it untyped.
        model: Any = Outside if order == "classmethod_outside" else Inside
        name = model.__name__
        assert [f"{name}:2", f"{name}:2"] == [await model.find(2), await model().find(n=2)]
        assert ("model:2", [(model, 2)]) == (model.find.cache_key(2), calls.args)
        assert True is await model.find.invalidate(2)
        assert MISSING is _local(cache, "model:2")

    @pytest.mark.parametrize("order", ["staticmethod_outside", "cached_outside"])
    async def test_staticmethod(self, make_manager: ManagerFactory, order: str) -> None:
        """A staticmethod caches on its own arguments, reached via class or instance."""
        cache = await make_manager()
        calls = Calls()

        class Outside:
            @staticmethod
            @cache.cached(key_prefix="sq")
            async def sq(n: int) -> int:
                calls.record(n)
                return n * n

        class Inside:
            @cache.cached(key_prefix="sq")
            @staticmethod
            async def sq(n: int) -> int:
                calls.record(n)
                return n * n

        maths: Any = Outside if order == "staticmethod_outside" else Inside
        assert [9, 9] == [await maths.sq(3), await maths().sq(3)]
        assert ("sq:3", 1) == (maths.sq.cache_key(3), calls.count)

    async def test_bound_method_signature_drops_self(self, make_manager: ManagerFactory) -> None:
        """inspect.signature of a bound cached method has no self, as for a plain method."""
        cache = await make_manager()

        class Repo:
            @cache.cached()
            async def get(self, item_id: int, full: bool = False) -> int:
                return item_id

        assert ["item_id", "full"] == list(inspect.signature(Repo().get).parameters)
        assert ["self", "item_id", "full"] == list(inspect.signature(Repo.get).parameters)


class TestSyncFunctions:
    async def test_sync_function_is_awaitable_and_cached(
        self, make_manager: ManagerFactory
    ) -> None:
        """A decorated sync function is awaited, cached, and runs off the event loop thread."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60, key_prefix="sync")
        def compute(n: int) -> list[int]:
            calls.record(n)
            return list(range(n))

        loop_thread = threading.get_ident()
        assert [[0, 1, 2], [0, 1, 2]] == [await compute(3), await compute(n=3)]
        assert 1 == calls.count
        assert loop_thread not in calls.threads

    async def test_sync_method(self, make_manager: ManagerFactory) -> None:
        """A sync instance method binds self and runs in a worker thread."""
        cache = await make_manager()
        calls = Calls()

        class Repo:
            @cache.cached(key_prefix="syncrepo")
            def get(self, n: int) -> int:
                calls.record(n)
                return n + 1

        assert [5, 5] == [await Repo().get(4), await Repo().get(4)]
        assert (1, False) == (calls.count, threading.get_ident() in calls.threads)

    async def test_sync_error_propagates(self, make_manager: ManagerFactory) -> None:
        """An exception raised in the worker thread reaches the caller."""
        cache = await make_manager()

        @cache.cached()
        def fail(n: int) -> int:
            raise ValueError(f"bad {n}")

        with pytest.raises(ValueError, match="bad 2"):
            await fail(2)


class TestNoneAndConditions:
    async def test_none_is_cached_by_default(self, make_manager: ManagerFactory) -> None:
        """A None result is cached: the second call is a hit."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60)
        async def find(n: int) -> int | None:
            calls.record(n)
            return None

        assert [None, None] == [await find(1), await find(1)]
        assert 1 == calls.count

    async def test_cache_none_false(self, make_manager: ManagerFactory) -> None:
        """With cache_none=False a None result is not stored: the function runs again."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60, cache_none=False)
        async def find(n: int) -> int | None:
            calls.record(n)
            return None if n < 0 else n

        await find(-1)
        await find(-1)
        await find(1)
        await find(1)
        assert [(-1,), (-1,), (1,)] == calls.args

    async def test_unless(self, make_manager: ManagerFactory) -> None:
        """unless(result) True: returned but not cached."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(unless=lambda result: result["status"] == "error")
        async def fetch(n: int) -> dict[str, str]:
            calls.record(n)
            return {"status": "error" if n == 0 else "ok"}

        for n in (0, 0, 1, 1):
            await fetch(n)
        assert [(0,), (0,), (1,)] == calls.args

    async def test_condition(self, make_manager: ManagerFactory) -> None:
        """condition(result) False: returned but not cached; both options combine."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(condition=lambda result: result > 0, unless=lambda result: result > 100)
        async def score(n: int) -> int:
            calls.record(n)
            return n

        for n in (0, 0, 5, 5, 500, 500):
            assert n == await score(n)
        assert [(0,), (0,), (5,), (500,), (500,)] == calls.args


class TestInvalidateEntry:
    async def test_invalidate_removes_only_that_call(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """f.invalidate(args) deletes that call's entry from L1 and L2; others stay."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60, key_prefix="user")
        async def get_user(user_id: int) -> int:
            calls.record(user_id)
            return user_id

        await get_user(1)
        await get_user(2)
        assert (True, False) == (
            await get_user.invalidate(user_id=1),
            await get_user.invalidate(3),
        )
        assert (MISSING, False, 2) == (
            _local(cache, "user:1"),
            await _in_l2(raw_redis, namespace, "user:1"),
            _local(cache, "user:2"),
        )
        await get_user(1)
        await get_user(2)
        assert [(1,), (2,), (1,)] == calls.args


class TestTags:
    async def test_templated_tags(self, make_manager: ManagerFactory) -> None:
        """Tag templates are filled from the arguments; invalidate_tags drops the entries."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60, key_prefix="post", tags=("posts", "author:{author_id}"))
        async def get_post(post_id: int, author_id: int) -> int:
            calls.record(post_id)
            return post_id

        await get_post(1, 7)
        await get_post(2, 8)
        assert 1 <= await cache.invalidate_tags("author:7")
        await get_post(1, 7)
        await get_post(2, 8)
        assert [(1,), (2,), (1,)] == calls.args

    def test_template_naming_unknown_parameter_fails_at_decoration(self) -> None:
        """A tag template naming no parameter raises InvalidKeyError when decorating."""
        manager = _unstarted()
        with pytest.raises(InvalidKeyError, match="'user'"):

            @cached(manager, tags=("user:{user}",))
            async def f(user_id: int) -> None:
                return None


class TestCacheInvalidate:
    async def test_templated_pattern_clears_exact_entries_here_and_in_other_process(
        self,
        make_manager: ManagerFactory,
        redis_url: str,
        namespace: str,
        raw_redis: Redis,
    ) -> None:
        """After update(1) returns, user_profile:1 is gone from this L1, from Redis and from
        another process's L1; user_profile:2 stays everywhere."""
        cache = await make_manager()

        @cache.cached(ttl=60, key_prefix="user_profile")
        async def get_user_profile(user_id: int) -> dict[str, int]:
            return {"id": user_id}

        @cache.cache_invalidate("user_profile:{user_id}")
        async def update_user_profile(user_id: int, data: dict[str, Any]) -> dict[str, bool]:
            return {"updated": True}

        await get_user_profile(1)
        await get_user_profile(2)
        async with Worker(redis_url=redis_url, namespace=namespace) as other:
            assert [{"id": 1}, {"id": 2}] == [
                await other.call("get", key="user_profile:1"),
                await other.call("get", key="user_profile:2"),
            ]
            assert {"updated": True} == await update_user_profile(1, {"name": "x"})
            assert (MISSING, False) == (
                _local(cache, "user_profile:1"),
                await _in_l2(raw_redis, namespace, "user_profile:1"),
            )
            assert None is not await other.call("wait_gone", key="user_profile:1", within=5)
            assert ({"id": 2}, {"id": 2}, True) == (
                await other.call("peek", key="user_profile:2"),
                _local(cache, "user_profile:2"),
                await _in_l2(raw_redis, namespace, "user_profile:2"),
            )

    async def test_wildcard_value_clears_only_the_literal_key(
        self, make_manager: ManagerFactory
    ) -> None:
        """An argument "*" fills the template escaped: only the key user:* is cleared."""
        cache = await make_manager()

        @cache.cached(key_prefix="user")
        async def get_user(name: str) -> str:
            return name

        @cache.cache_invalidate("user:{name}")
        async def rename(name: str) -> None:
            return None

        for name in ("*", "alice", "bob"):
            await get_user(name)
        await rename("*")
        assert [MISSING, "alice", "bob"] == [
            _local(cache, "user:*"),
            _local(cache, "user:alice"),
            _local(cache, "user:bob"),
        ]

    async def test_separator_in_string_arguments_never_shares_a_key(
        self, make_manager: ManagerFactory
    ) -> None:
        """f("a:b", "c") and f("a", "b:c") are different entries (str parts are escaped), and
        cache_invalidate templated with "a:b" clears exactly f("a:b", ...)."""
        cache = await make_manager()
        calls = Calls()

        @cache.cached(ttl=60, key_prefix="pair")
        async def pair(x: str, y: str) -> str:
            calls.record(x, y)
            return f"{x}|{y}"

        @cache.cache_invalidate("pair:{x}:*")
        async def forget(x: str) -> None:
            return None

        tuples = [("a:b", "c"), ("a", "b:c"), ("a=b", "c"), ("a%3Ab", "c"), ("a", "b")]
        keys = [pair.cache_key(*t) for t in tuples]
        assert len(set(keys)) == len(tuples)
        assert "pair:a%3Ab:c" == keys[0]  # readable, escaped only where needed
        assert "pair:a:b" == keys[4]
        for t in tuples:
            assert f"{t[0]}|{t[1]}" == await pair(*t)
            assert f"{t[0]}|{t[1]}" == await pair(*t)  # a hit of its own entry
        assert len(tuples) == calls.count
        await forget("a:b")
        assert [MISSING, "a|b:c", "a=b|c", "a%3Ab|c", "a|b"] == [_local(cache, key) for key in keys]

    async def test_wildcard_pattern_clears_all(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A literal wildcard pattern (the seed's user_profile:*) clears every match."""
        cache = await make_manager()

        @cache.cached(key_prefix="user_profile")
        async def get_user_profile(user_id: int) -> int:
            return user_id

        @cache.cached(key_prefix="other")
        async def get_other(n: int) -> int:
            return n

        @cache.cache_invalidate("user_profile:*")
        async def update_user_profile(user_id: int, data: dict[str, Any]) -> dict[str, bool]:
            return {"updated": True}

        for n in (1, 2, 3):
            await get_user_profile(n)
        await get_other(1)
        await update_user_profile(1, {})
        assert ([MISSING] * 3, 0, 1) == (
            [_local(cache, f"user_profile:{n}") for n in (1, 2, 3)],
            await raw_redis.exists(*(f"{namespace}:user_profile:{n}" for n in (1, 2, 3))),
            _local(cache, "other:1"),
        )

    async def test_raising_function_invalidates_nothing(self, make_manager: ManagerFactory) -> None:
        """When the wrapped function raises, the exception propagates and nothing is cleared."""
        cache = await make_manager()

        @cache.cached(key_prefix="user")
        async def get_user(user_id: int) -> int:
            return user_id

        @cache.cache_invalidate("user:{user_id}", "user:*")
        async def update_user(user_id: int) -> None:
            raise RuntimeError("update failed")

        await get_user(1)
        with pytest.raises(RuntimeError, match="update failed"):
            await update_user(1)
        assert 1 == _local(cache, "user:1")

    async def test_several_patterns(self, make_manager: ManagerFactory) -> None:
        """Every pattern of one decorator is cleared; unrelated keys stay."""
        cache = await make_manager()
        for key in ("user:1", "user:2", "team:9:members", "team:9:name", "team:8:name"):
            await cache.set(key, key, ttl=60)

        @cache.cache_invalidate("user:{user_id}", "team:{team_id}:*")
        async def move_user(user_id: int, team_id: int) -> str:
            return "moved"

        assert "moved" == await move_user(team_id=9, user_id=1)
        assert ["user:2", "team:8:name"] == [
            key
            for key in ("user:1", "user:2", "team:9:members", "team:9:name", "team:8:name")
            if await cache.get(key) is not None
        ]

    async def test_sync_function_and_method(self, make_manager: ManagerFactory) -> None:
        """A sync function becomes awaitable, runs in a thread, and invalidates; methods bind."""
        cache = await make_manager()
        await cache.set("user:1", 1, ttl=60)
        await cache.set("user:2", 2, ttl=60)
        threads: list[int] = []

        @cache.cache_invalidate("user:{user_id}")
        def update(user_id: int) -> int:
            threads.append(threading.get_ident())
            return user_id

        class Service:
            @cache.cache_invalidate("user:{user_id}")
            async def update(self, user_id: int) -> str:
                return "done"

        assert (1, "done") == (await update(1), await Service().update(user_id=2))
        assert ([None, None], False) == (
            [await cache.get("user:1"), await cache.get("user:2")],
            threading.get_ident() in threads,
        )

    async def test_classmethod_and_staticmethod(self, make_manager: ManagerFactory) -> None:
        """cache_invalidate works under @classmethod and @staticmethod, in either order."""
        cache = await make_manager()
        for n in (1, 2, 3, 4):
            await cache.set(f"k:{n}", n, ttl=60)

        class Service:
            @classmethod
            @cache.cache_invalidate("k:{n}")
            async def a(cls, n: int) -> type:
                return cls

            @cache.cache_invalidate("k:{n}")
            @classmethod
            async def b(cls, n: int) -> type:
                return cls

            @staticmethod
            @cache.cache_invalidate("k:{n}")
            async def c(n: int) -> int:
                return n

            @cache.cache_invalidate("k:{n}")
            @staticmethod
            async def d(n: int) -> int:
                return n

        service: Any = Service  # mypy does not bind cls through a descriptor object
        assert [Service, Service, 3, 4] == [
            await service.a(1),
            await service().b(n=2),
            await service().c(3),
            await service.d(4),
        ]
        assert [None] * 4 == [await cache.get(f"k:{n}") for n in (1, 2, 3, 4)]

    def test_template_naming_unknown_parameter_fails_at_decoration(self) -> None:
        """A pattern naming no parameter raises InvalidKeyError naming it, when decorating."""
        manager = _unstarted()
        with pytest.raises(InvalidKeyError, match=r"'uid'.*update_user"):

            @cache_invalidate(manager, "user:{uid}")
            async def update_user(user_id: int) -> None:
                return None

    def test_invalid_patterns_fail_at_decoration(self) -> None:
        """No pattern, a positional placeholder or an unterminated [ is refused at once."""
        manager = _unstarted()

        async def f(user_id: int) -> None:
            return None

        with pytest.raises(InvalidKeyError, match="at least one pattern"):
            cache_invalidate(manager)
        with pytest.raises(InvalidKeyError, match="positional placeholder"):
            cache_invalidate(manager, "user:{}")(f)
        with pytest.raises(InvalidKeyError, match="unterminated"):
            cache_invalidate(manager, "user:[a")(f)

    async def test_unkeyable_template_value_fails_before_the_call(
        self, make_manager: ManagerFactory
    ) -> None:
        """A templated argument without a key encoding raises before the function runs."""
        cache = await make_manager()
        calls = Calls()

        @cache.cache_invalidate("thing:{thing}")
        async def update(thing: Opaque) -> None:
            calls.record(thing)

        with pytest.raises(InvalidKeyError, match="thing"):
            await update(Opaque())
        assert 0 == calls.count

    async def test_attribute_placeholder(self, make_manager: ManagerFactory) -> None:
        """A placeholder may read an attribute of an argument: {user.id}."""
        cache = await make_manager()
        await cache.set("user:5", 5, ttl=60)

        @dataclass
        class User:
            id: int

        @cache.cache_invalidate("user:{user.id}")
        async def save(user: User) -> None:
            return None

        await save(User(5))
        assert None is await cache.get("user:5")


class TestMetadata:
    async def test_cached_keeps_metadata_and_signature(self, make_manager: ManagerFactory) -> None:
        """The CachedFunction keeps name, qualname, doc, module, __wrapped__ and signature."""
        cache = await make_manager()

        async def get_user(user_id: int, *, full: bool = False) -> dict[str, int]:
            """Load a user."""
            return {"id": user_id}

        wrapped = cache.cached()(get_user)
        assert (
            "get_user",
            get_user.__qualname__,
            "Load a user.",
            __name__,
            get_user,
            inspect.signature(get_user),
        ) == (
            wrapped.__name__,
            wrapped.__qualname__,
            wrapped.__doc__,
            wrapped.__module__,
            wrapped.__wrapped__,
            inspect.signature(wrapped),
        )
        assert isinstance(wrapped, CachedFunction)

    async def test_cache_invalidate_keeps_metadata_and_signature(
        self, make_manager: ManagerFactory
    ) -> None:
        """The invalidating wrapper keeps name, qualname, doc, module, __wrapped__, signature,
        and is a coroutine function even for a sync function."""
        cache = await make_manager()

        def update_user(user_id: int, data: dict[str, Any]) -> bool:
            """Update a user."""
            return True

        wrapped = cache.cache_invalidate("user:{user_id}")(update_user)
        assert (
            "update_user",
            update_user.__qualname__,
            "Update a user.",
            __name__,
            update_user,
            inspect.signature(update_user),
            True,
        ) == (
            wrapped.__name__,
            wrapped.__qualname__,
            wrapped.__doc__,
            wrapped.__module__,
            wrapped.__wrapped__,
            inspect.signature(wrapped),
            inspect.iscoroutinefunction(wrapped),
        )

    async def test_fastapi_sees_an_async_callable_with_globals(
        self, make_manager: ManagerFactory
    ) -> None:
        """What FastAPI inspects: an async __call__, the original parameters, __globals__."""
        cache = await make_manager()

        @cache.cached()
        async def endpoint(user_id: int, request: Request) -> int:
            return user_id

        params = inspect.signature(endpoint).parameters
        assert (True, ["user_id", "request"], globals()) == (
            inspect.iscoroutinefunction(type(endpoint).__call__),
            list(params),
            endpoint.__globals__,
        )


class TestOtherCallables:
    async def test_partial_of_async_function(self, make_manager: ManagerFactory) -> None:
        """A functools.partial of an async function is keyed on its remaining parameters
        and awaited on the event loop (no thread)."""
        cache = await make_manager()
        threads: list[int] = []

        async def add(a: int, b: int) -> int:
            threads.append(threading.get_ident())
            return a + b

        add_one = cache.cached(key_prefix="add")(functools.partial(add, 1))
        assert ("add:2", 3) == (add_one.cache_key(2), await add_one(2))
        assert [threading.get_ident()] == threads

    def test_partial_needs_a_key_prefix(self) -> None:
        """A callable without a qualname (a partial) must be given key_prefix."""

        async def add(a: int, b: int) -> int:
            return a + b

        with pytest.raises(ConfigurationError, match="key_prefix"):
            cached(_unstarted())(functools.partial(add, 1))


class TestValidation:
    def test_bad_options_fail_at_decoration(self) -> None:
        """exclude naming no parameter, a bad ttl and an async generator are refused."""
        manager = _unstarted()

        async def f(user_id: int) -> int:
            return user_id

        async def agen(n: int) -> AsyncIterator[int]:
            yield n

        with pytest.raises(ConfigurationError, match="sesion"):
            cached(manager, exclude=("sesion",))(f)
        with pytest.raises(InvalidTTLError):
            cached(manager, ttl=-1)
        with pytest.raises(TypeError, match="async generator"):
            cached(manager)(agen)

    async def test_wrong_arguments_raise_type_error(self, make_manager: ManagerFactory) -> None:
        """A call that does not fit the signature raises TypeError, as calling would."""
        cache = await make_manager()

        @cache.cached()
        async def f(user_id: int) -> int:
            return user_id

        with pytest.raises(TypeError):
            await f(1, 2)  # type: ignore[call-overload]


class TestLoaderOptions:
    async def test_stale_ttl_serves_stale_then_refreshes(
        self, make_manager: ManagerFactory, clock: FakeClock
    ) -> None:
        """With stale_ttl, an expired entry is served at once and refreshed in the background."""
        cache = await make_manager(timer=clock)
        version = {"v": 1}

        @cache.cached(ttl=10, stale_ttl=100, tier=CacheTier.L1, key_prefix="s")
        async def get(n: int) -> int:
            return version["v"]

        assert 1 == await get(1)
        version["v"] = 2
        clock.tick(11)
        assert 1 == await get(1)
        with anyio.fail_after(5):
            while await get(1) != 2:  # noqa: ASYNC110 - polls the background refresh
                await anyio.sleep(0.01)

    async def test_lock_runs_function_once_across_instances(
        self, make_manager: ManagerFactory
    ) -> None:
        """lock=True: two instances calling one cold key run the function once between them."""
        first, second = await make_manager(), await make_manager()
        calls = Calls()
        release = anyio.Event()
        results: list[int] = []

        async def body(n: int) -> int:
            calls.record(n)
            await release.wait()
            return n

        functions = [m.cached(lock=True, key_prefix="L")(body) for m in (first, second)]

        async def call(index: int) -> None:
            results.append(await functions[index](1))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, 0)
                tg.start_soon(call, 1)
                while calls.count == 0 or any(  # noqa: ASYNC110 - counters, no event
                    m.stats()["loader"]["misses"] == 0 for m in (first, second)
                ):
                    await anyio.sleep(0.005)
                release.set()
        assert ([(1,)], [1, 1]) == (calls.args, results)

    def test_invalid_loader_options_fail_at_decoration(self) -> None:
        """A bad stale_ttl, loader_timeout or ttl_jitter raises InvalidTTLError at once."""
        manager = _unstarted()
        for options in ({"stale_ttl": 0}, {"loader_timeout": -1}, {"ttl_jitter": 1.5}):
            with pytest.raises(InvalidTTLError):
                cached(manager, **options)

    async def test_invalidation_during_a_load_is_not_undone(
        self, make_manager: ManagerFactory
    ) -> None:
        """A cache_invalidate that returns while a load of the same key is running wins: the
        load's (older) result is returned to its callers but not cached."""
        cache = await make_manager()
        db = {"v": 1}
        started, release = anyio.Event(), anyio.Event()

        @cache.cached(ttl=60, key_prefix="item")
        async def get_item(n: int) -> int:
            value = db["v"]
            started.set()
            await release.wait()
            return value

        @cache.cache_invalidate("item:{n}")
        async def update(n: int) -> None:
            db["v"] = 2

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(get_item, 1)
                await started.wait()
                await update(1)
                release.set()
        assert 2 == await get_item(1)


class TestSingleFlight:
    async def test_500_concurrent_callers_run_the_function_once(
        self, make_manager: ManagerFactory
    ) -> None:
        """500 concurrent callers of one cold key share a single call and its result."""
        cache = await make_manager()
        calls = Calls()
        release = anyio.Event()
        results: list[dict[str, int]] = []

        @cache.cached(ttl=60, key_prefix="hot")
        async def load(n: int) -> dict[str, int]:
            calls.record(n)
            await release.wait()
            return {"n": n}

        async def call() -> None:
            results.append(await load(1))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(500):
                    tg.start_soon(call)
                # Every caller has missed and joined the flight before the function returns.
                while cache.stats()["loader"]["misses"] < 500:  # noqa: ASYNC110 - a counter, no event
                    await anyio.sleep(0.001)
                release.set()
        assert (1, [{"n": 1}] * 500) == (calls.count, results)


# -- the seed's examples, as written (with stand-ins for the database and the network) --


class FakeDb:
    """The seed's ``db`` object."""

    def __init__(self) -> None:
        self.profiles: dict[int, dict[str, Any]] = {1: {"name": "Ada"}}
        self.reads = 0

    async def get_user_profile(self, user_id: int) -> dict[str, Any]:
        self.reads += 1
        return dict(self.profiles[user_id])

    async def update_user_profile(self, user_id: int, data: dict[str, Any]) -> None:
        self.profiles[user_id].update(data)


class Column:
    def __eq__(self, other: object) -> Any:
        return ("id", other)

    __hash__ = object.__hash__


class User:
    id = Column()

    def __init__(self, user_id: int, name: str) -> None:
        self.user_id = user_id
        self.name = name

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.user_id, "name": self.name}


@dataclass
class Select:
    model: type
    clause: Any = None

    def where(self, clause: Any) -> Select:
        return Select(self.model, clause)


def select(model: type) -> Select:
    return Select(model)


class FakeResult:
    def __init__(self, user: User | None) -> None:
        self.user = user

    def scalar_one_or_none(self) -> User | None:
        return self.user


class FakeSession(AsyncSession):
    """A session whose class derives from the stand-in for SQLAlchemy's AsyncSession."""

    def __init__(self, users: dict[int, User]) -> None:
        self.users = users
        self.queries = 0
        self.commits = 0

    async def execute(self, query: Select) -> FakeResult:
        self.queries += 1
        return FakeResult(self.users.get(query.clause[1]))

    async def get(self, model: type, user_id: int) -> User | None:
        return self.users.get(user_id)

    async def commit(self) -> None:
        self.commits += 1


class TestSeedExamples:
    async def test_cache_decorators_section(self, make_manager: ManagerFactory) -> None:
        """The seed's get_user_profile / update_user_profile pair works as written."""
        cache_manager = await make_manager()
        db = FakeDb()

        # Cache expensive operations
        @cache_manager.cached(ttl=3600, key_prefix="user_profile")
        async def get_user_profile(user_id: int) -> dict[str, Any]:
            # Expensive database call
            return await db.get_user_profile(user_id)

        # Cache invalidation
        @cache_manager.cache_invalidate("user_profile:*")
        async def update_user_profile(user_id: int, data: dict[str, Any]) -> dict[str, bool]:
            # Update database
            await db.update_user_profile(user_id, data)
            return {"updated": True}

        assert {"name": "Ada"} == await get_user_profile(1)
        assert {"name": "Ada"} == await get_user_profile(1)
        assert {"updated": True} == await update_user_profile(1, {"name": "Grace"})
        assert ({"name": "Grace"}, 2) == (await get_user_profile(1), db.reads)

    async def test_fastapi_endpoint_decorator_usage(self, make_manager: ManagerFactory) -> None:
        """The seed's endpoint body (decorating a nested function per request) hits the
        cache from the second request on."""
        cache = await make_manager()
        loads: list[int] = []

        async def get_cache_manager() -> CacheManager:
            return cache

        async def get_user(user_id: int, cache_manager: CacheManager) -> Any:
            @cache_manager.cached(ttl=1800, key_prefix="user")
            async def get_user_data(user_id: int) -> dict[str, Any]:
                loads.append(user_id)
                return {"id": user_id, "name": f"User {user_id}"}

            return await get_user_data(user_id)

        first = await get_user(1, await get_cache_manager())
        second = await get_user(1, await get_cache_manager())
        assert ({"id": 1, "name": "User 1"}, first, [1]) == (
            second,
            await cache.get("user:1"),
            loads,
        )

    async def test_database_integration(self, make_manager: ManagerFactory) -> None:
        """The seed's SQLAlchemy example: the session is left out of the key automatically."""
        cache_manager = await make_manager()
        users = {1: User(1, "Ada")}

        @cache_manager.cached(ttl=3600, key_prefix="db_user")
        async def get_user_from_db(session: AsyncSession, user_id: int) -> dict[str, Any] | None:
            result = await session.execute(select(User).where(User.id == user_id))
            user = result.scalar_one_or_none()
            return user.to_dict() if user else None

        @cache_manager.cache_invalidate("db_user:*")
        async def update_user_in_db(
            session: AsyncSession, user_id: int, data: dict[str, Any]
        ) -> dict[str, Any] | None:
            user = await session.get(User, user_id)
            if user:
                for key, value in data.items():
                    setattr(user, key, value)
                await session.commit()
                return user.to_dict()
            return None

        first, second = FakeSession(users), FakeSession(users)
        assert {"id": 1, "name": "Ada"} == await get_user_from_db(first, 1)
        assert {"id": 1, "name": "Ada"} == await get_user_from_db(second, 1)
        assert None is await get_user_from_db(first, 2)
        assert None is await get_user_from_db(second, 2)
        # Both users were loaded once, through the first session; None is cached too.
        assert (2, 0, "db_user:1") == (
            first.queries,
            second.queries,
            get_user_from_db.cache_key(first, 1),
        )
        assert {"id": 1, "name": "Grace"} == await update_user_in_db(second, 1, {"name": "Grace"})
        assert {"id": 1, "name": "Grace"} == await get_user_from_db(first, 1)

    async def test_external_api_integration(self, make_manager: ManagerFactory) -> None:
        """The seed's weather example caches per city (the HTTP call replaced locally)."""
        cache_manager = await make_manager()
        requests: list[str] = []

        class Response:
            def __init__(self, city: str) -> None:
                self.city = city

            def raise_for_status(self) -> None:
                return None

            def json(self) -> dict[str, Any]:
                return {"city": self.city, "temp": 21}

        class LocalClient:
            async def __aenter__(self) -> LocalClient:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

            async def get(self, url: str) -> Response:
                requests.append(url)
                return Response(url.rsplit("/", 1)[-1])

        class httpx:
            AsyncClient = LocalClient

        @cache_manager.cached(ttl=1800, key_prefix="api_weather")
        async def get_weather_data(city: str) -> dict[str, Any]:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"https://api.weather.com/{city}")
                response.raise_for_status()
                return response.json()

        assert [{"city": "Oslo", "temp": 21}] * 2 == [
            await get_weather_data("Oslo"),
            await get_weather_data(city="Oslo"),
        ]
        assert (["https://api.weather.com/Oslo"], "api_weather:Oslo") == (
            requests,
            get_weather_data.cache_key("Oslo"),
        )

    async def test_performance_examples(self, make_manager: ManagerFactory) -> None:
        """The seed's short-prefix and dict-argument examples key predictably."""
        cache_manager = await make_manager()

        # Use consistent, short keys
        @cache_manager.cached(key_prefix="u")  # Short prefix
        async def get_user(user_id: int) -> dict[str, Any]:
            return {"id": user_id, "name": f"User {user_id}"}

        # Use hash keys for long parameters
        @cache_manager.cached(key_prefix="search")
        async def search_products(query: str, filters: dict[str, Any]) -> dict[str, Any]:
            return {"query": query, "results": []}

        assert {"id": 3, "name": "User 3"} == await get_user(3)
        assert {"query": "lamp", "results": []} == await search_products("lamp", {"max": 10})
        assert ("u:3", 'search:lamp:{"a":1,"max":10}') == (
            get_user.cache_key(3),
            search_products.cache_key("lamp", {"max": 10, "a": 1}),
        )
