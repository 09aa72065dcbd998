"""The ``coherent-cache`` command: ``demo``, ``invalidate``, ``watch`` and ``fleet``.

``demo`` shows two app instances, each in its own process, at work on a private Valkey;
``invalidate`` drops keys from the L2 and from every instance's L1 (see docs/protocol.md);
``watch`` prints the invalidation bus as JSON lines; ``fleet`` lists the running instances
of a namespace with their health (see docs/observability.md). Exit codes: 0 done (``watch`` also on
Ctrl-C), 1 Redis unreachable or failing, 2 bad arguments. Settings not given as options
come from the ``COHERENT_CACHE_*`` environment variables (e.g.
``COHERENT_CACHE_REDIS_PASSWORD``, which keeps the password out of the process list).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

import anyio
import anyio.lowlevel
import orjson
from redis import exceptions as redis_errors

from ._clients import build_client, close_client, watch_client
from ._demo_instance import DemoInstance, DemoInstanceError, log_to_stderr
from ._signing import verify
from .bus import BusMessage, InvalidationPublisher, make_origin
from .config import ENV_PREFIX, CacheConfig
from .errors import BackendError, ConfigurationError, InvalidKeyError, MalformedMessageError
from .fleet import FleetReport, read_fleet
from .keys import validate_key, validate_pattern
from .testing import RedisServer, ServerNotFoundError

__all__ = ["main"]


def _say(text: str = "") -> None:
    print(text, flush=True)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


@contextlib.contextmanager
def _demo_server(url: str | None) -> Iterator[tuple[str | None, RedisServer | None]]:
    """Yield the Redis URL to use and the private server started for it (if any)."""
    if url is not None:
        yield url, None
        return
    try:
        server = RedisServer().start()
    except ServerNotFoundError as exc:
        _say(f"! {exc}")
        _say("! continuing with the in-memory L1 only (redis_url=None)")
        yield None, None
        return
    try:
        yield server.url, server
    finally:
        server.close()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def _across(
    a: DemoInstance, b: DemoInstance, keys: list[str], op: str, **args: Any
) -> tuple[dict[str, Any], float, float]:
    """Run ``op`` on A while B watches ``keys`` in its L1.

    Returns A's reply and the seconds from A's call returning and from its start to B's
    L1 no longer serving any of ``keys`` (both processes' ``time.monotonic()``).
    """
    await b.send("arm", keys=keys)
    await b.reply()  # {"armed": true}: B is spinning on its L1
    done = await a.call(op, **args)
    gone = (await b.reply())["gone"]
    if gone is None:
        raise DemoInstanceError(f"B still served {keys} 5 s after A's {op}")
    return done, gone - done["returned"], gone - done["started"]


def _vs_return(after: float) -> str:
    if after < 0:
        return f"{_ms(-after)} before A's call even returned"
    return f"{_ms(after)} after A's call returned"


def _stats_line(name: str, stats: dict[str, Any]) -> str:
    l1, l2, totals, bus = stats["l1"], stats["l2"], stats["totals"], stats["bus"]
    return (
        f"   {name}: L1 hits={l1['hits']} misses={l1['misses']} size={l1['size']} | "
        f"L2 connected={l2['connected']} errors={l2['errors']} breaker={l2['breaker']} | "
        f"totals hits={totals['hits']} misses={totals['misses']} sets={totals['sets']} | "
        f"bus published={bus['published']} applied={bus['applied']}"
    )


async def _demo(url: str | None, server: RedisServer | None) -> list[int]:
    """Tell the story; return the pids of the instance processes."""
    fields = {"redis_url": url, "namespace": "demo", "operation_timeout": 0.25}
    async with DemoInstance("A", fields) as a, DemoInstance("B", fields) as b:
        pids = [a.pid, b.pid]
        shown = CacheConfig(redis_url=url).redacted_url()
        shared = f"share the L2 at {shown}" if url else "have no L2 (L1 only)"
        _say(
            f"1. Two app instances in separate processes {shared}: A (pid {a.pid}), B (pid {b.pid})"
        )
        await a.call("clear")
        profile = {"id": 42, "name": "Ada", "plan": "pro"}
        stored = (await a.call("set", key="user_profile:42", value=profile))["result"]
        _say(f"2. A: set user_profile:42 -> A's L1 and the L2 (written to L2: {stored})")

        if url is None:
            got = await b.call("get", key="user_profile:42")
            _say(
                f"3. B: get user_profile:42 = {got['value']} (no L2, no bus: without Redis the"
                " instances share nothing and are not coherent)"
            )
            reader, name = a, "A"
        else:
            got = await b.call("get", key="user_profile:42")
            _say(
                f"3. B: get user_profile:42 = {got['value']} in {_us(got['seconds'])} "
                f"(L1 miss -> read from {got['from']} -> filled into B's L1)"
            )
            await b.call("hold", key="user_profile:42")
            reader, name = b, "B"
        got = await reader.call("get", key="user_profile:42")
        _say(
            f"4. {name}: get again = {got['value']} in {_us(got['seconds'])} "
            f"(answered by {got['from']}, timed inside {name}'s process: no network)"
        )
        hits = await reader.call("hits", key="user_profile:42")
        _say(f"   {hits['rounds']} more L1 hits on {name}: {_us(hits['seconds'])} each on average")

        if url is None:
            _say("5-7. Skipped: invalidation across processes and a Redis outage need a server.")
        else:
            _, after, since = await _across(
                a, b, ["user_profile:42"], "delete", key="user_profile:42"
            )
            _say(
                f"5. A: delete user_profile:42 -> B's L1 copy, in another process, was gone "
                f"{_ms(since)} after A's call started ({_vs_return(after)}; "
                "time.monotonic in both)"
            )
            keys = [f"user_profile:{100 + i}" for i in range(3)]
            for key in keys:
                await a.call("set", key=key, value={"id": key})
                await b.call("hold", key=key)
            done, after, _ = await _across(a, b, keys, "clear_pattern", pattern="user_profile:*")
            _say(
                f"6. A: clear_pattern('user_profile:*') removed {done['result']} L2 keys (SCAN +"
                f" UNLINK, never KEYS); B's L1 dropped its 3 matching copies"
                f" {_vs_return(after)}"
            )
            await a.call("set", key="config:site", value={"theme": "dark"})
            await b.call("hold", key="config:site")
            if server is None:
                _say("7. Skipped: the server at --redis-url is not the demo's to kill.")
            else:
                killed = server.pid
                server.kill()
                _say(f"7. Redis killed (SIGKILL, pid {killed}). Both instances keep serving:")
                for inst in (a, b):
                    got = await inst.call("get", key="config:site")
                    _say(
                        f"   {inst.name}: get config:site = {got['value']} in "
                        f"{_us(got['seconds'])} (from {got['from']})"
                    )
                done = await a.call("set", key="config:new", value=1, ttl=60)
                got = await a.call("get", key="config:new")
                _say(
                    f"   A: set config:new -> written to L2: {done['result']}; A reads "
                    f"{got['value']} from {got['from']}"
                )
                got = await a.call("get", key="never-cached")
                _say(
                    f"   A: get never-cached = {got['value']} in {_us(got['seconds'])} "
                    "(a miss, no exception)"
                )
                for inst in (a, b):
                    report = await inst.call("health")
                    _say(
                        f"   {inst.name}: health = {report['status']}: "
                        f"{'; '.join(report['reasons'])}"
                    )
        _say("8. Stats:")
        for inst in (a, b):
            _say(_stats_line(inst.name, await inst.call("stats")))
    return pids


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (and been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _run_demo(args: argparse.Namespace) -> int:
    log_to_stderr()
    with _demo_server(args.redis_url) as (url, server):
        server_pid = None
        if server is not None:
            server_pid = server.pid
            _say(f"Started a private {server.binary.name} on {server.url} (pid {server_pid})")
        try:
            pids = anyio.run(_demo, url, server)
        except DemoInstanceError as exc:
            _error(f"demo failed: {exc}")
            return EXIT_REDIS
    pids += [server_pid] if server_pid is not None else []
    left = [pid for pid in pids if not _gone(pid)]
    if left:
        _error(f"processes still running: {left}")
        return EXIT_REDIS
    _say(f"Done: every process started by the demo has exited (pids {', '.join(map(str, pids))}).")
    return 0


# -- invalidate and watch ----------------------------------------------------------------

EXIT_OK: Final = 0
EXIT_REDIS: Final = 1
EXIT_USAGE: Final = 2
RAW_LIMIT: Final = 1024
"""Characters of an oversized malformed message that ``watch`` prints."""


def _error(text: str) -> None:
    print(f"coherent-cache: error: {text}", file=sys.stderr, flush=True)


def _key_arg(text: str) -> str:
    try:
        return validate_key(text)
    except InvalidKeyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pattern_arg(text: str) -> str:
    try:
        return validate_pattern(text)
    except InvalidKeyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _add_bus_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="server of the caches (default: $COHERENT_CACHE_REDIS_URL); a password in it is "
        "never printed, but prefer $COHERENT_CACHE_REDIS_PASSWORD, which ps cannot show",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        help="the caches' namespace (default: $COHERENT_CACHE_NAMESPACE)",
    )
    parser.add_argument(
        "--channel",
        metavar="CH",
        help="bus channel (default: $COHERENT_CACHE_INVALIDATION_CHANNEL, "
        "else <namespace>:invalidate)",
    )


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> CacheConfig:
    """The settings from the options, then ``COHERENT_CACHE_*``; usage errors exit 2."""
    overrides: dict[str, Any] = {}
    for option, field in (
        ("redis_url", "redis_url"),
        ("namespace", "namespace"),
        ("channel", "invalidation_channel"),
    ):
        value = getattr(args, option)
        if value is not None:
            overrides[field] = value
        elif option != "channel" and not os.environ.get(ENV_PREFIX + field.upper()):
            # No silent default: invalidating namespace "cache" on localhost by accident
            # is worse than an error.
            parser.error(
                f"--{option.replace('_', '-')} is required (or set {ENV_PREFIX + field.upper()})"
            )
    try:
        config = CacheConfig.from_env(**overrides)
    except ConfigurationError as exc:
        parser.error(str(exc))
    if config.redis_url is None:
        parser.error("a Redis URL is required")
    return config


def _scrub(text: str, config: CacheConfig) -> str:
    """``text`` without the configured passwords (error details may quote the URL)."""
    for secret in config.secrets():
        text = text.replace(secret, "***")
    return text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


async def _invalidate(args: argparse.Namespace, config: CacheConfig) -> str:
    """Run the invalidation; return the line describing what was done."""
    l2 = not args.no_l2
    origin = ("cli-" + make_origin(config.origin_prefix))[:256]
    async with InvalidationPublisher(config=config, origin=origin) as publisher:
        if args.keys is not None:
            keys = list(dict.fromkeys(args.keys))
            receivers = await publisher.delete(*keys, l2=l2)
            shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
            what = f"deleted {_plural(len(keys), 'key')} ({shown})"
        elif args.pattern is not None:
            receivers = await publisher.clear_pattern(args.pattern, l2=l2)
            what = f"cleared pattern {args.pattern!r}"
        else:
            receivers = await publisher.clear(l2=l2)
            what = "cleared all keys"
    tiers = "from L2 and every L1" if l2 else "from every L1 (L2 untouched)"
    return (
        f"{what} {tiers} of namespace {config.namespace!r} at {config.redacted_url()}: "
        f"{_plural(receivers, 'subscriber')} received the message on {publisher.channel!r}"
    )


def _run_invalidate(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    config = _config(parser, args)
    log_to_stderr()
    try:
        line = anyio.run(_invalidate, args, config)
    except InvalidKeyError as exc:  # e.g. a key too large for max_bus_message_size
        parser.error(str(exc))
    except BackendError as exc:
        _error(
            f"nothing confirmed: Redis at {config.redacted_url()} failed: "
            f"{_scrub(str(exc), config)}"
        )
        return EXIT_REDIS
    _say(line)
    return EXIT_OK


def _describe(data: bytes, config: CacheConfig) -> dict[str, Any]:
    """The JSON object ``watch`` prints for one bus message.

    With ``bus_signing_keys`` configured, a message without a valid signature is shown
    as invalid, as the caches would drop it.
    """
    max_size = config.max_bus_message_size
    try:
        keys = config.signing_keys()
        if keys and len(data) <= max_size:
            refused = verify(data, config.channel, keys)
            if refused is not None:
                raise MalformedMessageError(refused)
        message = BusMessage.decode(data, max_size=max_size)
    except MalformedMessageError as exc:
        raw = data.decode("utf-8", "replace")
        if len(data) > max_size and len(raw) > RAW_LIMIT:
            raw = raw[:RAW_LIMIT] + "..."
        return {"valid": False, "reason": exc.reason, "raw": raw}
    fields: dict[str, Any] = orjson.loads(message.encode())
    return {"valid": True, **fields}


def _emit(obj: dict[str, Any]) -> None:
    """Write one JSON line to stdout as UTF-8 (whatever the locale) and flush it."""
    line = orjson.dumps(obj) + b"\n"
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(line.decode())
        sys.stdout.flush()
        return
    sys.stdout.flush()
    buffer.write(line)
    buffer.flush()


async def _watch(args: argparse.Namespace, config: CacheConfig) -> int:
    """Subscribe, announce it on stderr, print messages until the count or duration."""
    assert config.redis_url is not None
    client = watch_client(config)
    pubsub = client.pubsub()
    channel = config.channel
    subscribed = False
    try:
        with anyio.fail_after(config.connect_timeout + config.operation_timeout):
            await pubsub.subscribe(channel)
            while True:
                reply = await pubsub.get_message(timeout=config.operation_timeout)
                if reply is not None and reply["type"] == "subscribe":
                    break
        subscribed = True
        print(f"watching {channel} on {config.redacted_url()}", file=sys.stderr, flush=True)
        seen = 0
        with anyio.move_on_after(args.duration):
            while args.count is None or seen < args.count:
                reply = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if reply is None or reply["type"] != "message":
                    continue
                _emit(_describe(reply["data"], config))
                seen += 1
    except (TimeoutError, redis_errors.RedisError, OSError) as exc:
        detail = _scrub(str(exc) or type(exc).__name__, config)
        doing = "lost the connection to" if subscribed else "could not subscribe to"
        _error(f"{doing} Redis at {config.redacted_url()}: {detail}")
        return EXIT_REDIS
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(config.connect_timeout):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()
    return EXIT_OK


def _run_watch(args: argparse.Namespace) -> int:
    config = _config(args.parser, args)
    log_to_stderr()
    try:
        code: int = anyio.run(_watch, args, config)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how an open-ended watch ends
    return code


FLEET_COLUMNS: Final = (
    "STATUS", "ORIGIN", "HOST", "PID", "VERSION", "UP", "L1 SIZE", "L1 HIT", "L2", "BUS",
    "MAILBOX", "LOADS", "LOAD ERR", "L1 P99", "L2 P99", "REASONS",
)  # fmt: skip
CLEAR_SCREEN: Final = "\x1b[H\x1b[2J"


def _dur(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _p99(stats: dict[str, Any]) -> str:
    p99 = stats.get("p99_ms")
    return "-" if p99 is None else f"{p99:.2f}ms"


def _fleet_row(report: FleetReport, now: float) -> list[str]:
    l2 = report["l2"]
    if l2 is None:
        l2_text = "off"
    else:
        l2_text = ("up" if l2["connected"] else "DOWN") + f" err={l2['errors']} {l2['breaker']}"
    bus = report["bus"]
    if not bus["enabled"]:
        bus_text = "off"
    else:
        bus_text = ("up" if bus["connected"] else "DOWN") + f" losses={bus['losses']}"
    return [
        report["status"].upper() if report["status"] != "healthy" else "healthy",
        report["origin"],
        report["host"],
        str(report["pid"]),
        report["version"],
        _dur(now - report["started_at"]),
        str(report["l1"]["size"]),
        f"{report['l1']['hit_rate']:.1%}",
        l2_text,
        bus_text,
        str(report["bus"]["mailbox_depth"]),
        str(report["loader"]["loads"]),
        str(report["loader"]["errors"]),
        _p99(dict(report["latency"]["l1"])),
        _p99(dict(report["latency"]["l2"])),
        "; ".join(report["reasons"]) or "-",
    ]


def fleet_table(reports: list[FleetReport], *, now: float) -> str:
    """The ``coherent-cache fleet`` table: a header and one row per instance."""
    rows = [list(FLEET_COLUMNS), *(_fleet_row(r, now) for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(FLEET_COLUMNS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    )


async def _fleet(args: argparse.Namespace, config: CacheConfig) -> int:
    """Print the fleet once, or every ``--interval`` seconds with ``--watch``."""
    client = build_client(config)
    shown, refreshes = config.redacted_url(), 0
    failed = False
    try:
        while True:
            try:
                reports = await read_fleet(
                    client,
                    config.namespace,
                    within=config.connect_timeout + config.operation_timeout,
                )
                failed = False
            except BackendError as exc:
                failed = True
                message = f"reading the fleet at {shown} failed: {_scrub(str(exc), config)}"
                if not args.watch:
                    _error(message)
                    return EXIT_REDIS
                text = f"! {message} (retrying every {args.interval:g}s)"
            else:
                if args.json:
                    text = orjson.dumps(reports, option=orjson.OPT_INDENT_2).decode()
                else:
                    unhealthy = sum(r["status"] != "healthy" for r in reports)
                    head = (
                        f"{_plural(len(reports), 'instance')} of namespace "
                        f"{config.namespace!r} at {shown} ({unhealthy} not healthy)"
                    )
                    text = head + "\n" + fleet_table(reports, now=time.time())
            if args.watch:
                text = CLEAR_SCREEN + time.strftime("%H:%M:%S ") + text
            _say(text)
            refreshes += 1
            if not args.watch or (args.count is not None and refreshes >= args.count):
                return EXIT_REDIS if failed else EXIT_OK
            await anyio.sleep(args.interval)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(config.connect_timeout):
            await close_client(client)


def _run_fleet(args: argparse.Namespace) -> int:
    config = _config(args.parser, args)
    log_to_stderr()
    try:
        code: int = anyio.run(_fleet, args, config)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how a --watch ends
    return code


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coherent-cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run a short demonstration on a private Valkey")
    demo.add_argument(
        "--redis-url",
        help="use this server instead of starting a private one (keys go to namespace 'demo')",
    )
    demo.set_defaults(handler=_run_demo)

    invalidate = commands.add_parser(
        "invalidate",
        help="drop keys from L2 and from every instance's L1",
        description="Drop keys from the L2 and publish the invalidation, so every "
        "connected instance drops its L1 copy. Prints one line: what was done and how "
        "many subscribers received the message. Exit 0 done, 1 Redis failed (nothing "
        "confirmed), 2 bad arguments.",
    )
    _add_bus_options(invalidate)
    invalidate.add_argument(
        "--no-l2",
        action="store_true",
        help="only publish: instances drop their L1 copies, the L2 values stay",
    )
    target = invalidate.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--key",
        dest="keys",
        action="append",
        type=_key_arg,
        metavar="K",
        help="a key without the namespace prefix (repeat for more keys)",
    )
    target.add_argument(
        "--pattern",
        type=_pattern_arg,
        metavar="P",
        help="a Redis glob pattern without the namespace prefix, e.g. 'user:*'",
    )
    target.add_argument("--all", action="store_true", help="every key of the namespace")
    invalidate.set_defaults(handler=_run_invalidate, parser=invalidate)

    watch = commands.add_parser(
        "watch",
        help="print the invalidation bus as JSON lines",
        description="Print every message on the bus channel as one JSON object per line: "
        'the decoded fields plus "valid": true, or {"valid": false, "reason": ..., '
        '"raw": ...} for a malformed one (raw is cut to its first '
        f"{RAW_LIMIT} characters only for messages over max_bus_message_size). Once "
        "subscribed, writes 'watching <channel> on <url>' to stderr. Runs until --count "
        "messages, --duration seconds or Ctrl-C (exit 0); exit 1 if Redis is unreachable "
        "or the connection drops.",
    )
    _add_bus_options(watch)
    watch.add_argument("--count", type=_positive_int, metavar="N", help="stop after N messages")
    watch.add_argument(
        "--duration", type=_positive_float, metavar="SECONDS", help="stop after this long"
    )
    watch.set_defaults(handler=_run_watch, parser=watch)

    fleet = commands.add_parser(
        "fleet",
        help="list the running instances of a namespace with their health",
        description="Print one row per running instance of the namespace (its report in "
        "Redis, refreshed every fleet_report_interval seconds), the unhealthy first, then "
        "the degraded. --json prints the list of reports instead. --watch refreshes in "
        "place every --interval seconds until --count refreshes or Ctrl-C (exit 0). "
        "Exit 1 if Redis is unreachable (with --watch: if the last read failed).",
    )
    for option, help_text in (
        ("--redis-url", "server of the caches (default: $COHERENT_CACHE_REDIS_URL); a "
         "password in it is never printed"),
        ("--namespace", "the caches' namespace (default: $COHERENT_CACHE_NAMESPACE)"),
    ):  # fmt: skip
        fleet.add_argument(
            option, metavar="URL" if option == "--redis-url" else "NS", help=help_text
        )
    fleet.set_defaults(channel=None)
    fleet.add_argument("--json", action="store_true", help="print the reports as a JSON array")
    fleet.add_argument("--watch", action="store_true", help="refresh in place")
    fleet.add_argument(
        "--interval",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between two refreshes of --watch (default 2)",
    )
    fleet.add_argument(
        "--count", type=_positive_int, metavar="N", help="with --watch: stop after N refreshes"
    )
    fleet.set_defaults(handler=_run_fleet, parser=fleet)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coherent-cache`` command."""
    args = _build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head -1`): stop quietly. Point stdout
        # at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
