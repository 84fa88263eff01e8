"""Output formats: what a request carries, what officers see, how its file is made and checked."""

__all__: list[str] = []
