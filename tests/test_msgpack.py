"""The optional MessagePack format: round trips, mixed formats on one server, bad input."""

from __future__ import annotations

import msgpack
import pytest

from coherent_cache import (
    CacheConfig,
    CacheSerializer,
    CacheTier,
    DeserializationError,
    SerializationError,
)
from coherent_cache.serializer import FORMAT_MSGPACK, FORMAT_MSGPACK_ENVELOPE, MAGIC

from .conftest import ManagerFactory


class TestSerializer:
    @pytest.mark.parametrize("compression", [False, True])
    def test_round_trip(self, compression: bool) -> None:
        """Values survive MessagePack, bytes and non-string keys included."""
        codec = CacheSerializer(format="msgpack", compression=compression, threshold=10)
        value = {"a": [1, 2.5, None, True], 7: b"\x00raw", "long": "x" * 300}
        payload = codec.serialize(value)
        assert FORMAT_MSGPACK == payload[1] & 0x0F
        assert value == codec.deserialize(payload)

    def test_envelope_round_trip(self) -> None:
        """Freshness and tags travel in a MessagePack envelope too."""
        codec = CacheSerializer(format="msgpack")
        payload = codec.pack(codec.dumps({"v": 1}), fresh_until_ms=123, tags=("t",))
        assert FORMAT_MSGPACK_ENVELOPE == payload[1] & 0x0F
        entry = codec.deserialize_entry(payload)
        assert ({"v": 1}, 123, ("t",)) == (entry.value, entry.fresh_until_ms, entry.tags)

    def test_json_reader_decodes_msgpack_and_back(self) -> None:
        """Every reader decodes every format, so instances can switch one at a time."""
        as_json, as_msgpack = CacheSerializer(), CacheSerializer(format="msgpack")
        assert [1, "a"] == as_json.deserialize(as_msgpack.serialize([1, "a"]))
        assert [1, "a"] == as_msgpack.deserialize(as_json.serialize([1, "a"]))

    def test_unencodable_value_names_its_type(self) -> None:
        """A value MessagePack cannot encode raises SerializationError naming the type."""
        codec = CacheSerializer(format="msgpack")
        with pytest.raises(SerializationError, match="complex") as info:
            codec.serialize({"when": 1j})
        assert complex is info.value.value_type

    @pytest.mark.parametrize(
        "body",
        [
            b"\xc1",  # never-used MessagePack byte
            msgpack.packb([1, 2]),  # an envelope must have three items
            msgpack.packb([None, [], "not bin"]),
        ],
    )
    def test_corrupt_payloads_are_rejected(self, body: bytes) -> None:
        """Corrupt MessagePack (plain or envelope) raises DeserializationError."""
        codec = CacheSerializer(format="msgpack")
        for fmt in (FORMAT_MSGPACK_ENVELOPE,) if body != b"\xc1" else (FORMAT_MSGPACK,):
            with pytest.raises(DeserializationError):
                codec.deserialize(bytes((MAGIC, fmt)) + body)

    def test_unknown_format_is_a_config_error(self) -> None:
        """Only json and msgpack exist."""
        with pytest.raises(ValueError, match="format"):
            CacheSerializer(format="yaml")  # type: ignore[arg-type]


class TestThroughTheCache:
    async def test_msgpack_instance_and_json_instance_share_entries(
        self, make_manager: ManagerFactory
    ) -> None:
        """A msgpack-writing instance and a JSON-writing one read each other's entries."""
        packer = await make_manager(serialization_format="msgpack")
        jsoner = await make_manager()
        await packer.set("m", {"n": 1}, ttl=60)
        await jsoner.set("j", {"n": 2}, ttl=60)
        assert {"n": 1} == await jsoner.get("m", tier=CacheTier.L2)
        assert {"n": 2} == await packer.get("j", tier=CacheTier.L2)
        assert {"n": 1} == await packer.get("m")  # L1 holds the decoded MessagePack form

    def test_config_field(self) -> None:
        """serialization_format is a CacheConfig field, json by default."""
        assert "json" == CacheConfig().serialization_format
        assert "msgpack" == CacheConfig(serialization_format="msgpack").serialization_format
