"""coherent_cache's benchmarks: ``python -m benchmarks`` runs the suite (see docs/benchmarks.md)."""
