"""Officers' approval keys: one interface, one module per kind, one registry.

`keys` is the interface (`ApprovalKey`, `ApprovalSigner`); `ed25519` is the
first kind; `registry` lists the kinds (`KINDS`) and finds the one a PEM key
or a recorded policy value is; `files` reads an officer's key file, and makes
one. Imports no gRPC, database driver, PKCS#11 or CLI toolkit
(tests/test_imports.py); this file imports nothing, so loading the interface
loads no kind.
"""

__all__: list[str] = []
