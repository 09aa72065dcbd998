"""Benchmarks run on their own, each with its own command, results file and docs section.

- `coherence`: the stale window between two processes after an invalidation
  (``python -m benchmarks.standalone.coherence``; the suite's invalidation row reuses it);
- `decorators`: a cached function's hit and miss against cashews and aiocache;
- `tracing`: the cost of an L1 hit with and without an OpenTelemetry SDK;
- `cluster_bus`: PUBLISH against SPUBLISH on a local cluster (docs/architecture.md);
- `fleet`: the CPU and Redis memory of one instance's fleet report, and listing the
  fleet against a SCAN-based layout (docs/observability.md);
- `tracking_own_writes`: the L1 hit ratio and time per operation of a write-heavy loop
  with client tracking off and on (docs/tracking.md).
"""
