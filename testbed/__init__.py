"""The dev-environment testbed shared by `tests/` and `benchmarks/`; never shipped.

Real parts only: `signer init` directories (`env`), real `signer serve`
processes (`process`), real mTLS gRPC clients (`clients`), a throwaway
PostgreSQL server (`pg`) and the command helpers they all use (`commands`).
Nothing here fakes the product; nothing here imports `tests`, so benchmarks
can use it without the test suite (tests/test_codegen.py checks the layering).
The package is not installed with the product (pyproject.toml's package
discovery takes only `signer` and `approver`).
"""

__all__ = ["clients", "commands", "env", "pg", "process"]
