"""Cluster bus benchmark: classic PUBLISH against sharded SPUBLISH on a real local cluster.

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.standalone.cluster_bus      # 3 primaries + 3 replicas, valkey-server
    python -m benchmarks.standalone.cluster_bus --messages 20000 --rounds 5

Starts a 3-primary, 3-replica cluster on 127.0.0.1 (``tests/deployments/harness.py``) and,
for each mode, subscribes ``--subscribers`` plain connections with the command the bus uses
(``SUBSCRIBE`` on nodes spread over the cluster for ``broadcast``; ``SSUBSCRIBE`` on the
primary owning the channel's slot for ``sharded``), then publishes through
``redis.asyncio.cluster.RedisCluster`` exactly as `RedisCache` does:

- latency: one message at a time, the next sent once every subscriber got the previous
  one; each message carries ``time.perf_counter_ns()``; the delay is measured to the
  first and to the last subscriber (same process, same clock);
- throughput: ``--messages`` messages from ``--publishers`` concurrent publishers, as
  fast as they are acknowledged; messages/s until the last subscriber got the last one;
- server cost: the CPU time (``INFO cpu``) all six nodes spent during the throughput run,
  per message.

Modes alternate round by round; medians over the rounds are reported. Writes
``benchmarks/results/cluster_bus.json``. See docs/architecture.md ("Cluster bus").
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import anyio
import orjson
import redis
from redis.asyncio import Connection
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.deployments.harness import HOST, ValkeyCluster, info  # noqa: E402

CHANNEL = "bench:invalidate"


def cpu_seconds(ports: list[int]) -> float:
    """Total CPU seconds (user + sys, main and children) the nodes have used so far."""
    total = 0.0
    for port in ports:
        cpu = info(port, "cpu")
        total += sum(float(cpu.get(k, 0)) for k in ("used_cpu_sys", "used_cpu_user"))
    return total


class Subscriber:
    """A bare connection subscribed with SUBSCRIBE or SSUBSCRIBE; counts what it reads."""

    def __init__(self, port: int, sharded: bool) -> None:
        self.conn = Connection(host=HOST, port=port, protocol=2)
        self.sharded = sharded
        self.kind = b"smessage" if sharded else b"message"
        self.received = 0
        self.last_at = 0
        self.got = anyio.Event()
        self.goal = 1 << 62
        self.goal_reached = anyio.Event()

    async def start(self) -> None:
        await self.conn.connect()  # type: ignore[no-untyped-call]
        await self.conn.send_command("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", CHANNEL)
        while True:
            reply = await self.conn.read_response(timeout=5)
            if isinstance(reply, list) and reply[0] in (b"subscribe", b"ssubscribe"):
                return

    async def run(self) -> None:
        while True:
            reply = await self.conn.read_response(timeout=None)
            if isinstance(reply, list) and reply and reply[0] == self.kind:
                now = time.perf_counter_ns()
                self.received += 1
                self.last_at = now
                self.got.set()
                if self.received >= self.goal:
                    self.goal_reached.set()

    async def reached(self, goal: int) -> None:
        """Wait until ``goal`` messages have arrived in total."""
        self.goal = goal
        if self.received >= goal:
            return
        await self.goal_reached.wait()


async def run_mode(
    cluster: ValkeyCluster, sharded: bool, args: argparse.Namespace
) -> dict[str, float]:
    client = RedisCluster.from_url(cluster.url, socket_timeout=5)
    try:
        _ = await client.initialize()
        slot = key_slot(CHANNEL.encode())
        owner = client.nodes_manager.get_node_from_slot(slot)
        ports = [node.port for node in cluster.live()]
        if sharded:
            sub_ports = [int(owner.port)] * args.subscribers
        else:
            # Subscribers of many instances land on every node of the cluster.
            sub_ports = [ports[i % len(ports)] for i in range(args.subscribers)]
        subscribers = [Subscriber(port, sharded) for port in sub_ports]
        publish = client.spublish if sharded else client.publish
        async with anyio.create_task_group() as tg:
            for sub in subscribers:
                await sub.start()
                tg.start_soon(sub.run)
            # latency
            first: list[float] = []
            last: list[float] = []
            for i in range(args.latency_samples):
                for sub in subscribers:
                    sub.got = anyio.Event()
                sent = time.perf_counter_ns()
                await publish(CHANNEL, b"%d,%d" % (sent, i))
                with anyio.fail_after(5):
                    for sub in subscribers:
                        await sub.got.wait()
                arrivals = [sub.last_at - sent for sub in subscribers]
                first.append(min(arrivals) / 1000)
                last.append(max(arrivals) / 1000)
            # throughput
            base = [sub.received for sub in subscribers]
            target = [b + args.messages for b in base]
            cpu_before = cpu_seconds(ports)
            started = time.perf_counter_ns()
            per_publisher = args.messages // args.publishers

            async def publisher() -> None:
                payload = b"%d,%s" % (time.perf_counter_ns(), b"x" * 80)
                for _ in range(per_publisher):
                    await publish(CHANNEL, payload)

            async with anyio.create_task_group() as pubs:
                for _ in range(args.publishers):
                    pubs.start_soon(publisher)
            with anyio.fail_after(60):
                for sub, goal in zip(subscribers, target, strict=True):
                    await sub.reached(goal - (args.messages - per_publisher * args.publishers))
            done = max(sub.last_at for sub in subscribers)
            cpu_after = cpu_seconds(ports)
            sent_total = per_publisher * args.publishers
            tg.cancel_scope.cancel()
        for sub in subscribers:
            await sub.conn.disconnect()
    finally:
        await client.aclose()
    q = statistics.quantiles
    return {
        "latency_first_p50_us": statistics.median(first),
        "latency_first_p99_us": q(first, n=100)[98],
        "latency_last_p50_us": statistics.median(last),
        "latency_last_p99_us": q(last, n=100)[98],
        "messages_per_s": sent_total / ((done - started) / 1e9),
        "server_cpu_us_per_message": (cpu_after - cpu_before) / sent_total * 1e6,
    }


async def main(args: argparse.Namespace) -> None:
    with ValkeyCluster() as cluster:
        results: dict[str, list[dict[str, float]]] = {"broadcast": [], "sharded": []}
        for _ in range(args.rounds):
            for mode in ("broadcast", "sharded"):
                results[mode].append(await run_mode(cluster, mode == "sharded", args))
        summary = {
            mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            for mode, runs in results.items()
        }
    print(f"{'metric':30} {'broadcast (PUBLISH)':>20} {'sharded (SPUBLISH)':>20}")
    for metric in summary["broadcast"]:
        print(
            f"{metric:30} {summary['broadcast'][metric]:20.1f} {summary['sharded'][metric]:20.1f}"
        )
    out = {
        "benchmark": "cluster_bus",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "redis_py": redis.__version__},
        "server": cluster.server_binary.name,
        "cluster": "3 primaries + 3 replicas on 127.0.0.1",
        "args": vars(args),
        "median_of_rounds": summary,
        "rounds": results,
    }
    path = ROOT / "benchmarks" / "results" / "cluster_bus.json"
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {path.relative_to(ROOT)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--subscribers", type=int, default=6)
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse_args())
