"""Typed values: decode a cached value (its JSON form) into a declared type, and copy values.

A declared type (a decorated function's return annotation, or ``value_type=``) decides
what a cached value decodes to. Pydantic does the validation and conversion: one
``TypeAdapter`` per type, built on first use and kept. A type whose values JSON carries
unchanged (``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``, ``list`` and
``dict[str, ...]`` of those, unions of those) needs no decoding: `decoder_of` returns
``None`` for it and the hot paths pay nothing.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import enum
import threading
import types
import typing
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.errors import PydanticUserError

from .errors import ConfigurationError

__all__ = [
    "Decoder",
    "TypeMismatch",
    "copy_value",
    "decoder_of",
    "is_json_native",
    "return_decoder",
    "returned_type",
    "value_decoder",
]

Decoder = Callable[[Any], Any]
"""Turns a value as a tier holds it (JSON form, or already typed) into the declared type;
raises `TypeMismatch` when it does not validate."""

# bytes travel as base64 strings in JSON (see serializer._json_default)
_CONFIG: Final = ConfigDict(val_json_bytes="base64")
_NATIVE_ATOMS: Final[frozenset[Any]] = frozenset(
    {str, int, float, bool, type(None), None, object, Any}
)
_IMMUTABLE: Final[frozenset[type]] = frozenset(
    {
        str,
        int,
        float,
        bool,
        type(None),
        bytes,
        uuid.UUID,
        decimal.Decimal,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
    }
)


# orjson options that make it refuse (rather than convert) what JSON would not give back
_PLAIN: Final = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


class TypeMismatch(ValueError):
    """A cached value does not validate against the declared type (a counted miss)."""


def is_json_native(tp: Any) -> bool:
    """Whether values of ``tp`` come back from JSON unchanged (no decoding needed)."""
    if tp in _NATIVE_ATOMS or tp is list or tp is dict:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list:
        return all(is_json_native(a) for a in args)
    if origin is dict:
        return len(args) == 2 and args[0] is str and is_json_native(args[1])
    if origin is typing.Union or origin is types.UnionType:
        return all(is_json_native(a) for a in args)
    return False


_decoders: dict[Any, Decoder | None] = {}
_lock = threading.Lock()


def decoder_of(tp: Any) -> Decoder | None:
    """The decoder of ``tp`` (built once and kept), or ``None`` for a JSON-native type.

    Raises:
        TypeError: pydantic cannot build a schema for ``tp``.
    """
    try:
        return _decoders[tp]
    except KeyError:
        pass
    except TypeError:  # an unhashable annotation: build it every time (rare)
        return _build(tp)
    with _lock:
        if tp not in _decoders:
            _decoders[tp] = _build(tp)
        return _decoders[tp]


def _build(tp: Any) -> Decoder | None:
    if is_json_native(tp):
        return None
    from pydantic import TypeAdapter  # once per declared type: not loaded before typed use

    validate: Decoder
    try:
        try:
            validate = TypeAdapter(tp, config=_CONFIG).validate_python
        except PydanticUserError as exc:
            if exc.code != "type-adapter-config-unused":
                raise
            # A model, dataclass or TypedDict refuses an outside config: wrap it in a
            # one-item tuple, whose config reaches a stdlib dataclass's fields.
            wrapped = TypeAdapter(tuple[tp], config=_CONFIG).validate_python

            def validate(value: Any) -> Any:
                return wrapped((value,))[0]

    except Exception as exc:
        raise TypeError(f"cannot decode cached values as {tp!r}: {exc}") from exc

    def decode(value: Any) -> Any:
        try:
            return validate(value)
        except ValidationError as exc:
            raise TypeMismatch(str(exc)) from None

    return decode


def copy_value(value: Any) -> Any:
    """A deep copy of ``value`` that shares no mutable object with it (immutables as is).

    A ``dict`` or ``list`` is copied by an orjson round trip when that gives back an equal
    value (JSON-native content: 5-10x faster than ``copy.deepcopy``, measured in
    docs/serialization.md); anything that JSON would change (a tuple, a non-str key, a
    ``datetime``, a subclass) fails that check or the encoding and is deep-copied.
    """
    kind = type(value)
    if kind in _IMMUTABLE or isinstance(value, enum.Enum):
        return value
    if kind is dict or kind is list:
        try:
            copied = orjson.loads(orjson.dumps(value, option=_PLAIN))
        except TypeError:
            pass
        else:
            if copied == value:
                return copied
    if isinstance(value, BaseModel):
        return value.model_copy(deep=True)
    return copy.deepcopy(value)


def returned_type(func: Callable[..., Any]) -> Any:
    """The type a call of ``func`` produces: its return annotation, unwrapped from an
    ``Awaitable``/``Coroutine`` for a sync function returning one; ``Any`` when absent."""
    hints = typing.get_type_hints(func, include_extras=True)
    declared = hints.get("return", Any)
    origin = typing.get_origin(declared)
    if origin is Awaitable or origin is Coroutine:
        declared = typing.get_args(declared)[-1]
    return declared


def return_decoder(func: Callable[..., Any]) -> Decoder | None:
    """The decoder of ``func``'s return annotation, resolved now if possible.

    An annotation naming something not defined yet (a class declared later in the module)
    is resolved at the first L2 read or store instead; one pydantic cannot handle (an
    arbitrary class) means no decoding, as without an annotation.
    """
    try:
        return decoder_of(returned_type(func))
    except NameError:
        pass
    except TypeError:
        return None
    resolved: list[Decoder | None] = []

    def decode_late(value: Any) -> Any:
        if not resolved:
            try:
                resolved.append(decoder_of(returned_type(func)))
            except TypeError:
                resolved.append(None)
        decode = resolved[0]
        return value if decode is None else decode(value)

    return decode_late


def value_decoder(value_type: Any) -> Decoder | None:
    """The decoder of an explicit ``value_type=``.

    Raises:
        ConfigurationError: pydantic cannot build a schema for it.
    """
    try:
        return decoder_of(value_type)
    except TypeError as exc:
        raise ConfigurationError(str(exc), field="value_type") from exc
