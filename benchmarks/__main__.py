"""`python -m benchmarks`: every path next to its physical floor (benchmarks/suite.py)."""

from benchmarks.suite import main

raise SystemExit(main())
