"""Property-based tests (hypothesis): serializer, key generator and bus message parser.

Each property runs a few hundred generated examples, so the whole file stays within a few
seconds; the bus property also runs once against a real server (one PUBLISH per sample).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import random
import subprocess
import sys
import uuid
import zlib
from typing import Any, Literal

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from coherent_cache import (
    BusMessage,
    CacheConfig,
    CacheKeyGenerator,
    CacheSerializer,
    DeserializationError,
    InvalidationBus,
    InvalidKeyError,
)
from coherent_cache.keys import compile_pattern, escape_glob
from coherent_cache.serializer import MAGIC

from .conftest import ManagerFactory, eventually

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Format = Literal["json", "msgpack"]
Algorithm = Literal["zlib", "zstd", "lz4"]

# -- serializer --------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=20), children, max_size=8)
    ),
    max_leaves=40,
)
CODECS = st.tuples(
    st.sampled_from(["json", "msgpack"]),
    st.sampled_from(["zlib", "zstd", "lz4"]),
    st.booleans(),  # compression on
    st.integers(min_value=0, max_value=128),  # threshold
)
TAGS = st.lists(st.text(min_size=1, max_size=10), max_size=3).map(tuple)


class TestSerializerProperties:
    """Every JSON-able value round trips; any bytes decode or raise DeserializationError."""

    @PROPERTY
    @given(value=JSON_VALUES, codec=CODECS, fresh=st.none() | st.integers(0, 2**53), tags=TAGS)
    def test_round_trip_every_format_and_compression(
        self,
        value: Any,
        codec: tuple[Format, Algorithm, bool, int],
        fresh: int | None,
        tags: tuple[str, ...],
    ) -> None:
        """For json and msgpack, each compression, plain or enveloped (freshness, tags), a
        JSON-able value decodes to an equal value, and any other serializer reads it too."""
        fmt, algorithm, compression, threshold = codec
        writer = CacheSerializer(
            format=fmt, compression=compression, algorithm=algorithm, threshold=threshold
        )
        payload = writer.pack(writer.dumps(value), fresh_until_ms=fresh, tags=tags)
        entry = writer.deserialize_entry(payload)
        assert (value, fresh, tags) == (entry.value, entry.fresh_until_ms, entry.tags)
        # The header, not the reader's settings, selects format and codec.
        assert value == CacheSerializer().deserialize_entry(payload).value

    @PROPERTY
    @given(data=st.binary(max_size=300), fmt=st.sampled_from(["json", "msgpack"]))
    def test_any_bytes_decode_or_raise_deserialization_error(
        self, data: bytes, fmt: Format
    ) -> None:
        """Arbitrary bytes: a value or DeserializationError, never another exception."""
        try:
            CacheSerializer(format=fmt).deserialize_entry(data)
        except DeserializationError:
            pass

    @PROPERTY
    @given(
        flags=st.integers(0, 255),
        body=st.binary(max_size=300),
        compress=st.sampled_from([None, "zlib"]),
    )
    def test_valid_header_with_garbage_body(
        self, flags: int, body: bytes, compress: str | None
    ) -> None:
        """Our magic byte, any flags, any body (optionally really zlib-compressed, so the
        decoder gets past inflation): a value or DeserializationError."""
        if compress == "zlib":
            body = zlib.compress(body)
        data = bytes((MAGIC, flags)) + body
        formats: tuple[Format, ...] = ("json", "msgpack")
        for fmt in formats:
            try:
                CacheSerializer(format=fmt).deserialize_entry(data)
            except DeserializationError:
                pass

    @PROPERTY
    @given(value=JSON_VALUES, cut=st.integers(min_value=0), flip=st.integers(min_value=0))
    def test_truncated_or_bit_flipped_payloads(self, value: Any, cut: int, flip: int) -> None:
        """A real payload, truncated or with one bit flipped: a value or DeserializationError."""
        serializer = CacheSerializer(threshold=0)
        payload = serializer.serialize(value)
        truncated = payload[: cut % (len(payload) + 1)]
        flipped = bytearray(payload)
        flipped[flip % len(payload)] ^= 1 << (flip % 8)
        for data in (truncated, bytes(flipped)):
            try:
                serializer.deserialize_entry(data)
            except DeserializationError:
                pass


# -- key generator -------------------------------------------------------------------------


class Color(enum.Enum):
    """An enum as a key part."""

    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Point:
    """A dataclass as a key part."""

    x: int
    y: str


KEY_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.uuids()
    | st.dates()
    | st.sampled_from(Color)
    | st.binary(max_size=10)
)
KEY_PARTS = st.recursive(
    KEY_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.frozensets(st.text(max_size=8), max_size=4)
        | st.builds(Point, st.integers(), st.text(max_size=8))
    ),
    max_leaves=12,
)


def _reordered(value: Any) -> Any:
    """An equal value built in another order (dicts reversed, sets rebuilt)."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, frozenset):
        return frozenset(sorted(value, reverse=True))
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


