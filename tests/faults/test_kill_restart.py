"""SIGKILL + restart on the same port (data gone) while two instances in separate processes
run a mixed load: no exception reaches a caller, the stale-read bound holds, both instances
reconnect, resubscribe and flush their L1 without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from ..support.multiproc import MISSING
from .conftest import assert_sound, record_recovery, run_loads, server, workers


class TestKillAndRestart:
    async def test_instances_recover_and_stay_coherent(
        self, tmp_path: Path, namespace: str
    ) -> None:
        """Kill the server mid-load, restart it empty on the same port, keep loading."""
        with server() as srv:
            async with workers(2, srv.url, namespace) as (a, b):
                # An entry both L1s hold, that the restarted (empty) server no longer has.
                await a.call("set", key="marker", value={"w": "marker"})
                assert {"w": "marker"} == await b.call("get", key="marker")

                async def fault() -> None:
                    await anyio.sleep(1.0)
                    srv.kill()
                    await anyio.sleep(1.0)
                    srv.start()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(fault)
                    run = await run_loads([a, b], tmp_path, duration=4.0)
                assert_sound(run)

                for worker in (a, b):
                    stats = await worker.call("stats")
                    assert stats["bus"]["recoveries"] >= 1
                    assert stats["bus"]["connected"]
                    # The L1 copy went with the resubscribe flush (the server lost it too).
                    assert MISSING == await worker.call("get", key="marker")
                # L2 is in use again: a write on one instance is read by the other.
                assert await a.call("set", key="after", value={"w": "after"})
                assert {"w": "after"} == await b.call("get", key="after", tier="l2")

                # Measured recovery: restart → first L2 answer and resubscribe, per instance.
                before = [(await w.call("stats"))["bus"]["recoveries"] for w in (a, b)]
                killed = time.monotonic()
                srv.kill()
                await a.call("get", key="probe")  # notice the outage (breaker opens)
                await anyio.sleep(0.5)
                srv.start()
                restarted = time.monotonic()
                for name, worker, seen in (("a", a, before[0]), ("b", b, before[1])):
                    times = await worker.call("wait_recovered", recoveries=seen + 1, within=15)
                    record_recovery(
                        "kill_restart",
                        instance=name,
                        l2=times["l2_at"] - restarted,
                        bus=times["bus_at"] - restarted,
                        down=restarted - killed,
                    )
