"""Profiling and diagnostic scripts: one hot path at a time, for working on it.

Not part of the suite and no results file: each prints a table (``python -m
benchmarks.profiles.<name>``). `profile_hot` (L1, decorator, two-tier, sequential L2;
``--profile CASE`` for a cProfile), `profile_concurrent` (concurrent L2 reads, a stampede in
one process), `profile_stampede` (across 3 processes), `profile_compression` (codec cost by
size), `sender_waterfall` (where a writer's invalidation spends its time before the wire).
"""
