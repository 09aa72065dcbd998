"""Tests of key generation, key and pattern validation, Redis glob matching and prefixing."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import os
import subprocess
import sys
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from coherent_cache import CacheConfig, CacheKeyGenerator, ConfigurationError, InvalidKeyError
from coherent_cache.keys import (
    MAX_KEY_LENGTH,
    compile_pattern,
    escape_glob,
    literal_of,
    redis_key,
    validate_key,
    validate_pattern,
)


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    tags: frozenset[str]


class User(BaseModel):
    id: int
    name: str
    roles: list[str]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Widget:
    """A class without any deterministic encoding (default repr)."""


# Runs in a fresh interpreter; must build the same arguments as `determinism_args` below.
_SUBPROCESS_SCRIPT = """
import dataclasses
from coherent_cache import CacheKeyGenerator

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    tags: frozenset[str]

print(CacheKeyGenerator("p").generate_key(
    {"beta": {"y", "x", "z"}, "alpha": [1, 2.5, None]},
    {"kiwi", "apple", "mango", "pear", "fig"},
    Point(3, frozenset({"q", "r", "s", "t"})),
    flags={"on", "off", "auto"},
    point=Point(1, frozenset({"one", "two", "three"})),
))
"""


def determinism_args() -> str:
    """The key of the subprocess script's arguments, computed in this process."""
    return CacheKeyGenerator("p").generate_key(
        {"beta": {"y", "x", "z"}, "alpha": [1, 2.5, None]},
        {"kiwi", "apple", "mango", "pear", "fig"},
        Point(3, frozenset({"q", "r", "s", "t"})),
        flags={"on", "off", "auto"},
        point=Point(1, frozenset({"one", "two", "three"})),
    )


