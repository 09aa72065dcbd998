"""Import-time benchmark (issue 20): ``import coherent_cache`` against its dependencies alone.

Run from the repository root, in the project's virtualenv::

    python -m benchmarks.standalone.import_time                 # about two minutes
    python -m benchmarks.standalone.import_time --pairs 41 --profiles 21
    python -m benchmarks.standalone.import_time --instructions  # + callgrind, ~3 min more

**The baseline, "its runtime dependencies alone"**: the packages of
``[project.dependencies]``, each imported at the module a plain
``create_cache_manager(...)`` + ``start()`` + ``get``/``set`` needs::

    import anyio, redis.asyncio, orjson, cachetools, structlog
    import opentelemetry.trace, opentelemetry.metrics
    from pydantic import BaseModel

``opentelemetry.metrics``: a started manager registers its observable gauges with the
meter. ``from pydantic import BaseModel``: ``import pydantic`` alone loads none of the
model machinery (pydantic defers it behind its own module ``__getattr__``), and
`CacheConfig`, which every manager needs, is a model. The stricter row ``deps (bare
packages)`` imports ``pydantic`` instead, and its ratio is reported too. anyio's asyncio
backend is loaded by ``anyio.run`` and is in neither. Whatever else ``import coherent_cache``
loads (our modules, building `CacheConfig`'s schema, pydantic's ``SecretStr`` and
``TypeAdapter``, standard-library modules only we use, ...) is the library's cost.

**Measured**: each statement in its own fresh interpreter (``python -c``), timed inside the
process around the import statement alone (interpreter start-up excluded: the same for
all), wall (``perf_counter``) and CPU (``process_time``: less disturbed by other load on
a shared machine); ``--pairs`` rounds run the statements alternately (the order reversed
every other round); medians, and ratios of the medians. Two environments:

- ``venv``: this virtualenv as it is. It has the test extras, so redis-py's
  ``redis.observability`` finds the OpenTelemetry *SDK* and imports its metrics package
  (about 100 ms, in the dependencies' share).
- ``plain``: the same with ``opentelemetry.sdk`` made unimportable (``None`` in
  ``sys.modules`` first), as after a plain ``pip install coherent-cache`` without the
  SDK: a smaller baseline, so the stricter ratio.

``coherent_cache + manager`` imports the package and builds a manager
(``CacheManager(CacheConfig(redis_url=...))``, no connection): what laziness moved to
first use shows there. Then ``--profiles`` runs of ``python -X importtime`` per
environment: the median self time of every module, grouped (interpreter start-up, the
dependencies' modules as the baseline loads them, ``coherent_cache.*``, each other
top-level package), and our slowest modules. ``--instructions`` also counts the CPU
instructions of each statement with callgrind (whole process minus an empty one, in the
``plain`` environment): repeatable on a noisy machine. Results:
``benchmarks/results/import_time.json``; see docs/benchmarks.md, "Import time (issue 20)".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "import_time.json"
NEUTRAL = tempfile.gettempdir()
"""The children's working directory: the same for every checkout compared."""

PACKAGES = "anyio, redis.asyncio, orjson, cachetools, structlog"
OTEL = "opentelemetry.trace, opentelemetry.metrics"
STATEMENTS = {
    "deps": f"import {PACKAGES}, {OTEL}\nfrom pydantic import BaseModel",
    "deps (bare packages)": f"import {PACKAGES}, pydantic, {OTEL}",
    "coherent_cache": "import coherent_cache",
    "coherent_cache + manager": (
        "import coherent_cache\n"
        "coherent_cache.CacheManager("
        "coherent_cache.CacheConfig(redis_url='redis://127.0.0.1:1'))"
    ),
}
"""The timed statements (see the module docstring for the baseline's definition)."""

PRELUDE = {
    "venv": "",
    "plain": "import sys; sys.modules['opentelemetry.sdk'] = None\n",
}
"""Run before the timed statement: ``plain`` hides the OpenTelemetry SDK."""

TIMED = """{prelude}import sys, time
w0, c0 = time.perf_counter_ns(), time.process_time_ns()
{statement}
c1, w1 = time.process_time_ns(), time.perf_counter_ns()
print(w1 - w0, c1 - c0, len(sys.modules))
"""


