"""Static typing checks, run by mypy --strict over tests/ (pytest only imports them)."""
