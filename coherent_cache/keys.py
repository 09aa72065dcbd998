"""CacheKeyGenerator, key and pattern validation, Redis glob matching and namespace prefixing."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import math
import re
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, final

import orjson

from .errors import InvalidKeyError

__all__ = [
    "MAX_KEY_LENGTH",
    "CacheKeyGenerator",
    "KeyTemplate",
    "compile_pattern",
    "encode_key_part",
    "escape_glob",
    "escape_part",
    "literal_of",
    "redis_key",
    "validate_key",
    "validate_pattern",
    "validate_tag",
    "validate_tags",
]

MAX_KEY_LENGTH: Final = 1024
"""Longest accepted key or pattern, in UTF-8 bytes (before the namespace prefix)."""
# A str of at most this many characters is at most MAX_KEY_LENGTH bytes in UTF-8.
_FAST_KEY_CHARS: Final = MAX_KEY_LENGTH // 4
_GLOB_SPECIAL: Final = frozenset("*?[]\\")
_FIELD_BASE: Final = re.compile(r"[^.\[]*")


def validate_key(key: object) -> str:
    """Return ``key`` if it is a usable cache key, else raise `InvalidKeyError`.

    A key is a non-empty ``str`` of valid Unicode (no lone surrogates) of at most
    `MAX_KEY_LENGTH` UTF-8 bytes. Glob characters are allowed and taken literally.
    """
    if type(key) is str and 0 < len(key) <= _FAST_KEY_CHARS and key.isascii():
        return key
    return _validate_slow(key, "key")


def validate_tag(tag: object) -> str:
    """Return ``tag`` if it is usable (the same rules as a key), else raise `InvalidKeyError`."""
    if type(tag) is str and 0 < len(tag) <= _FAST_KEY_CHARS and tag.isascii():
        return tag
    return _validate_slow(tag, "tag")


def validate_tags(tags: Iterable[object]) -> tuple[str, ...]:
    """Validate each tag (`validate_tag`); return them without duplicates, in order."""
    return tuple(dict.fromkeys(validate_tag(t) for t in tags))


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a usable Redis glob pattern, else raise `InvalidKeyError`."""
    text = _validate_slow(pattern, "pattern")
    compile_pattern(text)  # raises on an unterminated [, a trailing \\ or an [a-é] range
    return text


