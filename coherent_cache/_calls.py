"""How a decorated function is called and keyed: its signature, fast key plans, templates.

The call-side helpers of `coherent_cache.decorators`: which arguments are request context
(`AUTO_EXCLUDED_TYPES`), binding call arguments quickly (`Signature`), the key of a plain
positional call without binding (`KeyPlan`), tag and pattern templates naming parameters
(`template_of`), and running the function, async or sync (`run_function`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import anyio.to_thread

from .errors import InvalidKeyError
from .keys import CacheKeyGenerator, KeyTemplate

__all__ = (
    "AUTO_EXCLUDED_TYPES",
    "KeyPlan",
    "Signature",
    "describe",
    "is_async_function",
    "is_context_type",
    "run_function",
    "template_arguments",
    "template_of",
    "unwrap_descriptor",
)

AUTO_EXCLUDED_TYPES: Final[frozenset[str]] = frozenset(
    {
        # SQLAlchemy sessions (a session is a connection, never part of what is loaded).
        "sqlalchemy.ext.asyncio.session.AsyncSession",
        "sqlalchemy.ext.asyncio.scoping.async_scoped_session",
        "sqlalchemy.orm.session.Session",
        "sqlalchemy.orm.scoping.scoped_session",
        # Starlette / FastAPI request context (FastAPI re-exports Starlette's classes).
        "starlette.requests.HTTPConnection",
        "starlette.requests.Request",
        "starlette.websockets.WebSocket",
        "starlette.responses.Response",
        "starlette.background.BackgroundTasks",
        # httpx clients (httpx sets __module__ to "httpx" on its public classes).
        "httpx.AsyncClient",
        "httpx.Client",
        "httpx._client.AsyncClient",
        "httpx._client.Client",
        # A cache manager passed in as a FastAPI dependency.
        "coherent_cache.manager.CacheManager",
    }
)
"""Fully qualified names of classes whose instances are left out of cache keys.

