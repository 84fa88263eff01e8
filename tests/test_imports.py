"""The layers of docs/architecture.md §2, read from the source: who may import what.

Every `import` of the project's own modules is read with `ast` (imports inside
functions and under TYPE_CHECKING included, and the packages a module's import
runs), and the modules each entry point loads are followed to the end. The core
decides without grpc, a database driver, the token library or a CLI toolkit;
the clients (the `signer` client library, the TUF signer, the auditor's fetch,
the `approver` CLI) load nothing of the server, the core, the store or the
token; the offline verifiers load no RPC and no store; the officers' approval
keys (`signer.approval`, which every side loads) load no RPC, driver, token
library or toolkit, and none of the server, clients, formats or audit log; and
only the token adapter speaks PKCS#11. The one part of the core every side may load is the
key policy model and its rules (`POLICY_MODEL`): the offline audit verifier,
and so the auditor's client, checks a recorded policy with the core's own
rule classes, never a copy; those modules load nothing else of the core.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("signer", "approver")


def _module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for f in (ROOT / package).rglob("*.py"):  # generated protobuf code too: its stubs load grpc
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


MODULES = _module_files()


@cache
def _imports(module: str) -> frozenset[str]:
    """Every dotted name `module` imports, wherever in the file."""
    f = MODULES[module]
    names: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if f.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return frozenset(names)


def _project_module(name: str) -> str | None:
    """The project module a dotted name lands in (a module, not a name inside one)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in MODULES:
            return candidate
    return None


@cache
def loads(start: str) -> tuple[frozenset[str], frozenset[str]]:
    """(project modules, top-level outside packages) that importing `start` loads."""
    seen: set[str] = set()
    outside: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts))]  # its packages run first
        for name in _imports(module):
            found = _project_module(name)
            if found is not None:
                todo.append(found)
            elif name.split(".")[0] not in PACKAGES:
                outside.add(name.split(".")[0])
    return frozenset(seen), frozenset(outside)


RPC = {"grpc", "grpc_status", "grpc_health", "grpc_reflection"}
DRIVERS = {"sqlite3", "psycopg", "psycopg_pool"}
TOOLKITS = {"click", "rich"}
SERVER_SIDE = {"signer.server", "signer.core", "signer.store", "signer.token", "signer.notify"}
ANY_DRIVER = DRIVERS | {"pkcs11"}
OFFLINE = RPC | DRIVERS | TOOLKITS | {"pkcs11"}
SHARED = {  # the domain modules at the top, used by every side
    "signer.algorithms",
    "signer.dsse",
    "signer.encoding",
    "signer.errors",
    "signer.fields",
    "signer.model",
    "signer.parsing",
    "signer.text",
    "signer.verify",
}

# The core's policy model and rules: pure, shared with the offline verifiers (the only
# modules of a forbidden package a layer may load).
POLICY_MODEL = {
    "signer.core",
    "signer.core.policy",
    "signer.core.rules",
    "signer.core.windows",
    "signer.core.limits",
    "signer.core.unusual",
}