def _validate_slow(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidKeyError(
            f"a cache {what} must be a str, got {type(value).__name__}", key=value
        )
    if not value:
        raise InvalidKeyError(f"a cache {what} must not be empty", key=value)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKeyError(
            f"a cache {what} must be valid Unicode (it contains a lone surrogate)",
            key=value.encode("utf-8", "backslashreplace").decode("ascii"),
        ) from None
    if size > MAX_KEY_LENGTH:
        raise InvalidKeyError(
            f"a cache {what} must be at most {MAX_KEY_LENGTH} bytes, got {size} "
            "(use CacheKeyGenerator.generate_hash_key for long keys)",
            key=value[:64] + "...",
        )
    return value


def redis_key(namespace: str, key: str) -> str:
    """The Redis key of ``key`` in ``namespace``: the one place the namespace is applied."""
    return f"{namespace}:{key}"


def redis_tag_key(namespace: str, tag: str) -> str:
    """The Redis set indexing the keys that carry ``tag``.

    ``#`` cannot occur in a namespace, so no pattern over ``<namespace>:`` keys (and no
    other namespace) ever reaches it.
    """
    return f"{namespace}#tag:{tag}"


def redis_lock_key(namespace: str, key: str) -> str:
    """The Redis key of the cross-instance loader lock of ``key`` (see `redis_tag_key`)."""
    return f"{namespace}#lock:{key}"


def _literal_run(pattern: str, specials: str) -> tuple[str, bool]:
    """The literal text ``pattern`` starts with, escapes resolved, up to the first of
    ``specials`` or a trailing backslash; and whether that text is the whole pattern."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt is None:
                return "".join(out), False
            out.append(nxt)
        elif ch in specials:
            return "".join(out), False
        else:
            out.append(ch)
    return "".join(out), True


def literal_head(pattern: str) -> str:
    """The literal text a Redis glob ``pattern`` starts with (escapes resolved)."""
    return _literal_run(pattern, "*?[")[0]


def key_prefix(key: str) -> str:
    """The first segment of a key (``user`` of ``user:42``): what logs and traces show of it."""
    return key.split(":", 1)[0]


def literal_of(pattern: str) -> str | None:
    """The one key ``pattern`` matches if it has no wildcard (only escapes), else ``None``.

    ``literal_of("user:\\*")`` is ``"user:*"``; ``literal_of("user:*")`` is ``None``.
    """
    text, whole = _literal_run(pattern, "*?[]")
    return text if whole else None


def escape_glob(text: str) -> str:
    """Escape Redis glob characters so ``text`` matches only itself."""
    if not _GLOB_SPECIAL.intersection(text):
        return text
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """Compile a Redis glob pattern (``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\x``) to a matcher.

    Matching is on UTF-8 bytes, as Redis' ``stringmatchlen`` does (``?`` is one byte, so
    ``é`` needs ``??``), so the L1 and the L2 drop exactly the same keys on
    ``clear_pattern``.

    Raises:
        InvalidKeyError: an unterminated ``[`` class, a trailing backslash, or a range whose
            bounds are an ASCII and a non-ASCII byte (``[e-ü]``, see `_glob_class`).
    """
    if not _GLOB_SPECIAL.intersection(pattern):
        return pattern.__eq__
    head, star, tail = pattern.partition("*")
    if star and tail.strip("*") == "" and not _GLOB_SPECIAL.intersection(head):
        return lambda key: key.startswith(head)  # "user:*": the common case, no regex
    raw = pattern.encode("utf-8", "surrogatepass")
    out: list[bytes] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == _STAR:
            while i + 1 < n and raw[i + 1] == _STAR:
                i += 1
            out.append(b".*")
        elif ch == _QUESTION:
            out.append(b".")
        elif ch == _BACKSLASH:
            if i + 1 >= n:
                raise InvalidKeyError(
                    f"pattern {pattern!r} ends with a lone backslash", key=pattern
                )
            i += 1
            out.append(_byte(raw[i]))
        elif ch == _OPEN:
            i, cls = _glob_class(raw, i, pattern)
            out.append(cls)
        else:
            out.append(_byte(ch))
        i += 1
    regex = re.compile(b"".join(out), re.DOTALL)
    if pattern.isascii():
        # For ASCII keys, matching the str is matching the bytes, without encoding them.
        text = re.compile(b"".join(out).decode("ascii"), re.DOTALL)
        return lambda key: (
            text.fullmatch(key) is not None
            if key.isascii()
            else regex.fullmatch(key.encode("utf-8", "surrogatepass")) is not None
        )
    return lambda key: regex.fullmatch(key.encode("utf-8", "surrogatepass")) is not None


_STAR, _QUESTION, _BACKSLASH, _OPEN, _CLOSE, _CARET, _DASH = b"*?\\[]^-"


def _byte(value: int) -> bytes:
    return re.escape(bytes((value,)))


def _glob_class(raw: bytes, start: int, pattern: str) -> tuple[int, bytes]:
    """Translate the ``[...]`` class at ``start``; return (index of its ``]``, regex)."""
    i = start + 1
    n = len(raw)
    negate = i < n and raw[i] == _CARET
    if negate:
        i += 1
    items: list[bytes] = []
    while i < n and raw[i] != _CLOSE:
        ch = raw[i]
        if ch == _BACKSLASH and i + 1 < n:
            i += 1
            items.append(_byte(raw[i]))
        elif i + 2 < n and raw[i + 1] == _DASH:
            # As in Redis, "a-]" is a range ending at "]", and reversed ranges are swapped.
            low, high = sorted((ch, raw[i + 2]))
            if low < 0x80 <= high:
                # The server compares range bounds as C char: signed on x86 ([e-ü] then
                # matches "a"), unsigned on ARM. No answer is right on both: refuse.
                raise InvalidKeyError(
                    f"pattern {pattern!r} has a range from an ASCII to a non-ASCII byte "
                    f"({raw[i : i + 3]!r}), which Redis matches differently by platform",
                    key=pattern,
                )
            items.append(_byte(low) + b"-" + _byte(high))
            i += 2
        else:
            items.append(_byte(ch))
        i += 1
    if i >= n:
        raise InvalidKeyError(f"pattern {pattern!r} has an unterminated '['", key=pattern)
    if not items:
        # Redis treats "[]" as a class that matches nothing and "[^]" as any byte.
        return i, b"." if negate else b"(?!)"
    return i, (b"[^" if negate else b"[") + b"".join(items) + b"]"


def escape_part(text: str, separator: str = ":") -> str:
    """Percent-escape ``%``, ``=`` and the separator's first character in a str key part.

    Parts are joined with the separator and keyword parts are ``name=value``, so without
    this ``f("a:b", "c")`` and ``f("a", "b:c")`` would share a key. Strings without those
    characters (the common case) are returned unchanged, so keys stay readable. Only str
    arguments are escaped: encodings of other types (dates, JSON) keep their ``:``.
    """
    lead = separator[0]
    if "%" not in text and "=" not in text and lead not in text:
        return text
    text = text.replace("%", "%25").replace("=", "%3D")
    if lead not in "%=":
        text = text.replace(lead, "".join(f"%{b:02X}" for b in lead.encode()))
    return text


def encode_key_part(value: object, separator: str = ":") -> str:
    """One argument as a key part: str escaped (`escape_part`), anything else encoded.

    Raises:
        InvalidKeyError: the value has no deterministic encoding.
    """
    if isinstance(value, str):
        return escape_part(value, separator)
    return _encode_part(value)


def _encode_part(value: object) -> str:
    """Encode one key part canonically; raise `InvalidKeyError` for values without one."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, int | float | decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return _encode_part(value.value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    try:
        return orjson.dumps(_canonical(value), option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError as exc:  # an int beyond 64 bits inside a structure
        raise InvalidKeyError(
            f"cannot build a cache key from this {type(value).__qualname__}: {exc}", key=value
        ) from None


def _canonical(value: object) -> object:
    """Reduce a structured value to JSON-native data with a single canonical form."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf; orjson would write null, like None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, decimal.Decimal | uuid.UUID | datetime.date | datetime.time | bytes):
        return _encode_part(value)
    if isinstance(value, Mapping):
        return {_encode_part(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_canonical(v) for v in value), key=lambda v: orjson.dumps(v))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):  # a pydantic model
        return _canonical(model_dump(mode="json"))
    raise InvalidKeyError(
        f"cannot build a deterministic cache key from a {type(value).__qualname__}: "
        "pass str, numbers, enums, dates, UUIDs, lists, dicts, dataclasses or pydantic "
        "models, or exclude the argument from the key",
        key=value,
    )


class CacheKeyGenerator:
    """Build cache keys from values, deterministically across processes and runs.

    ``generate_key("user", 42, fields=["a", "b"])`` is ``"user:42:fields=["a","b"]"``:
    positional parts in order, keyword parts sorted by name as ``name=value``, structured
    values as canonical JSON (sorted keys). No ``hash()`` is involved, so every replica
    computes the same key. Keys longer than ``max_length`` keep ``prefix`` and hash the rest
    with BLAKE2b.

    Args:
        prefix: prepended to every key as ``<prefix>:``.
        separator: joins the parts.
        max_length: longest key kept readable; longer ones are hashed.
    """

    def __init__(
        self, prefix: str | None = None, *, separator: str = ":", max_length: int = 200
    ) -> None:
        if not separator:
            raise InvalidKeyError("separator must not be empty", key=separator)
        if not 32 <= max_length <= MAX_KEY_LENGTH:
            raise InvalidKeyError(
                f"max_length must be between 32 and {MAX_KEY_LENGTH}, got {max_length}",
                key=max_length,
            )
        # A hashed key is prefix + separator + 32 hex digits: it must fit in max_length too.
        if (
            prefix is not None
            and len(validate_key(prefix).encode()) + len(separator) + 32 > max_length
        ):
            raise InvalidKeyError(
                f"prefix is too long for max_length={max_length} (hashed keys must fit)",
                key=prefix,
            )
        self.prefix = prefix
        self.separator = separator
        self.max_length = max_length

    def _body(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        sep = self.separator
        parts = [encode_key_part(a, sep) for a in args]
        parts.extend(f"{name}={encode_key_part(kwargs[name], sep)}" for name in sorted(kwargs))
        return sep.join(parts)

    def key_of_parts(self, parts: list[str], keyword: list[tuple[str, str]]) -> str:
        """`generate_key` of parts already encoded by `encode_key_part` (and sorted
        ``(name, encoded)`` keyword pairs)."""
        joined = [*parts, *(f"{name}={text}" for name, text in keyword)]
        return self._finish(self.separator.join(joined))

    def _join(self, body: str) -> str:
        if self.prefix is None:
            return body
        return f"{self.prefix}{self.separator}{body}" if body else self.prefix

    def _hashed(self, body: str) -> str:
        digest = hashlib.blake2b(body.encode("utf-8", "surrogatepass"), digest_size=16)
        return self._join(digest.hexdigest())

    def generate_key(self, *args: Any, **kwargs: Any) -> str:
        """Join the encoded arguments into a key, hashing it when it exceeds ``max_length``.

        Raises:
            InvalidKeyError: an argument has no deterministic encoding, or no part was given.
        """
        return self._finish(self._body(args, kwargs))

    def _finish(self, body: str) -> str:
        key = self._join(body)
        if not key:
            raise InvalidKeyError("generate_key needs at least one part or a prefix")
        if len(key.encode("utf-8", "surrogatepass")) > self.max_length:
            return self._hashed(body)
        return key

    def generate_hash_key(self, *args: Any, **kwargs: Any) -> str:
        """Like `generate_key`, but always hash the parts (fixed length: prefix + 32 hex)."""
        return self._hashed(self._body(args, kwargs))

    def generate_pattern_key(self, pattern: str, *args: Any, **kwargs: Any) -> str:
        """Fill ``{}`` placeholders of a glob ``pattern`` with encoded, glob-escaped values.

        ``generate_pattern_key("user:{user_id}:*", user_id="a*")`` is ``"user:a\\*:*"``:
        the value matches only itself, so an argument can never widen an invalidation.
        Values are encoded like key parts (`KeyTemplate`, the engine of
        ``cache_invalidate`` templates too).

        Raises:
            InvalidKeyError: a placeholder has no value, or the result is not a valid pattern.
        """
        filled = (
            KeyTemplate(pattern, what="pattern", separator=self.separator).render(args, kwargs)
            if pattern or self.prefix is None
            else ""
        )
        if self.prefix is None:
            return filled
        return validate_pattern(f"{escape_glob(self.prefix)}{self.separator}{filled}")


@final
class _PartFormatter(string.Formatter):
    """Fills ``{name}`` fields with values encoded like key parts (optionally glob-escaped)."""

    def __init__(self, *, escape: bool, separator: str) -> None:
        self.escape = escape
        self.separator = separator
        self.field = ""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        self.field = field_name
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, AttributeError, IndexError, TypeError) as exc:
            raise InvalidKeyError(f"no value for it ({exc!r})") from exc

    def format_field(self, value: Any, format_spec: str) -> str:
        if not self.escape:  # a tag
            return format(value, format_spec) if format_spec else _encode_part(value)
        # A pattern matches keys, whose str parts are escaped (`encode_key_part`).
        if format_spec:
            text = format(value, format_spec)
            if isinstance(value, str):
                text = escape_part(text, self.separator)
        else:
            text = encode_key_part(value, self.separator)
        return escape_glob(text)


@final
class KeyTemplate:
    """A tag or glob pattern with ``{name}`` placeholders, filled with encoded values.

    The one template engine of the package: `CacheKeyGenerator.generate_pattern_key`,
    ``cache_invalidate`` patterns and ``cached(tags=...)`` templates. A pattern
    (``what="pattern"``) encodes each value like a key part (`encode_key_part`) and
    glob-escapes it, so a value matches only itself; a tag (``what="tag"``) encodes values
    without escaping. A format spec (``{n:03d}``) formats the value itself.

    Args:
        text: the template; ``{{`` and ``}}`` are literal braces.
        what: ``"pattern"`` or ``"tag"``: what the result is validated as.
        owner: named in error messages (the decorated function).
        separator: the key separator (escaped in str values of patterns).

    Raises:
        InvalidKeyError: ``text`` is not a non-empty str or not a valid template, or it has
            no placeholder and is not a valid pattern / tag.
    """

    __slots__ = ("escape", "fields", "owner", "separator", "static", "text", "what")

    def __init__(
        self, text: object, *, what: str, owner: str | None = None, separator: str = ":"
    ) -> None:
        if not isinstance(text, str) or not text:
            raise InvalidKeyError(f"a {what} must be a non-empty str, got {text!r}", key=text)
        self.text = text
        self.what = what
        self.owner = owner
        self.separator = separator
        self.escape = what == "pattern"
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise InvalidKeyError(f"{what} {text!r} is not a valid template: {exc}") from exc
        fields = [field for _literal, field, _spec, _conv in parsed if field is not None]
        self.fields = tuple(fields)
        """The placeholders' field names, as written (``user.id``, ``0``, ``""``)."""
        self.static: str | None = None
        """The text itself when there is no placeholder (braces unescaped), else ``None``."""
        if not fields:
            static = text.replace("{{", "{").replace("}}", "}")
            self.static = validate_pattern(static) if self.escape else validate_tag(static)

    @property
    def names(self) -> tuple[str, ...]:
        """The argument each placeholder reads (``user`` of ``{user.id}``; ``""`` or a digit
        for positional placeholders)."""
        return tuple(_field_base(field) for field in self.fields)

    def render(self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None) -> str:
        """Fill the placeholders from ``args`` and ``kwargs``; validate the result.

        Raises:
            InvalidKeyError: a placeholder has no value, a value has no deterministic
                encoding, or the result is unusable.
        """
        if self.static is not None:
            return self.static
        formatter = _PartFormatter(escape=self.escape, separator=self.separator)
        try:
            text = formatter.vformat(self.text, args, kwargs if kwargs is not None else {})
        except InvalidKeyError as exc:
            owner = f" of {self.owner}" if self.owner else ""
            raise InvalidKeyError(
                f"{self.what} {self.text!r}{owner}: cannot fill {{{formatter.field}}}: {exc}",
                key=self.text,
            ) from exc
        return validate_pattern(text) if self.escape else validate_tag(text)


def _field_base(field: str) -> str:
    match = _FIELD_BASE.match(field)
    return match.group() if match else ""
