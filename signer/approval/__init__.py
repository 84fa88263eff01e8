"""Officers' approval keys."""

__all__: list[str] = []
