"""A dev environment: one `signer init` directory and the database its store lives in.

`make_env` runs the real `signer init`; `Env` adds identities, keys and
replicas the way an operator would (certificates from the env's own CA,
profiles, config edits); `Db` reads the store behind the product's back with
raw SQL, so a check never trusts the code it checks. `checkpoints_match_the_log`
recomputes the Merkle tree from the stored entries and verifies every stored
checkpoint against it with the env's pinned audit verifier.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import tomli_w

from signer.approval.files import generate as generate_approval_key
from signer.approval.files import load_signer
from signer.approval.keys import ApprovalSigner
from signer.audit import merkle
from signer.audit.note import open_checkpoint
from signer.client.profile import Profile, load_profile
from signer.core import policy_log
from signer.errors import ConfigError, PolicyChainError
from signer.policy_chain import Officers, Version, sign_approval
from signer.server.config import StoreConfig, load_config
from signer.store import Store
from signer.store.factory import open_store
from signer.tls import DevCA, write_private
from testbed.commands import SIGNER, free_port, run

__all__ = ["SQLITE_DB", "Db", "Env", "checkpoints_match_the_log", "make_env"]


@dataclass(frozen=True)
class Db:
    """Where a test's store lives: a SQLite file, or a PostgreSQL database (with password)."""

    url: str  # sqlite:///ABSOLUTE-PATH or postgresql://...
    password_file: Path | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite:") else "postgresql"

    def open(self) -> Store:
        """The product's own store over this database (runs its migrations)."""
        return open_store(
            StoreConfig(self.url, path=self.sqlite_path, password_file=self.password_file)
        )

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url.removeprefix("sqlite:///")) if self.backend == "sqlite" else None

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run raw SQL outside the product (`?` marks a parameter); commit; return rows."""
        if self.sqlite_path is not None:
            with contextlib.closing(sqlite3.connect(self.sqlite_path, isolation_level=None)) as db:
                return db.execute(sql, args).fetchall()
        query = sql.replace("?", "%s").encode()
        try:
            cur = self._pg().execute(query, args or None)
        except psycopg.OperationalError:  # the server restarted: connect again, once
            _PG_CONNECTIONS.pop(self.url, None)
            cur = self._pg().execute(query, args or None)
        return cur.fetchall() if cur.description else []

    def _pg(self) -> psycopg.Connection[Any]:
        conn = _PG_CONNECTIONS.get(self.url)
        if conn is None or conn.closed:
            assert self.password_file is not None
            password = self.password_file.read_text().strip()
            conn = psycopg.connect(self.url, password=password, autocommit=True)
            _PG_CONNECTIONS[self.url] = conn
        return conn


# One autocommit connection per test database, reused by `Db.rows` (connecting per query
# would dominate the property tests' run time).
_PG_CONNECTIONS: dict[str, psycopg.Connection[Any]] = {}


SQLITE_DB = "sqlite:///signer.db"


@dataclass
class Env:
    """One `signer init` directory, with extra identities for the tests."""

    root: Path
    port: int
    store: Db = field(default_factory=lambda: Db(SQLITE_DB))
    name: str = "signer"  # a replica's own config and profiles: signer-r1.toml, profiles-r1/

    def __post_init__(self) -> None:
        if self.store.url == SQLITE_DB:
            self.store = Db(f"sqlite:///{self.root / 'signer.db'}")

    @property
    def config(self) -> Path:
        return self.root / f"{self.name}.toml"

    def replica(self, number: int) -> Env:
        """Another server of this env on its own port: same token, store and policy.

        Writes signer-rN.toml (only `listen` differs) and profiles-rN/ (profiles
        pointing at that port), so `ServerProcess` and `Clients` work on it as is.
        """
        port = free_port()
        replica = Env(self.root, port, self.store, f"signer-r{number}")
        cfg = self.read_config()
        cfg["server"]["listen"] = f"127.0.0.1:{port}"
        replica.write_config(cfg)
        replica.profiles_dir.mkdir(exist_ok=True)
        for profile in self.profiles_dir.glob("*.toml"):
            text = profile.read_text().replace(f"127.0.0.1:{self.port}", f"127.0.0.1:{port}")
            (replica.profiles_dir / profile.name).write_text(text)
        return replica

    @property
    def profiles_dir(self) -> Path:
        return self.root / ("profiles" if self.name == "signer" else f"profiles-{self.name[7:]}")

    @property
    def db(self) -> Path:
        return self.root / "signer.db"

    def profile_path(self, name: str) -> Path:
        return self.profiles_dir / f"{name}.toml"

    def profile(self, name: str) -> Profile:
        return load_profile(self.profile_path(name))

    def read_config(self) -> dict[str, Any]:
        return tomllib.loads(self.config.read_text())

    def write_config(self, cfg: dict[str, Any], adopt: bool = True) -> None:
        """Write the config; with `adopt`, make its policy the version in force as the
        officers would (`adopt_policy`; `add_key` and `add_client` leave that to the next
        `ServerProcess.start`). Without it, the server refuses an edited policy."""
        self.config.write_text(tomli_w.dumps(cfg))
        if adopt:
            self.adopt_policy()

    def policy_chain(self) -> list[Version]:
        """The policy versions the store's log holds, oldest first (read, not checked)."""
        store = self.store.open()
        try:
            with store.transaction() as tx:
                return policy_log.read_chain(tx)
        finally:
            store.close()

    def next_version(self) -> Version:
        """The version after the last one in the log, with this config's policy (as the
        officers would be asked to approve it)."""
        chain = self.policy_chain()
        last = chain[-1] if chain else None
        return Version(
            last.number + 1 if last else 1,
            load_config(self.config).policy_document,
            last.sha256 if last else "",
            (),
        )

    def adopt_policy(self) -> None:
        """Make this config's policy the next version of the chain, approved by every
        officer of the version in force and of the new one whose approval key this env
        holds (`approver policy approve`), adopted with `signer policy adopt`. Nothing
        if it is the version in force already, or if the config does not load (the
        server refuses it for that)."""
        try:
            config = load_config(self.config)
        except ConfigError:
            return
        chain = self.policy_chain()
        last = chain[-1] if chain else None
        if last is not None and last.sha256 == config.policy_hash:
            return
        version = self.next_version()
        officers = set(config.policy_officers)
        if last is not None:
            with contextlib.suppress(PolicyChainError):
                officers |= set(Officers.of(last.document).names)
        now = dt.datetime.now(dt.UTC)
        args = []
        for name in sorted(officers):
            key = self.root / "approvers" / f"{name}.key"
            if key.exists():
                path = self.root / f"policy-v{version.number}-{name}.approval"
                path.write_bytes(sign_approval(version, name, load_signer(key, None), now))
                args += ["--approval", str(path)]
        run([*SIGNER, "policy", "adopt", "--config", str(self.config), *args])

    def ca(self) -> DevCA:
        return DevCA.load(
            (self.root / "tls" / "ca.pem").read_bytes(), (self.root / "tls" / "ca.key").read_bytes()
        )

    def add_client(
        self, name: str, roles: list[str], *, approval_key: bool = False, ca: DevCA | None = None
    ) -> Path:
        """Issue a certificate (from this env's CA unless `ca`), write a profile, add roles."""
        cert, key = (ca or self.ca()).issue(name)
        (self.root / "tls" / f"{name}.pem").write_bytes(cert)
        write_private(self.root / "tls" / f"{name}.key", key)
        lines = [
            f'server = "127.0.0.1:{self.port}"',
            'ca = "../tls/ca.pem"',
            f'cert = "../tls/{name}.pem"',
            f'key = "../tls/{name}.key"',
            f'audit_verifier = "{self.profile("ci").audit_verifier}"',
        ]
        cfg = self.read_config()
        if roles:
            cfg["identities"][name] = roles
        if approval_key:
            generate_approval_key(self.root / "approvers" / f"{name}.key")
            lines.append(f'approval_key = "../approvers/{name}.key"')
            cfg["approvers"][name] = f"approvers/{name}.key.pub"
        self.write_config(cfg, adopt=False)  # adopted when a server starts
        path = self.profile_path(name)
        path.write_text("\n".join(lines) + "\n")
        return path

    def add_key(self, name: str, algorithm: str, **policy: Any) -> None:
        """Generate a key in the token and give it a 2-of-3 policy (overridable), pinned
        to the key generated (its `key_id`)."""
        generated = run(
            [
                *SIGNER,
                "keys",
                "generate",
                "--config",
                str(self.config),
                "--name",
                name,
                "--algorithm",
                algorithm,
            ]
        )
        cfg = self.read_config()
        cfg["keys"][name] = {
            "key_id": generated.stdout.split()[2],
            "algorithm": algorithm,
            "approvers": ["alice", "bob", "carol"],
            "threshold": 2,
            "requesters": ["ci"],
            "max_ttl": "1h",
            **policy,
        }
        self.write_config(cfg, adopt=False)  # adopted when a server starts

    def approval_key(self, officer: str) -> ApprovalSigner:
        return load_signer(self.root / "approvers" / f"{officer}.key", None)