class TestGenerateKey:
    def test_string_parts_are_escaped_so_parts_never_run_together(self) -> None:
        """The separator, '=' and '%' inside str arguments are percent-escaped; other
        types keep their readable encoding."""
        gen = CacheKeyGenerator("f")
        keys = {
            gen.generate_key("a:b", "c"),
            gen.generate_key("a", "b:c"),
            gen.generate_key("a=1"),
            gen.generate_key(a="1"),
            gen.generate_key("a%3D1"),
        }
        assert 5 == len(keys)
        assert "f:a%3Ab:c" == gen.generate_key("a:b", "c")
        assert "f:user:42" == gen.generate_key("user", 42)
        assert "f:2024-01-02T03:04:05" == gen.generate_key(datetime.datetime(2024, 1, 2, 3, 4, 5))
        assert "f|a:b|c" == CacheKeyGenerator("f", separator="|").generate_key("a:b", "c")
        assert "f|a%7Cb" == CacheKeyGenerator("f", separator="|").generate_key("a|b")

    def test_pattern_keys_escape_like_keys(self) -> None:
        """A pattern filled with a str holding the separator matches that key only."""
        gen = CacheKeyGenerator("f")
        pattern = gen.generate_pattern_key("{}:*", "a:b")
        match = compile_pattern(pattern)
        assert match(gen.generate_key("a:b", "c"))
        assert not match(gen.generate_key("a", "b:c"))

    """CacheKeyGenerator.generate_key builds readable, deterministic keys."""

    def test_documented_example(self) -> None:
        """Positional parts in order, keyword parts as name=value, structures as JSON."""
        expected = 'user:42:fields=["a","b"]'
        assert expected == CacheKeyGenerator().generate_key("user", 42, fields=["a", "b"])

    def test_prefix(self) -> None:
        """The prefix comes first, joined with the separator."""
        assert "app:user:1" == CacheKeyGenerator("app").generate_key("user", 1)

    def test_prefix_alone(self) -> None:
        """With a prefix and no parts the key is the prefix."""
        assert "app" == CacheKeyGenerator("app").generate_key()

    def test_separator(self) -> None:
        """A custom separator joins prefix and parts."""
        assert "app/user/1" == CacheKeyGenerator("app", separator="/").generate_key("user", 1)

    def test_no_parts_no_prefix(self) -> None:
        """A key needs at least one part or a prefix."""
        with pytest.raises(InvalidKeyError):
            CacheKeyGenerator().generate_key()

    def test_kwargs_order_independent(self) -> None:
        """Keyword arguments are sorted by name."""
        gen = CacheKeyGenerator()
        assert gen.generate_key(a=1, b=2, c=3) == gen.generate_key(c=3, a=1, b=2)

    def test_dict_order_independent(self) -> None:
        """Dicts with the same items in a different order give the same key."""
        gen = CacheKeyGenerator()
        first = gen.generate_key({"a": 1, "b": {"x": 1, "y": 2}})
        second = gen.generate_key({"b": {"y": 2, "x": 1}, "a": 1})
        assert first == second

    def test_set_order_independent(self) -> None:
        """A set and a frozenset built in different orders give the same key."""
        gen = CacheKeyGenerator()
        words = [f"w{i}" for i in range(50)]
        assert gen.generate_key(set(words)) == gen.generate_key(frozenset(words[::-1]))

    def test_positional_order_matters(self) -> None:
        """Positional parts keep their order."""
        gen = CacheKeyGenerator()
        assert gen.generate_key(1, 2) != gen.generate_key(2, 1)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("text", "text"),
            (42, "42"),
            (-1.5, "-1.5"),
            (None, "null"),
            (True, "true"),
            (False, "false"),
            (b"\x00\xff", "00ff"),
            (decimal.Decimal("1.25"), "1.25"),
            ({"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'),
            ({1: "x"}, '{"1":"x"}'),
            ([1, "x", None], '[1,"x",null]'),
            ((1, 2), "[1,2]"),
            ({3, 1, 2}, "[1,2,3]"),
            (frozenset({"b", "a"}), '["a","b"]'),
            (Point(1, frozenset({"b", "a"})), '{"tags":["a","b"],"x":1}'),
            (User(id=7, name="Ann", roles=["x"]), '{"id":7,"name":"Ann","roles":["x"]}'),
            (Color.RED, "red"),
            ([Color.BLUE], '["blue"]'),
            (datetime.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
            (
                datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
                "2024-01-02T03:04:05+00:00",
            ),
            (datetime.date(2024, 1, 2), "2024-01-02"),
            (
                uuid.UUID("12345678-1234-5678-1234-567812345678"),
                "12345678-1234-5678-1234-567812345678",
            ),
            (
                {"when": datetime.date(2024, 1, 2), "id": uuid.UUID(int=1)},
                '{"id":"00000000-0000-0000-0000-000000000001","when":"2024-01-02"}',
            ),
        ],
    )
    def test_structured_values(self, value: object, expected: str) -> None:
        """Each supported type has one canonical encoding."""
        assert expected == CacheKeyGenerator().generate_key(value)

    def test_dataclass_and_model_equal_to_dict(self) -> None:
        """A dataclass or pydantic model encodes as the dict of its fields."""
        gen = CacheKeyGenerator()
        model = User(id=1, name="a", roles=[])
        assert gen.generate_key({"id": 1, "name": "a", "roles": []}) == gen.generate_key(model)

    @pytest.mark.parametrize("value", [Widget(), [Widget()], {"w": Widget()}, {Widget()}])
    def test_default_repr_object_rejected(self, value: object) -> None:
        """An object without a deterministic encoding raises InvalidKeyError naming its type."""
        with pytest.raises(InvalidKeyError, match="Widget"):
            CacheKeyGenerator().generate_key(value)

    def test_plain_object_rejected(self) -> None:
        """A bare object() is rejected rather than keyed by its address."""
        with pytest.raises(InvalidKeyError, match="object"):
            CacheKeyGenerator().generate_key(object())

    def test_deterministic_across_processes(self) -> None:
        """Keys of dicts, sets and dataclasses do not depend on the process' hash seed."""
        expected = determinism_args()
        for seed in ("0", "1", "4242"):
            env = {**os.environ, "PYTHONHASHSEED": seed}
            result = subprocess.run(
                [sys.executable, "-c", _SUBPROCESS_SCRIPT],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            assert expected == result.stdout.strip()

    @pytest.mark.parametrize("max_length", [31, MAX_KEY_LENGTH + 1])
    def test_max_length_bounds(self, max_length: int) -> None:
        """max_length must be between 32 and MAX_KEY_LENGTH."""
        with pytest.raises(InvalidKeyError):
            CacheKeyGenerator(max_length=max_length)

    def test_huge_int_inside_a_structure_is_a_key_error(self) -> None:
        """An int beyond 64 bits inside a list or dataclass raises InvalidKeyError (found
        by the property tests; it used to escape as orjson's TypeError)."""
        with pytest.raises(InvalidKeyError, match="64-bit"):
            CacheKeyGenerator().generate_key([2**70])
        assert str(2**70) == CacheKeyGenerator().generate_key(2**70)

    def test_nan_and_inf_inside_a_structure_differ_from_none(self) -> None:
        """JSON has no nan/inf: inside a structure they are encoded as their str, so
        [nan], [inf] and [None] get three different keys."""
        gen = CacheKeyGenerator()
        keys = {gen.generate_key([v]) for v in (float("nan"), float("inf"), None)}
        assert 3 == len(keys)

    def test_empty_separator_rejected(self) -> None:
        """An empty separator is rejected."""
        with pytest.raises(InvalidKeyError):
            CacheKeyGenerator(separator="")


class TestHashedKeys:
    """Long keys are hashed with BLAKE2b, keeping the prefix."""

    def test_short_key_readable(self) -> None:
        """A key within max_length is kept as it is."""
        body = "x" * 40
        assert f"user:{body}" == CacheKeyGenerator("user", max_length=45).generate_key(body)

    def test_long_key_hashed_with_prefix(self) -> None:
        """A key over max_length becomes prefix + BLAKE2b-128 hex digest of the parts."""
        body = "x" * 300
        digest = hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
        assert f"user:{digest}" == CacheKeyGenerator("user").generate_key(body)

    def test_hashed_keys_fixed_length(self) -> None:
        """Hashed keys of different long inputs have the same length and differ."""
        gen = CacheKeyGenerator("user", max_length=64)
        first = gen.generate_key("a" * 100)
        second = gen.generate_key("b" * 5000, extra=list(range(100)))
        assert (len("user:") + 32, len("user:") + 32) == (len(first), len(second))
        assert first != second

    def test_prefix_too_long_for_hashed_keys_is_rejected(self) -> None:
        """A prefix that would make hashed keys exceed max_length raises at construction."""
        with pytest.raises(InvalidKeyError, match="max_length"):
            CacheKeyGenerator("p" * 40, max_length=64)

    def test_length_measured_in_bytes(self) -> None:
        """max_length counts UTF-8 bytes, so multibyte keys are hashed sooner."""
        body = "é" * 20  # 20 characters, 40 bytes
        digest = hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
        assert digest == CacheKeyGenerator(max_length=32).generate_key(body)

    def test_generate_hash_key_always_hashes(self) -> None:
        """generate_hash_key hashes even a short key."""
        digest = hashlib.blake2b(b"a:b=1", digest_size=16).hexdigest()
        assert f"p:{digest}" == CacheKeyGenerator("p").generate_hash_key("a", b=1)

    def test_generate_hash_key_without_prefix(self) -> None:
        """Without a prefix a hash key is 32 hex digits."""
        key = CacheKeyGenerator().generate_hash_key({"q": 1})
        assert 32 == len(key)
        assert set(key) <= set("0123456789abcdef")

    def test_hash_key_order_independent(self) -> None:
        """generate_hash_key is as order independent as generate_key."""
        gen = CacheKeyGenerator()
        assert gen.generate_hash_key(b=1, a={"y": 1, "x": 2}) == gen.generate_hash_key(
            a={"x": 2, "y": 1}, b=1
        )


class TestGeneratePatternKey:
    """generate_pattern_key fills placeholders with glob-escaped values."""

    def test_documented_example(self) -> None:
        """A '*' in a value is escaped; the pattern's own '*' is kept."""
        expected = "user:a\\*:*"
        assert expected == CacheKeyGenerator().generate_pattern_key(
            "user:{user_id}:*", user_id="a*"
        )

    def test_value_cannot_widen_pattern(self) -> None:
        """The escaped value matches only itself."""
        pattern = CacheKeyGenerator().generate_pattern_key("user:{user_id}:*", user_id="a*")
        match = compile_pattern(pattern)
        assert (True, False, False) == (
            match("user:a*:profile"),
            match("user:abc:profile"),
            match("user:b:profile"),
        )

    @pytest.mark.parametrize("value", ["?", "[ab]", "x\\", "[^a]", "**"])
    def test_every_glob_char_escaped(self, value: str) -> None:
        """?, [], ^ and backslash in a value are taken literally."""
        pattern = CacheKeyGenerator().generate_pattern_key("k:{}", value)
        match = compile_pattern(pattern)
        assert (True, False) == (match(f"k:{value}"), match("k:a"))

    def test_positional_and_structured_values(self) -> None:
        """Values are encoded like generate_key parts."""
        pattern = CacheKeyGenerator().generate_pattern_key("q:{}:{n}:*", {"b": 1, "a": 2}, n=5)
        assert 'q:{"a":2,"b":1}:5:*' == pattern

    def test_prefix(self) -> None:
        """The generator's prefix is prepended to the pattern."""
        assert "app:user:*" == CacheKeyGenerator("app").generate_pattern_key("user:*")

    def test_prefix_glob_chars_literal(self) -> None:
        """A prefix with glob characters (valid in keys) matches only itself in a pattern."""
        gen = CacheKeyGenerator("a*")
        match = compile_pattern(gen.generate_pattern_key("{}:*", "x"))
        assert (True, False) == (match(gen.generate_key("x", 1)), match("ab:x:1"))

    def test_missing_placeholder_value(self) -> None:
        """A placeholder without a value raises InvalidKeyError."""
        with pytest.raises(InvalidKeyError):
            CacheKeyGenerator().generate_pattern_key("user:{user_id}:*")

    def test_unencodable_value(self) -> None:
        """A value without deterministic encoding raises InvalidKeyError."""
        with pytest.raises(InvalidKeyError, match="Widget"):
            CacheKeyGenerator().generate_pattern_key("u:{}", Widget())


class TestValidateKey:
    """validate_key accepts non-empty str of at most 1024 UTF-8 bytes."""

    @pytest.mark.parametrize("key", ["a", "user:1", "with*glob?[chars]", "x" * MAX_KEY_LENGTH])
    def test_valid(self, key: str) -> None:
        """A valid key is returned unchanged (glob characters are literal in keys)."""
        assert key == validate_key(key)

    @pytest.mark.parametrize("key", [1, None, b"bytes", ["k"]])
    def test_not_str(self, key: object) -> None:
        """A non-str key raises InvalidKeyError naming the type."""
        with pytest.raises(InvalidKeyError, match=type(key).__name__):
            validate_key(key)

    def test_empty(self) -> None:
        """An empty key raises InvalidKeyError."""
        with pytest.raises(InvalidKeyError, match="empty"):
            validate_key("")

    def test_too_long(self) -> None:
        """A key of 1025 bytes raises InvalidKeyError."""
        with pytest.raises(InvalidKeyError, match="1025"):
            validate_key("x" * (MAX_KEY_LENGTH + 1))

    @pytest.mark.parametrize(("char", "size"), [("é", 2), ("€", 3), ("\U0001f600", 4)])
    def test_multibyte_counted_in_bytes(self, char: str, size: int) -> None:
        """Length is measured in UTF-8 bytes, not characters."""
        fits = char * (MAX_KEY_LENGTH // size)
        assert fits == validate_key(fits)
        with pytest.raises(InvalidKeyError):
            validate_key(fits + char)

    def test_is_value_error(self) -> None:
        """InvalidKeyError is caught by ``except ValueError``."""
        with pytest.raises(ValueError, match="empty"):
            validate_key("")


class TestValidatePattern:
    """validate_pattern applies key rules plus glob syntax checks."""

    @pytest.mark.parametrize("pattern", ["*", "user:*", "a?[bc][^d]\\*"])
    def test_valid(self, pattern: str) -> None:
        """A valid pattern is returned unchanged."""
        assert pattern == validate_pattern(pattern)

    @pytest.mark.parametrize(
        "pattern", [5, None, "", "x" * (MAX_KEY_LENGTH + 1), "é" * 513, "[abc", "a\\"]
    )
    def test_invalid(self, pattern: object) -> None:
        """Non-str, empty, too long (in bytes), unterminated '[' and a lone '\\' are rejected."""
        with pytest.raises(InvalidKeyError):
            validate_pattern(pattern)


class TestCompilePattern:
    """compile_pattern matches like Redis' stringmatchlen."""

    @pytest.mark.parametrize(
        ("pattern", "key", "expected"),
        [
            ("*", "", True),
            ("*", "anything:at:all", True),
            ("*", "multi\nline", True),
            ("user:*", "user:1", True),
            ("user:*", "users:1", False),
            ("a*b", "ab", True),
            ("a*b", "axyzb", True),
            ("a*b", "axyzbc", False),
            ("a**b", "ab", True),
            ("?", "a", True),
            ("?", "\n", True),
            ("?", "", False),
            ("?", "ab", False),
            ("a?c", "abc", True),
            ("[abc]", "b", True),
            ("[abc]", "d", False),
            ("[a-c]", "b", True),
            ("[a-c]", "d", False),
            ("[c-a]", "b", True),
            ("[^a]", "b", True),
            ("[^a]", "a", False),
            ("[^a-c]", "d", True),
            ("[^a-c]", "b", False),
            ("[\\]]", "]", True),
            ("x[]", "x", False),
            ("[^]", "z", True),
            ("\\*", "*", True),
            ("\\*", "a", False),
            ("a\\?", "a?", True),
            ("a\\?", "ab", False),
            ("\\[a]", "[a]", True),
            ("\\[a]", "a", False),
            ("a.c", "abc", False),
            ("a+", "aa", False),
            ("(x)|y", "(x)|y", True),
            ("^$", "^$", True),
        ],
    )
    def test_glob(self, pattern: str, key: str, expected: bool) -> None:
        """Each glob construct matches as in Redis."""
        assert expected == compile_pattern(pattern)(key)

    @pytest.mark.parametrize(
        ("pattern", "key", "expected"),
        [
            ("??", "é", True),  # 'é' is two bytes: Redis matches it with '??'
            ("?", "é", False),
            ("[^a]", "é", False),
        ],
    )
    def test_multibyte_matched_bytewise(self, pattern: str, key: str, expected: bool) -> None:
        """Like Redis, '?' and classes match one UTF-8 byte, so L1 and L2 drop the same keys."""
        assert expected == compile_pattern(pattern)(key)

    @pytest.mark.parametrize("pattern", ["[abc", "a[", "[^", "[\\", "[a-"])
    def test_unterminated_class(self, pattern: str) -> None:
        """An unterminated '[' raises InvalidKeyError."""
        with pytest.raises(InvalidKeyError, match="unterminated"):
            compile_pattern(pattern)

    @pytest.mark.parametrize("pattern", ["k:[e-ü]", "[ü-e]", "[a-é]", "[^\x00-é]", "[\\é-a]"])
    def test_range_from_ascii_to_non_ascii_byte_refused(self, pattern: str) -> None:
        """Redis compares range bounds as C char, signed on x86 (``[e-ü]`` matches ``a``)
        and unsigned on ARM, so no L1 matcher agrees with every server: refused."""
        with pytest.raises(InvalidKeyError, match="non-ASCII"):
            validate_pattern(pattern)

    @pytest.mark.parametrize(
        ("pattern", "key", "expected"),
        [
            ("[é-ü]?", "é", True),
            ("[é-ü]?", "ab", False),
            ("[^é-ü]", "a", True),
            ("[a-e]?", "é", False),
        ],
    )
    def test_range_within_one_side_accepted(self, pattern: str, key: str, expected: bool) -> None:
        """Ranges with both bounds ASCII or both non-ASCII match alike everywhere."""
        assert expected == compile_pattern(pattern)(key)

    def test_trailing_backslash(self) -> None:
        """A lone trailing backslash raises InvalidKeyError."""
        with pytest.raises(InvalidKeyError, match="backslash"):
            compile_pattern("abc\\")

    @given(st.text(), st.text())
    def test_escape_glob_matches_only_itself(self, text: str, other: str) -> None:
        """escape_glob(s) compiled matches s and nothing else."""
        match = compile_pattern(escape_glob(text))
        assert (True, text == other) == (match(text), match(other))

    @given(st.text(alphabet="*?[]\\^-ab:"), st.text(alphabet="*?[]\\^-ab:"))
    def test_escape_glob_matches_only_itself_glob_heavy(self, text: str, other: str) -> None:
        """escape_glob(s) matches exactly s for strings dense in glob characters."""
        match = compile_pattern(escape_glob(text))
        assert (True, text == other) == (match(text), match(other))

    def test_escape_glob_plain_text_unchanged(self) -> None:
        """Text without glob characters is returned as it is."""
        assert "user:42-a^b" == escape_glob("user:42-a^b")


class TestRedisKey:
    """redis_key applies the namespace."""

    def test_format(self) -> None:
        """The Redis key is '<namespace>:<key>'."""
        assert "cache:user:1" == redis_key("cache", "user:1")

    def test_namespace_collision_prevented(self) -> None:
        """('a', 'b:x') and ('a:b', 'x') would collide, so a namespace cannot contain ':'."""
        assert redis_key("a", "b:x") == redis_key("a:b", "x")
        with pytest.raises(ConfigurationError) as info:
            CacheConfig(namespace="a:b")
        assert "namespace" == info.value.field


class TestUnicodeKeys:
    def test_lone_surrogate_is_rejected(self) -> None:
        """A key that is not valid Unicode cannot reach Redis or the bus: InvalidKeyError."""
        with pytest.raises(InvalidKeyError, match="surrogate"):
            validate_key("user:\ud800")

    def test_non_ascii_keys_are_accepted(self) -> None:
        """Valid non-ASCII keys pass validation unchanged."""
        assert "usér:é" == validate_key("usér:é")


class TestLiteralOf:
    @pytest.mark.parametrize("text", ["user:7", "a*b", "x[1]?", "back\\slash", "é:*"])
    def test_escaped_text_is_its_own_literal(self, text: str) -> None:
        """literal_of undoes escape_glob: an escaped value names exactly one key."""
        assert text == literal_of(escape_glob(text))

    @pytest.mark.parametrize("pattern", ["user:*", "a?", "[ab]", "trailing\\"])
    def test_wildcards_have_no_literal(self, pattern: str) -> None:
        """A pattern with a wildcard (or a dangling escape) is not one key."""
        assert None is literal_of(pattern)
