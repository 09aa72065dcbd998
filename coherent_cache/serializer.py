"""CacheSerializer: a two-byte header, orjson, optional compression; never pickle.

Wire layout of every L2 payload::

    byte 0   0xC5                         magic: marks a coherent_cache payload
    byte 1   format (low 4 bits) | compression << 4
    byte 2.. the encoded value, compressed when the compression bits say so

Formats: 1 = JSON (orjson) of the value; 2 = JSON envelope
``{"f": <fresh until, ms since the epoch, or null>, "t": [<tags>], "v": <value>}`` for
entries written with tags or a stale window; 3 = MessagePack of the value; 4 = MessagePack
envelope ``[<fresh until or nil>, [<tags>], <bin: the MessagePack of the value>]``.
Readers decode every format (MessagePack needs the ``msgpack`` extra).
Compression: 0 = none, 1 = zlib, 2 = zstd, 3 = lz4 (frame).
Anything else (another program's value, truncated bytes, a pickle) is rejected with
`DeserializationError`, which the tiers turn into a counted miss.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import time
import uuid
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import orjson
from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from .errors import DeserializationError, SerializationError, ValueTooLargeError

if TYPE_CHECKING:
    from .config import CacheConfig

__all__ = ["CacheSerializer", "StoredEntry"]

MAGIC: Final = 0xC5
FORMAT_JSON: Final = 1
FORMAT_ENVELOPE: Final = 2
FORMAT_MSGPACK: Final = 3
FORMAT_MSGPACK_ENVELOPE: Final = 4
COMPRESSION_NONE: Final = 0
COMPRESSION_ZLIB: Final = 1
COMPRESSION_ZSTD: Final = 2
COMPRESSION_LZ4: Final = 3
_ALGORITHM_CODES: Final = {
    "zlib": COMPRESSION_ZLIB,
    "zstd": COMPRESSION_ZSTD,
    "lz4": COMPRESSION_LZ4,
}
_JSON_OPTIONS: Final = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_PLAIN_HEADER: Final = bytes((MAGIC, FORMAT_JSON))
# Decompressed payloads larger than this are rejected: a hostile or corrupt entry in Redis
# must not make a reader allocate without bound.
DEFAULT_MAX_DECOMPRESSED: Final = 256 * 1024 * 1024


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the time unit of envelopes and bus messages."""
    return time.time_ns() // 1_000_000


class StoredEntry(NamedTuple):
    """A decoded L2 payload: the value and the metadata of an envelope (if any)."""

    value: Any
    fresh_until_ms: int | None = None
    """Wall-clock end of freshness (ms since the epoch); ``None``: fresh until it expires."""
    tags: tuple[str, ...] = ()

    def fresh_seconds(self) -> float | None:
        """Seconds of freshness left (<= 0 when stale); ``None``: fresh until it expires."""
        return None if self.fresh_until_ms is None else (self.fresh_until_ms - now_ms()) / 1000

    def is_fresh(self) -> bool:
        """Whether the entry is still fresh (not in its stale-while-revalidate window)."""
        return self.fresh_until_ms is None or self.fresh_until_ms > now_ms()


class _Unencodable(TypeError):
    def __init__(self, value_type: type) -> None:
        super().__init__(value_type.__qualname__)
        self.value_type = value_type


def _json_default(obj: object) -> object:
    """The JSON form of what orjson does not encode itself: Pydantic models, ``Decimal``,
    ``set``/``frozenset`` and ``bytes`` (base64, which `_typed` decodes back)."""
    if isinstance(obj, BaseModel):
        try:
            return obj.model_dump(mode="json")
        except PydanticSerializationError:
            raise _Unencodable(type(obj)) from None
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return list(obj)
    if isinstance(obj, bytes | bytearray):
        return base64.b64encode(obj).decode("ascii")
    raise _Unencodable(type(obj))


def _msgpack_default(obj: object) -> object:
    """The MessagePack form of models, dataclasses and the other typed values (bytes
    stay MessagePack bin)."""
    if isinstance(obj, BaseModel):
        try:
            return obj.model_dump(mode="python")
        except PydanticSerializationError:
            raise _Unencodable(type(obj)) from None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, uuid.UUID | decimal.Decimal):
        return str(obj)
    if isinstance(obj, datetime.date | datetime.time):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise _Unencodable(type(obj))


