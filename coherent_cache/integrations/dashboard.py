"""The fleet dashboard page served by ``GET /cache/dashboard`` (`cache_router`).

The page is package data (``dashboard.html``): one self-contained document with its CSS
and JavaScript inline, nothing loaded from another host. Its script reads ``fleet``
beside it (a relative URL, so any router prefix works) every few seconds and builds the
table and the SVG sparklines with ``textContent`` and attributes only, never parsing a
report's strings as HTML. The response's Content-Security-Policy allows that one script
and that one style block (by their SHA-256) and requests to the same origin, nothing else:
even markup that got into the page could run no script.

This module does not import FastAPI; `coherent_cache.integrations.fastapi` serves it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files
from typing import Final, NamedTuple

__all__ = ["DASHBOARD_RESOURCE", "DashboardPage", "content_security_policy", "dashboard_page"]

DASHBOARD_RESOURCE: Final = "dashboard.html"
"""The page's file name in this package."""


class DashboardPage(NamedTuple):
    """The dashboard's HTML and the headers it is served with."""

    html: str
    headers: dict[str, str]


def _inline_hashes(html: str, tag: str) -> list[str]:
    """The CSP source expressions (``'sha256-...'``) of each inline ``<tag>`` block."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"
        for block in blocks
    ]


def content_security_policy(html: str) -> str:
    """The policy for ``html``: its own inline ``<script>`` and ``<style>`` blocks (by hash),
    ``fetch`` to the same origin, ``data:`` images (the empty favicon); nothing else."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_inline_hashes(html, "script")),
            "style-src " + " ".join(_inline_hashes(html, "style")),
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@cache
def dashboard_page() -> DashboardPage:
    """The page and its headers (read once from the package): the policy above,
    ``nosniff``, no referrer, and ``no-store`` (the page is small; its data is fetched)."""
    html = files(__package__ or "coherent_cache.integrations").joinpath(DASHBOARD_RESOURCE)
    text = html.read_text(encoding="utf-8")
    return DashboardPage(
        text,
        {
            "content-security-policy": content_security_policy(text),
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "cache-control": "no-store",
        },
    )