# Shapes of a "function signature": fixed arity and a type per position. Strings may hold
# anything but the separator, which CacheKeyGenerator does not escape (see security.md).
NO_SEP_TEXT = st.text(max_size=30).filter(lambda s: ":" not in s)
SIGNATURE_ARGS = st.tuples(
    st.integers(), NO_SEP_TEXT, st.lists(st.text(max_size=10), max_size=5).map(tuple), st.booleans()
)


class TestKeyGeneratorProperties:
    """Deterministic, collision-free for one signature, glob-safe."""

    @PROPERTY
    @given(args=st.lists(KEY_PARTS, max_size=4), kwargs=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(str.isidentifier), KEY_PARTS, max_size=3
    ))  # fmt: skip
    def test_deterministic(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Equal arguments (dicts and sets built in another order, keywords passed in
        another order) give the same key from any generator instance, or the same typed
        error (never another exception)."""
        if not args and not kwargs:
            return
        reordered = {k: _reordered(kwargs[k]) for k in reversed(list(kwargs))}
        results = []
        for call_args, call_kwargs in ((args, kwargs), ([_reordered(a) for a in args], reordered)):
            try:
                results.append(CacheKeyGenerator("fn").generate_key(*call_args, **call_kwargs))
            except InvalidKeyError as exc:  # e.g. an int beyond 64 bits inside a list
                results.append(type(exc).__name__)
        assert results[0] == results[1]

    def test_deterministic_across_processes(self) -> None:
        """500 argument tuples (sets of strings included, whose iteration order depends on
        the hash seed) give the same keys in a process with another PYTHONHASHSEED."""
        script = (
            "import json, sys\n"
            "from coherent_cache import CacheKeyGenerator\n"
            "gen = CacheKeyGenerator('fn')\n"
            "rows = json.load(sys.stdin)\n"
            "print(json.dumps([gen.generate_key(a, b, frozenset(c), d=d) "
            "for a, b, c, d in rows]))\n"
        )
        rng = random.Random(7)

        def word() -> str:
            return "".join(rng.choice("abcxyz:é*[") for _ in range(rng.randint(0, 6)))

        rows: list[tuple[int, str, list[str], dict[str, str]]] = [
            (rng.randint(-(10**6), 10**6), word(), [word() for _ in range(5)], {word(): word()})
            for _ in range(500)
        ]
        here = CacheKeyGenerator("fn")
        expected = [here.generate_key(a, b, frozenset(c), d=d) for a, b, c, d in rows]
        result = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(rows),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "12345"},
        )
        assert expected == json.loads(result.stdout)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(SIGNATURE_ARGS, min_size=20, max_size=100, unique=True))
    def test_no_collisions_for_one_signature(self, sample: list[tuple[Any, ...]]) -> None:
        """For one function signature (fixed arity and types), different argument tuples
        get different keys; long keys are hashed (BLAKE2b-128) and stay distinct too."""
        for gen in (CacheKeyGenerator("fn"), CacheKeyGenerator("fn", max_length=40)):
            keys = {gen.generate_key(*args) for args in sample}
            assert len(sample) == len(keys)

    def test_no_collisions_in_a_large_sample(self) -> None:
        """20,000 distinct argument tuples of one signature (ints, strings without the
        separator, lists of any strings, dicts, floats): 20,000 distinct keys, readable or
        hashed."""
        rng = random.Random(3)
        alphabet = "ab*?[]\\:é\x00 ="

        def text(sep_ok: bool) -> str:
            chars = alphabet if sep_ok else alphabet.replace(":", "")
            return "".join(rng.choice(chars) for _ in range(rng.randint(0, 6)))

        sample = {
            (
                rng.randint(-50, 50),
                text(False),
                tuple(text(True) for _ in range(rng.randint(0, 3))),
                rng.choice([0.5, -0.0, 1e300, float("inf"), 2.0]),
            )
            for _ in range(20_000)
        }
        for gen in (CacheKeyGenerator("fn"), CacheKeyGenerator("fn", max_length=40)):
            keys = {
                gen.generate_key(a, b, list(c), d, opts={"c": list(c)}) for a, b, c, d in sample
            }
            assert len(sample) == len(keys)

    @PROPERTY
    @given(value=st.text(max_size=20), other=st.text(max_size=20))
    def test_pattern_arguments_are_escaped(self, value: str, other: str) -> None:
        """generate_pattern_key escapes glob metacharacters in arguments: the pattern
        matches the key built from the same value and no key built from another one
        (checked with the bytewise Redis glob matcher of keys.py)."""
        gen = CacheKeyGenerator("user")
        pattern = gen.generate_pattern_key("{}:*", value)
        match = compile_pattern(pattern)
        assert match(gen.generate_key(value, "anything"))
        if value != other and ":" not in value + other:
            assert not match(gen.generate_key(other, "anything"))

    @PROPERTY
    @given(text=st.text(alphabet="*?[]\\^-ab:é", max_size=20), other=st.text(max_size=20))
    def test_escape_glob_matches_itself_only(self, text: str, other: str) -> None:
        """escape_glob(s) matches s, and s + anything longer never."""
        match = compile_pattern(escape_glob(text))
        assert match(text)
        assert match(other) == (other == text)
        assert not match(text + "x")


# -- bus message parser --------------------------------------------------------------------

BUS_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, 0, "1", None, 1.0, True]),
        "op": st.sampled_from(["delete", "clear_pattern", "clear", "tags", "drop", 1, None]),
        "keys": st.lists(st.text(max_size=10), max_size=3) | JSON_SCALARS,
        "pattern": st.text(max_size=10) | JSON_SCALARS,
        "tags": st.lists(st.text(max_size=10), max_size=3) | JSON_SCALARS,
        "origin": st.text(max_size=10) | JSON_SCALARS,
        "ts": st.integers() | st.floats() | JSON_SCALARS,
        "traceparent": st.text(max_size=10) | JSON_SCALARS,
        "sig": st.text(max_size=10),
    },
)
BUS_INPUTS = (
    st.binary(max_size=200)
    | JSON_VALUES.map(orjson.dumps)
    | BUS_FIELDS.map(lambda body: json.dumps(body, allow_nan=True).encode())
)


def _bus(**fields: Any) -> tuple[InvalidationBus, list[BusMessage]]:
    applied: list[BusMessage] = []
    config = CacheConfig(redis_url="redis://127.0.0.1:1/0", namespace="prop", **fields)
    bus = InvalidationBus(
        config,
        origin="me",
        on_message=applied.append,
        on_subscribed=lambda: None,
        on_lost=lambda _t: None,
    )
    return bus, applied


class TestBusParserProperties:
    """Any bytes on the channel are a valid message (applied) or a counted drop."""

    @PROPERTY
    @given(data=BUS_INPUTS)
    def test_any_input_is_applied_or_counted(self, data: bytes) -> None:
        """Through the listener's real decode path: received +1, and either applied +1
        with a message that re-encodes to itself, or dropped +1; nothing raises."""
        bus, applied = _bus()
        bus._handle([b"message", b"prop:invalidate", data])
        stats = bus.stats()
        assert 1 == stats["received"]
        assert 1 == stats["applied"] + stats["dropped"] + stats["own_skipped"]
        assert len(applied) == stats["applied"]
        if applied:
            message = applied[0]
            assert message == BusMessage.decode(message.encode())

    @PROPERTY
    @given(
        keys=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5),
        origin=st.text(max_size=10).filter(lambda s: s != "me"),
    )
    def test_valid_deletes_are_applied(self, keys: list[str], origin: str) -> None:
        """Every well-formed delete from another origin is applied with its keys."""
        bus, applied = _bus()
        data = orjson.dumps({"v": 1, "op": "delete", "keys": keys, "origin": origin})
        bus._handle([b"message", b"prop:invalidate", data])
        assert [tuple(keys)] == [m.keys for m in applied]

    async def test_real_server_random_messages_counted(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """400 random payloads PUBLISHed on a real server: every one is received and
        counted as applied or dropped, and the listener still applies a delete after."""
        cache = await make_manager()
        rng = random.Random(11)
        samples: list[bytes] = []
        for i in range(400):
            kind = i % 4
            if kind == 0:
                samples.append(rng.randbytes(rng.randint(0, 64)))
            elif kind == 1:
                samples.append(b'{"v": 1, "op": "delete", "keys": [' + rng.randbytes(8) + b"]}")
            elif kind == 2:
                body: dict[str, Any] = {"v": rng.choice([1, 2, "1"]), "op": rng.choice(
                    ["delete", "clear_pattern", "tags", "bogus"]
                )}  # fmt: skip
                body[rng.choice(["keys", "pattern", "tags"])] = rng.choice(
                    [["k"], [], "k", 1, None, ["a[", "b"]]
                )
                samples.append(json.dumps(body).encode())
            else:
                samples.append(str(uuid.UUID(int=rng.getrandbits(128))).encode())
        channel = cache.config.channel
        async with raw_redis.pipeline(transaction=False) as pipe:
            for data in samples:
                _ = pipe.publish(channel, data)
            _ = await pipe.execute()
        assert cache.bus is not None
        bus = cache.bus

        def counted() -> int:
            stats = bus.stats()
            return stats["applied"] + stats["dropped"]

        await eventually(counted, expect=len(samples), within=10)
        assert len(samples) == bus.stats()["received"]
        assert bus.stats()["dropped"] > 0
        await cache.set("after", 1)
        await raw_redis.publish(channel, b'{"v":1,"op":"delete","keys":["after"]}')
        await eventually(lambda: cache.l1.get("after") is None)
