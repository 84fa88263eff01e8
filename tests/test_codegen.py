"""The checked-in generated protobuf code matches the protos (no drift)."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_has_no_drift(tmp_path: Path) -> None:
    """Regenerating signer/v1 from proto/ with the pinned tools gives identical files."""
    bindir = str(Path(sys.executable).parent)  # protoc-gen-mypy lives next to python
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
    }
    subprocess.run(
        [str(ROOT / "scripts" / "gen-proto"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
        env=env,
    )
    fresh = tmp_path / "signer" / "v1"
    checked_in = ROOT / "signer" / "v1"
    generated = sorted(p.name for p in fresh.iterdir())
    assert generated, "the generator produced nothing"
    assert (
        sorted(
            p.name
            for p in checked_in.iterdir()
            if p.name != "__init__.py" and p.name != "__pycache__"
        )
        == generated
    )
    _, mismatch, errors = filecmp.cmpfiles(fresh, checked_in, generated, shallow=False)
    assert not mismatch and not errors, f"regenerate with scripts/gen-proto: {mismatch}"
