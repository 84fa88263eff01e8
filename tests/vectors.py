"""Known-answer vectors from tests/assets/, loaded once (their sources: tests/assets/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["C2SP", "GO_NOTE", "load"]

ASSETS = Path(__file__).parent / "assets"


def load(name: str) -> dict[str, Any]:
    """The JSON vectors file `name` in tests/assets/."""
    doc: dict[str, Any] = json.loads((ASSETS / name).read_text(encoding="utf-8"))
    return doc


GO_NOTE = load("go_sumdb_note.json")  # golang.org/x/mod/sumdb/note tests
C2SP = load("c2sp_examples.json")  # the C2SP signed-note and tlog-checkpoint examples
