"""Typed values against a real server: declared types decide what hits decode to (miss, L1,
L2 through a second manager, another OS process), stale schemas are misses, unencodable
results are returned uncached, copy-on-read, value_type= on get/get_or_set, positional
cached()."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import structlog
from pydantic import BaseModel
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager, CacheTier, ConfigurationError
from coherent_cache._typed import copy_value
from coherent_cache.errors import SerializationError

from .conftest import ManagerFactory
from .support.multiproc import Worker
from .support.typed_values import CASES, POINT, USER, Point, User, conforms, functions

pytestmark = pytest.mark.anyio


async def _l2_json(raw_redis: Redis, namespace: str, key: str) -> Any:
    """The JSON value stored in Redis under ``key`` (an uncompressed format-1 payload)."""
    raw = await raw_redis.get(f"{namespace}:{key}")
    assert raw is not None and raw[:2] == b"\xc5\x01"
    return orjson.loads(raw[2:])


class TestEveryPath:
    @pytest.mark.parametrize("case", sorted(CASES))
    async def test_same_type_on_miss_l1_and_l2(
        self, make_manager: ManagerFactory, case: str
    ) -> None:
        """The declared type and an equal value on the miss, an L1 hit, and an L2 hit in
        another manager (whose own L1 then holds the typed value: a second hit there)."""
        tp, expected = CASES[case]
        calls_a: list[str] = []
        calls_b: list[str] = []
        a = functions(await make_manager(), calls_a)[case]
        b = functions(await make_manager(), calls_b)[case]
        results = [await a(1), await a(1), await b(1), await b(1)]
        assert ([case], []) == (calls_a, calls_b)
        assert [True] * 4 == [conforms(r, tp) for r in results], [type(r) for r in results]
        assert [expected] * 4 == results

    @pytest.mark.parametrize("case", ["model", "dataclass", "list_of_models", "set", "bytes"])
    async def test_msgpack_format(self, make_manager: ManagerFactory, case: str) -> None:
        """The same with ``serialization_format="msgpack"``."""
        tp, expected = CASES[case]
        calls: list[str] = []
        a = functions(await make_manager(serialization_format="msgpack"), calls)[case]
        b = functions(await make_manager(serialization_format="msgpack"), calls)[case]
        results = [await a(1), await a(1), await b(1), await b(1)]
        assert [case] == calls
        assert [True] * 4 == [conforms(r, tp) for r in results]
        assert [expected] * 4 == results

    @pytest.mark.parametrize("case", ["model", "dataclass", "dict_of_dataclasses", "tuple"])
    async def test_another_process_reads_the_type(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str, case: str
    ) -> None:
        """A value cached here is the declared type in another OS process (L2, then L1)."""
        calls: list[str] = []
        here = functions(await make_manager(), calls)[case]
        assert CASES[case][1] == await here(1)
        async with Worker(redis_url=redis_url, namespace=namespace) as other:
            seen = await other.call("typed_call", case=case, arg=1)
        assert {"typed": [True, True], "equal": [True, True], "calls": []} == seen

    async def test_untyped_values_keep_their_json_form(self, make_manager: ManagerFactory) -> None:
        """Without a declared type, models, dataclasses and the other types are still
        cached, in their JSON form (tuples as lists, dict keys as strings)."""
        a, b = await make_manager(), await make_manager()

        @a.cached(key_prefix="untyped")
        async def load(n: int):  # type: ignore[no-untyped-def]
            return {"user": USER, "point": POINT, "pair": (1, 2), "ids": {1: "a"}}

        assert isinstance((await load(1))["user"], User)  # the miss: the function's object
        expected = {
            "user": USER.model_dump(mode="json"),
            "point": {"x": 1, "y": 2, "label": "AP8=", "at": [3, "z"]},
            "pair": [1, 2],
            "ids": {"1": "a"},
        }
        assert expected == await load(1)
        assert expected == await b.get("untyped:1")


class TestAnnotations:
    async def test_string_annotations_and_forward_references(
        self, make_manager: ManagerFactory
    ) -> None:
        """``from __future__ import annotations`` (this module) and a class defined after
        the decorated function both resolve."""
        a, b = await make_manager(), await make_manager()

        def decorate(cache: CacheManager) -> Any:
            @cache.cached(key_prefix="later")
            async def load(n: int) -> Later:
                return Later(n=n)

            return load

        first = decorate(a)
        assert Later(n=1) == await first(1)
        assert Later(n=1) == await decorate(b)(1)
        assert isinstance(await decorate(b)(1), Later)

    async def test_sync_function_and_value_type_override(
        self, make_manager: ManagerFactory
    ) -> None:
        """A sync function's annotation counts; ``value_type=`` overrides it."""
        a, b = await make_manager(), await make_manager()

        def decorate(cache: CacheManager) -> tuple[Any, Any]:
            @cache.cached(key_prefix="sync")
            def pair(n: int) -> tuple[int, int]:
                return (n, n)

            @cache.cached(key_prefix="override", value_type=set[int])
            async def ids(n: int) -> Any:
                return {n}

            return pair, ids

        pair_a, ids_a = decorate(a)
        await pair_a(1), await ids_a(1)
        pair_b, ids_b = decorate(b)
        assert ((1, 1), {1}) == (await pair_b(1), await ids_b(1))

    async def test_bad_value_type_fails_at_decoration(self, make_manager: ManagerFactory) -> None:
        """A ``value_type`` pydantic cannot handle is a ConfigurationError, not a late error."""
        cache = await make_manager()
        with pytest.raises(ConfigurationError):
            cache.cached(value_type=Unhandled)


