"""Client side: profiles and channels, the requester workflow, CI tokens, audit fetch, TUF signer.

Imports nothing of the server, the core, the store or the token (tests/test_imports.py)."""

__all__: list[str] = []
