"""CacheConfig, the one validated configuration object, and the CacheStrategy / CacheTier enums."""

from __future__ import annotations

import enum
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigurationError

__all__ = ["CacheConfig", "CacheStrategy", "CacheTier"]

ENV_PREFIX = "COHERENT_CACHE_"
# Variables under this prefix belong to the test harness (coherent_cache.testing), not the config.
_ENV_RESERVED_PREFIXES = (ENV_PREFIX + "TEST_",)
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_URL_SCHEMES = frozenset({"redis", "rediss", "unix"})
_COMPRESSION_MODULES = {"zlib": "zlib", "zstd": "zstandard", "lz4": "lz4.frame"}
_NONE_WORDS = frozenset({"", "none", "null"})
_TLS_FIELDS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_SECRET_FIELDS = frozenset({"redis_password", "ssl_password", "bus_signing_keys"})
_MIN_SIGNING_KEY = 16


class CacheStrategy(enum.StrEnum):
    """Which entry the L1 evicts when it is full.

    Every strategy also honours per-entry TTLs and ``memory_cache_ttl``.
    """

    TTL = "ttl"
    """Time aware LRU: expired entries go first, then the least recently used."""
    LRU = "lru"
    """Least recently used."""
    LFU = "lfu"
    """Least frequently used."""
    FIFO = "fifo"
    """Oldest insertion first."""
    TINYLFU = "tinylfu"
    """W-TinyLFU: a small recency window, then admission by estimated frequency into a
    segmented LRU; resists scans, keeps the frequently used (see docs/architecture.md)."""


class CacheTier(enum.StrEnum):
    """Which tier(s) an operation touches."""

    L1 = "l1"
    """The in-process memory cache of this instance only."""
    L2 = "l2"
    """The shared Redis / Valkey cache only."""
    BOTH = "both"
    """L1 first, then L2 (reads fill L1 from L2)."""


_SECRET_PARAMS = ("password", "pass", "pwd", "secret", "token", "auth", "key")


def _mask_query(query: str) -> str:
    """Replace the values of secret-looking query parameters (``?password=...``)."""
    if not query:
        return query
    masked = []
    for item in query.split("&"):
        name, sep, _value = item.partition("=")
        if sep and any(word in name.lower() for word in _SECRET_PARAMS):
            item = f"{name}=***"
        masked.append(item)
    return "&".join(masked)


