"""Helpers shared by several test suites (and by benchmarks/soak); no tests here.

- `worker`: a cache instance in its own OS process, driven by JSON lines
  (``python -m tests.support.worker``);
- `multiproc`: `Worker`, which starts and drives those processes;
- `proxy`: `HoldingProxy`, a TCP proxy that stalls, drops or half-closes connections;
- `tls`: certificates and TLS endpoints (a real TLS server, or a TLS-terminating proxy).

Helpers used by one suite only stay with it (tests/faults/{load,checker,disable}.py,
tests/coherence/stress_worker.py, tests/deployments/{harness,load}.py).
"""
