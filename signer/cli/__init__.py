"""The `signer` command, one module per audience, and the pieces it shares with `approver`."""

__all__: list[str] = []
