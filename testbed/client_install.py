"""A client-only install, made offline: the project's wheel in a clean virtualenv with
nothing but the client's own dependencies.

`client_venv(root)` builds the wheel from a copy of the source tree (no build
isolation: this environment's setuptools), makes a virtualenv without pip,
installs the wheel there with this environment's pip (`--no-deps`), and links
into its site-packages exactly the distributions the wheel's requirements need,
without extras, followed to the end: taken from this environment, so no index
is asked. What `signer[server]` adds (python-pkcs11, psycopg, prometheus-client,
...) is not there, and `python -c "import pkcs11"` fails in it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = ["client_venv", "closure"]

ROOT = Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "__pycache__", "*.egg-info", "build", ".*_cache"
)


def closure(requirements: list[str], extras: frozenset[str] = frozenset()) -> list[str]:
    """The distributions `requirements` need (their names, canonical), transitively, as
    markers without the extras asked for select them."""
    needed: dict[str, None] = {}
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, asked = todo.pop()
        env = {"extra": ""}
        if req.marker is not None and not any(
            req.marker.evaluate({**env, "extra": e}) for e in (asked or {""})
        ):
            continue
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in needed:
            continue
        needed[key] = None
        dist = metadata.distribution(name)
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or ()]
    return sorted({k.split("[")[0] for k in needed})


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The names a distribution puts directly into site-packages."""
    names = set()
    for f in dist.files or ():
        first = f.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            names.add(first)
    return names


def client_venv(root: Path) -> Path:
    """A clean virtualenv under `root` with the wheel and the client's closure; its path."""
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=_SKIP)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("signer-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    _run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)])
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (installed,) = metadata.distributions(name="signer", path=[str(site)])
    outer = Path(str(metadata.distribution("grpcio").locate_file("")))
    for name in closure(list(installed.requires or ())):
        for top in _top_level(metadata.distribution(name)):
            target = site / top
            if not target.exists():
                target.symlink_to(outer / top)
    return venv


def _run(args: list[str]) -> None:
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    if p.returncode != 0:
        raise AssertionError(f"{args[:6]} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
