"""The cost of copy-on-read (``l1_copy_on_read``), for choosing its default.

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.profiles.profile_copy

For three values (a small dict, a 20-field Pydantic model, a 1,000-item list of ints):
the copy methods alone (``copy.deepcopy``, ``model_copy(deep=True)``, an orjson
round trip, what ``_typed.copy_value`` does), then an L1 hit (``await cache.get(k)``) and
a decorator hit (``await f(7)``) on an L1-only manager with copy-on-read off and on. Every
figure is the median µs per operation over rounds of a fixed batch, the on/off pairs
measured alternately in the same process.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel

from coherent_cache import CacheConfig, CacheManager
from coherent_cache._typed import copy_value

ROUNDS = 15
BATCH = 2000


class Profile(BaseModel):
    """A 20-field model: the shape of a typical API response object."""

    id: int = 7
    name: str = "user-7"
    email: str = "user7@example.com"
    active: bool = True
    age: int = 33
    score: float = 0.75
    country: str = "NL"
    city: str = "Utrecht"
    street: str = "Oudegracht 1"
    zip_code: str = "3511"
    phone: str = "+31 30 000 0000"
    created: datetime.datetime = datetime.datetime(2026, 1, 2, 3, 4, 5)
    updated: datetime.datetime = datetime.datetime(2026, 2, 3, 4, 5, 6)
    plan: str = "pro"
    seats: int = 5
    tags: list[str] = ["a", "b", "c"]
    locale: str = "nl-NL"
    timezone: str = "Europe/Amsterdam"
    verified: bool = True
    notes: str | None = None


VALUES: dict[str, tuple[Any, Any]] = {
    "small dict": (dict[str, Any], {"id": 7, "name": "user-7", "active": True}),
    "20-field model": (Profile, Profile()),
    "1,000-item list": (list[int], list(range(1000))),
}


def median_us(run: Callable[[], Any]) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(BATCH):
            run()
        samples.append((time.perf_counter() - start) / BATCH * 1e6)
    return statistics.median(samples)


async def median_us_async(run: Callable[[], Awaitable[Any]]) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(BATCH):
            await run()
        samples.append((time.perf_counter() - start) / BATCH * 1e6)
    return statistics.median(samples)


async def main() -> None:
    print("| value | deepcopy | model_copy(deep) | orjson round trip | copy_value |")
    print("|---|---|---|---|---|")
    for name, (_tp, value) in VALUES.items():
        deep = median_us(lambda v=value: copy.deepcopy(v))
        model = (
            f"{median_us(lambda v=value: v.model_copy(deep=True)):.2f}"
            if isinstance(value, BaseModel)
            else "-"
        )
        if isinstance(value, BaseModel):
            trip = median_us(lambda v=value: Profile.model_validate_json(v.model_dump_json()))
        else:
            trip = median_us(lambda v=value: orjson.loads(orjson.dumps(v)))
        ours = median_us(lambda v=value: copy_value(v))
        print(f"| {name} | {deep:.2f} | {model} | {trip:.2f} | {ours:.2f} |")
    print()
    print("| value | path | copy-on-read off µs | on µs | on - off µs |")
    print("|---|---|---|---|---|")
    for name, (tp, value) in VALUES.items():
        managers = []
        for on in (False, True):
            cache = CacheManager(CacheConfig(redis_url=None, l1_copy_on_read=on))
            await cache.start()
            managers.append(cache)
            await cache.set("hot", value, 600)

        def decorated(cache: CacheManager, value: Any = value, tp: Any = tp) -> Any:
            async def load(x: int) -> Any:
                return value

            return cache.cached(600, "f", value_type=tp)(load)

        funcs = [decorated(m) for m in managers]
        for f in funcs:
            await f(7)
        for path, runs in (
            ("L1 hit", [lambda m=m: m.get("hot") for m in managers]),
            ("decorator hit", [lambda f=f: f(7) for f in funcs]),
        ):
            off: list[float] = []
            on: list[float] = []
            for _ in range(3):  # alternate, so a slow phase hits both
                off.append(await median_us_async(runs[0]))
                on.append(await median_us_async(runs[1]))
            a, b = statistics.median(off), statistics.median(on)
            print(f"| {name} | {path} | {a:.2f} | {b:.2f} | {b - a:.2f} |")
        for m in managers:
            await m.stop()


if __name__ == "__main__":
    asyncio.run(main())
