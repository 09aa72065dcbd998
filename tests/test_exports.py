"""Tests of the public API surface: __all__ of every public module and the error tree."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType

import pytest

import coherent_cache
from coherent_cache import errors

PUBLIC_MODULES = [
    "coherent_cache",
    "coherent_cache.config",
    "coherent_cache.errors",
    "coherent_cache.keys",
    "coherent_cache.serializer",
    "coherent_cache.l1",
    "coherent_cache.l2",
    "coherent_cache.multitier",
    "coherent_cache.manager",
    "coherent_cache.monitoring",
    "coherent_cache.fleet",
    "coherent_cache.types",
    "coherent_cache.bus",
    "coherent_cache.decorators",
    "coherent_cache.cli",
    "coherent_cache.testing",
    "coherent_cache.warming",
    "coherent_cache.integrations",
    "coherent_cache.integrations.fastapi",
]


def isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then everything else."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def all_of(module: ModuleType) -> list[str]:
    """The module's ``__all__`` as a list."""
    names: list[str] = list(module.__all__)
    return names


class TestAll:
    """Every public module declares its API in __all__."""

    @pytest.mark.parametrize("name", PUBLIC_MODULES)
    def test_has_all(self, name: str) -> None:
        """The module defines __all__ as a list or tuple of str."""
        module = importlib.import_module(name)
        assert True is hasattr(module, "__all__")
        assert isinstance(module.__all__, list | tuple)
        assert [] == [n for n in module.__all__ if not isinstance(n, str)]

    @pytest.mark.parametrize("name", PUBLIC_MODULES)
    def test_names_exist(self, name: str) -> None:
        """Every name in __all__ is an attribute of the module."""
        module = importlib.import_module(name)
        assert [] == [n for n in all_of(module) if not hasattr(module, n)]

    @pytest.mark.parametrize("name", PUBLIC_MODULES)
    def test_no_duplicates(self, name: str) -> None:
        """No name is listed twice."""
        names = all_of(importlib.import_module(name))
        assert sorted(set(names)) == sorted(names)

    def test_root_all_sorted(self) -> None:
        """The root __all__ is sorted (constants, then classes, then the rest, as ruff does)."""
        names = all_of(coherent_cache)
        assert sorted(names, key=isort_key) == names

    def test_root_exports_errors(self) -> None:
        """Every error class is importable from the package root."""
        assert [] == [n for n in all_of(errors) if n not in all_of(coherent_cache)]

    def test_version(self) -> None:
        """__version__ is a non-empty str."""
        assert isinstance(coherent_cache.__version__, str)
        assert "" != coherent_cache.__version__

    def test_import_does_not_import_fastapi(self) -> None:
        """`import coherent_cache` never imports FastAPI (a fresh interpreter checks)."""
        code = (
            "import sys, coherent_cache; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'fastapi', 'starlette'}))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert "[]" == result.stdout.strip()


class TestErrorTree:
    """The exception hierarchy drawn in errors.py."""

    @pytest.mark.parametrize(
        ("error", "bases"),
        [
            (errors.ConfigurationError, (errors.CacheError, ValueError)),
            (errors.InvalidKeyError, (errors.CacheError, ValueError)),
            (errors.InvalidTTLError, (errors.CacheError, ValueError)),
            (errors.SerializationError, (errors.CacheError, TypeError)),
            (errors.ValueTooLargeError, (errors.CacheError, ValueError)),
            (errors.DeserializationError, (errors.CacheError, ValueError)),
            (errors.CacheClosedError, (errors.CacheError, RuntimeError)),
            (errors.BackendError, (errors.CacheError,)),
            (errors.BackendUnavailableError, (errors.BackendError, errors.CacheError)),
            (errors.BackendTimeoutError, (errors.BackendError, errors.CacheError, TimeoutError)),
            (errors.CacheError, (Exception,)),
        ],
    )
    def test_bases(self, error: type[Exception], bases: tuple[type[BaseException], ...]) -> None:
        """Each error derives from its documented parents."""
        assert [] == [base for base in bases if not issubclass(error, base)]

    @pytest.mark.parametrize(
        "name",
        [n for n in errors.__all__ if n not in {"BackendError", "CacheError"}],
    )
    def test_every_error_is_cache_error(self, name: str) -> None:
        """Every exported error is a CacheError, so one except clause catches them all."""
        assert True is issubclass(getattr(errors, name), errors.CacheError)

    def test_backend_errors_not_builtin_lookalikes(self) -> None:
        """BackendUnavailableError is not the builtin ConnectionError (nor OSError)."""
        assert (False, False) == (
            issubclass(errors.BackendUnavailableError, ConnectionError),
            issubclass(errors.BackendUnavailableError, OSError),
        )

    def test_context_attributes(self) -> None:
        """Errors carry their context as attributes."""
        config_error = errors.ConfigurationError("bad", field="namespace")
        key_error = errors.InvalidKeyError("bad", key=1)
        ttl_error = errors.InvalidTTLError("bad", ttl=-1)
        ser_error = errors.SerializationError("bad", value_type=set, key="k")
        big_error = errors.ValueTooLargeError("big", size=10, limit=5, key="k")
        assert ("namespace", 1, -1, set, "k", (10, 5, "k")) == (
            config_error.field,
            key_error.key,
            ttl_error.ttl,
            ser_error.value_type,
            ser_error.key,
            (big_error.size, big_error.limit, big_error.key),
        )
