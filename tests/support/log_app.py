"""A small application, in a process of its own, that sets up logging its way and runs a
cache: ``python -m tests.support.log_app MODE REDIS_URL NAMESPACE RESULT_PATH``.

Modes (how the application sets up logging before, or while, it runs the cache):

- ``stdlib``: ``logging.basicConfig(level=WARNING)`` with handlers of its own: one
  keeping the records, one with python-json-logger's formatter writing to a file
  (docs/observability.md, Logs);
- ``none``: no logging set up at all;
- ``structlog``: ``structlog.configure()`` before importing coherent_cache, plus a
  stdlib handler at DEBUG that must stay empty;
- ``structlog-late``: stdlib at INFO, then ``structlog.configure()`` once the cache runs.

The cache starts, logs some INFO events (``cache_started``, ``cache_stopped``), and
reads a corrupt payload from L2, a warning (``l2_payload_rejected``). What each channel
received is written as JSON to RESULT_PATH; the test checks it and the process's
stdout and stderr.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson

RECORD_KEYS = ("levelname", "name", "msg", "funcName", "module")


class Collector(logging.Handler):
    """The application's own handler: keeps what it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        entry = {key: getattr(record, key) for key in RECORD_KEYS}
        entry["message"] = record.getMessage()
        entry["fields"] = getattr(record, "cache_fields", None)
        entry["exc"] = None if record.exc_info is None else repr(record.exc_info[1])
        self.records.append(entry)


def configure_structlog(events: list[dict[str, Any]]) -> None:
    """The application's structlog setup: keep every event dict, print nothing."""
    import structlog

    def keep(_logger: Any, method: str, event_dict: Any) -> Any:
        events.append({**event_dict, "method": method})
        raise structlog.DropEvent

    structlog.configure(processors=[keep])


async def run_cache(url: str, namespace: str, on_started: Any = None) -> str:
    """Start a cache, read a corrupt L2 payload, log through ``cache.log``, stop it."""
    from redis.asyncio import Redis

    from coherent_cache import CacheConfig, CacheManager
    from coherent_cache.keys import redis_key

    raw = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    cache = CacheManager(CacheConfig(redis_url=url, namespace=namespace))
    try:
        with anyio.fail_after(20):
            await cache.start()
            if on_started is not None:
                on_started()
            await raw.set(redis_key(namespace, "user:1"), b"not a cache payload")
            assert await cache.get("user:1") is None
            # Reserved LogRecord attribute names as fields must not clobber the record.
            cache.log.warning("probe", name="field-name", msg="field-msg", args=1, count=3)
            try:
                raise ValueError("boom")
            except ValueError:
                cache.log.exception("probe_failed", step=2)
            cache.log.info("probe_info", n=1)
            await cache.stop()
    finally:
        await raw.delete(redis_key(namespace, "user:1"))
        await raw.aclose()
    return cache.origin


def main(mode: str, url: str, namespace: str, result_path: str) -> None:
    result: dict[str, Any] = {"mode": mode}
    collector = Collector()
    events: list[dict[str, Any]] = []
    on_started = None
    if mode == "stdlib":
        from pythonjsonlogger.json import JsonFormatter

        json_path = Path(result_path).with_suffix(".jsonl")
        handler = logging.FileHandler(json_path, encoding="utf-8")
        handler.setFormatter(JsonFormatter("%(levelname)s %(name)s %(message)s"))
        logging.basicConfig(level=logging.WARNING, handlers=[collector, handler])
    elif mode == "structlog":
        configure_structlog(events)
        logging.basicConfig(level=logging.DEBUG, handlers=[collector])
    elif mode == "structlog-late":
        logging.basicConfig(level=logging.INFO, handlers=[collector])
        on_started = lambda: configure_structlog(events)  # noqa: E731
    elif mode != "none":
        raise SystemExit(f"unknown mode {mode!r}")
    result["origin"] = anyio.run(run_cache, url, namespace, on_started)
    result["records"] = collector.records
    result["structlog"] = [
        {k: v if isinstance(v, str | int | float | bool | None) else repr(v) for k, v in e.items()}
        for e in events
    ]
    Path(result_path).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