@dataclasses.dataclass
class Later:
    n: int


class Unhandled:
    pass


class OldUser(BaseModel):
    id: int
    name: str


class NewUser(BaseModel):
    id: int
    name: str
    email: str  # a required field added by a deploy


class TestStaleSchema:
    async def test_a_value_that_no_longer_validates_is_a_counted_miss(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """The old version's value in L2 makes the loader run; its value replaces it."""
        old, new = await make_manager(), await make_manager()

        @old.cached(key_prefix="user")
        async def get_old(n: int) -> OldUser:
            return OldUser(id=n, name="old")

        @new.cached(key_prefix="user")
        async def get_new(n: int) -> NewUser:
            return NewUser(id=n, name="new", email="e")

        await get_old(1)
        assert {"id": 1, "name": "old"} == await _l2_json(raw_redis, namespace, "user:1")
        assert NewUser(id=1, name="new", email="e") == await get_new(1)
        assert {"id": 1, "name": "new", "email": "e"} == await _l2_json(
            raw_redis, namespace, "user:1"
        )
        stats = await new.get_stats()
        assert (1, 1) == (stats["loader"]["type_mismatches"], stats["loader"]["loads"])

    async def test_manual_get_of_a_stale_schema_is_the_default(
        self, make_manager: ManagerFactory
    ) -> None:
        """``get(value_type=...)`` of a value that does not validate returns the default."""
        a, b = await make_manager(), await make_manager()
        await a.set("u", {"id": 1, "name": "x"})
        assert "none" == await b.get("u", default="none", value_type=NewUser)
        assert OldUser(id=1, name="x") == await b.get("u", value_type=OldUser)
        assert "none" == await a.get("u", default="none", value_type=NewUser)  # L1 checked too

    async def test_get_or_set_of_an_l1_value_that_does_not_validate_loads(
        self, make_manager: ManagerFactory
    ) -> None:
        """``get_or_set(value_type=...)`` checks what L1 holds: a mismatch runs the loader."""
        cache = await make_manager()
        await cache.set("u", {"id": 1, "name": "x"})
        new = NewUser(id=1, name="y", email="e")
        assert new == await cache.get_or_set("u", lambda: _async(new), value_type=NewUser)
        assert new == await cache.get("u", value_type=NewUser)
        assert 1 == (await cache.get_stats())["loader"]["loads"]


class TestUnencodable:
    async def test_loader_result_is_returned_not_cached_logged_once(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """An arbitrary object: the caller gets it, nothing is written, one log per prefix."""
        cache = await make_manager()
        made: list[object] = []

        @cache.cached(key_prefix="odd")
        async def load(n: int) -> Any:
            made.append(object())
            return made[-1]

        with structlog.testing.capture_logs() as logs:
            results = [await load(1), await load(1), await load(2)]
            got = await cache.get_or_set("odd:3", lambda: _async(object()))
        assert made == results and isinstance(got, object)
        assert [] == await raw_redis.keys(f"{namespace}:odd*")
        assert None is cache.l1.peek("odd:1")
        events = [e for e in logs if e["event"] == "cache_value_unencodable"]
        assert [("odd", "object")] == [(e["key_prefix"], e["value_type"]) for e in events]
        assert 4 == (await cache.get_stats())["loader"]["unencodable"]
        with pytest.raises(SerializationError):
            await cache.set("odd:4", object())

    async def test_declared_type_the_value_does_not_match(
        self, make_manager: ManagerFactory
    ) -> None:
        """A result that does not read back as its annotation is returned, not cached."""
        cache = await make_manager()

        @cache.cached(key_prefix="liar")
        async def load(n: int) -> datetime.date:
            return "not a date"  # type: ignore[return-value]

        assert "not a date" == await load(1)
        assert None is cache.l1.peek("liar:1")
        assert 1 == (await cache.get_stats())["loader"]["unencodable"]


async def _async(value: Any) -> Any:
    return value


MUTABLE: dict[str, tuple[Any, Callable[[], Any], Callable[[Any], Any]]] = {
    "model": (User, lambda: USER.model_copy(deep=True), lambda v: v.tags.append("x")),
    "dataclass": (Point, lambda: Point(1, 2), lambda v: setattr(v, "x", 99)),
    "dict": (dict[str, Any], lambda: {"a": [1]}, lambda v: v["a"].append(2)),
    "list": (list[int], lambda: [1, 2], lambda v: v.append(3)),
}


class TestCopyOnRead:
    @pytest.mark.parametrize("case", sorted(MUTABLE))
    async def test_on_mutating_a_result_changes_nothing(
        self, make_manager: ManagerFactory, case: str
    ) -> None:
        """With copy-on-read, mutating what get, get_or_set or a decorated call returned
        (after a miss, an L1 hit or an L2 fill) never changes a later read."""
        tp, make, mutate = MUTABLE[case]
        a = await make_manager(l1_copy_on_read=True)
        b = await make_manager(l1_copy_on_read=True)
        original = make()

        @a.cached(key_prefix="cor", value_type=tp)
        async def load(n: int) -> Any:
            return original

        mutate(await load(1))  # the miss: the caller's object; L1 holds its own
        mutate(await load(1))  # an L1 hit
        stored = make()
        await a.set("manual", stored)
        mutate(stored)  # the value passed to set
        mutate(await a.get("manual", value_type=tp))
        mutate(await a.get_or_set("manual", lambda: _async(make()), value_type=tp))
        mutate(await b.get("manual", value_type=tp))  # an L2 fill
        assert [make()] * 4 == [
            await load(1),
            await a.get("manual", value_type=tp),
            await b.get("manual", value_type=tp),
            await b.get("manual", value_type=tp),
        ]

    @pytest.mark.parametrize("case", sorted(MUTABLE))
    async def test_off_results_are_shared(self, make_manager: ManagerFactory, case: str) -> None:
        """Off (the default): every L1 hit returns the same object, as documented."""
        tp, make, _mutate = MUTABLE[case]
        cache = await make_manager()
        assert cache.config.l1_copy_on_read is False

        @cache.cached(key_prefix="shared", value_type=tp)
        async def load(n: int) -> Any:
            return make()

        await load(1)
        assert await load(1) is await load(1)
        await cache.set("manual", make())
        assert await cache.get("manual") is await cache.get("manual")

    async def test_from_env(self) -> None:
        """``COHERENT_CACHE_L1_COPY_ON_READ`` sets it."""
        env = {"COHERENT_CACHE_L1_COPY_ON_READ": "true"}
        assert CacheConfig.from_env(env).l1_copy_on_read is True


class TestValueType:
    async def test_get_and_get_or_set_decode(self, make_manager: ManagerFactory) -> None:
        """``value_type=`` decodes manual reads; without it the JSON form comes back."""
        a, b, c = await make_manager(), await make_manager(), await make_manager()
        await a.set("u", USER)
        assert USER == await b.get("u", value_type=User)
        assert USER == await b.get("u", value_type=User)  # L1 now holds the model
        assert USER.model_dump(mode="json") == await c.get("u")
        loaded = await a.get_or_set("p", lambda: _async(POINT), value_type=Point)
        assert (POINT, POINT) == (loaded, await c.get_or_set("p", _fail, value_type=Point))
        assert isinstance(await c.get("p", value_type=Point), Point)

    async def test_l2_only_tier(self, make_manager: ManagerFactory) -> None:
        """``tier=L2`` reads decode too."""
        cache = await make_manager()
        await cache.set("d", datetime.date(2026, 1, 1), tier=CacheTier.L2)
        assert datetime.date(2026, 1, 1) == await cache.get(
            "d", CacheTier.L2, value_type=datetime.date
        )


async def _fail() -> Any:
    raise AssertionError("the loader must not run")


class TestPositionalCached:
    async def test_seed_signature(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """``cached(ttl, key_prefix, tier)`` positionally, as the seed declared it."""
        cache = await make_manager()

        @cache.cached(60, "user")
        async def get_user(user_id: int) -> dict[str, int]:
            return {"id": user_id}

        @cache.cached(30, "local", CacheTier.L1)
        async def local(n: int) -> int:
            return n

        assert {"id": 1} == await get_user(1)
        assert 55 < await raw_redis.ttl(f"{namespace}:user:1") <= 60
        assert 2 == await local(2)
        assert 0 == await raw_redis.exists(f"{namespace}:local:2")
        assert 2 == cache.l1.peek("local:2")


class TestCopyValue:
    @pytest.mark.parametrize(
        "value",
        [
            {"a": [1, {"b": 2.5}], "c": None},
            [(1, 2)],
            {1: "a"},
            [datetime.date(2020, 1, 1)],
            [POINT],
            {"u": USER},
            [float("nan")],
            {"x": b"1"},
            USER,
            POINT,
        ],
        ids=repr,
    )
    def test_copies_keep_type_and_value_and_share_nothing(self, value: Any) -> None:
        """``copy_value`` (copy-on-read): equal, same types inside, no shared container."""
        copied = copy_value(value)
        assert repr(value) == repr(copied)
        assert copied is not value
        if isinstance(value, dict | list):
            inner = next(iter(value.values())) if isinstance(value, dict) else value[0]
            inner_copy = next(iter(copied.values())) if isinstance(copied, dict) else copied[0]
            assert type(inner) is type(inner_copy)
            if isinstance(inner, list | dict | BaseModel | Point):
                assert inner is not inner_copy
