"""`coherent-cache invalidate` and `coherent-cache watch`, run as subprocesses on a real server."""

from __future__ import annotations

import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from redis.asyncio import Redis

from coherent_cache import BusMessage, CacheManager, MalformedMessageError
from coherent_cache.testing import free_port
from tests.conftest import ManagerFactory

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "coherent_cache.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment without COHERENT_CACHE_* settings (the CLI reads them), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COHERENT_CACHE_")}
    return {**env, **extra}


async def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``coherent-cache <args>`` to completion (bounded) without blocking the loop."""
    run = functools.partial(
        subprocess.run,
        [*CLI, *args],
        cwd=ROOT,
        env=cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return await anyio.to_thread.run_sync(run)


async def wait_gone(cache: CacheManager, *keys: str) -> None:
    """Poll (bounded) until none of ``keys`` is in the manager's L1."""
    with anyio.fail_after(5):
        while any(cache.l1.peek(key) is not None for key in keys):  # noqa: ASYNC110 - L1 state has no event
            await anyio.sleep(0.001)


async def fill(cache: CacheManager, **values: Any) -> None:
    """Write ``values`` through the manager (L1 and L2) and check they sit in its L1."""
    for key, value in values.items():
        await cache.set(key, value, ttl=300)
    assert values == {key: cache.l1.peek(key) for key in values}


def assert_clean_usage_error(done: subprocess.CompletedProcess[str], fragment: str) -> None:
    """Exit 2, the message on stderr, no traceback, nothing on stdout."""
    assert 2 == done.returncode, done.stderr
    assert fragment in done.stderr
    assert "Traceback" not in done.stderr
    assert "" == done.stdout


