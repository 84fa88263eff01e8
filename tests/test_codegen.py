"""The checked-in generated protobuf code matches the protos (no drift), every test
says in its docstring what behaviour it shows, and benchmarks/ and testbed/ import
nothing from tests/."""

from __future__ import annotations

import ast
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


def test_every_test_says_what_it_shows() -> None:
    """Every test function in tests/test_*.py, sync or async, in a class or not, has a
    docstring; any without one is listed as FILE::NAME."""

    def undocumented(body: list[ast.stmt], prefix: str) -> list[str]:
        found: list[str] = []
        for node in body:
            if isinstance(node, ast.ClassDef):
                found += undocumented(node.body, f"{prefix}::{node.name}")
            elif (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name.startswith("test_")
                and not (ast.get_docstring(node) or "").strip()
            ):
                found.append(f"{prefix}::{node.name}")
        return found

    paths = sorted((ROOT / "tests").glob("test_*.py"))
    assert paths, "no test files found"
    missing: list[str] = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        missing += undocumented(tree.body, str(path.relative_to(ROOT)))
    assert not missing, "tests without a behaviour docstring:\n" + "\n".join(missing)


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved from its package."""
    package = path.relative_to(ROOT).parent.parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}".lstrip(".") for alias in node.names)
    return found


def test_benchmarks_and_testbed_import_nothing_from_tests() -> None:
    """No module under benchmarks/ or testbed/ imports `tests` or anything in it."""
    offending = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m == "tests" or m.startswith("tests.")
        )
        for top in ("benchmarks", "testbed")
        for path in sorted((ROOT / top).rglob("*.py"))
    }
    assert any(offending), "found no modules to check"
    assert {p: m for p, m in offending.items() if m} == {}, "move shared code into testbed/"
