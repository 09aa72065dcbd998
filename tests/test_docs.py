"""The README's code and commands work as written, and the example script runs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from examples import quickstart

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def python_blocks(text: str) -> list[str]:
    """The ```python code blocks of a Markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def bash_blocks(text: str) -> list[str]:
    """The ```bash code blocks of a Markdown text, in order."""
    return re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)


class TestReadme:
    async def test_quickstart_blocks_run_as_written(self, redis_url: str, raw_redis: Redis) -> None:
        """The README's Python blocks run in sequence with top-level await, unchanged but
        for the server address, and leave the keys they promise."""
        blocks = python_blocks(README)
        assert len(blocks) >= 3
        namespace: dict[str, Any] = {}
        for block in blocks:
            source = block.replace("redis://localhost:6379", redis_url)
            code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if result is not None:
                await result
        cache = namespace["cache_manager"]
        assert not cache.running
        assert {"data": "value"} == namespace["data"]
        assert 0 == await raw_redis.exists("cache:custom_key")

    def test_ci_runs_exactly_the_readme_test_command(self) -> None:
        """.ci/run contains the README's test command verbatim."""
        commands = [
            line
            for block in bash_blocks(README)
            for line in block.splitlines()
            if "pytest" in line and line.startswith("python3 -m venv")
        ]
        assert 1 == len(commands)
        assert commands[0] in (ROOT / ".ci" / "run").read_text()

    def test_demo_command_is_documented(self) -> None:
        """The README's first command runs the demo."""
        first = bash_blocks(README)[0].strip()
        assert first.endswith("coherent-cache demo")


class TestExamples:
    async def test_quickstart_script(self, redis_url: str) -> None:
        """examples/quickstart.py reads back what it wrote, clears by pattern, sees Redis."""
        seen = await quickstart.main(redis_url)
        assert {"data": "value"} == seen["custom_key"]
        assert None is seen["after_delete"]
        assert 3 == seen["cleared"]
        assert True is seen["l2_connected"]


class TestDemo:
    @pytest.mark.timeout(60)
    def test_demo_runs_in_two_processes_and_leaves_none(self) -> None:
        """`coherent-cache demo` runs instances A and B in two processes of their own,
        shows an L1 hit, an invalidation from A reaching B's process, Redis killed with
        both still serving and degraded, and leaves no process behind."""
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "coherent_cache.cli", "demo"],
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert 0 == done.returncode, done.stdout + done.stderr
        assert time.monotonic() - started < 30
        out = done.stdout
        instances = re.search(r"separate processes .*: A \(pid (\d+)\), B \(pid (\d+)\)", out)
        assert instances is not None, out
        a_pid, b_pid = int(instances.group(1)), int(instances.group(2))
        assert a_pid != b_pid
        assert os.getpid() not in (a_pid, b_pid)
        server = re.search(r"Started a private \S+ on \S+ \(pid (\d+)\)", out)
        assert server is not None, out
        assert "L1 miss -> read from L2 -> filled into B's L1" in out
        assert re.search(r"4\. B: get again = .* in [\d.,]+ µs \(answered by L1", out), out
        assert re.search(r"5\. A: delete .*B's L1 copy, in another process, was gone", out), out
        assert "B's L1 dropped its 3 matching copies" in out
        assert f"Redis killed (SIGKILL, pid {server.group(1)})" in out
        assert "A: get config:site = {'theme': 'dark'}" in out
        assert "A: health = degraded" in out
        assert "B: health = degraded" in out
        assert "8. Stats:" in out
        assert "L1 hits=" not in done.stderr  # the narrative is on stdout, logs on stderr
        for pid in (a_pid, b_pid, int(server.group(1))):
            assert not process_alive(pid), f"pid {pid} is still running"

    @pytest.mark.timeout(60)
    def test_demo_without_a_server_binary_runs_on_l1(self) -> None:
        """Without a server binary the demo says so, runs both instances on L1 only, skips
        the steps that need Redis and exits 0."""
        # In a process of its own: the demo configures structlog, as the application it is.
        script = (
            "import sys\n"
            "from coherent_cache import cli\n"
            "from coherent_cache.testing import ServerNotFoundError\n"
            "def no_server(*args, **kwargs):\n"
            "    raise ServerNotFoundError('no Redis or Valkey server binary found')\n"
            "cli.RedisServer = no_server\n"
            "sys.exit(cli.main(['demo']))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert 0 == done.returncode, done.stdout + done.stderr
        out = done.stdout
        assert "! continuing with the in-memory L1 only" in out
        assert "have no L2 (L1 only)" in out
        assert "5-7. Skipped" in out
        pids = re.search(r"A \(pid (\d+)\), B \(pid (\d+)\)", out)
        assert pids is not None, out
        assert not process_alive(int(pids.group(1)))
        assert not process_alive(int(pids.group(2)))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process that the demo started (not a reused pid)."""
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes()
        status = (proc / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if "State:\tZ" in status:
        return False
    return b"_demo_instance" in cmdline or b"server" in cmdline
