"""The package's version: the one place it is written (pyproject.toml reads it from here).

A constant rather than an ``importlib.metadata`` lookup, which scans the installed
distributions and parses their metadata (tens of milliseconds at import, issue 20).
"""

__version__ = "0.1.0"