class CacheSerializer:
    """Encode values for Redis and decode them back.

    Values are JSON: ``dict`` (keys become strings), ``list``/``tuple`` (read back as
    ``list``), ``str``, ``int`` (64-bit), ``float``, ``bool``, ``None``, plus the JSON form
    of Pydantic models (``model_dump(mode="json")``), dataclasses, ``datetime``/``date``/
    ``time`` (ISO 8601), ``UUID``, ``Decimal`` (a string), ``Enum`` (its value),
    ``set``/``frozenset`` (a list), ``bytes`` (base64) and numpy arrays. Read back without a
    declared type they stay in that JSON form; `coherent_cache._typed` decodes them into a
    declared type.

    With ``format="msgpack"`` values are MessagePack instead (the same types, ``bytes`` as
    bin; dict keys keep their types; tuples read back as lists).

    Args:
        format: ``"json"`` (orjson, the default) or ``"msgpack"`` (extra ``msgpack``).
        compression: compress payloads longer than ``threshold`` bytes.
        threshold: size in bytes above which to compress.
        algorithm: ``"zlib"``, ``"zstd"`` (needs ``zstandard``) or ``"lz4"`` (needs ``lz4``).
        max_size: largest encoded payload accepted by `serialize`; ``None`` for no limit.
        max_decompressed_size: largest decompressed payload accepted by `deserialize`.
    """

    __slots__ = (
        "_compress",
        "_header",
        "_lz4",
        "_max_decompressed",
        "_msgpack",
        "_zstd",
        "algorithm",
        "compression",
        "format",
        "max_size",
        "threshold",
    )

    def __init__(
        self,
        *,
        format: Literal["json", "msgpack"] = "json",
        compression: bool = True,
        threshold: int = 512,
        algorithm: Literal["zlib", "zstd", "lz4"] = "zlib",
        max_size: int | None = None,
        max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED,
    ) -> None:
        if algorithm not in _ALGORITHM_CODES:
            raise ValueError(f"unknown compression algorithm {algorithm!r}")
        if format not in ("json", "msgpack"):
            raise ValueError(f"unknown serialization format {format!r}")
        self.format = format
        self._msgpack: Any = None
        if format == "msgpack":
            self._msgpack = _import_msgpack(DeserializationError)
        self.compression = compression
        self.threshold = threshold
        self.algorithm = algorithm
        self.max_size = max_size
        self._max_decompressed = max_decompressed_size
        self._header = bytes((MAGIC, FORMAT_JSON | (_ALGORITHM_CODES[algorithm] << 4)))
        self._zstd: Any = None
        self._lz4: Any = None
        if algorithm == "zstd":
            import zstandard

            self._zstd = zstandard
        elif algorithm == "lz4":
            import lz4.frame

            self._lz4 = lz4.frame
        self._compress: Callable[[bytes], bytes]
        if algorithm == "zstd":
            self._compress = self._zstd.ZstdCompressor(level=3).compress
        elif algorithm == "lz4":
            self._compress = self._lz4.compress
        else:
            self._compress = _zlib_compress

    @classmethod
    def from_config(cls, config: CacheConfig) -> CacheSerializer:
        """The serializer ``config`` describes (format, compression, ``max_value_size``)."""
        return cls(
            format=config.serialization_format,
            compression=config.enable_compression,
            threshold=config.compression_threshold,
            algorithm=config.compression_algorithm,
            max_size=config.max_value_size,
        )

    def dumps(self, data: Any, *, key: str | None = None) -> bytes:
        """Encode ``data`` as JSON bytes, without header or compression.

        Raises:
            SerializationError: ``data`` (or something inside it) is not JSON-encodable.
        """
        if self._msgpack is not None:
            return self._dumps_msgpack(data, key)
        try:
            return orjson.dumps(data, default=_json_default, option=_JSON_OPTIONS)
        except TypeError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, _Unencodable) else None
            value_type = cause.value_type if cause is not None else type(data)
            where = f" for key {key!r}" if key is not None else ""
            raise SerializationError(
                f"cannot serialize a value of type {value_type.__qualname__}{where}: {exc}",
                value_type=value_type,
                key=key,
            ) from exc

    def _dumps_msgpack(self, data: Any, key: str | None) -> bytes:
        try:
            packed: bytes = self._msgpack.packb(data, default=_msgpack_default, use_bin_type=True)
        except _Unencodable as exc:
            raise self._unencodable(exc.value_type, key, exc) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._unencodable(type(data), key, exc) from exc
        return packed

    def _unencodable(
        self, value_type: type, key: str | None, exc: BaseException
    ) -> SerializationError:
        where = f" for key {key!r}" if key is not None else ""
        return SerializationError(
            f"cannot serialize a value of type {value_type.__qualname__}{where}: {exc}",
            value_type=value_type,
            key=key,
        )

    def loads(self, raw: bytes) -> Any:
        """Decode bytes from `dumps` (the value as every tier returns it)."""
        if self._msgpack is not None:
            return self._msgpack.unpackb(raw, raw=False, strict_map_key=False)
        return orjson.loads(raw)

    def pack(
        self,
        raw: bytes,
        *,
        key: str | None = None,
        fresh_until_ms: int | None = None,
        tags: tuple[str, ...] = (),
    ) -> bytes:
        """Add the header to JSON bytes from `dumps`, compressing them above the threshold.

        With ``fresh_until_ms`` or ``tags``, the value is wrapped in an envelope (format 2)
        carrying them.

        Raises:
            ValueTooLargeError: the payload exceeds ``max_size``.
        """
        fmt = FORMAT_JSON if self._msgpack is None else FORMAT_MSGPACK
        if fresh_until_ms is not None or tags:
            if self._msgpack is None:
                fmt = FORMAT_ENVELOPE
                meta = orjson.dumps({"f": fresh_until_ms, "t": list(tags)})
                raw = meta[:-1] + b',"v":' + raw + b"}"
            else:
                fmt = FORMAT_MSGPACK_ENVELOPE
                raw = self._msgpack.packb([fresh_until_ms, list(tags), raw], use_bin_type=True)
        if self.compression and len(raw) > self.threshold:
            compressed = self._compress(raw)
            # Keep the plain form when compression does not pay (already dense data).
            if len(compressed) < len(raw):
                payload = bytes((MAGIC, fmt | (self._header[1] & 0xF0))) + compressed
            else:
                payload = bytes((MAGIC, fmt)) + raw
        else:
            payload = (_PLAIN_HEADER if fmt == FORMAT_JSON else bytes((MAGIC, fmt))) + raw
        if self.max_size is not None and len(payload) > self.max_size:
            where = f" for key {key!r}" if key is not None else ""
            raise ValueTooLargeError(
                f"encoded value{where} is {len(payload)} bytes, over max_value_size "
                f"{self.max_size}",
                size=len(payload),
                limit=self.max_size,
                key=key,
            )
        return payload

    def serialize(self, data: Any) -> bytes:
        """Encode ``data`` to a self-describing payload (header + JSON, maybe compressed).

        Raises:
            SerializationError: ``data`` cannot be encoded; the message names the type.
            ValueTooLargeError: the payload exceeds ``max_size``.
        """
        return self.pack(self.dumps(data))

    def deserialize(self, data: bytes) -> Any:
        """Decode a payload made by `serialize` (or `pack`) to its value.

        Raises:
            DeserializationError: the bytes are not a valid coherent_cache payload.
        """
        return self.deserialize_entry(data).value

    def deserialize_entry(self, data: bytes) -> StoredEntry:
        """Decode a payload to its value and envelope metadata (freshness, tags).

        Raises:
            DeserializationError: the bytes are not a valid coherent_cache payload.
        """
        if len(data) < 2 or data[0] != MAGIC:
            raise DeserializationError("not a coherent_cache payload (bad or missing header)")
        flags = data[1]
        fmt = flags & 0x0F
        if fmt not in _FORMATS:
            raise DeserializationError(f"unknown payload format {fmt}")
        body = memoryview(data)[2:]
        codec = flags >> 4
        try:
            raw: bytes | memoryview = (
                body if codec == COMPRESSION_NONE else self._inflate(codec, body)
            )
            if fmt in (FORMAT_JSON, FORMAT_ENVELOPE):
                decoded = orjson.loads(raw)
            else:
                msgpack = self._msgpack or _import_msgpack(DeserializationError)
                decoded = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                if fmt == FORMAT_MSGPACK_ENVELOPE:
                    if not (isinstance(decoded, list) and len(decoded) == 3):
                        raise DeserializationError("corrupt envelope: not a 3-item array")
                    if not isinstance(decoded[2], bytes):
                        raise DeserializationError("corrupt envelope: value is not bin")
                    fresh, tags, inner = decoded
                    decoded = {
                        "f": fresh,
                        "t": tags,
                        "v": msgpack.unpackb(inner, raw=False, strict_map_key=False),
                    }
        except DeserializationError:
            raise
        except Exception as exc:  # zlib/zstd/lz4 errors, JSON and MessagePack decode errors
            raise DeserializationError(f"corrupt payload: {exc}") from exc
        if fmt in (FORMAT_JSON, FORMAT_MSGPACK):
            return StoredEntry(decoded)
        return _envelope(decoded)

    def _inflate(self, codec: int, body: memoryview) -> bytes:
        limit = self._max_decompressed
        if codec == COMPRESSION_ZLIB:
            inflater = zlib.decompressobj()
            out = inflater.decompress(body, limit)
            if inflater.unconsumed_tail or not inflater.eof:
                raise DeserializationError(
                    "compressed payload is truncated or inflates beyond the size limit"
                )
            return out
        # Read at most limit + 1 bytes, so a "bomb" never allocates more than the limit.
        if codec == COMPRESSION_ZSTD:
            zstd = self._zstd or _import("zstandard", "zstd")
            with zstd.ZstdDecompressor().stream_reader(bytes(body)) as stream:
                out = stream.read(limit + 1)
        elif codec == COMPRESSION_LZ4:
            lz4_frame = self._lz4 or _import("lz4.frame", "lz4")
            inflater = lz4_frame.LZ4FrameDecompressor()
            out = inflater.decompress(bytes(body), max_length=limit + 1)
            if len(out) <= limit and not inflater.eof:
                raise DeserializationError("compressed payload is truncated")
        else:
            raise DeserializationError(f"unknown compression code {codec}")
        if len(out) > limit:
            raise DeserializationError("payload inflates beyond the size limit")
        return bytes(out)


