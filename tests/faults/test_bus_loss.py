"""The invalidation bus lost while L2 keeps working: subscriber connections killed by the
server, cut by a partition, or dropped by the server as too slow. Two instances in separate
processes run a mixed load; the other instance's L1 must stop serving an invalidated value
within the bus-loss bound, and every instance resubscribes (and flushes its L1) by itself."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import orjson
from redis.asyncio import Redis

from ..support.proxy import HoldingProxy
from .conftest import MAX_STALE, assert_sound, record_recovery, run_loads, server, workers


async def recoveries(worker: object) -> int:
    """The worker's count of bus resubscriptions."""
    from ..support.multiproc import Worker

    assert isinstance(worker, Worker)
    return int((await worker.call("stats"))["bus"]["recoveries"])


class TestSubscriberKilled:
    async def test_client_kill_type_pubsub(self, tmp_path: Path, namespace: str) -> None:
        """CLIENT KILL TYPE pubsub, three times under load: no error, bound held, resubscribed."""
        with server() as srv:
            admin = Redis.from_url(srv.url, socket_timeout=5)
            try:
                async with workers(2, srv.url, namespace) as procs:

                    async def fault() -> None:
                        for _ in range(3):
                            await anyio.sleep(1.0)
                            assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(fault)
                        run = await run_loads(procs, tmp_path, duration=4.0)
                    assert_sound(run)
                    for worker in procs:
                        assert await recoveries(worker) >= 3
                    # Measured: kill → resubscribed.
                    seen = [await recoveries(w) for w in procs]
                    killed = time.monotonic()
                    await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[no-untyped-call]
                    for worker, before in zip(procs, seen, strict=True):
                        times = await worker.call("wait_recovered", recoveries=before + 1)
                        record_recovery("client_kill_pubsub", bus=times["bus_at"] - killed)
            finally:
                await admin.aclose()


CUT = 5.0
"""Seconds the subscribers stay cut: longer than the bus-loss bound, so an instance that
kept trusting its L1 would serve another instance's overwritten keys past it."""


class TestSubscriberPartitioned:
    async def test_bus_cut_longer_than_the_bound(self, tmp_path: Path, namespace: str) -> None:
        """Both instances' subscribers cut (and refused) for 5 s through a proxy while L2
        works: the old value is served at most about max_stale_on_bus_loss after the loss;
        after the cut both resubscribe and flush."""
        with server() as srv:
            async with (
                HoldingProxy(srv.host, srv.port) as proxy,
                workers(2, proxy.url, namespace) as procs,
            ):
                cut_at: list[float] = []

                async def fault() -> None:
                    await anyio.sleep(0.7)
                    proxy.block_subscribers()
                    cut_at.append(time.monotonic())
                    await anyio.sleep(CUT)
                    proxy.unblock_subscribers()
                    cut_at.append(time.time())

                async with anyio.create_task_group() as tg:
                    tg.start_soon(fault)
                    run = await run_loads(procs, tmp_path, duration=CUT + 2, owners=2, owned=4)
                report = assert_sound(run)
                assert report.hits > 0
                for worker in procs:
                    stats = await worker.call("stats")
                    assert stats["bus"]["losses"] >= 1
                    assert stats["l2_cache"]["connected"]  # only the bus was cut
                    times = await worker.call("wait_recovered", recoveries=1)
                    assert times["bus_at"] is not None
                    recovered_at = (await worker.call("stats"))["bus"]["last_recovery_at"]
                    record_recovery("bus_partition_5s", bus=recovered_at - cut_at[1])
                # During the cut the instances kept using L2: writes there were certain.
                during = [
                    op
                    for op in run.since(cut_at[0] + MAX_STALE)
                    if op["op"] == "set" and op["ok"] and op["s"] < cut_at[0] + CUT
                ]
                assert during, "no L2 write happened during the cut"


class TestSlowSubscriber:
    async def test_cut_off_by_pubsub_output_buffer_limit(
        self, tmp_path: Path, namespace: str
    ) -> None:
        """A subscriber that stops reading is disconnected by the server's
        client-output-buffer-limit pubsub (or by its own PING deadline); it resubscribes,
        and the bound held meanwhile."""
        with server("--client-output-buffer-limit", "pubsub 64kb 32kb 1") as srv:
            admin = Redis.from_url(srv.url, socket_timeout=5)
            try:
                async with (
                    HoldingProxy(srv.host, srv.port) as proxy,
                    workers(2, [srv.url, proxy.url], namespace) as procs,
                ):
                    channel = f"{namespace}:invalidate"
                    released: list[float] = []
                    flood = orjson.dumps(
                        {"v": 1, "op": "delete", "keys": [f"absent:{i}" for i in range(2000)]}
                    )

                    async def fault() -> None:
                        await anyio.sleep(0.7)
                        proxy.hold(subscribers_only=True)  # instance 1 stops reading the bus
                        for _ in range(400):  # ~10 MB: more than socket buffers and the limit
                            await admin.publish(channel, flood)
                        await anyio.sleep(1.5)
                        proxy.release()
                        released.append(time.time())

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(fault)
                        run = await run_loads(procs, tmp_path, duration=4.0)
                    assert_sound(run)
                    log = srv.log_path.read_text(errors="replace")
                    assert "output buffer limits" in log, log[-2000:]
                    times = await procs[1].call("wait_recovered", recoveries=1)
                    assert times["bus_at"] is not None
                    stats = await procs[1].call("stats")
                    assert stats["bus"]["losses"] >= 1
                    record_recovery(
                        "slow_subscriber_cut",
                        bus=stats["bus"]["last_recovery_at"] - released[0],
                    )
            finally:
                await admin.aclose()