def make_env(root: Path, db: Db | None = None) -> Env:
    """`signer init` in `root`, with its store in `db` (default: signer.db in `root`)."""
    port = free_port()
    store: list[str] = []
    if db is not None:
        store = ["--store-url", db.url]
        if db.password_file is not None:
            store += ["--store-password-file", str(db.password_file)]
    run([*SIGNER, "init", str(root), "--listen", f"127.0.0.1:{port}", *store])
    return Env(root, port, db or Db(SQLITE_DB))


def checkpoints_match_the_log(env: Env) -> int:
    """Every stored checkpoint is signed and commits to the prefix of the one log."""
    verifier = env.profile("ci").audit_verifier
    assert verifier is not None
    entries = [bytes(e) for (e,) in env.store.rows("SELECT entry FROM audit_log ORDER BY idx")]
    tree = merkle.MemoryTree()
    roots = [b""]
    for e in entries:
        tree.append(merkle.leaf_hash(e))
        roots.append(merkle.root(tree, tree.size))
    notes = env.store.rows("SELECT size, note FROM checkpoints ORDER BY size")
    for size, note in notes:
        cp = open_checkpoint(note, verifier)
        assert (cp.size, cp.root) == (size, roots[size]), f"checkpoint {size} is off the log"
    return len(notes)