# module or package -> (outside packages it must not load, project packages it must not load);
# a package's rule holds for every module in it.
RULES: dict[str, tuple[set[str], set[str]]] = {
    "signer.core": (OFFLINE, {"signer.server", "signer.token", "signer.client", "signer.cli"}),
    "signer.client": (ANY_DRIVER | TOOLKITS, SERVER_SIDE | {"signer.cli"}),
    # Notifications read the log through the store's port, never the core or the edge.
    "signer.notify": (
        OFFLINE,
        {"signer.server", "signer.core", "signer.token", "signer.client", "signer.cli"},
    ),
    "signer.sslib": (ANY_DRIVER | TOOLKITS, SERVER_SIDE | {"signer.cli"}),
    # The officer's own token (`signer.token.approval`): the one server-side package the
    # approver may load, and through it PKCS#11.
    "approver": (DRIVERS, SERVER_SIDE - {"signer.token"}),
    "signer.cli.kit": (ANY_DRIVER, SERVER_SIDE),
    "signer.audit.offline": (OFFLINE, SERVER_SIDE | {"signer.client", "signer.cli"}),
    "signer.audit.proofs": (OFFLINE, SERVER_SIDE | {"signer.client", "signer.cli"}),
    "signer.formats": (OFFLINE, SERVER_SIDE | {"signer.client", "signer.cli"}),
    "signer.approval": (
        OFFLINE,
        SERVER_SIDE | {"signer.client", "signer.cli", "signer.formats", "signer.audit"},
    ),
    **{m: (OFFLINE, SERVER_SIDE | {"signer.client", "signer.cli"}) for m in SHARED},
    **{
        m: (OFFLINE, SERVER_SIDE | {"signer.client", "signer.cli"})
        for m in POLICY_MODEL - {"signer.core"}  # a module's rule, not the package's
    },
}
ENTRIES = sorted(m for m in MODULES for rule in RULES if m == rule or m.startswith(rule + "."))


def _is_in(module: str, forbidden: set[str]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


def _rule(module: str) -> tuple[set[str], set[str]]:
    """The rules of every layer `module` is in, together."""
    outside: set[str] = set()
    project: set[str] = set()
    for name, (o, p) in RULES.items():
        if _is_in(module, {name}):
            outside |= o
            project |= p
    return outside, project


@pytest.mark.parametrize("entry", ENTRIES)
def test_each_layer_loads_only_what_it_may(entry: str) -> None:
    """A module loads no package and no project module its layer may not use."""
    modules, outside = loads(entry)
    forbidden_outside, forbidden_modules = _rule(entry)
    assert not outside & forbidden_outside, f"{entry} loads {sorted(outside & forbidden_outside)}"
    wrong = sorted(
        m for m in modules if m != entry and m not in POLICY_MODEL and _is_in(m, forbidden_modules)
    )
    assert not wrong, f"{entry} loads {wrong}"


def test_only_the_token_adapter_speaks_pkcs11() -> None:
    """No module but the token adapter imports the PKCS#11 library."""
    users = sorted(m for m in MODULES if any(n.split(".")[0] == "pkcs11" for n in _imports(m)))
    assert users and all(_is_in(m, {"signer.token"}) for m in users), users


def test_the_reading_finds_what_is_there() -> None:
    """The reader is not blind: the server loads grpc, the core, the token and the store,
    and importing a module runs its packages."""
    modules, outside = loads("signer.server.app")
    assert {"grpc", "pkcs11"} <= outside
    assert {"signer.core.machine", "signer.token.hsm", "signer.store.base"} <= modules
    sqlite_modules, sqlite_outside = loads("signer.store.sqlite")
    assert "sqlite3" in sqlite_outside and "signer.store" in sqlite_modules
    assert "signer.audit.entry" in loads("signer.audit")[0]  # `from signer.audit.entry` there
    assert len(ENTRIES) > 25  # the rules name packages that exist
    assert "grpc" in loads("signer.v1.signing_pb2_grpc")[1]  # generated stubs are read too


def test_the_offline_verifier_applies_the_core_policy_and_nothing_else_of_the_core() -> None:
    """The audit verifier loads the core's policy model and rules (one copy of each rule)
    and none of the state machine; neither does the policy model itself."""
    offline, _ = loads("signer.audit.offline")
    assert {"signer.core.policy", "signer.core.rules"} <= offline
    for start in (
        "signer.audit.offline",
        "signer.core.policy",
        "signer.core.rules",
        "signer.core.windows",
    ):
        core = {m for m in loads(start)[0] if _is_in(m, {"signer.core"})}
        assert core <= POLICY_MODEL, f"{start} loads {sorted(core - POLICY_MODEL)}"
    assert not any(_imports("signer.core"))  # the package's __init__ stays light
