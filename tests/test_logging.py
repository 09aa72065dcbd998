"""Logs that fit the host app: stdlib `logging` unless the app configured structlog.

Each case runs `tests.support.log_app` in a process of its own, so the logging and
structlog setup is the application's alone (pytest's process has structlog configured
by other tests' ``capture_logs``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from coherent_cache._log import get_logger

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(90)


@dataclass
class AppRun:
    """What one run of the application produced."""

    stdout: str
    stderr: str
    origin: str
    namespace: str
    records: list[dict[str, Any]]
    structlog: list[dict[str, Any]]
    path: Path

    @property
    def ours(self) -> list[dict[str, Any]]:
        """The stdlib records of the library (asyncio logs a DEBUG line of its own)."""
        return [r for r in self.records if r["name"].startswith("coherent_cache")]

    def record(self, msg: str) -> dict[str, Any]:
        """The one record of the library with message ``msg``."""
        found = [r for r in self.ours if r["msg"] == msg]
        assert len(found) == 1, (msg, self.records)
        return found[0]


MODES = ("stdlib", "none", "structlog", "structlog-late")


@pytest.fixture(scope="module")
def runs(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, AppRun]:
    """One run of the application per mode, all started at once (each takes about a
    second, mostly imports)."""
    tmp = tmp_path_factory.mktemp("log_app")
    started: dict[str, tuple[subprocess.Popen[str], str, Path]] = {}
    done: dict[str, AppRun] = {}
    try:
        for mode in MODES:
            namespace = f"log{uuid.uuid4().hex[:10]}"
            result = tmp / f"{mode}.json"
            argv = [sys.executable, "-m", "tests.support.log_app", mode, redis_url, namespace]
            started[mode] = (
                subprocess.Popen(
                    [*argv, str(result)],
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
                namespace,
                result,
            )
        for mode, (process, namespace, result) in started.items():
            stdout, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stdout + stderr
            data = orjson.loads(result.read_bytes())
            done[mode] = AppRun(
                stdout,
                stderr,
                data["origin"],
                namespace,
                data["records"],
                data["structlog"],
                result,
            )
    finally:
        for process, _, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return done


def test_stdlib_app_sees_warnings_through_its_handler_and_nothing_on_stdout(
    runs: dict[str, AppRun],
) -> None:
    """``logging.basicConfig(level=WARNING)``, no structlog: the warnings reach the app's
    handler with their fields, the INFO events are filtered by its level, and nothing is
    printed by the library."""
    app = runs["stdlib"]
    assert app.stdout == ""
    assert app.stderr == ""
    assert app.structlog == []
    rejected = app.record("l2_payload_rejected")
    assert rejected["levelname"] == "WARNING"
    assert rejected["name"] == "coherent_cache"
    assert rejected["message"] == "l2_payload_rejected"
    fields = rejected["fields"]
    assert fields["namespace"] == app.namespace
    assert fields["origin"] == app.origin
    assert fields["key_prefix"] == "user"
    assert isinstance(fields["reason"], str) and fields["reason"]
    # The record names the library's code that logged, not the logging shim.
    assert (rejected["module"], rejected["funcName"]) == ("l2", "_decode_entry")
    assert {r["levelname"] for r in app.records} <= {"WARNING", "ERROR"}, app.records
    assert not {"cache_started", "cache_stopped", "probe_info"} & {r["msg"] for r in app.records}


def test_fields_never_clobber_reserved_record_attributes(runs: dict[str, AppRun]) -> None:
    """Fields named like `LogRecord` attributes stay fields; ``exception`` keeps exc_info."""
    app = runs["stdlib"]
    probe = app.record("probe")
    assert (probe["name"], probe["message"]) == ("coherent_cache", "probe")
    assert probe["fields"]["name"] == "field-name"
    assert probe["fields"]["msg"] == "field-msg"
    assert probe["fields"]["args"] == 1
    failed = app.record("probe_failed")
    assert failed["levelname"] == "ERROR"
    assert failed["exc"] == "ValueError('boom')"
    assert failed["fields"]["step"] == 2


def test_json_formatter_puts_fields_under_cache_fields(runs: dict[str, AppRun]) -> None:
    """The docs' python-json-logger setup: one JSON object per event, the message is the
    event name, the key-values are under ``cache_fields``."""
    app = runs["stdlib"]
    lines = [orjson.loads(line) for line in app.path.with_suffix(".jsonl").read_text().splitlines()]
    rejected = next(line for line in lines if line["message"] == "l2_payload_rejected")
    assert rejected["levelname"] == "WARNING"
    assert rejected["name"] == "coherent_cache"
    assert rejected["cache_fields"]["namespace"] == app.namespace
    assert rejected["cache_fields"]["origin"] == app.origin
    assert rejected["cache_fields"]["key_prefix"] == "user"
    assert "cache_started" not in {line["message"] for line in lines}


def test_unconfigured_app_gets_warnings_on_stderr_only(runs: dict[str, AppRun]) -> None:
    """No logging setup at all: stdlib's last resort prints WARNING and up to stderr;
    INFO events are dropped and stdout stays clean."""
    app = runs["none"]
    assert app.stdout == ""
    assert "l2_payload_rejected" in app.stderr
    assert "cache_started" not in app.stderr
    assert "probe_info" not in app.stderr


def test_app_that_configured_structlog_gets_structlog(runs: dict[str, AppRun]) -> None:
    """structlog configured before import: every event goes through it, with the
    manager's bound context, and none through stdlib."""
    app = runs["structlog"]
    assert app.stdout == ""
    assert app.ours == []
    events = {e["event"]: e for e in app.structlog}
    assert {"cache_started", "l2_payload_rejected", "probe_info", "cache_stopped"} <= set(events)
    rejected = events["l2_payload_rejected"]
    assert rejected["method"] == "warning"
    assert rejected["namespace"] == app.namespace
    assert rejected["origin"] == app.origin
    assert rejected["key_prefix"] == "user"
    assert events["probe_failed"]["method"] == "error"  # structlog's own exception()
    assert events["probe_failed"]["exc_info"] is True
    assert events["cache_stopped"]["origin"] == app.origin


def test_structlog_configured_after_import_wins(runs: dict[str, AppRun]) -> None:
    """The choice is made per event: events before ``structlog.configure()`` went to
    stdlib, those after it go to structlog, bound context included."""
    app = runs["structlog-late"]
    assert app.stdout == ""
    before = {r["msg"]: r for r in app.ours}
    started = before["cache_started"]  # INFO passes the app's INFO level
    assert started["levelname"] == "INFO"
    assert started["fields"]["origin"] == app.origin
    assert started["fields"]["connected"] is True
    events = {e["event"]: e for e in app.structlog}
    assert {"l2_payload_rejected", "probe_info", "cache_stopped"} <= set(events)
    assert not set(before) & set(events), (before, events)
    assert events["l2_payload_rejected"]["namespace"] == app.namespace


def test_bind_adds_context_in_the_structlog_path() -> None:
    """``bind`` returns a logger with the context added; the original keeps its own."""
    base = get_logger(namespace="n")
    bound = base.bind(request="r1", namespace="n2")
    with structlog.testing.capture_logs() as logs:
        bound.warning("first", k=1)
        base.info("second")
    assert logs == [
        {"namespace": "n2", "request": "r1", "k": 1, "event": "first", "log_level": "warning"},
        {"namespace": "n", "event": "second", "log_level": "info"},
    ]