def _mask_url(url: str) -> str:
    """Return ``url`` with any password (in the user info or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    query = _mask_query(parts.query)
    netloc = parts.netloc
    if password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}:***@{host}"
        if port is not None:
            netloc += f":{port}"
    if password is None:
        return url.replace("?" + parts.query, "?" + query, 1) if query != parts.query else url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class CacheConfig(BaseModel):
    """Validated, immutable settings of a `CacheManager`.

    Build it with keyword arguments, or from ``COHERENT_CACHE_*`` environment variables
    with `CacheConfig.from_env`. Invalid values raise `ConfigurationError` naming the
    field; unknown fields are rejected so typos fail loudly.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    redis_url: str | None = "redis://localhost:6379"
    """``redis://``, ``rediss://`` (TLS) or ``unix://`` URL of the L2; ``None`` for L1 only.
    In ``cluster`` mode, any node of the cluster (the client discovers the others); in
    ``sentinel`` mode only its scheme, credentials and database are used (the sentinels
    name the primary's address)."""
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    """Deployment of the L2 and the bus: one server (or a proxy), a Redis/Valkey Cluster,
    or a primary watched by Sentinel (then set ``sentinel_master`` and
    ``sentinel_addresses``)."""
    sentinel_master: str | None = None
    """``sentinel`` mode: the name the sentinels monitor the primary under."""
    sentinel_addresses: tuple[str, ...] = ()
    """``sentinel`` mode: ``host:port`` of each sentinel (comma separated in the
    environment), asked in turn for the current primary."""
    sentinel_username: str | None = None
    """``sentinel`` mode: ACL user of the sentinels, when they need other credentials
    than the data nodes."""
    sentinel_password: SecretStr | None = None
    """``sentinel`` mode: password of the sentinels. Never shown in repr, logs or stats."""
    cluster_bus: Literal["sharded", "broadcast"] = "sharded"
    """``cluster`` mode: how the bus travels. ``sharded``: ``SPUBLISH``/``SSUBSCRIBE`` on
    the primary owning the channel's slot (Redis/Valkey 7+); ``broadcast``: ``PUBLISH``,
    relayed to every node by the cluster bus, subscribers on any node. See
    docs/architecture.md for the measured difference."""
    redis_username: str | None = None
    """ACL user name, for a ``redis_url`` without one (both at once is an error). See
    docs/security.md for the least-privilege ACL line."""
    redis_password: SecretStr | None = None
    """Password, for a ``redis_url`` without one (both at once is an error). Never shown in
    repr, logs or stats."""
    ssl_ca_certs: str | None = None
    """TLS (``rediss://`` only): CA bundle file that verifies the server's certificate;
    the system's trusted CAs when ``None``."""
    ssl_certfile: str | None = None
    """TLS: client certificate file (PEM), for servers that require one
    (``tls-auth-clients yes``)."""
    ssl_keyfile: str | None = None
    """TLS: private key file (PEM) of ``ssl_certfile``; ``None`` when the key is inside
    ``ssl_certfile``."""
    ssl_password: SecretStr | None = None
    """TLS: password of an encrypted ``ssl_keyfile``. Never shown in repr, logs or stats."""
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    """TLS: verification of the server's certificate. ``none`` accepts any certificate
    (encryption without authentication: only for tests)."""
    ssl_check_hostname: bool = True
    """TLS: check that the server's certificate names the host of ``redis_url``."""
    namespace: str = "cache"
    """Prefix of every Redis key (``<namespace>:<key>``); letters, digits, ``_ . -`` only."""

    memory_cache_size: int = Field(default=1000, ge=1)
    """Maximum number of entries in the L1 of each instance."""
    memory_cache_ttl: float = Field(default=300, gt=0)
    """Longest time in seconds an entry lives in L1, whatever its own TTL."""
    memory_cache_strategy: CacheStrategy = CacheStrategy.TTL
    """Eviction policy of the L1 when it is full."""
    memory_cache_max_bytes: int | None = Field(default=None, ge=1)
    """Also bound the L1 by bytes: the accounted size of its entries (key + encoded value +
    240 bytes each) stays at most this, whatever the strategy; an entry above 1/8 of it is
    not kept in L1 (it still goes to L2). ``None``: bounded by ``memory_cache_size`` only."""

    enable_multi_tier: bool = True
    """``False`` runs on L1 alone, as does ``redis_url=None``."""
    enable_compression: bool = True
    """Compress L2 payloads larger than ``compression_threshold`` bytes."""
    compression_threshold: int = Field(default=512, ge=0)
    """Size in bytes above which an encoded payload is compressed."""
    serialization_format: Literal["json", "msgpack"] = "json"
    """Encoding of values in L2: ``json`` (orjson) or ``msgpack`` (extra ``msgpack``).
    Every instance reads both, so the setting can change one instance at a time."""
    compression_algorithm: Literal["zlib", "zstd", "lz4"] = "zlib"
    """``zlib`` (standard library, level 1), ``zstd`` (extra ``zstd``, level 3: faster and
    smaller than zlib, the recommended choice) or ``lz4`` (extra ``lz4``: fastest, largest)."""
    enable_monitoring: bool = True
    """Run a `CacheMonitor` with the manager: a ``cache_stats`` log event every
    ``monitoring_interval`` seconds (stats are collected either way)."""
    monitoring_interval: float = Field(default=60.0, gt=0)
    """Seconds between two ``cache_stats`` events of the automatic monitor."""
    trace_full_keys: bool = False
    """Put full keys on spans (``cache.key``); by default only the prefix before the first
    ``:`` (``cache.key_prefix``), since keys can hold personal data."""
    fleet_report_interval: float = Field(default=5.0, ge=0, le=3600)
    """Seconds between two fleet reports of this instance in Redis (`CacheManager.fleet`,
    ``coherent-cache fleet``, ``GET /cache/fleet``); a report expires after 3 intervals
    plus ``operation_timeout``. ``0`` turns reporting off. Needs an L2."""

    default_ttl: float | None = Field(default=3600, gt=0)
    """TTL in seconds of entries written without an explicit ``ttl``; ``None``: no expiry."""
    max_value_size: int = Field(default=8 * 1024 * 1024, ge=1)
    """Largest encoded (and compressed) value in bytes: a larger write raises
    `ValueTooLargeError` and writes nothing; a larger payload read from Redis is a counted
    miss (``rejected_payloads``)."""

    operation_timeout: float = Field(default=0.5, gt=0)
    """Deadline in seconds of one Redis call."""
    connect_timeout: float = Field(default=1.0, gt=0)
    """Deadline in seconds to open a Redis connection (and of ``start()``'s first PING)."""
    max_connections: int = Field(default=64, ge=1)
    """Size of the Redis connection pool of each instance (in cluster mode: of each node's
    pool, and at most this many calls in flight; more wait within ``operation_timeout``)."""
    circuit_breaker_threshold: int = Field(default=3, ge=1)
    """Consecutive failed Redis calls that open the circuit breaker (it also opens when half
    of the last 20 calls failed)."""
    circuit_breaker_cooldown: float = Field(default=5.0, gt=0, le=60)
    """Longest wait in seconds before an open breaker lets a probe call through."""

    enable_invalidation_bus: bool = True
    """Keep every instance's L1 coherent through Redis pub/sub (needs an L2)."""
    invalidation_channel: str | None = None
    """Pub/sub channel of the bus; ``<namespace>:invalidate`` when ``None``."""
    max_stale_on_bus_loss: float = Field(default=5.0, ge=0)
    """While the bus is down, seconds an L1 entry may still be served after the later of
    the loss and the entry's own write or fill; after that L1 counts as empty."""
    bus_health_check_interval: float = Field(default=1.0, gt=0)
    """Seconds between PINGs on the subscriber connection; a PING unanswered for this long
    plus ``operation_timeout`` marks the connection dead."""
    reconnect_backoff_max: float = Field(default=2.0, gt=0, le=60)
    """Longest wait in seconds between reconnect attempts of background connections."""
    max_bus_message_size: int = Field(default=1024 * 1024, ge=256)
    """Bus messages larger than this many bytes are dropped and counted."""
    bus_signing_keys: tuple[SecretStr, ...] = ()
    """Shared secrets (at least 16 bytes each) for HMAC-SHA256 signing of bus messages.
    When set, messages are signed with the first key, and messages that are unsigned or
    not signed by any of the keys are dropped and counted (list the old key second while
    rotating). From the environment: comma-separated. See docs/security.md."""
    bus_signature_max_age: float | None = Field(default=None, gt=0)
    """With signing on: drop signed messages whose ``ts`` is missing or further than this
    many seconds from this host's clock (limits replays; needs synchronised clocks);
    ``None``: no age check."""
    l1_mailbox_size: int = Field(default=1024, ge=1)
    """Remote invalidations queued for the L1 actor; when full, L1 is flushed instead."""
    origin_prefix: str | None = None
    """Prefix of this instance's origin id (default: the host name)."""

    lock_by_default: bool = False
    """``get_or_set``/``cached`` use the cross-instance loader lock unless told otherwise."""
    lock_timeout: float = Field(default=10.0, gt=0)
    """``get_or_set(lock=True)``: longest wait in seconds for another instance's load
    before loading here anyway."""
    lock_lease: float = Field(default=5.0, gt=0)
    """Lease in seconds of the cross-instance loader lock, renewed every third of it while
    the loader runs (a crashed holder frees the key after at most this long)."""
    loader_hard_timeout: float | None = Field(default=None, gt=0)
    """Default of ``get_or_set``/``cached``'s ``loader_hard_timeout``: longest wait in
    seconds for a loader before the caller gets `LoaderTimeoutError` (the load goes on in
    the background and fills the cache); ``None``: wait as long as the loader runs."""
    refresh_ahead: float | None = Field(default=None, gt=0, lt=1)
    """Default of ``get_or_set``/``cached``'s ``refresh_ahead``: a fresh hit past this
    fraction of its TTL starts one background refresh (``0.8``: after 80 %); ``None``: off."""

    # typed values (issue 15)
    l1_copy_on_read: bool = False
    """Every value read from L1 (``get``, ``get_or_set``, decorator hits) is the caller's
    own deep copy, so mutating it never changes what later reads return. Off: L1 hands out
    the object it holds, shared by every reader in the process (see docs/serialization.md
    for the cost of copies)."""

    # client tracking (issue 16)
    client_tracking: bool = False
    """Also drop L1 copies when *anyone* writes Redis: each instance turns on
    ``CLIENT TRACKING ... BCAST PREFIX <namespace>:`` on a connection of its own (one per
    primary in a cluster), so writes by other services, ``valkey-cli``, Lua scripts,
    expiries and ``FLUSHDB`` invalidate L1 like a bus ``delete``. Every write under the
    prefix then reaches every instance: see docs/tracking.md for the cost and the ACL.
    Needs an L2; works with the bus on or off."""

    if not TYPE_CHECKING:
        # At run time, turn pydantic's ValidationError into our typed ConfigurationError;
        # type checkers keep seeing pydantic's generated keyword signature.
        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                # "from None": pydantic's error quotes the raw input, passwords included.
                raise _configuration_error(exc) from None

    @field_validator("memory_cache_strategy", mode="before")
    @classmethod
    def _lower_strategy(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in _URL_SCHEMES:
            raise ValueError(
                f"scheme must be one of redis://, rediss:// or unix://, got {parts.scheme!r}"
            )
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL needs a socket path")
            return value
        if not parts.hostname:
            raise ValueError("the URL has no host")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError("the URL's port is not a number from 0 to 65535") from exc
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ValueError(f"the database in the URL path must be a number, got {db!r}")
        return value

    @field_validator("bus_signing_keys", mode="before")
    @classmethod
    def _split_signing_keys(cls, value: object) -> object:
        if isinstance(value, str | SecretStr):
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("bus_signing_keys")
    @classmethod
    def _check_signing_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for key in value:
            if len(key.get_secret_value().encode("utf-8", "surrogatepass")) < _MIN_SIGNING_KEY:
                raise ValueError(
                    f"every signing key must be at least {_MIN_SIGNING_KEY} bytes "
                    "(use e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
                )
        return value

    @field_validator("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _check_file(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isfile(value):
            raise ValueError("no such file (or not a regular file)")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        scheme = urlsplit(self.redis_url).scheme if self.redis_url else None
        tls_set = [
            name
            for name in _TLS_FIELDS
            if getattr(self, name) != type(self).model_fields[name].default
        ]
        if tls_set and scheme != "rediss":
            raise ConfigurationError(
                f"{', '.join(tls_set)} need a rediss:// redis_url (TLS); "
                f"got {'no URL' if scheme is None else scheme + '://'}",
                field=tls_set[0],
            )
        if self.bus_signature_max_age is not None and not self.bus_signing_keys:
            raise ConfigurationError(
                "bus_signature_max_age needs bus_signing_keys (an unsigned ts proves nothing)",
                field="bus_signature_max_age",
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigurationError(
                "ssl_keyfile needs ssl_certfile (the certificate of that key)",
                field="ssl_keyfile",
            )
        if self.ssl_password is not None and self.ssl_certfile is None:
            raise ConfigurationError(
                "ssl_password needs ssl_certfile/ssl_keyfile (it decrypts the key)",
                field="ssl_password",
            )
        if self.redis_url is not None:
            try:
                parts = urlsplit(self.redis_url)
                url_user, url_password = parts.username, parts.password
            except ValueError:  # pragma: no cover - _check_url parsed it already
                url_user = url_password = None
            # redis-py lets the URL win; silently ignoring a setting would be worse.
            if self.redis_password is not None and url_password:
                raise ConfigurationError(
                    "redis_password is set and redis_url has a password too: pass one of them",
                    field="redis_password",
                )
            if self.redis_username is not None and url_user:
                raise ConfigurationError(
                    "redis_username is set and redis_url has a user name too: pass one of them",
                    field="redis_username",
                )
        return self

    @field_validator("invalidation_channel")
    @classmethod
    def _check_channel(cls, value: str | None) -> str | None:
        if value is not None and (not value or len(value) > 256 or not value.isprintable()):
            raise ValueError("channel must be 1-256 printable characters")
        return value

    @field_validator("sentinel_addresses", mode="before")
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: "host:port,host:port"
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("sentinel_addresses")
    @classmethod
    def _check_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            parse_address(address)
        return value

    @field_validator("sentinel_master")
    @classmethod
    def _check_master(cls, value: str | None) -> str | None:
        if value is not None and (not value or len(value) > 256 or not value.isprintable()):
            raise ValueError("sentinel_master must be 1-256 printable characters")
        return value

    @model_validator(mode="after")
    def _check_mode(self) -> Self:
        mode = self.redis_mode
        sentinel_fields = {
            "sentinel_master": self.sentinel_master is not None,
            "sentinel_addresses": bool(self.sentinel_addresses),
            "sentinel_username": self.sentinel_username is not None,
            "sentinel_password": self.sentinel_password is not None,
        }
        if mode != "sentinel":
            extra = [name for name, given in sentinel_fields.items() if given]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} only apply with redis_mode='sentinel' "
                    f"(redis_mode is {mode!r})"
                )
        elif not (self.sentinel_master and self.sentinel_addresses):
            raise ValueError(
                "redis_mode='sentinel' needs sentinel_master (the monitored name) and "
                "sentinel_addresses (host:port of each sentinel)"
            )
        if mode != "standalone" and self.redis_url is not None:
            parts = urlsplit(self.redis_url)
            if parts.scheme == "unix":
                raise ValueError(f"redis_mode={mode!r} needs a redis:// or rediss:// URL")
            if mode == "cluster" and parts.path.lstrip("/") not in ("", "0"):
                raise ValueError("a cluster has only database 0: drop the /<db> from redis_url")
        return self

    @field_validator("origin_prefix")
    @classmethod
    def _check_origin_prefix(cls, value: str | None) -> str | None:
        if value is not None and not _NAMESPACE_RE.fullmatch(value):
            raise ValueError("origin_prefix must be 1-64 of letters, digits, '_', '.' and '-'")
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE_RE.fullmatch(value):
            raise ValueError(
                "namespace must be 1-64 characters from letters, digits, '_', '.' and '-', "
                "starting with a letter or digit (':' and glob characters would make keys "
                "of different namespaces collide)"
            )
        return value

    @field_validator("serialization_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if value == "msgpack" and importlib.util.find_spec("msgpack") is None:
            raise ValueError(
                "format 'msgpack' needs msgpack: pip install 'coherent-cache[msgpack]'"
            )
        return value

    @field_validator("compression_algorithm")
    @classmethod
    def _check_compression(cls, value: str) -> str:
        module = _COMPRESSION_MODULES[value]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise ValueError(
                f"compression {value!r} needs the {module.split('.')[0]!r} package: "
                f"pip install 'coherent-cache[{value}]'"
            )
        return value

    @property
    def channel(self) -> str:
        """The invalidation bus channel: ``invalidation_channel`` or ``<namespace>:invalidate``."""
        return self.invalidation_channel or f"{self.namespace}:invalidate"

    @property
    def l2_enabled(self) -> bool:
        """Whether this configuration uses a Redis L2 and bus."""
        return self.redis_url is not None and self.enable_multi_tier

    def sentinel_credentials(self) -> dict[str, Any]:
        """``username``/``password`` keyword arguments for the sentinel connections."""
        found: dict[str, Any] = {}
        if self.sentinel_username is not None:
            found["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            found["password"] = self.sentinel_password.get_secret_value()
        return found

    def credentials(self) -> dict[str, Any]:
        """``username``/``password`` keyword arguments for redis-py, from the overrides."""
        found: dict[str, Any] = {}
        if self.redis_username is not None:
            found["username"] = self.redis_username
        if self.redis_password is not None:
            found["password"] = self.redis_password.get_secret_value()
        return found

    def tls_options(self) -> dict[str, Any]:
        """The ``ssl_*`` keyword arguments for redis-py; empty unless ``redis_url`` is
        ``rediss://`` (``ssl_*`` options in the URL's query string win over these)."""
        if self.redis_url is None or urlsplit(self.redis_url).scheme != "rediss":
            return {}
        found: dict[str, Any] = {
            "ssl_cert_reqs": self.ssl_cert_reqs,
            "ssl_check_hostname": self.ssl_check_hostname and self.ssl_cert_reqs != "none",
        }
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                found[name] = value
        if self.ssl_password is not None:
            found["ssl_password"] = self.ssl_password.get_secret_value()
        return found

    def signing_keys(self) -> tuple[bytes, ...]:
        """The ``bus_signing_keys`` as bytes (the first one signs)."""
        return tuple(
            k.get_secret_value().encode("utf-8", "surrogatepass") for k in self.bus_signing_keys
        )

    def secrets(self) -> list[str]:
        """Every secret this config holds (passwords, signing keys), to scrub from text."""
        held = (self.redis_password, self.ssl_password, *self.bus_signing_keys)
        found = [urlsplit(self.redis_url or "").password or ""]
        found.extend(secret.get_secret_value() for secret in held if secret is not None)
        return [s for s in found if s]

    def redacted_url(self) -> str | None:
        """``redis_url`` with its password (if any) replaced by ``***``."""
        return None if self.redis_url is None else _mask_url(self.redis_url)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (_mask_url(value) if name == "redis_url" and value else value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CacheConfig:
        """Build a config from ``COHERENT_CACHE_<FIELD>`` variables, then ``overrides``.

        ``COHERENT_CACHE_REDIS_URL=none`` (or empty) selects L1 only. An unknown
        ``COHERENT_CACHE_*`` variable is an error, so a misspelt setting never goes unnoticed
        (``COHERENT_CACHE_TEST_*`` is left to the test harness).

        Args:
            environ: the variables to read; ``os.environ`` when omitted.
            **overrides: field values that win over the environment.

        Raises:
            ConfigurationError: a variable is unknown or its value is invalid.
        """
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        for name, raw in env.items():
            if not name.startswith(ENV_PREFIX) or name.startswith(_ENV_RESERVED_PREFIXES):
                continue
            field = name[len(ENV_PREFIX) :].lower()
            info = cls.model_fields.get(field)
            if info is None:
                raise ConfigurationError(
                    f"unknown setting {name}; known settings are "
                    + ", ".join(ENV_PREFIX + f.upper() for f in cls.model_fields),
                    field=field,
                )
            nullable = info.default is None or type(None) in getattr(
                info.annotation, "__args__", ()
            )
            data[field] = None if nullable and raw.strip().lower() in _NONE_WORDS else raw
        data.update(overrides)
        return cls(**data)


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into its parts.

    Raises:
        ValueError: no port, or a port that is not a number from 1 to 65535.
    """
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be host:port with a port from 1 to 65535, got {address!r}")
    return host, int(port)


def _configuration_error(exc: ValidationError) -> ConfigurationError:
    errors = exc.errors(include_url=False)
    loc = errors[0]["loc"] if errors else ()
    field = str(loc[0]) if loc else None
    lines = []
    for err in errors:
        name = ".".join(str(part) for part in err.get("loc", ())) or "config"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if not err.get("loc"):
            # A check across fields: its input is the whole config, secrets included.
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, ConfigurationError):
                field = field or cause.field
                lines.append(str(cause))
            else:
                lines.append(msg)
            continue
        value = err.get("input")
        if name == "redis_url" and isinstance(value, str):
            value = _mask_url(value)
        if name.split(".")[0] in _SECRET_FIELDS:
            lines.append(f"{name}: {msg}")  # never quote a secret
            continue
        lines.append(f"{name}: {msg} (got {value!r})")
    return ConfigurationError("invalid CacheConfig: " + "; ".join(lines), field=field)
