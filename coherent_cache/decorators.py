"""The machinery of `CacheManager.cached` and `CacheManager.cache_invalidate`.

``cached(manager, ...)`` turns a function (async or sync, plain, method, classmethod or
staticmethod) into a `CachedFunction`: calling it returns the cached result for its
arguments, or runs the function once through `CacheManager.get_or_set` (single-flight,
optional cross-instance lock, stale-while-revalidate) and caches what it returns.

``cache_invalidate(manager, *patterns)`` wraps a function so that, after it returns
successfully, every entry matching each pattern is cleared on every tier and instance.

Keys are predictable: ``<key_prefix>:<v1>:<v2>...``, the arguments bound to the signature
in signature order with defaults applied, ``*args`` values in order and ``**kwargs`` as
sorted ``name=value``, encoded by `CacheKeyGenerator` (see ``docs/decorators.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import (
    Any,
    Concatenate,
    Final,
    Generic,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    cast,
    final,
    overload,
)

import anyio.to_thread

from ._calls import (
    AUTO_EXCLUDED_TYPES,
    KeyPlan,
    Signature,
    is_async_function,
    is_context_type,
    run_function,
    template_arguments,
    template_of,
    unwrap_descriptor,
)
from ._loader import LoadEngine, LoadPolicy
from ._typed import return_decoder, value_decoder
from .config import CacheConfig, CacheTier
from .errors import ConfigurationError, InvalidKeyError
from .keys import (
    MAX_KEY_LENGTH,
    CacheKeyGenerator,
    KeyTemplate,
    encode_key_part,
    literal_of,
    validate_key,
)
from .types import MISSING, NOT_LOOKED, TTL, USE_DEFAULT, UseDefault

__all__ = [
    "AUTO_EXCLUDED_TYPES",
    "CacheInvalidateDecorator",
    "CachedDecorator",
    "CachedFunction",
    "DecoratedCache",
    "InvalidatingFunction",
    "cache_invalidate",
    "cached",
]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
T = TypeVar("T")


class DecoratedCache(Protocol):
    """What the decorators need of a `CacheManager` (its public surface)."""

    @property
    def config(self) -> CacheConfig: ...

    @property
    def load_engine(self) -> LoadEngine: ...

    async def delete(self, key: str, tier: CacheTier = ...) -> bool: ...

    async def clear_pattern(self, pattern: str, tier: CacheTier = ...) -> int: ...


_SKIPPED_NAMES: Final = frozenset({"self", "cls"})
_mark_coroutine: Callable[[Any], Any] | None = getattr(inspect, "markcoroutinefunction", None)


def _as_names(value: str | Iterable[str], option: str) -> tuple[str, ...]:
    """A single str is one name, not its characters."""
    names: tuple[object, ...] = (value,) if isinstance(value, str) else tuple(value)
    checked: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"{option} must hold non-empty str, got {name!r}", field=option
            )
        checked.append(name)
    return tuple(checked)


@dataclasses.dataclass(frozen=True, slots=True)
class _CachedSpec:
    """Everything a `CachedFunction` and its bound forms share."""

    manager: DecoratedCache
    engine: LoadEngine
    func: Callable[..., Any]
    kind: str
    is_async: bool
    sig: Signature
    keys: CacheKeyGenerator
    exclude: frozenset[str]
    key_builder: Callable[..., str] | None
    tags: tuple[KeyTemplate, ...]
    policy: LoadPolicy
    """The load options (tags added per call when there are tag templates)."""
    plan: KeyPlan | None
    """The fast key of plain positional calls (``None``: every call takes the general path)."""

    def key_and_arguments(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any] | None]:
        """The cache key of a call, and its bound arguments when tags need them."""
        arguments = self.sig.bind(args, kwargs) if self.key_builder is None or self.tags else None
        if self.key_builder is not None:
            key: object = self.key_builder(*args, **kwargs)
            if not isinstance(key, str) or not key:
                raise InvalidKeyError(
                    f"key_builder of {self.sig.name} must return a non-empty str, got {key!r}",
                    key=key,
                )
            return key, arguments
        assert arguments is not None
        parts: list[str] = []
        keyword_parts: list[tuple[str, str]] = []
        kinds = self.sig.kinds
        for name, value in arguments.items():
            if name in self.exclude:
                continue
            kind = kinds[name]
            if kind is inspect.Parameter.VAR_POSITIONAL:
                parts.extend(
                    self._encode(name, item) for item in value if not is_context_type(type(item))
                )
            elif kind is inspect.Parameter.VAR_KEYWORD:
                keyword_parts.extend(
                    (extra, self._encode(extra, value[extra]))
                    for extra in sorted(value)
                    if extra not in self.exclude and not is_context_type(type(value[extra]))
                )
            elif not is_context_type(type(value)):
                parts.append(self._encode(name, value))
        return self.keys.key_of_parts(parts, keyword_parts), arguments

    def _encode(self, name: str, value: object) -> str:
        try:
            return encode_key_part(value)
        except InvalidKeyError as exc:
            raise InvalidKeyError(
                f"cannot build a cache key for {self.sig.name}(): parameter {name!r} is a "
                f"{type(value).__module__}.{type(value).__qualname__}, which has no "
                f"deterministic key encoding. Leave it out of the key with "
                f"exclude=({name!r},), or pass key_builder=<callable taking the same "
                f"arguments and returning the key str>",
                key=value,
            ) from exc

    def refresh(
        self,
        key: str,
        hit: Any,
        arguments: dict[str, Any] | None,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        """After a hit whose refresh-ahead is due: start it."""
        loader = functools.partial(run_function, self.func, self.is_async, args, kwargs)
        self.engine.refresh_if_due(key, loader, self.policy_of(arguments, args, kwargs), hit)

    def policy_of(
        self, arguments: dict[str, Any] | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> LoadPolicy:
        """The load policy of a call: the decorator's, with its tag templates filled."""
        if not self.tags:
            return self.policy
        if arguments is None:  # the key came from the plan: bind now (a miss)
            arguments = self.sig.bind(args, kwargs)
        values = template_arguments(self.sig, arguments)
        return self.policy.with_tags(tuple(tag.render((), values) for tag in self.tags))


