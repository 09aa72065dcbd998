"""The fleet view: reports in Redis, `CacheManager.fleet`, ``coherent-cache fleet`` and
``GET /cache/fleet``, with instances in separate OS processes on a real server."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import orjson
import pytest
import structlog
from fastapi import FastAPI
from redis.asyncio import Redis

from coherent_cache import CacheConfig, CacheManager, ConfigurationError
from coherent_cache.cli import CLEAR_SCREEN, FLEET_COLUMNS
from coherent_cache.fleet import EXPIRY_INTERVALS, fleet_key
from coherent_cache.integrations.fastapi import cache_lifespan, cache_router
from coherent_cache.testing import RedisServer
from tests.conftest import ManagerFactory, eventually
from tests.support.multiproc import Worker
from tests.test_cli import CLI, ROOT, cli_env, run_cli

INTERVAL = 0.3
"""A short report interval: a killed instance's report expires in about 1.4 s."""
PASSWORD = "fleet-pw-Zq8xT3"


async def origins(cache: CacheManager) -> list[str]:
    return [report["origin"] for report in await cache.fleet()]


@pytest.fixture
async def workers(redis_url: str, namespace: str) -> AsyncIterator[list[Worker]]:
    """Three instances, each in its own process, reporting every `INTERVAL` seconds."""
    async with three_workers(redis_url, namespace) as made:
        yield made


@asynccontextmanager
async def three_workers(url: str, namespace: str) -> AsyncIterator[list[Worker]]:
    """Three worker processes on ``url``, started and stopped concurrently."""
    made = [
        Worker(redis_url=url, namespace=namespace, fleet_report_interval=INTERVAL) for _ in range(3)
    ]
    entered: list[Worker] = []

    async def enter(worker: Worker) -> None:
        await worker.__aenter__()
        entered.append(worker)

    try:
        async with anyio.create_task_group() as tg:
            for worker in made:
                tg.start_soon(enter, worker)
        yield made
    finally:
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for worker in entered:
                    tg.start_soon(worker.__aexit__, None, None, None)


@pytest.fixture
def auth_server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=("--requirepass", PASSWORD)) as server:
        yield server


