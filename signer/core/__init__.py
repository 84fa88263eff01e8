"""The signing core: the request state machine, the key policy and its rules, lifecycle events.

Imports no gRPC, SQL driver, PKCS#11 or CLI toolkit (tests/test_imports.py)."""

__all__: list[str] = []
