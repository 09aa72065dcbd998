"""Fault-suite fixtures: fast-recovering configs, worker processes under load, the checker.

Every test here is marked ``faults`` (run them alone with ``pytest -m faults``).
``COHERENT_CACHE_TEST_DISABLE`` (see `tests.faults.disable`) switches a mechanism off in this
process and in the worker processes, to show that the tests notice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import orjson
import pytest

from coherent_cache.testing import RedisServer, ServerNotFoundError

from ..support.multiproc import Worker
from .checker import Report, check
from .disable import apply_from_env

DISABLED: Final = apply_from_env()

OPERATION_TIMEOUT: Final = 0.25
MAX_STALE: Final = 1.0
HEALTH_CHECK: Final = 0.25
SLACK: Final = 1.5
"""Extra seconds allowed on a loaded 2-core machine (scheduling, process wake-ups)."""
REMOTE_BOUND: Final = MAX_STALE + HEALTH_CHECK + 2 * OPERATION_TIMEOUT + SLACK
"""How long after an invalidation returned another instance may still serve the old
value when the bus was lost: max_stale_on_bus_loss, plus the time to notice a silent
subscriber (health check + PING deadline), plus a fill in flight, plus slack."""
OWN_BOUND: Final = 0.0
"""Own invalidations are synchronous: once one returned, this instance never serves the
value it replaced (guarantee 1 and the fill-race guard)."""


def pytest_report_header() -> str | None:
    """Say loudly when a mechanism is switched off."""
    if DISABLED:
        return f"fault suite: mechanisms DISABLED for a teeth check: {', '.join(DISABLED)}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/faults is a fault test."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def fault_fields(url: str, namespace: str, **overrides: Any) -> dict[str, Any]:
    """CacheConfig fields that detect faults and recover fast."""
    fields: dict[str, Any] = {
        "redis_url": url,
        "namespace": namespace,
        "operation_timeout": OPERATION_TIMEOUT,
        "connect_timeout": 0.5,
        "circuit_breaker_cooldown": 0.5,
        "reconnect_backoff_max": 0.25,
        "max_stale_on_bus_loss": MAX_STALE,
        "bus_health_check_interval": HEALTH_CHECK,
        "memory_cache_ttl": 60,
    }
    fields.update(overrides)
    return fields


def start_server(*extra_args: str) -> RedisServer:
    """A private server with extra options; fails (never skips) without a binary."""
    try:
        return RedisServer(extra_args=extra_args).start()
    except ServerNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@contextlib.contextmanager
def server(*extra_args: str) -> Iterator[RedisServer]:
    """`start_server` as a context manager that closes the server."""
    started = start_server(*extra_args)
    try:
        yield started
    finally:
        started.close()


@dataclass
class LoadRun:
    """The outcome of a load on several workers."""

    results: list[dict[str, Any]]
    ops: list[dict[str, Any]]
    started: float

    @property
    def errors(self) -> list[str]:
        """Exceptions that reached a caller, in any worker."""
        return [e for r in self.results for e in r["errors"]]

    @property
    def total(self) -> int:
        """Operations completed in all workers."""
        return sum(r["ops"] for r in self.results)

    def check(
        self, *, own: float = OWN_BOUND, remote: float = REMOTE_BOUND, tags_certain: bool = True
    ) -> Report:
        """The stale-read check of `tests.faults.checker`."""
        return check(self.ops, own_bound=own, remote_bound=remote, tags_certain=tags_certain)

    def l2_back(self, proc: int, moment: float) -> float | None:
        """Seconds from ``moment`` until ``proc`` completed a write that surely reached
        Redis (no L2 failure counted meanwhile): when L2 was in use again."""
        ends = [
            op["e"]
            for op in self.ops
            if op["p"] == proc and op["s"] >= moment and not op["u"]
            and op["op"] in ("set", "delete") and op.get("ok", True)
        ]  # fmt: skip
        return max(0.0, min(ends) - moment) if ends else None

    def since(self, moment: float) -> list[dict[str, Any]]:
        """Operations that started at or after ``moment`` (time.monotonic)."""
        return [op for op in self.ops if op["s"] >= moment]


@contextlib.asynccontextmanager
async def workers(
    count: int, url: str | list[str], namespace: str, **overrides: Any
) -> AsyncIterator[list[Worker]]:
    """``count`` cache instances in separate processes, all started.

    ``url`` may be a list: one URL per instance (some through a proxy, some direct).
    """
    urls = url if isinstance(url, list) else [url] * count
    async with contextlib.AsyncExitStack() as stack:
        made = []
        for proc in range(count):
            fields = fault_fields(urls[proc], namespace, origin_prefix=f"w{proc}", **overrides)
            made.append(await stack.enter_async_context(Worker(timeout=60, **fields)))
        yield made


async def run_loads(
    procs: list[Worker], tmp_path: Path, *, duration: float, tasks: int = 8, **args: Any
) -> LoadRun:
    """Run `tests.faults.load` in every worker at once; collect results and logs."""
    results: list[dict[str, Any]] = [{} for _ in procs]
    started = time.monotonic()

    async def one(index: int, worker: Worker) -> None:
        load_args = {"proc": index, "duration": duration, "tasks": tasks, "seed": index, **args}
        results[index] = await worker.call(
            "run_load", args=load_args, log_path=str(tmp_path / f"load-{index}.jsonl")
        )

    async with anyio.create_task_group() as tg:
        for index, worker in enumerate(procs):
            tg.start_soon(one, index, worker)
    ops = [
        orjson.loads(line)
        for index in range(len(procs))
        for line in (tmp_path / f"load-{index}.jsonl").read_bytes().splitlines()
    ]
    return LoadRun(results, ops, started)


def assert_sound(
    run: LoadRun,
    *,
    own: float = OWN_BOUND,
    remote: float = REMOTE_BOUND,
    tags_certain: bool = True,
) -> Report:
    """No exception reached a caller, every answer was a written value, the bound held."""
    report = run.check(own=own, remote=remote, tags_certain=tags_certain)
    detail = f"{run.total} ops; {report.summary()}"
    print(detail)
    assert [] == run.errors, detail
    assert [] == report.violations, detail
    assert run.total > 0
    return report


RECOVERY_LOG_ENV: Final = "COHERENT_CACHE_RECOVERY_LOG"
"""When set, measured recovery times are appended there as JSON lines (docs/reliability.md)."""


def record_recovery(fault: str, **seconds: float | str | None) -> None:
    """Print a measured recovery time and, if asked, append it to the recovery log."""
    import os

    line = {"fault": fault, **seconds}
    print(f"recovery: {line}")
    path = os.environ.get(RECOVERY_LOG_ENV)
    if path:
        with open(path, "ab") as out:
            out.write(orjson.dumps(line) + b"\n")
