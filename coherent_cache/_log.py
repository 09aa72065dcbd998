"""The library's logger: structlog when the application configured it, stdlib otherwise.

Every event is sent at the moment it is logged to one of two places:

- **structlog**, when the application configured it (``structlog.is_configured()``):
  exactly as ``structlog.get_logger("coherent_cache", **bound)`` would, so the bound
  context (a manager's ``namespace`` and ``origin``) and the application's processors
  apply. It is checked per event, so configuring structlog after importing the library
  works.
- **the standard** `logging` **logger** ``coherent_cache`` otherwise: the event name is
  the message, the key-values (bound context included) are one dict on the record's
  `FIELDS_ATTR` attribute (never a reserved `logging.LogRecord` attribute), the levels map
  one to one and ``exc_info`` is passed on. The application's levels, handlers and format
  apply; without any handler, stdlib's last resort prints WARNING and up to stderr.

structlog is never imported here: an application that configured it has imported it,
so one ``sys.modules`` lookup decides. The library configures neither.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, final

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ("FIELDS_ATTR", "LOGGER_NAME", "CacheLogger", "Logger", "get_logger")

LOGGER_NAME: Final = "coherent_cache"
"""The name of the library's logger, in structlog and in `logging` alike."""
FIELDS_ATTR: Final = "cache_fields"
"""The `logging.LogRecord` attribute holding an event's key-values (a dict)."""
_STACKLEVEL: Final = 3
"""Frames from `logging.Logger.log` up to the library's call site (``_emit``, the level
method, its caller), so a record's ``funcName`` and ``lineno`` name the code that logged."""


class Logger(Protocol):
    """What the library's classes log through: a `CacheLogger` or a structlog logger."""

    def debug(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def info(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def warning(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def error(self, event: str, *args: Any, **kw: Any) -> Any: ...
    def exception(self, event: str, *args: Any, **kw: Any) -> Any: ...


@final
class CacheLogger:
    """A logger with bound context that picks structlog or `logging` per event.

    The methods take an event name and key-values, like a structlog
    ``FilteringBoundLogger``; positional ``args`` %-format the event in both paths.
    """

    __slots__ = ("_proxy", "_stdlib", "context", "name")

    def __init__(self, name: str = LOGGER_NAME, context: Mapping[str, Any] | None = None) -> None:
        self.name = name
        """The logger's name (the stdlib logger's, and the structlog logger factory's argument)."""
        self.context: dict[str, Any] = dict(context) if context else {}
        """The bound key-values, added to every event."""
        self._stdlib = logging.getLogger(name)
        self._proxy: FilteringBoundLogger | None = None

    def __repr__(self) -> str:
        return f"CacheLogger({self.name!r}, {self.context!r})"

    def bind(self, **values: Any) -> CacheLogger:
        """A logger of the same name with ``values`` added to the bound context."""
        return CacheLogger(self.name, {**self.context, **values})

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at DEBUG."""
        self._emit(logging.DEBUG, "debug", event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at INFO."""
        self._emit(logging.INFO, "info", event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at WARNING."""
        self._emit(logging.WARNING, "warning", event, args, kw)

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at ERROR."""
        self._emit(logging.ERROR, "error", event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at ERROR with the exception being handled (``exc_info=True``)."""
        kw.setdefault("exc_info", True)
        self._emit(logging.ERROR, "exception", event, args, kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> None:
        """Log ``event`` at CRITICAL."""
        self._emit(logging.CRITICAL, "critical", event, args, kw)

    def _emit(
        self, level: int, method: str, event: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> None:
        structlog = sys.modules.get("structlog")
        if structlog is not None and structlog.is_configured():
            proxy = self._proxy
            if proxy is None:
                # A lazy proxy: it follows later structlog.configure() calls, as before.
                proxy = self._proxy = structlog.get_logger(self.name, **self.context)
            getattr(proxy, method)(event, *args, **kw)
            return
        stdlib = self._stdlib
        if not stdlib.isEnabledFor(level):
            return
        exc_info = kw.pop("exc_info", None)
        stack_info = bool(kw.pop("stack_info", False))
        fields = {**self.context, **kw} if self.context else kw
        stdlib.log(
            level,
            event,
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=_STACKLEVEL,
            extra={FIELDS_ATTR: fields},
        )


def get_logger(name: str = LOGGER_NAME, **context: Any) -> CacheLogger:
    """The library's logger ``name`` with ``context`` bound (see the module's docstring)."""
    return CacheLogger(name, context)
