"""A foreign writer: a plain redis-py client writing a namespace's keys directly (issue 16).

``python -m tests.faults.foreign '<json args>'`` with ``{"url", "namespace", "keys", "proc",
"duration", "seed", "log_path"}`` (optional ``cycle`` and ``write_phase``, as in
`tests.faults.load`). It connects, prints ``{"ready": true}``, waits for a line on stdin,
writes for ``duration`` seconds, then prints ``{"ops": n}``. No coherent_cache code
writes: ``SET <namespace>:<key>`` with the payload a cache instance reads (0xC5 0x01 +
the JSON ``{"w": "<proc>-F<n>"}``, ``EX 60``) or ``DEL``, at random, during the first
``write_phase`` seconds of every ``cycle``; the rest of each cycle is quiet, so a stale
L1 copy left by a missed invalidation survives long enough for `tests.faults.checker` to
see it. Only client tracking tells the instances.

Every operation is logged in `tests.faults.load`'s format (``p``, ``t`` 0, ``op``,
``k``, ``w``, ``ok``, ``s``/``e`` `time.monotonic`, ``u``: the command failed or timed out,
so it may or may not have been applied), one JSON object a line in ``log_path``.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any, Final

import orjson
import redis

PAYLOAD_HEADER: Final = bytes((0xC5, 0x01))
"""coherent_cache's payload header: magic, format 1 (JSON), no compression."""


def payload(version: str) -> bytes:
    """The bytes a cache instance decodes as ``{"w": version}``."""
    return PAYLOAD_HEADER + orjson.dumps({"w": version})


def run(args: dict[str, Any]) -> int:
    """Write until ``duration`` has passed; return the number of operations logged."""
    client = redis.Redis.from_url(args["url"], socket_timeout=1.0, socket_connect_timeout=1.0)
    namespace, keys, proc = args["namespace"], list(args["keys"]), int(args["proc"])
    cycle = float(args.get("cycle", 1.0))
    write_phase = float(args.get("write_phase", 0.3))
    rng = random.Random(f"foreign:{args.get('seed', 0)}")
    client.ping()
    print(orjson.dumps({"ready": True}).decode(), flush=True)
    sys.stdin.readline()
    log: list[dict[str, Any]] = []
    number = 0
    t0 = time.monotonic()
    deadline = t0 + float(args["duration"])
    while (now := time.monotonic()) < deadline:
        if (now - t0) % cycle >= write_phase:
            time.sleep(min(0.01, deadline - now))
            continue
        key = rng.choice(keys)
        record: dict[str, Any]
        if rng.random() < 0.75:
            number += 1
            record = {"op": "set", "k": key, "w": f"{proc}-F{number}", "ok": False}
        else:
            record = {"op": "delete", "k": key}
        start = time.monotonic()
        try:
            if record["op"] == "set":
                record["ok"] = bool(client.set(f"{namespace}:{key}", payload(record["w"]), ex=60))
            else:
                client.delete(f"{namespace}:{key}")
            record["u"] = False
        except redis.RedisError:
            record["u"] = True  # it may still have been applied
        record.update(p=proc, t=0, s=start, e=time.monotonic())
        log.append(record)
        time.sleep(rng.random() * 0.004)
    client.close()
    with open(args["log_path"], "wb") as out:
        out.write(b"".join(orjson.dumps(entry) + b"\n" for entry in log))
    return len(log)


if __name__ == "__main__":
    print(orjson.dumps({"ops": run(orjson.loads(sys.argv[1]))}).decode(), flush=True)
