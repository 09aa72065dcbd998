"""Tests of CacheSerializer: header, JSON round trips, compression and rejection of bad bytes."""

from __future__ import annotations

import pickle
import tracemalloc
import zlib
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coherent_cache import (
    CacheSerializer,
    DeserializationError,
    SerializationError,
    ValueTooLargeError,
)
from coherent_cache.serializer import (
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    COMPRESSION_ZLIB,
    COMPRESSION_ZSTD,
    FORMAT_JSON,
    MAGIC,
)

Algorithm = Literal["zlib", "zstd", "lz4"]
ALGORITHMS: list[Algorithm] = ["zlib", "zstd", "lz4"]
CODES: dict[Algorithm, int] = {
    "zlib": COMPRESSION_ZLIB,
    "zstd": COMPRESSION_ZSTD,
    "lz4": COMPRESSION_LZ4,
}

VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.25,
    1e300,
    "",
    "plain",
    "unicode: é € \U0001f600 日本語",
    [],
    [1, "two", 3.0, None, False],
    {},
    {"a": 1, "b": [1, 2, {"c": None}], "é": {"nested": {"deep": ["x"]}}},
]


class Unencodable:
    """A class the serializer cannot encode."""


def header_code(payload: bytes) -> int:
    """The compression code (high nibble of byte 1) of a payload."""
    return payload[1] >> 4


def large_value() -> dict[str, Any]:
    """A compressible value well above the default 512-byte threshold."""
    return {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(200)]}


class TestRoundTrip:
    """Values come back as they went in (as their JSON form)."""

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    @pytest.mark.parametrize("value", VALUES)
    def test_small_values(self, algorithm: Algorithm, value: Any) -> None:
        """Values below the threshold round trip uncompressed."""
        serializer = CacheSerializer(algorithm=algorithm)
        payload = serializer.serialize(value)
        assert (MAGIC, FORMAT_JSON, COMPRESSION_NONE) == (
            payload[0],
            payload[1] & 0x0F,
            header_code(payload),
        )
        assert value == serializer.deserialize(payload)

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    @pytest.mark.parametrize("value", VALUES)
    def test_values_compressed(self, algorithm: Algorithm, value: Any) -> None:
        """With threshold 0 every value round trips, compressed where that pays."""
        serializer = CacheSerializer(algorithm=algorithm, threshold=0)
        assert value == serializer.deserialize(serializer.serialize(value))

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    def test_large_value_compressed(self, algorithm: Algorithm) -> None:
        """A value above the threshold is compressed and the header says with what."""
        serializer = CacheSerializer(algorithm=algorithm)
        value = large_value()
        payload = serializer.serialize(value)
        assert (MAGIC, FORMAT_JSON, CODES[algorithm]) == (
            payload[0],
            payload[1] & 0x0F,
            header_code(payload),
        )
        assert len(payload) < len(serializer.dumps(value))
        assert value == serializer.deserialize(payload)

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    def test_threshold_boundary(self, algorithm: Algorithm) -> None:
        """JSON of exactly threshold bytes stays plain; one byte more is compressed."""
        serializer = CacheSerializer(algorithm=algorithm, threshold=100)
        at = "x" * 98  # JSON '"xxx..."' is 100 bytes
        above = "x" * 99
        assert (COMPRESSION_NONE, CODES[algorithm]) == (
            header_code(serializer.serialize(at)),
            header_code(serializer.serialize(above)),
        )

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    def test_incompressible_stays_plain(self, algorithm: Algorithm) -> None:
        """Above the threshold, data that compression would grow is stored uncompressed."""
        serializer = CacheSerializer(algorithm=algorithm, threshold=0)
        payload = serializer.serialize("ab")
        assert COMPRESSION_NONE == header_code(payload)
        assert b'"ab"' == payload[2:]
        assert "ab" == serializer.deserialize(payload)

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    def test_compression_disabled(self, algorithm: Algorithm) -> None:
        """compression=False never compresses, whatever the size."""
        serializer = CacheSerializer(compression=False, algorithm=algorithm, threshold=0)
        value = large_value()
        payload = serializer.serialize(value)
        assert COMPRESSION_NONE == header_code(payload)
        assert value == serializer.deserialize(payload)

    @pytest.mark.parametrize("writer", ALGORITHMS)
    @pytest.mark.parametrize("reader", ALGORITHMS)
    def test_any_reader_decodes_any_algorithm(self, writer: Algorithm, reader: Algorithm) -> None:
        """The header, not the reader's settings, selects the decompressor."""
        value = large_value()
        payload = CacheSerializer(algorithm=writer).serialize(value)
        assert value == CacheSerializer(algorithm=reader).deserialize(payload)

    def test_tuple_reads_back_as_list(self) -> None:
        """Tuples are JSON arrays and read back as lists."""
        serializer = CacheSerializer()
        assert [1, [2, 3]] == serializer.deserialize(serializer.serialize((1, (2, 3))))

    def test_non_str_keys_read_back_as_str(self) -> None:
        """Dict keys become strings."""
        serializer = CacheSerializer()
        assert {"1": "a"} == serializer.deserialize(serializer.serialize({1: "a"}))

    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(2**63), max_value=2**64 - 1)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
            max_leaves=30,
        ),
        st.sampled_from(ALGORITHMS),
        st.integers(min_value=0, max_value=64),
    )
    def test_json_like_round_trip(self, value: Any, algorithm: Algorithm, threshold: int) -> None:
        """Any JSON-like value round trips, compressed or not."""
        serializer = CacheSerializer(algorithm=algorithm, threshold=threshold)
        assert value == serializer.deserialize(serializer.serialize(value))