def environ(source: Path = ROOT) -> dict[str, str]:
    """The child's environment: ``source`` first on the path, a fixed hash seed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run(*args: str, source: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python *args`` with ``source``'s package first on the path; raises if it fails."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True, text=True, check=True, timeout=600, env=environ(source),
        cwd=NEUTRAL,
    )  # fmt: skip


def timed(prelude: str, statement: str, source: Path = ROOT) -> tuple[float, float, int]:
    """(wall ms, CPU ms) spent in ``statement`` in a fresh interpreter, modules loaded."""
    code = TIMED.format(prelude=prelude, statement=statement)
    wall, cpu, modules = run("-c", code, source=source).stdout.split()
    return int(wall) / 1e6, int(cpu) / 1e6, int(modules)


def importtime(prelude: str, statement: str, source: Path = ROOT) -> dict[str, int]:
    """Self time (µs) of every module ``python -X importtime`` reports for ``statement``."""
    selfs: dict[str, int] = {}
    output = run("-X", "importtime", "-c", prelude + statement, source=source).stderr
    for line in output.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _cumulative, name = line.removeprefix("import time:").split("|")
        selfs[name.strip()] = selfs.get(name.strip(), 0) + int(own)
    return selfs


def group_of(module: str, startup: set[str], deps: set[str]) -> str:
    """The row of the breakdown a module's self time is added to."""
    if module in startup:
        return "interpreter start-up (site, encodings, ...)"
    if module.split(".")[0] == "coherent_cache":
        return "coherent_cache.* (own modules)"
    if module in deps:
        return "the dependencies, as the baseline loads them"
    top = module.split(".")[0]
    kind = "stdlib" if top in sys.stdlib_module_names else "third-party"
    return f"{top} ({kind}, beyond the baseline)"


def profile(prelude: str, runs: int, source: Path = ROOT) -> dict[str, Any]:
    """Median self times over ``runs`` importtime runs, grouped; our slowest modules."""
    startup = set(importtime(prelude, "pass"))
    deps = set(importtime(prelude, STATEMENTS["deps"]))
    samples: dict[str, list[int]] = defaultdict(list)
    for _ in range(runs):
        for name, us in importtime(prelude, STATEMENTS["coherent_cache"], source).items():
            samples[name].append(us)
    median = {
        name: statistics.median(got + [0] * (runs - len(got))) for name, got in samples.items()
    }
    groups: dict[str, float] = defaultdict(float)
    for name, us in median.items():
        groups[group_of(name, startup, deps)] += us
    own = {n: us for n, us in median.items() if n.split(".")[0] == "coherent_cache"}
    by_time = sorted(groups.items(), key=lambda item: -item[1])
    return {
        "groups_ms": {group: round(us / 1000, 2) for group, us in by_time},
        "own_modules_ms": {
            n: round(us / 1000, 2) for n, us in sorted(own.items(), key=lambda i: -i[1])
        },
        "beyond_baseline": sorted(
            n for n in set(median) - deps - startup if n.split(".")[0] != "coherent_cache"
        ),
    }


def measure(prelude: str, pairs: int, compare: Path | None) -> dict[str, Any]:
    """Medians (ms) of the statements, run alternately in fresh interpreters; with
    ``compare``, the package's two statements from that checkout too (suffix ``[compare]``)."""
    cases = cases_of(compare)
    names = list(cases)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    modules: dict[str, int] = {}
    for i in range(pairs):
        for name in names if i % 2 == 0 else reversed(names):
            statement, source = cases[name]
            w, c, count = timed(prelude, statement, source)
            wall[name].append(w)
            cpu[name].append(c)
            modules[name] = count
    wall_med = {name: statistics.median(got) for name, got in wall.items()}
    cpu_med = {name: statistics.median(got) for name, got in cpu.items()}

    def ratios(med: dict[str, float]) -> dict[str, float]:
        compared = {
            f"{name} [compare] / deps": round(med[f"{name} [compare]"] / med["deps"], 3)
            for name in ("coherent_cache", "coherent_cache + manager")
            if compare is not None
        }
        return compared | {
            "coherent_cache / deps": round(med["coherent_cache"] / med["deps"], 3),
            "coherent_cache + manager / deps": round(
                med["coherent_cache + manager"] / med["deps"], 3
            ),
            "coherent_cache / bare packages": round(
                med["coherent_cache"] / med["deps (bare packages)"], 3
            ),
        }

    return {
        "wall_median_ms": {name: round(ms, 1) for name, ms in wall_med.items()},
        "wall_min_ms": {name: round(min(got), 1) for name, got in wall.items()},
        "cpu_median_ms": {name: round(ms, 1) for name, ms in cpu_med.items()},
        "modules": modules,
        "wall_ratios": ratios(wall_med),
        "cpu_ratios": ratios(cpu_med),
    }