class TestReports:
    async def test_three_processes_listed_unhealthy_first(
        self, workers: list[Worker], make_manager: ManagerFactory, namespace: str
    ) -> None:
        """fleet() lists every live instance of the namespace once, each with its origin,
        pid and health; a degraded instance comes first."""
        here = await make_manager(fleet_report_interval=INTERVAL)
        expected = sorted([w.origin for w in workers] + [here.origin])
        await eventually(lambda: _sorted(origins(here)), expect=expected)
        by_origin = {r["origin"]: r for r in await here.fleet()}
        assert {w.pid for w in workers} | {os.getpid()} == {r["pid"] for r in by_origin.values()}
        for report in by_origin.values():
            assert (namespace, "healthy", []) == (
                report["namespace"],
                report["status"],
                report["reasons"],
            )
            assert report["l2"] is not None and report["l2"]["connected"]
            assert report["bus"]["connected"] and report["bus"]["enabled"]
        # The same list from another process.
        assert expected == sorted(r["origin"] for r in await workers[0].call("fleet"))

        assert here.bus is not None
        here.bus.connected = False  # as after a bus loss: health() says degraded
        await eventually(
            lambda: _first(here), expect=(here.origin, "degraded"), within=5 * INTERVAL + 2
        )
        reasons = (await here.fleet())[0]["reasons"]
        assert 1 == len(reasons) and reasons[0].startswith("invalidation bus disconnected")

    async def test_a_clean_stop_removes_the_report_at_once(
        self, redis_url: str, namespace: str, make_manager: ManagerFactory
    ) -> None:
        """An instance that stops cleanly is gone from the next fleet() call, long before
        its report would expire (interval 30 s: expiry after 90 s)."""
        here = await make_manager(fleet_report_interval=30)
        async with Worker(redis_url=redis_url, namespace=namespace, fleet_report_interval=30) as w:
            leaving = w.origin
            await eventually(lambda: _sorted(origins(here)), expect=sorted([here.origin, leaving]))
        assert [here.origin] == await origins(here)  # no wait: removed by the stop

    async def test_a_killed_process_expires_within_a_few_intervals(
        self, workers: list[Worker], make_manager: ManagerFactory
    ) -> None:
        """SIGKILL leaves the report behind; it drops out of fleet() once it is
        `EXPIRY_INTERVALS` intervals (plus operation_timeout) old."""
        here = await make_manager(fleet_report_interval=INTERVAL)
        everyone = sorted([w.origin for w in workers] + [here.origin])
        await eventually(lambda: _sorted(origins(here)), expect=everyone)
        victim = workers[1]
        await victim.kill()
        assert victim.origin in await origins(here)  # nobody removed it
        within = EXPIRY_INTERVALS * INTERVAL + here.config.operation_timeout + 2
        rest = sorted(o for o in everyone if o != victim.origin)
        await eventually(lambda: _sorted(origins(here)), expect=rest, within=within)

    async def test_the_hash_expires_by_itself_and_reads_drop_dead_fields(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """The fleet hash carries a TTL of one report's life (so it vanishes when every
        instance is gone); a field past its deadline is not listed and a read deletes it."""
        here = await make_manager(fleet_report_interval=INTERVAL)
        await eventually(lambda: origins(here), expect=[here.origin])
        key = fleet_key(namespace)
        life_ms = (EXPIRY_INTERVALS * INTERVAL + here.config.operation_timeout) * 1000
        assert 0 < await raw_redis.pttl(key) <= life_ms
        await raw_redis.hset(key, "ghost", b'1 {"origin": "ghost", "namespace": "x"}')
        assert [here.origin] == await origins(here)
        assert not await raw_redis.hexists(key, "ghost")

    async def test_other_namespaces_are_not_listed(
        self, make_manager: ManagerFactory, namespace: str
    ) -> None:
        """Each namespace sees its own instances only."""
        mine = await make_manager(fleet_report_interval=INTERVAL)
        other = await make_manager(namespace=namespace + "-other", fleet_report_interval=INTERVAL)
        await eventually(lambda: origins(other), expect=[other.origin])
        await eventually(lambda: origins(mine), expect=[mine.origin])

    async def test_no_key_names_and_no_password_in_a_report(
        self, auth_server: RedisServer, namespace: str
    ) -> None:
        """The stored report holds neither the password of the Redis URL nor a key the
        instance used, also when a background task failed with the key in its error."""
        url = f"redis://:{PASSWORD}@127.0.0.1:{auth_server.port}/0"
        config = CacheConfig(redis_url=url, namespace=namespace, fleet_report_interval=INTERVAL)
        admin = Redis.from_url(url, socket_timeout=5)
        try:
            async with CacheManager(config) as cache:
                await cache.set("user:secret-id-42", {"n": 1})
                assert cache.supervisor is not None
                cache.supervisor.tasks["probe"] = {
                    "state": "failed",
                    "restarts": 21,
                    "last_error": f"KeyError: 'user:secret-id-42' at {url}",
                }
                await eventually(
                    lambda: _first(cache), expect=(cache.origin, "unhealthy"), within=5
                )
                raw = repr(await admin.hgetall(fleet_key(namespace))).encode()
                assert ["background task probe failed: KeyError"] == (await cache.fleet())[0][
                    "reasons"
                ]
                assert PASSWORD.encode() not in raw
                assert b"secret-id-42" not in raw
                assert cache.origin.encode() in raw
                del cache.supervisor.tasks["probe"]
        finally:
            await admin.aclose()

    async def test_redis_down_is_retried_and_counted(
        self, private_server: RedisServer, namespace: str
    ) -> None:
        """While Redis is down the reporter keeps trying (logged once as
        ``fleet_report_failed``); once it is back the report returns, counting the failed
        attempts, and cache operations never raised."""
        config = CacheConfig(
            redis_url=private_server.url,
            namespace=namespace,
            fleet_report_interval=0.1,
            operation_timeout=0.2,
            connect_timeout=0.2,
        )
        with structlog.testing.capture_logs() as logs:
            async with CacheManager(config) as cache:
                await eventually(lambda: origins(cache), expect=[cache.origin])
                private_server.stop()
                await eventually(
                    lambda: sum(e["event"] == "fleet_report_failed" for e in logs) >= 1
                )
                await cache.set("k", 1)  # never raises
                await anyio.sleep(0.5)  # several failed attempts (backoff from 0.1 s)
                private_server.restart()

                async def failures() -> int:
                    try:
                        reports = await cache.fleet()
                    except Exception:
                        return 0
                    return reports[0]["report_failures"] if reports else 0

                await eventually(failures, within=10)
        failed = [e for e in logs if e["event"] == "fleet_report_failed"]
        assert 1 == len(failed), failed  # once per outage, not per attempt
        assert any(e["event"] == "fleet_report_recovered" for e in logs)

    async def test_interval_zero_turns_reporting_off(
        self, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """COHERENT_CACHE_FLEET_REPORT_INTERVAL=0: no reporter task, nothing listed; a
        negative interval is a configuration error."""
        monkeypatch.setenv("COHERENT_CACHE_FLEET_REPORT_INTERVAL", "0")
        assert 0 == CacheConfig.from_env().fleet_report_interval
        quiet = await make_manager(fleet_report_interval=0)
        assert "fleet_reporter" not in quiet.stats()["tasks"]
        assert [] == await quiet.fleet()
        monkeypatch.setenv("COHERENT_CACHE_FLEET_REPORT_INTERVAL", "-1")
        with pytest.raises(ConfigurationError):
            CacheConfig.from_env()


class TestCli:
    async def test_table_and_json_never_print_the_password(
        self, auth_server: RedisServer, namespace: str
    ) -> None:
        """Three instances in their own processes, on a server with a password in the URL:
        the table has a header and one row per instance starting with its status and
        origin; --json prints the same instances as a list of reports; neither output
        quotes the password (nor does the error of a wrong one)."""
        url = f"redis://:{PASSWORD}@127.0.0.1:{auth_server.port}/0"
        async with three_workers(url, namespace) as workers:
            expected = sorted(w.origin for w in workers)
            await eventually(lambda: _sorted(_worker_origins(workers[0])), expect=expected)
            args = ("fleet", "--redis-url", url, "--namespace", namespace)
            as_json = await run_cli(*args, "--json")
            table = await run_cli(*args)
        for done in (as_json, table):
            assert 0 == done.returncode, done.stderr
            assert PASSWORD not in done.stdout + done.stderr
        assert expected == sorted(report["origin"] for report in orjson.loads(as_json.stdout))
        lines = table.stdout.splitlines()
        shown = f"redis://:***@127.0.0.1:{auth_server.port}/0"
        assert f"3 instances of namespace '{namespace}' at {shown} (0 not healthy)" == lines[0]
        assert lines[1].split()[:2] == list(FLEET_COLUMNS[:2])
        rows = sorted(line.split()[:2] for line in lines[2:])
        assert [["healthy", origin] for origin in expected] == rows

        wrong = f"redis://:{PASSWORD}-wrong@127.0.0.1:{auth_server.port}/0"
        done = await run_cli("fleet", "--redis-url", wrong, "--namespace", namespace)
        assert 1 == done.returncode
        assert PASSWORD not in done.stdout + done.stderr
        assert "reading the fleet at" in done.stderr and "Traceback" not in done.stderr

    async def test_watch_refreshes_in_place_and_ends_cleanly(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str
    ) -> None:
        """--watch --count 2 redraws twice (clearing the screen) and exits 0; an open-ended
        --watch ends with exit 0 and no traceback on Ctrl-C (SIGINT)."""
        await make_manager(fleet_report_interval=INTERVAL)
        args = ["fleet", "--redis-url", redis_url, "--namespace", namespace, "--watch"]
        done = await run_cli(*args, "--interval", "0.1", "--count", "2")
        assert 0 == done.returncode, done.stderr
        assert 2 == done.stdout.count(CLEAR_SCREEN)

        process = await anyio.open_process([*CLI, *args], cwd=ROOT, env=cli_env())
        try:
            assert process.stdout is not None
            with anyio.fail_after(20):
                first = await process.stdout.receive()  # the first screen is drawn
                assert CLEAR_SCREEN.encode() in first
                process.send_signal(signal.SIGINT)
                assert 0 == await process.wait()
            assert process.stderr is not None
            assert b"Traceback" not in await _drain(process.stderr)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


class TestEndpoint:
    async def test_get_cache_fleet(
        self, workers: list[Worker], redis_url: str, namespace: str
    ) -> None:
        """GET /cache/fleet answers the JSON array of the live reports: the app's own
        instance and the three other processes."""
        config = CacheConfig(
            redis_url=redis_url, namespace=namespace, fleet_report_interval=INTERVAL
        )
        app = FastAPI(lifespan=cache_lifespan(config))
        app.include_router(cache_router())
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http,
        ):
            cache: CacheManager = app.state.cache
            expected = sorted([w.origin for w in workers] + [cache.origin])

            async def listed() -> list[str]:
                response = await http.get("/cache/fleet")
                assert 200 == response.status_code
                assert response.headers["content-type"] == "application/json"
                return sorted(report["origin"] for report in response.json())

            await eventually(listed, expect=expected)


async def _sorted(found: Any) -> list[str]:
    return sorted(await found)


async def _first(cache: CacheManager) -> tuple[str, str] | None:
    reports = await cache.fleet()
    return (reports[0]["origin"], reports[0]["status"]) if reports else None


async def _worker_origins(worker: Worker) -> list[str]:
    return [report["origin"] for report in await worker.call("fleet")]


async def _drain(stream: Any) -> bytes:
    chunks = []
    try:
        while True:
            chunks.append(await stream.receive())
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return b"".join(chunks)


class TestEndpointErrors:
    async def test_503_when_redis_is_down_or_the_cache_stopped(
        self, private_server: RedisServer, namespace: str
    ) -> None:
        """Redis not answering, or a stopped cache, is a 503 with an error message (no
        password in it), never a 500."""
        config = CacheConfig(
            redis_url=private_server.url,
            namespace=namespace,
            fleet_report_interval=INTERVAL,
            operation_timeout=0.2,
        )
        app = FastAPI(lifespan=cache_lifespan(config))
        app.include_router(cache_router())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://t"
        ) as http:
            async with app.router.lifespan_context(app):
                private_server.kill()
                response = await http.get("/cache/fleet")
                assert 503 == response.status_code
                assert "reading the fleet" in response.json()["error"]
            response = await http.get("/cache/fleet")
            assert 503 == response.status_code
            assert "running CacheManager" in response.json()["error"]