class TestSerializationError:
    """Values that JSON cannot represent are rejected at write time, naming the type."""

    @pytest.mark.parametrize(
        ("value", "value_type"),
        [
            (complex(1, 2), complex),
            (object(), object),
            ({"a": [1, {"b": Unencodable()}]}, Unencodable),
            (2**64, int),
            (-(2**63) - 1, int),
        ],
    )
    def test_unencodable(self, value: object, value_type: type) -> None:
        """SerializationError carries the offending type and names it in its message."""
        with pytest.raises(SerializationError) as info:
            CacheSerializer().serialize(value)
        assert value_type is info.value.value_type
        assert value_type.__qualname__ in str(info.value)

    def test_big_int_message(self) -> None:
        """A nested integer beyond 64 bits is reported as such."""
        with pytest.raises(SerializationError, match="64-bit"):
            CacheSerializer().serialize({"n": [2**70]})

    def test_is_type_error(self) -> None:
        """SerializationError is caught by ``except TypeError``."""
        with pytest.raises(TypeError, match="complex"):
            CacheSerializer().serialize({"s": 1j})

    def test_key_in_message(self) -> None:
        """dumps names the key being written when given."""
        with pytest.raises(SerializationError, match="user:1") as info:
            CacheSerializer().dumps(object(), key="user:1")
        assert "user:1" == info.value.key


class TestValueTooLarge:
    """max_size bounds the encoded payload."""

    def test_over_limit(self) -> None:
        """A payload over max_size raises ValueTooLargeError with size and limit."""
        with pytest.raises(ValueTooLargeError) as info:
            CacheSerializer(max_size=50, compression=False).serialize("x" * 100)
        assert (2 + 102, 50) == (info.value.size, info.value.limit)

    def test_at_limit(self) -> None:
        """A payload of exactly max_size bytes is accepted."""
        payload = CacheSerializer(max_size=2 + 102, compression=False).serialize("x" * 100)
        assert 104 == len(payload)

    def test_limit_applies_after_compression(self) -> None:
        """The compressed size is what counts."""
        serializer = CacheSerializer(max_size=200, threshold=10)
        payload = serializer.serialize("x" * 1000)
        assert "x" * 1000 == serializer.deserialize(payload)

    def test_is_value_error(self) -> None:
        """ValueTooLargeError is caught by ``except ValueError``."""
        with pytest.raises(ValueError, match="max_value_size"):
            CacheSerializer(max_size=3).serialize("xyz")