An argument is excluded when any class in its type's MRO is named here, so subclasses
(FastAPI's ``BackgroundTasks``, a custom ``Request``) are excluded too. Matching is by
name: none of these libraries is imported.
"""


_context_types: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def is_context_type(cls: type) -> bool:
    """Whether ``cls`` or one of its bases is in `AUTO_EXCLUDED_TYPES` (memoised per type)."""
    try:
        return _context_types[cls]
    except KeyError:
        found = any(f"{c.__module__}.{c.__qualname__}" in AUTO_EXCLUDED_TYPES for c in cls.__mro__)
        _context_types[cls] = found
        return found


def unwrap_descriptor(func: Any) -> tuple[Callable[..., Any], str]:
    """Return the function inside a classmethod/staticmethod and its kind."""
    if isinstance(func, classmethod):
        return func.__func__, "class"
    if isinstance(func, staticmethod):
        return func.__func__, "static"
    if not callable(func):
        raise TypeError(f"expected a function to decorate, got {type(func).__qualname__}")
    return func, "function"


def is_async_function(func: Callable[..., Any]) -> bool:
    if inspect.isasyncgenfunction(func):
        raise TypeError(
            f"{describe(func)} is an async generator function: its result cannot be cached"
        )
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(call)


def describe(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{name}" if module else name


async def run_function(func: Callable[..., Any], is_async: bool, args: Any, kwargs: Any) -> Any:
    """Call ``func``: awaited when async, in a worker thread when sync."""
    if is_async:
        return await func(*args, **kwargs)
    result = await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))
    if inspect.isawaitable(result):  # a sync function that returns an awaitable
        result = await result
    return result


class Signature:
    """A function's signature, prepared to bind call arguments quickly."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.name = describe(func)
        self.sig = inspect.signature(func)
        params = self.sig.parameters
        self.names = tuple(params)
        self.kinds = {name: p.kind for name, p in params.items()}
        self.var_keyword = next(
            (n for n, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )
        # Fast path: every parameter positional, without defaults: zip(names, args).
        self._simple = all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            for p in params.values()
        )

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Name -> value of every parameter, defaults applied, in signature order.

        Raises:
            TypeError: the arguments do not fit the signature (as calling would).
        """
        if self._simple and not kwargs and len(args) == len(self.names):
            return dict(zip(self.names, args, strict=True))
        bound = self.sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def has(self, name: str) -> bool:
        """Whether a template or ``exclude`` may name ``name``."""
        return name in self.kinds or self.var_keyword is not None


def template_of(text: object, sig: Signature, *, what: str) -> KeyTemplate:
    """A tag or pattern template whose placeholders name parameters of ``sig``."""
    template = KeyTemplate(text, what=what, owner=sig.name)
    for field, base in zip(template.fields, template.names, strict=True):
        if not base or base.isdigit():
            raise InvalidKeyError(
                f"{what} {text!r} of {sig.name} has a positional placeholder "
                f"{{{field}}}: name the parameter, as in {{user_id}}",
                key=text,
            )
        if not sig.has(base):
            raise InvalidKeyError(
                f"{what} {text!r} of {sig.name} names {base!r}, which is not a "
                f"parameter of {sig.name}{sig.sig}",
                key=text,
            )
    return template


@final
@dataclasses.dataclass(frozen=True, slots=True)
class KeyPlan:
    """The key of a plain positional call, without binding (made at decoration time).

    For a function whose parameters are all positional (no ``*args``, ``**kwargs`` or
    keyword-only ones), called positionally with ``str``, ``int`` or ``float`` values: the
    key is the prefix and the kept arguments' ``str`` joined, exactly what the general
    path (`_CachedSpec.key_and_arguments`) builds for them. Anything else (keywords,
    other types, a key to hash, non-ASCII) returns ``None`` and takes the general path.
    """

    count: int
    required: int
    defaults: tuple[Any, ...]
    keep: tuple[int, ...]
    prefix: str
    separator: str
    max_length: int

    @classmethod
    def of(cls, sig: Signature, exclude: frozenset[str], keys: CacheKeyGenerator) -> KeyPlan | None:
        params = list(sig.sig.parameters.values())
        if keys.prefix is None or any(
            p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
        ):
            return None
        defaults = tuple(p.default for p in params if p.default is not p.empty)
        if any(p.default is p.empty for p in params[len(params) - len(defaults) :]):
            return None  # pragma: no cover - Python forbids a default before a non-default
        return cls(
            count=len(params),
            required=len(params) - len(defaults),
            defaults=defaults,
            keep=tuple(i for i, p in enumerate(params) if p.name not in exclude),
            prefix=keys.prefix,
            separator=keys.separator,
            max_length=keys.max_length,
        )

    def key(self, args: tuple[Any, ...]) -> str | None:
        """The key of a positional call with these arguments, or ``None`` (general path)."""
        n = len(args)
        if n != self.count:
            if not self.required <= n < self.count:
                return None
            args = (*args, *self.defaults[n - self.required :])
        keep = self.keep
        if len(keep) == 1:  # the common case, without a list and a join
            body = args[keep[0]]
            kind = type(body)
            if kind is str:
                if "%" in body or "=" in body or ":" in body:
                    return None  # escaped by the general path (`escape_part`)
            elif kind is int or kind is float:
                body = str(body)
            else:
                return None
        else:
            parts: list[str] = []
            for i in keep:
                value = args[i]
                kind = type(value)
                if kind is str:
                    if "%" in value or "=" in value or ":" in value:
                        return None  # escaped by the general path (`escape_part`)
                    parts.append(value)
                elif kind is int or kind is float:
                    parts.append(str(value))
                else:
                    return None
            body = self.separator.join(parts)
        key = f"{self.prefix}{self.separator}{body}" if body else self.prefix
        if len(key) > self.max_length or not key.isascii():
            return None  # hashed or checked byte by byte: the general path does it
        return key


def template_arguments(sig: Signature, arguments: dict[str, Any]) -> Mapping[str, Any]:
    """Bound arguments plus the entries of ``**kwargs``, for filling templates."""
    if sig.var_keyword is None:
        return arguments
    return {**arguments[sig.var_keyword], **arguments}
