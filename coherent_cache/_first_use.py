"""The manager's methods whose modules are imported on first use (issue 20: import time).

`CacheManager.cached`, ``cache_invalidate`` (``decorators``) and the warming methods
(``warming``) come from modules a plain get/set never needs. `FirstUseMethods`, a base
of `CacheManager`, holds each as an `OnFirstUse`: the first access, on the class or an
instance, imports the module, puts the real attribute on the class in its place and
returns it bound; every later access finds the real attribute, with nothing in between.
Type checkers see the real attributes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from . import decorators
    from .warming import CacheWarmer, WarmerMethod

__all__ = ["FirstUseMethods", "OnFirstUse"]


@final
class OnFirstUse:
    """A class attribute made by ``make(module)`` when first used, ``module`` being
    ``coherent_cache.<module>`` imported then; it then replaces itself on the class."""

    __slots__ = ("make", "module", "name")

    def __init__(self, module: str, make: Callable[[ModuleType], Any]) -> None:
        self.module = module
        self.make = make
        self.name = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
        cls = owner if owner is not None else type(instance)
        value = self.make(importlib.import_module(f"coherent_cache.{self.module}"))
        for klass in cls.__mro__:  # where this descriptor sits (a base of cls)
            if klass.__dict__.get(self.name) is self:
                setattr(klass, self.name, value)
        get = getattr(type(value), "__get__", None)
        return value if get is None else get(value, instance, cls)


def _warmer_method(name: str) -> OnFirstUse:
    return OnFirstUse("warming", lambda m: m.WarmerMethod(getattr(m.CacheWarmer, name)))


class FirstUseMethods:
    """`CacheManager`'s decorators and warming methods (documented there)."""

    if TYPE_CHECKING:
        cached = decorators.cached
        cache_invalidate = decorators.cache_invalidate
        warm_cache = WarmerMethod(CacheWarmer.warm_cache)
        warm_in_background = WarmerMethod(CacheWarmer.warm_in_background)
        schedule_warming = WarmerMethod(CacheWarmer.schedule_warming)
        warm_when = WarmerMethod(CacheWarmer.warm_when)
    else:
        cached = OnFirstUse("decorators", lambda m: m.cached)
        cache_invalidate = OnFirstUse("decorators", lambda m: m.cache_invalidate)
        warm_cache = _warmer_method("warm_cache")
        warm_in_background = _warmer_method("warm_in_background")
        schedule_warming = _warmer_method("schedule_warming")
        warm_when = _warmer_method("warm_when")
