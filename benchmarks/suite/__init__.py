"""The suite run by ``python -m benchmarks``: its rows, its report, and the run itself.

`run` is the command (argument parsing, the parts, the outputs), `report` the targets,
tables, plot and docs block, `_common` the statistics and machine description; the rows are
`micro` and `peers` (per operation), `stampede`, `invalidation` (on
`benchmarks.standalone.coherence`) and `extras` (memory, scaling, codecs). Their worker
processes are in `benchmarks.workers`.
"""