@final
class CachedFunction(Generic[P, R]):
    """A function whose results are cached by a `CacheManager`; made by `cached`.

    Calling it returns an awaitable of the function's result, even for a sync function
    (which then runs in a worker thread). It keeps the function's ``__name__``,
    ``__qualname__``, ``__doc__``, ``__module__``, ``__wrapped__`` and signature, and binds
    like a method when it is a class attribute.

    ``P`` is the function's parameters and ``R`` its declared return type: for
    ``async def f(x: int) -> User`` that is ``CachedFunction[[x: int], Coroutine[Any, Any,
    User]]``, for ``def g(x: int) -> User`` it is ``CachedFunction[[x: int], User]``; in
    both cases ``await f(1)`` is a ``User``.
    """

    __wrapped__: Callable[..., Any]
    __name__: str
    __qualname__: str

    def __init__(self, spec: _CachedSpec) -> None:
        self._spec = spec
        self._bound: tuple[Any, ...] = ()
        functools.update_wrapper(self, spec.func)
        if _mark_coroutine is not None:  # Python 3.12+: inspect.iscoroutinefunction(self)
            _mark_coroutine(self)

    def __repr__(self) -> str:
        bound = " (bound)" if self._bound else ""
        return f"<CachedFunction {self._spec.sig.name}{bound} prefix={self._spec.keys.prefix!r}>"

    @property
    def __globals__(self) -> dict[str, Any]:
        """The wrapped function's globals (FastAPI resolves string annotations with them)."""
        globals_: dict[str, Any] = getattr(self._spec.func, "__globals__", {})
        return globals_

    # R is the declared return type: unwrap it for async functions (an overload on self
    # rather than on the decorator, where an Any in the parameters would erase the types).
    @overload
    async def __call__(
        self: CachedFunction[P2, Awaitable[T]], *args: P2.args, **kwargs: P2.kwargs
    ) -> T: ...

    @overload
    async def __call__(self: CachedFunction[P2, T], *args: P2.args, **kwargs: P2.kwargs) -> T: ...

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Return the cached result for these arguments, or run the function and cache it."""
        spec = self._spec
        full = (*self._bound, *args) if self._bound else args
        key = spec.plan.key(full) if spec.plan is not None and not kwargs else None
        arguments = None
        if key is None:
            key, arguments = spec.key_and_arguments(full, kwargs)
        engine = spec.engine
        if spec.policy.tier is not CacheTier.L2:
            # The hit path: no tags, no loader, no get_or_set coroutine.
            hit = engine.fast_hit(key)
            if hit is not NOT_LOOKED:
                if hit is not MISSING:
                    policy = spec.policy
                    if policy.refresh_ahead is not None and engine.refresh_due(
                        key, policy.refresh_ahead, policy.ttl
                    ):
                        spec.refresh(key, hit, arguments, full, kwargs)
                    return hit
                # L1 missed, untraced: the load, after get_or_set's own L1 fast path
                validate_key(key)
                policy = spec.policy_of(arguments, full, kwargs)
                loader = functools.partial(run_function, spec.func, spec.is_async, full, kwargs)
                return (await engine.load(key, loader, policy))[0]
        loader = functools.partial(run_function, spec.func, spec.is_async, full, kwargs)
        return await engine.get_or_set(
            key,
            loader,
            spec.policy.tier,
            functools.partial(spec.policy_of, arguments, full, kwargs),
            refresh=spec.policy.refresh_ahead is not None,
        )

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The key a call with these arguments reads and writes (the function is not run).

        Raises:
            InvalidKeyError: an argument has no deterministic key encoding.
            TypeError: the arguments do not fit the signature.
        """
        full = (*self._bound, *args) if self._bound else args
        return self._spec.key_and_arguments(full, kwargs)[0]

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Delete the entry of this call from every tier and instance; whether one existed."""
        return await self._spec.manager.delete(self.cache_key(*args, **kwargs), CacheTier.BOTH)

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[T, P2], R], instance: T, owner: type[Any] | None = None
    ) -> CachedFunction[P2, R]: ...

    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
        kind = self._spec.kind
        if kind == "static" or self._bound:
            return self
        if kind == "class":
            first: object = owner if owner is not None else type(instance)
        elif instance is None:
            return self  # accessed on the class: the caller passes self explicitly
        else:
            first = instance
        bound = object.__new__(CachedFunction)
        bound.__dict__.update(self.__dict__)
        bound._bound = (first,)
        bind = getattr(self._spec.func, "__get__", None)
        if bind is not None:  # so inspect.signature of the bound form drops self / cls
            bound.__wrapped__ = bind(first, owner)
        return bound


@final
class CachedDecorator:
    """What `cached` returns: apply it to a function to get a `CachedFunction`."""

    def __init__(
        self,
        manager: DecoratedCache,
        policy: LoadPolicy,
        *,
        key_prefix: str | None,
        exclude: tuple[str, ...],
        key_builder: Callable[..., str] | None,
        tags: tuple[str, ...],
        declared: bool = False,
    ) -> None:
        self._manager = manager
        self._policy = policy
        self._key_prefix = key_prefix
        self._exclude = exclude
        self._key_builder = key_builder
        self._tags = tags
        self._declared = declared

    def __call__(self, func: Callable[P, R]) -> CachedFunction[P, R]:
        inner, kind = unwrap_descriptor(func)
        sig = Signature(inner)
        policy = self._policy
        if not self._declared:  # no value_type=: the return annotation decides
            policy = dataclasses.replace(policy, decode=return_decoder(inner))
        prefix: Any = self._key_prefix  # checked: a caller may pass anything
        if prefix is None:
            module = getattr(inner, "__module__", None)
            qualname = getattr(inner, "__qualname__", None)
            if not module or not qualname:
                raise ConfigurationError(
                    f"{inner!r} has no __module__ and __qualname__ to build keys from: "
                    "pass key_prefix",
                    field="key_prefix",
                )
            prefix = f"{module}.{qualname}"
        elif not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(
                f"key_prefix must be a non-empty str, got {prefix!r}", field="key_prefix"
            )
        exclude = frozenset(self._exclude) | _SKIPPED_NAMES
        unknown = sorted(name for name in self._exclude if not sig.has(name))
        if unknown:
            raise ConfigurationError(
                f"exclude names {unknown} of {sig.name}, which has no such parameter "
                f"(its signature is {sig.sig})",
                field="exclude",
            )
        tags = tuple(template_of(t, sig, what="tag") for t in self._tags)
        # A hashed key is prefix + ":" + 32 hex digits; let long prefixes still fit.
        max_length = min(MAX_KEY_LENGTH, max(200, len(prefix.encode()) + 1 + 32))
        keys = CacheKeyGenerator(prefix, max_length=max_length)
        key_builder = self._key_builder
        spec = _CachedSpec(
            manager=self._manager,
            engine=self._manager.load_engine,
            func=inner,
            kind=kind,
            is_async=is_async_function(inner),
            sig=sig,
            keys=keys,
            exclude=exclude,
            key_builder=key_builder,
            tags=tags,
            policy=policy,
            plan=KeyPlan.of(sig, exclude, keys) if key_builder is None else None,
        )
        return CachedFunction(spec)


def cached(
    manager: DecoratedCache,
    ttl: TTL | Callable[[Any], float | None] = USE_DEFAULT,
    key_prefix: str | None = None,
    tier: CacheTier = CacheTier.BOTH,
    *,
    exclude: str | Collection[str] = (),
    key_builder: Callable[..., str] | None = None,
    cache_none: bool = True,
    unless: Callable[[Any], bool] | None = None,
    condition: Callable[[Any], bool] | None = None,
    ttl_jitter: float = 0.0,
    stale_ttl: float | None = None,
    loader_timeout: float | None = None,
    lock: bool | None = None,
    tags: str | Collection[str] = (),
    value_type: Any = None,
    loader_hard_timeout: float | UseDefault | None = USE_DEFAULT,
    refresh_ahead: float | UseDefault | None = USE_DEFAULT,
    none_ttl: float | UseDefault | None = USE_DEFAULT,
) -> CachedDecorator:
    """Cache a function's results in ``manager``, keyed by its arguments.

    The decorated function (async or sync; plain, method, classmethod or staticmethod)
    becomes a `CachedFunction`: ``await f(...)`` returns the cached result or runs ``f``
    once per key (single-flight) through `CacheManager.get_or_set`. A sync function runs
    in a worker thread (``anyio.to_thread.run_sync``), so it never blocks the event loop,
    and the decorated function must be awaited. Results are stored in their JSON form and
    decoded with the function's return annotation (``typing.get_type_hints``: string
    annotations included), so a hit returns the declared type: Pydantic models,
    dataclasses, ``UUID``, ``datetime``, ``Decimal``, ``Enum``, ``tuple``, ``set``,
    ``bytes``, ``dict[int, ...]``, alone or nested (see ``docs/serialization.md``).
    ``ttl``, ``key_prefix`` and ``tier`` may be passed positionally (the seed's order).

    The key is ``<key_prefix>:<v1>:<v2>...``: the bound arguments in signature order with
    defaults applied, ``*args`` values in order, ``**kwargs`` sorted as ``name=value``,
    structured values as canonical JSON, hashed after the prefix when longer than 200
    bytes. Parameters named ``self`` and ``cls``, the names in ``exclude`` and instances of
    `AUTO_EXCLUDED_TYPES` are left out.

    Args:
        manager: the cache.
        ttl: seconds; ``None`` for no expiry; `USE_DEFAULT` for ``default_ttl``; or a
            callable of the result returning seconds or ``None``.
        key_prefix: first part of every key; ``module.qualname`` of the function by default.
        tier: where results are cached.
        exclude: parameter names left out of the key.
        key_builder: called with the call's arguments (``self`` or ``cls`` included),
            returns the whole key; replaces the generated key.
        cache_none: cache a ``None`` result (a cached ``None`` is a hit).
        unless: ``unless(result)`` True: the result is returned but not cached.
        condition: ``condition(result)`` False: the result is returned but not cached.
        ttl_jitter: spread each TTL by up to this fraction (``0.1``: ±10 %).
        stale_ttl: keep entries this long after ``ttl`` and serve them while refreshing.
        loader_timeout: with ``stale_ttl``, wait this long for a refresh before serving stale.
        lock: run the function at most once across instances (Redis lease lock);
            ``None`` follows ``CacheConfig.lock_by_default``.
        tags: tags of every entry (``"user:{user_id}"`` templates filled from the
            arguments), for `CacheManager.invalidate_tags`.
        value_type: the type hits decode to, instead of the return annotation (``Any``:
            no decoding).
        loader_hard_timeout: a caller waits at most this long for the function, then gets
            `LoaderTimeoutError` (the call goes on and fills the cache); `USE_DEFAULT`:
            ``CacheConfig.loader_hard_timeout``; ``None``: unbounded.
        refresh_ahead: a hit past this fraction of its TTL starts one background refresh;
            `USE_DEFAULT`: ``CacheConfig.refresh_ahead``; ``None``: off.
        none_ttl: the TTL of a cached ``None`` (`USE_DEFAULT`: ``ttl``).

    Raises:
        ConfigurationError: ``exclude`` names no parameter, ``key_prefix`` is empty, or
            pydantic cannot decode ``value_type``.
        InvalidKeyError: a tag template names no parameter.
        InvalidTTLError: ``ttl``, ``stale_ttl`` or ``loader_timeout`` is not positive, or
            ``ttl_jitter`` is not in [0, 1).
    """
    policy = LoadPolicy.of_call(
        manager.config,
        ttl=ttl,
        tier=tier,
        tags=(),
        lock=lock,
        stale_ttl=stale_ttl,
        loader_timeout=loader_timeout,
        cache_none=cache_none,
        should_cache=_should_cache(unless, condition),
        ttl_jitter=ttl_jitter,
        loader_hard_timeout=loader_hard_timeout,
        refresh_ahead=refresh_ahead,
        none_ttl=none_ttl,
        decode=None if value_type is None else value_decoder(value_type),
    )
    if key_builder is not None and not callable(key_builder):
        raise ConfigurationError("key_builder must be callable", field="key_builder")
    return CachedDecorator(
        manager,
        policy,
        key_prefix=key_prefix,
        exclude=_as_names(exclude, "exclude"),
        key_builder=key_builder,
        tags=_as_names(tags, "tags"),
        declared=value_type is not None,
    )


def _should_cache(
    unless: Callable[[Any], bool] | None, condition: Callable[[Any], bool] | None
) -> Callable[[Any], bool] | None:
    """Fold ``unless`` and ``condition`` into get_or_set's ``should_cache``."""
    if unless is None and condition is None:
        return None

    def should_cache(result: Any) -> bool:
        if unless is not None and unless(result):
            return False
        return condition is None or bool(condition(result))

    return should_cache


class InvalidatingFunction(Protocol[P, R]):
    """The type of a function wrapped by `cache_invalidate` (at run time, a function).

    ``P`` and ``R`` are the wrapped function's parameters and declared return type;
    ``await f(...)`` has the awaited result type for async and sync functions alike.
    """

    __wrapped__: Callable[..., Any]
    __name__: str
    __qualname__: str

    @overload
    async def __call__(
        self: InvalidatingFunction[P2, Awaitable[T]], *args: P2.args, **kwargs: P2.kwargs
    ) -> T: ...

    @overload
    async def __call__(
        self: InvalidatingFunction[P2, T], *args: P2.args, **kwargs: P2.kwargs
    ) -> T: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(
        self: InvalidatingFunction[Concatenate[T, P2], R],
        instance: T,
        owner: type[Any] | None = None,
    ) -> InvalidatingFunction[P2, R]: ...


@final
class CacheInvalidateDecorator:
    """What `cache_invalidate` returns: apply it to a function to add the invalidation."""

    def __init__(self, manager: DecoratedCache, patterns: tuple[str, ...]) -> None:
        self._manager = manager
        self._patterns = patterns

    def __call__(self, func: Callable[P, R]) -> InvalidatingFunction[P, R]:
        inner, kind = unwrap_descriptor(func)
        sig = Signature(inner)
        is_async = is_async_function(inner)
        templates = tuple(template_of(p, sig, what="pattern") for p in self._patterns)
        templated = any(t.static is None for t in templates)
        manager = self._manager

        @functools.wraps(inner)
        async def invalidating(*args: Any, **kwargs: Any) -> Any:
            # Fill the patterns before the call: an argument that cannot be encoded fails
            # before the function changes anything, and later mutations do not matter.
            values: Mapping[str, Any] = {}
            if templated:
                values = template_arguments(sig, sig.bind(args, kwargs))
            patterns = [t.render((), values) for t in templates]
            result = await run_function(inner, is_async, args, kwargs)
            # The change is made: finish invalidating even if the caller is cancelled now
            # (each Redis call is bounded by operation_timeout; a pattern clear makes one
            # SCAN round trip per 1000 keys of the keyspace).
            with anyio.CancelScope(shield=True):
                for pattern in patterns:
                    key = literal_of(pattern)
                    if key is not None:  # "user_profile:7": one key, no SCAN needed
                        await manager.delete(key, CacheTier.BOTH)
                    else:
                        await manager.clear_pattern(pattern, CacheTier.BOTH)
            return result

        wrapped: Any = invalidating
        if kind == "class":
            wrapped = classmethod(invalidating)
        elif kind == "static":
            wrapped = staticmethod(invalidating)
        return cast("InvalidatingFunction[P, R]", wrapped)


def cache_invalidate(manager: DecoratedCache, *patterns: str) -> CacheInvalidateDecorator:
    """Clear ``patterns`` on every tier and instance after the function returns.

    The decorated function (async or sync, which then runs in a worker thread) becomes
    awaitable and keeps its name, docstring and signature. When it raises, nothing is
    cleared. Each pattern is a Redis glob (``"user_profile:*"``) whose ``{param}``
    placeholders are filled from the call's arguments, encoded like key parts and
    glob-escaped, so an argument ``"*"`` clears only the literal key.

    Args:
        manager: the cache.
        patterns: one or more glob patterns, optionally templated.

    Raises:
        InvalidKeyError: no pattern, a placeholder names no parameter, or a pattern is
            not a valid glob (an unterminated ``[``).
    """
    if not patterns:
        raise InvalidKeyError("cache_invalidate needs at least one pattern")
    return CacheInvalidateDecorator(manager, patterns)
