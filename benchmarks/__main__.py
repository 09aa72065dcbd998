"""``python -m benchmarks``: runs the suite, `benchmarks.suite.run` (see docs/benchmarks.md)."""

import sys

from benchmarks.suite.run import main

if __name__ == "__main__":
    sys.exit(main())
