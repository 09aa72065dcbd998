"""Tests of CacheConfig: defaults, validation, immutability, environment loading, secrets."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from pydantic import ValidationError

from coherent_cache import CacheConfig, CacheStrategy, ConfigurationError

PASSWORD = "s3cr3t-Pa55"


def build(**fields: Any) -> CacheConfig:
    """Build a config from untyped keyword arguments (to pass deliberately wrong values)."""
    return CacheConfig(**fields)


class TestDefaults:
    """The seed's defaults, kept for compatibility, plus the new settings."""

    @pytest.mark.parametrize(
        ("field", "expected"),
        [
            ("redis_url", "redis://localhost:6379"),
            ("memory_cache_size", 1000),
            ("memory_cache_ttl", 300),
            ("memory_cache_strategy", CacheStrategy.TTL),
            ("enable_multi_tier", True),
            ("enable_compression", True),
            ("compression_threshold", 512),
            ("enable_monitoring", True),
            ("namespace", "cache"),
            ("default_ttl", 3600),
            ("operation_timeout", 0.5),
            ("connect_timeout", 1.0),
            ("circuit_breaker_cooldown", 5.0),
        ],
    )
    def test_default_value(self, field: str, expected: object) -> None:
        """Each setting has its documented default."""
        assert expected == getattr(CacheConfig(), field)

    def test_default_uses_l2(self) -> None:
        """The default configuration uses the Redis L2."""
        assert True is CacheConfig().l2_enabled


class TestValidation:
    """Invalid values raise ConfigurationError naming the field."""

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("memory_cache_size", -1),
            ("memory_cache_size", 0),
            ("memory_cache_strategy", "random"),
            ("redis_url", "http://x"),
            ("redis_url", "redis://host:notaport"),
            ("redis_url", "redis://"),
            ("redis_url", "redis://host/notadb"),
            ("redis_url", "unix://"),
            ("namespace", "a:b"),
            ("namespace", "a*"),
            ("namespace", ""),
            ("namespace", "x" * 65),
            ("operation_timeout", 0),
            ("connect_timeout", -1.0),
            ("circuit_breaker_cooldown", 61),
            ("default_ttl", 0),
        ],
    )
    def test_invalid_value_names_field(self, field: str, value: object) -> None:
        """A bad value raises ConfigurationError whose field and message name the setting."""
        with pytest.raises(ConfigurationError) as info:
            build(**{field: value})
        assert field == info.value.field
        assert field in str(info.value)

    def test_configuration_error_is_value_error(self) -> None:
        """ConfigurationError is caught by ``except ValueError``."""
        with pytest.raises(ValueError, match="memory_cache_size"):
            build(memory_cache_size=-5)

    def test_unknown_field_rejected(self) -> None:
        """A misspelt setting is an error, not silently ignored."""
        with pytest.raises(ConfigurationError) as info:
            build(memory_cache_sise=10)
        assert "memory_cache_sise" == info.value.field

    def test_frozen(self) -> None:
        """Assigning to a field of a built config raises."""
        config = CacheConfig()
        with pytest.raises(ValidationError, match="frozen"):
            config.namespace = "other"
        assert "cache" == config.namespace

    @pytest.mark.parametrize("value", ["LRU", "lru", "Lru"])
    def test_strategy_case_insensitive(self, value: str) -> None:
        """The strategy is accepted in any letter case."""
        assert CacheStrategy.LRU is build(memory_cache_strategy=value).memory_cache_strategy

    @pytest.mark.parametrize(
        "url",
        [
            "redis://localhost:6379",
            "redis://localhost",
            "rediss://user:pw@example.com:6380/2",
            "unix:///tmp/redis.sock",
            None,
        ],
    )
    def test_valid_urls(self, url: str | None) -> None:
        """redis://, rediss:// and unix:// URLs and None are accepted as they are."""
        assert url == CacheConfig(redis_url=url).redis_url

    @pytest.mark.parametrize("namespace", ["a", "app-1", "my_app.v2", "A" * 64])
    def test_valid_namespaces(self, namespace: str) -> None:
        """Letters, digits, '_', '.' and '-' up to 64 characters make a namespace."""
        assert namespace == CacheConfig(namespace=namespace).namespace


class TestL2Enabled:
    """l2_enabled says whether a Redis tier is used."""

    def test_no_url(self) -> None:
        """redis_url=None runs on L1 alone."""
        assert False is CacheConfig(redis_url=None).l2_enabled

    def test_multi_tier_disabled(self) -> None:
        """enable_multi_tier=False runs on L1 alone even with a URL."""
        assert False is CacheConfig(enable_multi_tier=False).l2_enabled


