"""Worker processes the benchmarks start, one cache instance (or peer) per OS process.

- `_stampede_worker`: the stampede rows (``python -m benchmarks.workers._stampede_worker``);
- `_cashews_worker`: cashews in the invalidation row (``python -m
  benchmarks.workers._cashews_worker``);
- `_coherence_worker`: the coherence benchmark's processes (started by file path).
"""
