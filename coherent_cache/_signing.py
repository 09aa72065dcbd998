"""HMAC-SHA256 signatures of bus messages (``CacheConfig.bus_signing_keys``).

The signed bytes are the message without its signature, bound to the channel::

    HMAC-SHA256(key, b"coherent_cache.bus.v1\\n" + <channel, UTF-8> + b"\\n" + <body>)

where ``<body>`` is the JSON object exactly as sent, minus the signature field. The
signature goes last, as ``,"sig":"<64 lowercase hex digits>"}`` in place of the body's
closing ``}``, so a receiver recovers ``<body>`` by cutting that suffix and putting the
``}`` back: no JSON canonicalisation is involved, and any language can sign a message it
serialised however it likes (docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final

__all__ = ()

SIGNATURE_FIELD: Final = "sig"
_DOMAIN: Final = b"coherent_cache.bus.v1\n"
# ,"sig":"<64 hex>"} at the very end of the message.
_SUFFIX_RE: Final = re.compile(rb',"sig":"([0-9a-f]{64})"\}\Z')
_SUFFIX_LEN: Final = len(b',"sig":""}') + 64
OVERHEAD: Final = _SUFFIX_LEN - 1
"""Bytes a signature adds to a message."""


def _mac(key: bytes, channel: str, body: bytes) -> str:
    data = _DOMAIN + channel.encode("utf-8", "surrogatepass") + b"\n" + body
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def sign(body: bytes, channel: str, key: bytes) -> bytes:
    """Return ``body`` (a JSON object without a signature) with its signature appended."""
    if not body.endswith(b"}") or len(body) < 3:
        raise ValueError("a bus message to sign must be a non-empty JSON object")
    return body[:-1] + b',"sig":"' + _mac(key, channel, body).encode() + b'"}'


def verify(data: bytes, channel: str, keys: Sequence[bytes]) -> str | None:
    """Check the signature of a received message; ``None`` if one of ``keys`` signed it.

    Returns:
        The reason it is rejected: ``"unsigned"`` or ``"bad signature"``.
    """
    found = _SUFFIX_RE.search(data, max(0, len(data) - _SUFFIX_LEN))
    if found is None:
        return "unsigned"
    body = data[:-_SUFFIX_LEN] + b"}"
    claimed = found.group(1).decode()
    for key in keys:
        if hmac.compare_digest(_mac(key, channel, body), claimed):
            return None
    return "bad signature"