def cases_of(compare: Path | None) -> dict[str, tuple[str, Path]]:
    """The statements and the checkout each runs from; with ``compare``, the package's two
    statements from that checkout too (names suffixed ``[compare]``)."""
    cases = {name: (statement, ROOT) for name, statement in STATEMENTS.items()}
    if compare is not None:
        for name in ("coherent_cache", "coherent_cache + manager"):
            cases[f"{name} [compare]"] = (STATEMENTS[name], compare)
    return cases


def instructions(prelude: str, compare: Path | None) -> dict[str, int]:
    """CPU instructions of each statement (callgrind; the whole process minus ``pass``)."""

    def count(statement: str, source: Path) -> int:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, "-c", prelude + statement],
            capture_output=True, text=True, check=True, timeout=1800, env=environ(source),
            cwd=NEUTRAL,
        )  # fmt: skip
        for line in done.stderr.splitlines():
            if "Collected :" in line:
                return int(line.rsplit(":", 1)[1].strip())
        raise RuntimeError(f"no instruction count in callgrind's output:\n{done.stderr}")

    empty = count("pass", ROOT)
    return {name: count(*case) - empty for name, case in cases_of(compare).items()}


def report(env: str, got: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n== {env}: {args.pairs} rounds; in-process import time, medians in ms")
    print(f"  {'statement':<28}{'wall':>8}{'(min)':>8}{'CPU':>8}{'modules':>9}")
    for name, ms in got["wall_median_ms"].items():
        print(
            f"  {name:<28}{ms:>8.1f}{got['wall_min_ms'][name]:>8.1f}"
            f"{got['cpu_median_ms'][name]:>8.1f}{got['modules'][name]:>9}"
        )
    for what, ratio in got["wall_ratios"].items():
        print(f"  {what:<34} wall {ratio:.2f}x   CPU {got['cpu_ratios'][what]:.2f}x")
    for key in ("profile", "profile [compare]"):
        if key not in got:
            continue
        print(f"  {key}: -X importtime, median self time of {args.profiles} runs, by group (ms):")
        for group, ms in got[key]["groups_ms"].items():
            if ms >= 0.3:
                print(f"    {group:<56}{ms:>8.1f}")
        print("  our slowest modules (self ms):")
        for name, ms in list(got[key]["own_modules_ms"].items())[:10]:
            print(f"    {name:<56}{ms:>8.2f}")
    if "instructions" in got:
        counts = got["instructions"]
        print("  callgrind, instructions of each statement (millions):")
        for name, n in counts.items():
            print(f"    {name:<56}{n / 1e6:>8.1f}")
        for name, n in counts.items():
            if name.startswith("coherent_cache"):
                print(
                    f"    {name} / deps {n / counts['deps']:.3f}x, "
                    f"/ bare packages {n / counts['deps (bare packages)']:.3f}x"
                )


def main(args: argparse.Namespace) -> dict[str, Any]:
    compare = Path(args.compare).resolve() if args.compare else None
    for prelude in PRELUDE.values():  # compile every module once: no run writes bytecode
        for source in filter(None, (ROOT, compare)):
            timed(prelude, STATEMENTS["coherent_cache + manager"], source)
    result: dict[str, Any] = {
        "statements": STATEMENTS,
        "compare": str(compare) if compare else None,
        "environments": {},
    }
    for env, prelude in PRELUDE.items():
        got = measure(prelude, args.pairs, compare)
        got["profile"] = profile(prelude, args.profiles)
        if compare is not None:
            got["profile [compare]"] = profile(prelude, args.profiles, compare)
        if args.instructions and env == "plain":
            if shutil.which("valgrind") is None:
                raise SystemExit("--instructions needs valgrind on PATH")
            got["instructions"] = instructions(prelude, compare)
        result["environments"][env] = got
        report(env, got, args)
    result.update(
        pairs=args.pairs,
        profiles=args.profiles,
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        load=os.getloadavg(),
    )
    if args.output != "-":
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=21, help="rounds of the statements")
    parser.add_argument("--profiles", type=int, default=11, help="-X importtime runs")
    parser.add_argument("--instructions", action="store_true", help="also count (callgrind)")
    parser.add_argument(
        "--compare", help="another checkout: its package's statements interleaved (before/after)"
    )
    parser.add_argument("--output", default=str(RESULTS), help="JSON file, '-' for none")
    main(parser.parse_args())


if __name__ == "__main__":
    cli()
