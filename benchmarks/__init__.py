"""coherent_cache's benchmarks: ``python -m benchmarks`` runs the suite (see docs/benchmarks.md).

Folders by role (benchmarks/README.md): `suite` (the rows of ``python -m benchmarks`` and
its report), `workers` (the processes they start), `standalone` (coherence, decorators,
tracing, cluster_bus), `profiles` (profiling scripts), `soak` (the soak test).
"""