class TestFromEnv:
    """CacheConfig.from_env reads COHERENT_CACHE_* variables."""

    def test_reads_variables(self) -> None:
        """Variables map to fields by name and are converted to the field types."""
        config = CacheConfig.from_env(
            environ={
                "COHERENT_CACHE_REDIS_URL": "redis://example.com:6380/1",
                "COHERENT_CACHE_MEMORY_CACHE_SIZE": "42",
                "COHERENT_CACHE_MEMORY_CACHE_STRATEGY": "LFU",
                "COHERENT_CACHE_ENABLE_COMPRESSION": "false",
                "COHERENT_CACHE_OPERATION_TIMEOUT": "0.25",
                "COHERENT_CACHE_NAMESPACE": "svc",
            }
        )
        expected = (
            "redis://example.com:6380/1",
            42,
            CacheStrategy.LFU,
            False,
            0.25,
            "svc",
        )
        actual = (
            config.redis_url,
            config.memory_cache_size,
            config.memory_cache_strategy,
            config.enable_compression,
            config.operation_timeout,
            config.namespace,
        )
        assert expected == actual

    def test_empty_environment_gives_defaults(self) -> None:
        """Without variables the defaults apply."""
        assert CacheConfig() == CacheConfig.from_env(environ={})

    def test_other_variables_ignored(self) -> None:
        """Variables without the prefix are not read."""
        config = CacheConfig.from_env(environ={"REDIS_URL": "http://nope", "PATH": "/bin"})
        assert CacheConfig() == config

    @pytest.mark.parametrize("raw", ["none", "None", "NULL", "", "  none  "])
    def test_redis_url_none(self, raw: str) -> None:
        """'none' or an empty value for the URL selects L1 only."""
        config = CacheConfig.from_env(environ={"COHERENT_CACHE_REDIS_URL": raw})
        assert (None, False) == (config.redis_url, config.l2_enabled)

    def test_default_ttl_none(self) -> None:
        """'none' for a nullable number means no expiry."""
        config = CacheConfig.from_env(environ={"COHERENT_CACHE_DEFAULT_TTL": "none"})
        assert None is config.default_ttl

    def test_unknown_variable_rejected(self) -> None:
        """An unknown COHERENT_CACHE_* variable raises ConfigurationError naming it."""
        with pytest.raises(ConfigurationError, match="COHERENT_CACHE_FOO") as info:
            CacheConfig.from_env(environ={"COHERENT_CACHE_FOO": "1"})
        assert "foo" == info.value.field

    def test_test_harness_variable_ignored(self) -> None:
        """COHERENT_CACHE_TEST_REDIS_URL belongs to the test harness, not the config."""
        config = CacheConfig.from_env(environ={"COHERENT_CACHE_TEST_REDIS_URL": "redis://t:1"})
        assert CacheConfig() == config

    def test_invalid_value_names_field(self) -> None:
        """An invalid variable value raises ConfigurationError naming the field."""
        with pytest.raises(ConfigurationError) as info:
            CacheConfig.from_env(environ={"COHERENT_CACHE_MEMORY_CACHE_SIZE": "lots"})
        assert "memory_cache_size" == info.value.field

    def test_overrides_win(self) -> None:
        """Keyword overrides take precedence over the environment."""
        config = CacheConfig.from_env(
            environ={"COHERENT_CACHE_NAMESPACE": "env", "COHERENT_CACHE_MEMORY_CACHE_SIZE": "7"},
            namespace="override",
        )
        assert ("override", 7) == (config.namespace, config.memory_cache_size)


class TestSecrets:
    """Passwords never show in repr, str or error messages."""

    URL = f"redis://user:{PASSWORD}@example.com:6379/0"

    def test_url_password_masked_in_repr_and_str(self) -> None:
        """The password of redis_url is replaced by *** in repr and str."""
        config = CacheConfig(redis_url=self.URL)
        for text in (repr(config), str(config)):
            assert PASSWORD not in text
            assert "redis://user:***@example.com:6379/0" in text

    def test_url_keeps_password_for_connecting(self) -> None:
        """Masking affects display only: the field keeps the real URL."""
        assert self.URL == CacheConfig(redis_url=self.URL).redis_url

    def test_redacted_url(self) -> None:
        """redacted_url() masks the password."""
        expected = "redis://user:***@example.com:6379/0"
        assert expected == CacheConfig(redis_url=self.URL).redacted_url()

    def test_redis_password_masked(self) -> None:
        """redis_password never appears in repr or str."""
        config = build(redis_password=PASSWORD)
        assert PASSWORD not in repr(config)
        assert PASSWORD not in str(config)

    @pytest.mark.parametrize(
        "url",
        [
            f"redis://user:{PASSWORD}@host:notaport",
            f"http://user:{PASSWORD}@host",
            f"redis://:{PASSWORD}@host/notadb",
            f"redis://:{PASSWORD}@",
        ],
    )
    def test_password_not_in_error_message(self, url: str) -> None:
        """A bad config's ConfigurationError message does not contain the URL's password."""
        with pytest.raises(ConfigurationError) as info:
            CacheConfig(redis_url=url)
        assert "redis_url" == info.value.field
        assert PASSWORD not in str(info.value)

    def test_password_not_in_error_message_of_other_field(self) -> None:
        """An error in another field does not reveal the URL's or redis_password's secret."""
        with pytest.raises(ConfigurationError) as info:
            build(redis_url=self.URL, redis_password=PASSWORD, namespace="a:b")
        assert PASSWORD not in str(info.value)

    @pytest.mark.parametrize(
        "url",
        [
            f"redis://user:{PASSWORD}@host:notaport",
            f"http://user:{PASSWORD}@host",
            f"redis://:{PASSWORD}@host/notadb",
        ],
    )
    def test_password_not_in_traceback(self, url: str) -> None:
        """The logged traceback of a bad config (with its chained causes) hides the password."""
        with pytest.raises(ConfigurationError) as info:
            CacheConfig(redis_url=url)
        assert PASSWORD not in "".join(traceback.format_exception(info.value))


