"""One cashews ``client_side=True`` process of the invalidation row
(`benchmarks.suite.invalidation`).

``python -m benchmarks.workers._cashews_worker '<json args>'`` with ``{"url", "prefix",
"protocol"}`` (``protocol`` null: redis-py's default). Commands, one JSON object a line on stdin:

- ``{"op": "set", "key": k}`` / ``{"op": "delete", "key": k}``: the writer's operation;
  replies ``started`` and ``returned`` (``time.monotonic()``, one clock for every process);
- ``{"op": "watch", "key": k, "within": s}``: the reader reads ``k`` until its local copy
  holds it, replies ``{"armed": true}``, then checks its local copy in a loop (yielding
  to the event loop each time) and replies ``gone``: when it saw the copy dropped, or
  null if it still held it after ``within`` seconds (missed);
- ``{"op": "exit"}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import warnings
from typing import Any

import orjson


async def main(args: dict[str, Any]) -> None:
    """Serve commands until exit or EOF."""
    from cashews.backends.redis.client_side import BcastClientSide

    options: dict[str, Any] = {"client_side_prefix": args["prefix"]}
    if args.get("protocol"):
        options["protocol"] = args["protocol"]
    backend = BcastClientSide(args["url"], **options)
    await asyncio.wait_for(backend.init(), 30)
    local = backend._local_cache
    empty = object()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(doc: dict[str, Any]) -> None:
        print(orjson.dumps(doc).decode(), file=PROTOCOL, flush=True)

    say({"ready": True})
    try:
        while line := await reader.readline():
            cmd = orjson.loads(line)
            op = cmd["op"]
            if op == "exit":
                break
            key = cmd["key"]
            if op in ("set", "delete"):
                started = time.monotonic()
                if op == "set":
                    await backend.set(key, {"v": cmd.get("v", 1)}, expire=60)
                else:
                    await backend.delete(key)
                say({"started": started, "returned": time.monotonic()})
            elif op == "watch":
                deadline = time.monotonic() + 5
                while await local.get(key, default=empty) is empty:
                    if time.monotonic() > deadline:
                        break
                    await backend.get(key)
                    await asyncio.sleep(0.001)
                say({"armed": True})
                gone = None
                end = time.monotonic() + cmd["within"]
                while time.monotonic() < end:
                    if await local.get(key, default=empty) is empty:
                        gone = time.monotonic()
                        break
                    await asyncio.sleep(0)
                say({"gone": gone})
    finally:
        await asyncio.wait_for(backend.close(), 10)


# The protocol owns the real stdout; anything else printed (a library's log line) goes to
# stderr, so it cannot corrupt a reply.
PROTOCOL = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

if __name__ == "__main__":
    warnings.simplefilter("ignore", DeprecationWarning)
    logging.disable(logging.CRITICAL)
    asyncio.run(main(orjson.loads(sys.argv[1])))