class TestInvalidate:
    async def test_keys_leave_l1_and_l2(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """--key (repeated) drops the keys from a running manager's L1 and from L2, and
        prints one line saying so with the number of subscribers."""
        cache = await make_manager()
        await fill(cache, **{"user:1": 1, "user:2": 2, "user:3": 3})
        done = await run_cli(
            "invalidate", "--redis-url", redis_url, "--namespace", namespace,
            "--key", "user:1", "--key", "user:2",
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr
        expected = (
            f"deleted 2 keys ('user:1', 'user:2') from L2 and every L1 of namespace "
            f"'{namespace}' at {redis_url}: 1 subscriber received the message on "
            f"'{namespace}:invalidate'\n"
        )
        assert expected == done.stdout
        await wait_gone(cache, "user:1", "user:2")
        assert 0 == await raw_redis.exists(f"{namespace}:user:1", f"{namespace}:user:2")
        assert 3 == cache.l1.peek("user:3")
        assert 1 == await raw_redis.exists(f"{namespace}:user:3")

    async def test_no_l2_keeps_the_l2_value(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """--no-l2 drops L1 copies only."""
        cache = await make_manager()
        await fill(cache, k=1)
        done = await run_cli(
            "invalidate", "--redis-url", redis_url, "--namespace", namespace,
            "--key", "k", "--no-l2",
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr
        assert "from every L1 (L2 untouched)" in done.stdout
        await wait_gone(cache, "k")
        assert 1 == await raw_redis.exists(f"{namespace}:k")

    async def test_pattern(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """--pattern drops the matching keys from L1 and L2, and nothing else."""
        cache = await make_manager()
        await fill(cache, **{"user:1": 1, "user:2": 2, "order:1": 3})
        done = await run_cli(
            "invalidate", "--redis-url", redis_url, "--namespace", namespace,
            "--pattern", "user:*",
        )  # fmt: skip
        assert 0 == done.returncode, done.stderr
        assert done.stdout.startswith("cleared pattern 'user:*' from L2 and every L1")
        await wait_gone(cache, "user:1", "user:2")
        assert 0 == await raw_redis.exists(f"{namespace}:user:1", f"{namespace}:user:2")
        assert 3 == cache.l1.peek("order:1")
        assert 1 == await raw_redis.exists(f"{namespace}:order:1")

    async def test_all(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str, raw_redis: Redis
    ) -> None:
        """--all empties the namespace in L1 and L2."""
        cache = await make_manager()
        await fill(cache, a=1, b=2)
        done = await run_cli(
            "invalidate", "--redis-url", redis_url, "--namespace", namespace, "--all"
        )
        assert 0 == done.returncode, done.stderr
        assert done.stdout.startswith("cleared all keys from L2 and every L1")
        await wait_gone(cache, "a", "b")
        assert 0 == await raw_redis.exists(f"{namespace}:a", f"{namespace}:b")

    async def test_channel_and_settings_from_the_environment(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str
    ) -> None:
        """--channel reaches managers on a custom channel; the URL and namespace may come
        from COHERENT_CACHE_REDIS_URL and COHERENT_CACHE_NAMESPACE."""
        cache = await make_manager(invalidation_channel=f"{namespace}-bus")
        await fill(cache, k=1)
        env = cli_env(COHERENT_CACHE_REDIS_URL=redis_url, COHERENT_CACHE_NAMESPACE=namespace)
        done = await run_cli("invalidate", "--channel", f"{namespace}-bus", "--key", "k", env=env)
        assert 0 == done.returncode, done.stderr
        assert f"1 subscriber received the message on '{namespace}-bus'" in done.stdout
        await wait_gone(cache, "k")

    async def test_bad_pattern_exits_2_without_traceback(self, redis_url: str) -> None:
        """An unterminated [ is a usage error: exit 2, a clear message, no traceback."""
        done = await run_cli(
            "invalidate", "--redis-url", redis_url, "--namespace", "ns", "--pattern", "user:[ab"
        )
        assert_clean_usage_error(done, "argument --pattern: pattern 'user:[ab' has an unterminated")

    @pytest.mark.parametrize(
        ("args", "fragment"),
        [
            (["--key", ""], "argument --key: a cache key must not be empty"),
            (["--key", "k" * 1025], "must be at most 1024 bytes"),
            (["--pattern", "a\\"], "lone backslash"),
            ([], "one of the arguments --key --pattern --all is required"),
            (["--key", "k", "--all"], "not allowed with argument"),
            (["--all", "--namespace", "a:b"], "namespace must be"),
            (["--all", "--channel", ""], "channel must be"),
            (["--all", "--redis-url", "http://host"], "scheme must be"),
        ],
        ids=["empty-key", "long-key", "pattern", "no-target", "two-targets", "ns", "ch", "url"],
    )
    async def test_bad_arguments_exit_2(
        self, redis_url: str, args: list[str], fragment: str
    ) -> None:
        """Invalid arguments exit 2 with argparse's message and no traceback."""
        done = await run_cli("invalidate", "--redis-url", redis_url, "--namespace", "ns", *args)
        assert_clean_usage_error(done, fragment)

    async def test_missing_url_exits_2(self) -> None:
        """Without --redis-url or COHERENT_CACHE_REDIS_URL there is no silent default."""
        done = await run_cli("invalidate", "--namespace", "ns", "--all")
        assert_clean_usage_error(done, "--redis-url is required")

    @pytest.mark.parametrize("how", ["url", "env"])
    async def test_unreachable_server_exits_1_quickly(self, how: str) -> None:
        """A dead server is exit 1 with a clear message, within the default timeouts, and
        the password appears nowhere."""
        port = free_port()
        if how == "url":
            args = ["--redis-url", f"redis://:s3cret@127.0.0.1:{port}/0"]
            env = cli_env()
        else:
            args = ["--redis-url", f"redis://127.0.0.1:{port}/0"]
            env = cli_env(COHERENT_CACHE_REDIS_PASSWORD="s3cret")
        start = time.monotonic()
        done = await run_cli("invalidate", *args, "--namespace", "ns", "--key", "k", env=env)
        elapsed = time.monotonic() - start
        assert 1 == done.returncode, done.stderr
        assert done.stderr.startswith("coherent-cache: error: nothing confirmed: Redis at redis://")
        assert "Traceback" not in done.stderr
        assert "s3cret" not in done.stdout + done.stderr
        assert "" == done.stdout
        assert elapsed < 10, elapsed  # interpreter start-up plus a 0.5 s operation timeout

    async def test_documented_commands_run(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str
    ) -> None:
        """The `coherent-cache` lines of docs/protocol.md run as written (server and
        namespace substituted; watch bounded by --duration)."""
        text = (ROOT / "docs" / "protocol.md").read_text()
        blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
        lines = [line for b in blocks for line in b.splitlines() if line.startswith("coherent")]
        assert {"invalidate", "watch"} == {shlex.split(line)[1] for line in lines}
        cache = await make_manager()
        for line in lines:
            argv = shlex.split(line.replace("redis://localhost:6379", redis_url))[1:]
            argv[argv.index("--namespace") + 1] = namespace
            if argv[0] == "watch":
                argv += ["--duration", "0.2"]
            await fill(cache, **{"user:42": 1, "user_profile:1": 2})
            done = await run_cli(*argv)
            assert 0 == done.returncode, (line, done.stderr)
            if argv[0] == "invalidate":
                assert "1 subscriber received" in done.stdout


@pytest.fixture
async def watch_process(redis_url: str, namespace: str) -> AsyncIterator[Process]:
    """A started `coherent-cache watch --count 2`; killed at teardown if still running."""
    command = [*CLI, "watch", "--redis-url", redis_url, "--namespace", namespace, "--count", "2"]
    async with await anyio.open_process(
        command, cwd=ROOT, env=cli_env(), stdin=subprocess.DEVNULL
    ) as process:
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()


async def read_line(stream: BufferedByteReceiveStream) -> str:
    """One line from a child's pipe, bounded."""
    with anyio.fail_after(20):
        return (await stream.receive_until(b"\n", 1 << 20)).decode()


class TestWatch:
    async def test_prints_valid_and_malformed_messages(
        self, watch_process: Process, raw_redis: Redis, namespace: str
    ) -> None:
        """Once 'watching' is on stderr, each message becomes one JSON line on stdout (the
        decoded fields plus valid, or the reason and raw text); --count 2 ends it, exit 0."""
        assert watch_process.stdout is not None and watch_process.stderr is not None
        stdout = BufferedByteReceiveStream(watch_process.stdout)
        stderr = BufferedByteReceiveStream(watch_process.stderr)
        assert f"watching {namespace}:invalidate on " in await read_line(stderr)
        valid = b'{"v": 1, "op": "delete", "keys": ["user:1"], "origin": "tests", "extra": 1}'
        malformed = b'{"v": 2, "op": "delete", "keys": ["user:1"]}'
        assert 1 == await raw_redis.publish(f"{namespace}:invalidate", valid)
        assert 1 == await raw_redis.publish(f"{namespace}:invalidate", malformed)
        lines = [orjson.loads(await read_line(stdout)) for _ in range(2)]
        with pytest.raises(MalformedMessageError) as caught:
            BusMessage.decode(malformed)
        expected = [
            {"valid": True, "v": 1, "op": "delete", "keys": ["user:1"], "origin": "tests"},
            {"valid": False, "reason": caught.value.reason, "raw": malformed.decode()},
        ]
        assert expected == lines
        with anyio.fail_after(20):
            assert 0 == await watch_process.wait()

    async def test_ctrl_c_exits_0(self, watch_process: Process) -> None:
        """SIGINT after subscribing ends the watch with exit 0 and no traceback."""
        assert watch_process.stderr is not None
        stderr = BufferedByteReceiveStream(watch_process.stderr)
        assert (await read_line(stderr)).startswith("watching ")
        watch_process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            assert 0 == await watch_process.wait()
        rest = b""
        with anyio.fail_after(5):
            async for chunk in stderr:
                rest += chunk
        assert b"" == rest

    async def test_duration_ends_the_watch(self, redis_url: str, namespace: str) -> None:
        """--duration stops a quiet watch with exit 0 and nothing on stdout."""
        done = await run_cli(
            "watch", "--redis-url", redis_url, "--namespace", namespace, "--duration", "0.2"
        )
        assert 0 == done.returncode, done.stderr
        assert "" == done.stdout
        assert done.stderr.startswith(f"watching {namespace}:invalidate on {redis_url}")

    async def test_unreachable_server_exits_1(self) -> None:
        """watch against a dead port exits 1 with a clear message and no password."""
        url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
        done = await run_cli("watch", "--redis-url", url, "--namespace", "ns")
        assert 1 == done.returncode, done.stderr
        assert done.stderr.startswith("coherent-cache: error: could not subscribe to Redis at")
        assert "s3cret" not in done.stderr
        assert "Traceback" not in done.stderr

    @pytest.mark.parametrize(
        ("args", "fragment"),
        [
            (["--count", "0"], "argument --count: must be at least 1"),
            (["--duration", "-1"], "argument --duration: must be a positive number"),
            (["--duration", "nan"], "argument --duration: must be a positive number"),
        ],
        ids=["count", "duration", "nan"],
    )
    async def test_bad_arguments_exit_2(
        self, redis_url: str, args: list[str], fragment: str
    ) -> None:
        """Invalid --count / --duration exit 2 with a message."""
        done = await run_cli("watch", "--redis-url", redis_url, "--namespace", "ns", *args)
        assert_clean_usage_error(done, fragment)