class TestQueryStringSecrets:
    @pytest.mark.parametrize(
        "url",
        [
            "redis://127.0.0.1:6379/0?password=s3cret",
            "redis://user@127.0.0.1:6379/0?db=1&password=s3cret",
            "unix:///tmp/redis.sock?password=s3cret",
        ],
    )
    def test_password_in_query_is_masked(self, url: str) -> None:
        """A password passed as a URL query parameter never shows in repr or redacted_url."""
        config = CacheConfig(redis_url=url)
        for text in (repr(config), str(config), config.redacted_url() or ""):
            assert "s3cret" not in text
            assert "password=***" in text


SENTINEL = {
    "redis_mode": "sentinel",
    "redis_url": "redis://mymaster/0",
    "sentinel_master": "mymaster",
    "sentinel_addresses": ("127.0.0.1:26379", "[::1]:26380"),
}


class TestDeploymentMode:
    """redis_mode and the Sentinel settings: consistent or a ConfigurationError."""

    def test_default_is_standalone(self) -> None:
        """Without redis_mode the L2 is one server, and the cluster bus default is sharded."""
        config = CacheConfig()
        assert ("standalone", "sharded") == (config.redis_mode, config.cluster_bus)

    def test_sentinel_settings(self) -> None:
        """A full Sentinel setting is accepted as given."""
        config = build(**SENTINEL, sentinel_password="pw")
        assert ("mymaster", ("127.0.0.1:26379", "[::1]:26380"), {"password": "pw"}) == (
            config.sentinel_master,
            config.sentinel_addresses,
            config.sentinel_credentials(),
        )

    def test_sentinel_password_is_hidden(self) -> None:
        """The sentinels' password never shows in repr."""
        assert "pw-123" not in repr(build(**SENTINEL, sentinel_password="pw-123"))

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({**SENTINEL, "sentinel_master": None}, "needs sentinel_master"),
            ({**SENTINEL, "sentinel_addresses": ()}, "needs sentinel_master"),
            ({**SENTINEL, "sentinel_addresses": ("no-port",)}, "host:port"),
            ({**SENTINEL, "sentinel_addresses": ("h:99999",)}, "host:port"),
            ({**SENTINEL, "redis_url": "unix:///tmp/r.sock"}, "redis:// or rediss://"),
            ({"sentinel_master": "m"}, "only apply with redis_mode='sentinel'"),
            ({"redis_mode": "cluster", "sentinel_addresses": ("h:1",)}, "only apply"),
            ({"redis_mode": "cluster", "redis_url": "redis://h:1/3"}, "only database 0"),
            ({"redis_mode": "cluster", "redis_url": "unix:///tmp/r.sock"}, "redis://"),
            ({"redis_mode": "replicated"}, "redis_mode"),
            ({"redis_mode": "cluster", "cluster_bus": "gossip"}, "cluster_bus"),
        ],
    )
    def test_inconsistent_settings_raise(self, fields: dict[str, Any], message: str) -> None:
        """Contradicting or incomplete deployment settings raise ConfigurationError."""
        with pytest.raises(ConfigurationError, match=message):
            build(**fields)

    def test_from_env(self) -> None:
        """Sentinel addresses come comma separated from the environment."""
        config = CacheConfig.from_env(
            {
                "COHERENT_CACHE_REDIS_MODE": "sentinel",
                "COHERENT_CACHE_REDIS_URL": "redis://mymaster",
                "COHERENT_CACHE_SENTINEL_MASTER": "mymaster",
                "COHERENT_CACHE_SENTINEL_ADDRESSES": "10.0.0.1:26379, 10.0.0.2:26379",
            }
        )
        assert ("sentinel", ("10.0.0.1:26379", "10.0.0.2:26379")) == (
            config.redis_mode,
            config.sentinel_addresses,
        )
