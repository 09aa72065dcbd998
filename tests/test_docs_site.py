"""The documentation site builds strictly, and its configuration reference covers CacheConfig."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from coherent_cache import CacheConfig
from coherent_cache.config import ENV_PREFIX

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def load_generator() -> ModuleType:
    """docs/gen_config.py, imported by path (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_config", DOCS / "gen_config.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_rows() -> dict[str, str]:
    """The generated reference: each field name mapped to its table row."""
    table = str(load_generator().render_reference())
    rows: dict[str, str] = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
    return rows


def nav_files(nav: object) -> list[str]:
    """Every Markdown file named in an mkdocs ``nav``, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [name for item in nav for name in nav_files(item)]
    if isinstance(nav, dict):
        return [name for value in nav.values() for name in nav_files(value)]
    return []


class TestConfigReference:
    def test_every_field_is_documented(self) -> None:
        """Each CacheConfig field has a row with its environment variable and a docstring."""
        rows = reference_rows()
        assert list(CacheConfig.model_fields) == list(rows)
        for name, row in rows.items():
            assert f"`{ENV_PREFIX}{name.upper()}`" in row
            meaning = row.rstrip(" |").rsplit(" | ", 1)[1]
            assert meaning.strip(), f"{name} has no docstring in coherent_cache/config.py"

    def test_docstrings_pair_with_their_field(self) -> None:
        """The docstring read with ``ast`` is the one right below each field."""
        generator = load_generator()
        docs = generator.field_docs((ROOT / "coherent_cache" / "config.py").read_text())
        assert "str | None" == docs["redis_url"][0]
        assert docs["redis_url"][1].startswith("``redis://``")
        assert docs["lock_lease"][1].startswith("Lease in seconds")

    def test_committed_page_is_up_to_date(self) -> None:
        """docs/configuration.md holds the table the generator renders (so the page reads
        right outside the site too); refresh it with ``python docs/gen_config.py``."""
        page = (DOCS / "configuration.md").read_text()
        assert str(load_generator().fill(page)) == page, "run: python docs/gen_config.py"


class TestSite:
    def test_nav_lists_existing_pages(self) -> None:
        """Every page in the nav exists, and every page in docs/ is in the nav."""
        config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
        listed = nav_files(config["nav"])
        assert len(listed) == len(set(listed))
        for name in listed:
            assert (DOCS / name).is_file(), f"{name} is in the nav but missing"
        unlisted = {p.name for p in DOCS.glob("*.md")} - set(listed)
        assert not unlisted, f"add {sorted(unlisted)} to the nav in mkdocs.yml"

    @pytest.mark.timeout(120)
    def test_mkdocs_build_strict(self, tmp_path: Path) -> None:
        """``mkdocs build --strict`` succeeds: no broken links, no missing pages, and the
        configuration page carries every field."""
        mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
        assert mkdocs is not None, "mkdocs is missing: pip install -e '.[test]' installs it"
        site = tmp_path / "site"
        done = subprocess.run(
            [mkdocs, "build", "--strict", "--site-dir", str(site)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=110,
            check=False,
            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        )
        assert 0 == done.returncode, done.stdout + done.stderr
        html = (site / "configuration" / "index.html").read_text()
        for name in CacheConfig.model_fields:
            assert f"{ENV_PREFIX}{name.upper()}" in html
