"""Typed values shared by tests/test_typed_values.py and the worker process: one decorated
function per case, each declaring its return type, with a fixed key prefix."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from coherent_cache import CacheManager


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class User(BaseModel):
    id: int
    name: str
    email: str | None = None
    created: datetime.datetime
    key: uuid.UUID
    tags: list[str] = []
    color: Color = Color.RED


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: bytes = b""
    at: tuple[int, str] = (0, "")


USER = User(
    id=7,
    name="Ada",
    created=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    key=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    tags=["a", "b"],
    color=Color.BLUE,
)
POINT = Point(1, 2, b"\x00\xff", (3, "z"))

CASES: dict[str, tuple[Any, Any]] = {
    "model": (User, USER),
    "dataclass": (Point, POINT),
    "uuid": (uuid.UUID, uuid.UUID("87654321-4321-8765-4321-876543218765")),
    "datetime": (datetime.datetime, datetime.datetime(2026, 5, 6, 7, 8, 9, 123456)),
    "date": (datetime.date, datetime.date(2026, 5, 6)),
    "time": (datetime.time, datetime.time(7, 8, 9, 500)),
    "decimal": (decimal.Decimal, decimal.Decimal("12.3400")),
    "enum": (Color, Color.BLUE),
    "tuple": (tuple[int, str], (1, "x")),
    "set": (set[int], {3, 1, 2}),
    "frozenset": (frozenset[str], frozenset({"a", "b"})),
    "bytes": (bytes, b"\x00\x01\xfe\xff"),
    "int_keys": (dict[int, str], {1: "a", 2: "b"}),
    "list_of_models": (list[User], [USER, USER.model_copy(update={"id": 8})]),
    "dict_of_dataclasses": (dict[str, Point], {"p": POINT, "q": Point(5, 6)}),
    "optional_model": (User | None, USER),
    "optional_none": (User | None, None),
    "json_native": (dict[str, list[int]], {"a": [1, 2]}),
}


def functions(cache: CacheManager, calls: list[str]) -> dict[str, Any]:
    """One decorated function per case (key prefix ``typed.<case>``); each call appends
    the case name to ``calls``."""
    made: dict[str, Any] = {}
    for name, (tp, value) in CASES.items():
        decorate = cache.cached(ttl=60, key_prefix=f"typed.{name}")
        made[name] = decorate(_returning(name, tp, value, calls))
    return made


def _returning(name: str, tp: Any, value: Any, calls: list[str]) -> Callable[[int], Any]:
    async def load(n: int) -> Any:
        calls.append(name)
        return value

    load.__annotations__["return"] = tp
    load.__qualname__ = f"load_{name}"
    return load


def conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the declared type ``tp``, containers and items included."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is None or tp is type(None):
        return value is None
    if origin is None:
        return type(value) is tp
    if origin is typing.Union or origin is types.UnionType:
        return any(conforms(value, a) for a in args)
    if not isinstance(value, origin):
        return False
    if origin is tuple:
        return len(value) == len(args) and all(map(conforms, value, args))
    if origin is dict:
        return all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    return all(conforms(item, args[0]) for item in value)