def _envelope(decoded: Any) -> StoredEntry:
    """Check and unpack a format-2 envelope."""
    if not isinstance(decoded, dict) or "v" not in decoded:
        raise DeserializationError("corrupt envelope: not an object with a value")
    fresh = decoded.get("f")
    tags = decoded.get("t", [])
    if fresh is not None and (isinstance(fresh, bool) or not isinstance(fresh, int)):
        raise DeserializationError("corrupt envelope: freshness is not an integer")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DeserializationError("corrupt envelope: tags are not a list of strings")
    return StoredEntry(decoded["v"], fresh, tuple(tags))


_FORMATS: Final = frozenset((FORMAT_JSON, FORMAT_ENVELOPE, FORMAT_MSGPACK, FORMAT_MSGPACK_ENVELOPE))


def _import_msgpack(error: type[Exception]) -> Any:
    try:
        import msgpack
    except ImportError as exc:
        raise error(
            "the msgpack format needs the msgpack package: pip install 'coherent-cache[msgpack]'"
        ) from exc
    return msgpack


ZLIB_LEVEL: Final = 1
"""zlib level of the default codec: 1.7x faster than level 6 for ~20 % more bytes
(docs/serialization.md, "Choosing the compression")."""


def _zlib_compress(raw: bytes) -> bytes:
    return zlib.compress(raw, ZLIB_LEVEL)


def _import(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeserializationError(
            f"payload is {extra}-compressed but {module} is not installed: "
            f"pip install 'coherent-cache[{extra}]'"
        ) from exc