class TestDeserializationError:
    """Foreign, corrupt or hostile bytes raise DeserializationError."""

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"", id="empty"),
            pytest.param(bytes((MAGIC,)), id="magic-only"),
            pytest.param(b'{"a":1}', id="foreign-json"),
            pytest.param(pickle.dumps({"a": 1}), id="pickle"),
            pytest.param(bytes((0xC4, FORMAT_JSON)) + b"1", id="wrong-magic"),
            pytest.param(bytes((MAGIC, 0x02)) + b"1", id="unknown-format"),
            pytest.param(bytes((MAGIC, 0x00)) + b"1", id="format-zero"),
            pytest.param(bytes((MAGIC, FORMAT_JSON | (4 << 4))) + b"1", id="unknown-compression"),
            pytest.param(bytes((MAGIC, FORMAT_JSON | (15 << 4))) + b"1", id="compression-15"),
            pytest.param(bytes((MAGIC, FORMAT_JSON)) + b"{not json", id="bad-json"),
            pytest.param(bytes((MAGIC, FORMAT_JSON)), id="empty-body"),
            pytest.param(
                bytes((MAGIC, FORMAT_JSON | (COMPRESSION_ZLIB << 4))) + b"garbage",
                id="bad-zlib",
            ),
        ],
    )
    def test_rejected(self, data: bytes) -> None:
        """The payload is not a valid coherent_cache payload."""
        with pytest.raises(DeserializationError):
            CacheSerializer().deserialize(data)

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    @pytest.mark.parametrize("cut", [1, 5, 20])
    def test_truncated_compressed(self, algorithm: Algorithm, cut: int) -> None:
        """A compressed payload missing its tail is rejected."""
        serializer = CacheSerializer(algorithm=algorithm)
        payload = serializer.serialize(large_value())
        assert CODES[algorithm] == header_code(payload)
        with pytest.raises(DeserializationError):
            serializer.deserialize(payload[:-cut])

    def test_zlib_bomb(self) -> None:
        """A zlib payload inflating beyond max_decompressed_size is rejected."""
        body = zlib.compress(b'"' + b"a" * 1_000_000 + b'"', 9)
        payload = bytes((MAGIC, FORMAT_JSON | (COMPRESSION_ZLIB << 4))) + body
        with pytest.raises(DeserializationError, match="limit"):
            CacheSerializer(max_decompressed_size=1000).deserialize(payload)

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    def test_bomb_rejected(self, algorithm: Algorithm) -> None:
        """A payload of any algorithm inflating beyond the limit is rejected."""
        payload = CacheSerializer(algorithm=algorithm, threshold=0).serialize("a" * 100_000)
        assert CODES[algorithm] == header_code(payload)
        with pytest.raises(DeserializationError):
            CacheSerializer(max_decompressed_size=1000).deserialize(payload)

    @pytest.mark.parametrize("algorithm", ALGORITHMS)
    def test_bomb_does_not_allocate_beyond_limit(self, algorithm: Algorithm) -> None:
        """Rejecting a bomb does not first inflate it: memory stays near the limit."""
        payload = CacheSerializer(algorithm=algorithm, threshold=0).serialize("a" * 20_000_000)
        reader = CacheSerializer(max_decompressed_size=1000)
        tracemalloc.start()
        try:
            with pytest.raises(DeserializationError):
                reader.deserialize(payload)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2_000_000, f"peak {peak} bytes while rejecting a bomb"

    def test_within_limit_accepted(self) -> None:
        """A payload inflating to within max_decompressed_size is decoded."""
        payload = CacheSerializer(threshold=0).serialize("a" * 500)
        assert "a" * 500 == CacheSerializer(max_decompressed_size=1000).deserialize(payload)

    def test_is_value_error(self) -> None:
        """DeserializationError is caught by ``except ValueError``."""
        with pytest.raises(ValueError, match="header"):
            CacheSerializer().deserialize(b"")


class TestConstruction:
    """Constructor argument checks."""

    def test_unknown_algorithm(self) -> None:
        """An unknown compression algorithm is rejected."""
        with pytest.raises(ValueError, match="brotli"):
            CacheSerializer(algorithm="brotli")  # type: ignore[arg-type]
