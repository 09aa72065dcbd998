"""LoadPolicy (checked once when built), Flight (single-flight primitive), KeyTemplate."""

from __future__ import annotations

import anyio
import pytest

from coherent_cache import CacheConfig, CacheKeyGenerator, CacheManager, CacheTier
from coherent_cache._flight import FillToken, Flight
from coherent_cache._loader import LoadPolicy
from coherent_cache.errors import InvalidKeyError, InvalidTTLError
from coherent_cache.keys import KeyTemplate
from coherent_cache.types import MISSING


class TestLoadPolicy:
    """Every load option is checked in the constructor."""

    def test_defaults_and_normalisation(self) -> None:
        """An int TTL becomes a float, tags are de-duplicated, the tier coerced."""
        policy = LoadPolicy(ttl=60, tier="l1", tags=("a", "b", "a"))  # type: ignore[arg-type]
        assert (60.0, CacheTier.L1, ("a", "b")) == (policy.ttl, policy.tier, policy.tags)
        assert (False, None, None, True, None, 0.0) == (
            policy.lock,
            policy.stale_ttl,
            policy.loader_timeout,
            policy.cache_none,
            policy.should_cache,
            policy.ttl_jitter,
        )

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"ttl": 0}, "ttl must be a positive number"),
            ({"ttl": True}, "ttl must be a positive number"),
            ({"ttl": 1, "stale_ttl": -1}, "ttl must be a positive number"),
            ({"ttl": 1, "loader_timeout": float("inf")}, "ttl must be a positive number"),
            ({"ttl": 1, "ttl_jitter": 1.0}, "fraction in \\[0, 1\\)"),
            ({"ttl": 1, "ttl_jitter": "0.1"}, "ttl_jitter must be a number"),
            ({"ttl": 1, "ttl_jitter": True}, "ttl_jitter must be a number"),
        ],
    )
    def test_bad_numbers(self, options: dict[str, object], message: str) -> None:
        """Bad TTLs and jitters raise InvalidTTLError."""
        with pytest.raises(InvalidTTLError, match=message):
            LoadPolicy(**options)  # type: ignore[arg-type]

    def test_bad_tag(self) -> None:
        """A tag that is not a valid key raises InvalidKeyError."""
        with pytest.raises(InvalidKeyError):
            LoadPolicy(ttl=None, tags=("",))

    def test_with_tags(self) -> None:
        """with_tags keeps every other option and checks the tags."""
        policy = LoadPolicy(ttl=5, lock=True, ttl_jitter=0.1)
        tagged = policy.with_tags(("user:7",))
        assert (("user:7",), True, 0.1, 5.0) == (
            tagged.tags,
            tagged.lock,
            tagged.ttl_jitter,
            tagged.ttl,
        )
        with pytest.raises(InvalidKeyError):
            policy.with_tags(("",))

    async def test_decorator_resolves_defaults_once(self) -> None:
        """cached() resolves USE_DEFAULT and lock=None from the config when decorating."""
        config = CacheConfig(redis_url=None, default_ttl=42, lock_by_default=True)
        async with CacheManager(config) as cache:
            stored: list[object] = []

            @cache.cached(key_prefix="f")
            async def f(x: int) -> int:
                stored.append(x)
                return x

            assert 1 == await f(1)
            assert 1 == await f(1)
            assert [1] == stored
            assert 1 == cache.stats()["loader"]["loads"]
            with pytest.raises(InvalidTTLError, match="ttl_jitter must be a number"):
                cache.cached(ttl_jitter="x")  # type: ignore[arg-type]


class TestFlight:
    """One operation shared by its joiners."""

    async def test_joiners_get_the_value(self) -> None:
        """Joiners waiting before and after the end get the owner's value."""
        flight = Flight(FillToken())
        results: list[object] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _collect(flight, results))
            await anyio.wait_all_tasks_blocked()
            flight.value = "v"
            flight.finish()
        results.append(await flight.result())
        assert ["v", "v"] == results

    async def test_error_reaches_joiners(self) -> None:
        """An error set before finish is raised by result()."""
        flight = Flight(FillToken())
        flight.error = RuntimeError("boom")
        flight.finish()
        with pytest.raises(RuntimeError, match="boom"):
            await flight.result()

    async def test_no_value_stays_missing(self) -> None:
        """A flight finished without a value (its owner cancelled) reports MISSING."""
        flight = Flight(FillToken())
        flight.finish()
        assert MISSING is await flight.result()

    async def test_cancelled_joiner_does_not_disturb(self) -> None:
        """A joiner cancelled while waiting leaves the flight intact for the others."""
        flight = Flight(FillToken())
        with anyio.move_on_after(0.01):
            await flight.wait()
        assert not flight.finished
        flight.value = 1
        flight.finish()
        assert 1 == await flight.result()


async def _collect(flight: Flight, results: list[object]) -> None:
    results.append(await flight.result())


class TestKeyTemplate:
    """The one template engine: patterns escape, tags do not."""

    def test_pattern_escapes_values(self) -> None:
        """A value's glob characters and separator are escaped in a pattern."""
        assert "u:a%3Ab\\*:*" == KeyTemplate("u:{x}:*", what="pattern").render((), {"x": "a:b*"})

    def test_tag_does_not_escape(self) -> None:
        """A tag template encodes values without escaping."""
        assert "user:a*" == KeyTemplate("user:{x}", what="tag").render((), {"x": "a*"})

    def test_format_spec_formats_the_value(self) -> None:
        """{n:03d} formats the value itself, in generate_pattern_key too."""
        assert "n:005:*" == CacheKeyGenerator().generate_pattern_key("n:{n:03d}:*", n=5)

    def test_static_template(self) -> None:
        """Without placeholders the text is the result, braces unescaped."""
        template = KeyTemplate("a{{b}}", what="tag")
        assert ((), "a{b}") == (template.fields, template.render())

    def test_missing_value_names_the_field(self) -> None:
        """A placeholder without a value raises InvalidKeyError naming it."""
        with pytest.raises(InvalidKeyError, match="cannot fill \\{x\\}"):
            KeyTemplate("k:{x}", what="pattern").render()
