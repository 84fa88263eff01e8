"""The officers' CLI: list, show, approve, deny, keygen."""

__all__: list[str] = []
