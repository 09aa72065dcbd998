"""The README's code and commands work as written, and the example script runs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
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
    def test_demo_runs_and_leaves_no_server(self) -> None:
        """`coherent-cache demo` shows an L1 hit, invalidation reaching the other instance,
        Redis down with the cache still serving, and stops its server."""
        done = subprocess.run(
            [sys.executable, "-m", "coherent_cache.cli", "demo"],
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert 0 == done.returncode, done.stdout + done.stderr
        assert "L1 hit" in done.stdout
        assert "B's L1 copy gone" in done.stdout
        assert "B's L1 dropped its 3 matching copies" in done.stdout
        assert "Redis killed" in done.stdout
        assert "health = degraded" in done.stdout
        pid = re.search(r"\(pid (\d+)\)", done.stdout)
        assert pid is not None
        assert not Path(f"/proc/{pid.group(1)}").exists()
