"""`signer init DIR`: a complete dev environment in one directory.

Creates a SoftHSM token with a `release` signing key (ecdsa-p256) and an
`audit` key (ed25519) generated inside it, a dev CA with certificates for
the server, the CI client `ci`, officers `alice`, `bob`, `carol`, the
`auditor` and `admin` (the CA key stays in tls/ca.key, 0600, to issue
more); the officers' approval keys; `signer.toml` (2-of-3 on
`release`, the same three approving policy changes) and its policy as version 1
of the policy chain, approved by them; a client profile per identity in `profiles/`; and
`trust/release.toml` (or `trust/policy.toml`: policy version 1 alone), what a consumer
pins to verify evidence bundles. Every secret
(PINs, private keys) is a 0600 file; nothing secret is printed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from pathlib import Path

from signer.algorithms import algorithm
from signer.approval import files as approval_keys
from signer.errors import ConfigError
from signer.policy_chain import Version, sign_approval
from signer.server import policy_admin
from signer.server.admin import audit_verifier, generate_key
from signer.server.config import load_config
from signer.tls import DevCA, write_private
from signer.token import softhsm

__all__ = ["OFFICERS", "TOKEN_LABEL", "init_devenv"]

OFFICERS = ("alice", "bob", "carol")
TOKEN_LABEL = "signer-dev"  # noqa: S105 (a label, not a secret)
_CLIENTS = {
    "ci": "requester",
    "alice": "approver",
    "bob": "approver",
    "carol": "approver",
    "auditor": "auditor",
    "admin": "admin",
}


def init_devenv(
    root: Path,
    listen: str,
    store_url: str = "sqlite:///signer.db",
    store_password_file: Path | None = None,
) -> list[str]:
    """Create the environment under `root`; return the names of the files made."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {listen!r} must be HOST:PORT with a fixed port (1-65535)")
    try:
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root} is a file, not a directory; choose a new directory")
        if root.exists() and any(root.iterdir()):
            raise ConfigError(f"{root} exists and is not empty; choose a new directory")
        made = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a parent is a file, or not readable or writable
        raise ConfigError(f"cannot use {root} as a new directory: {e.strerror}") from None
    root = root.resolve()
    made_here = os.stat(root, follow_symlinks=False)
    try:
        return _build(root, host, listen, store_url, store_password_file)
    except BaseException:
        _clean(root, made, made_here)
        raise


def _clean(root: Path, made: bool, made_here: os.stat_result) -> None:
    """Nothing half-built stays behind, so the next `signer init` starts afresh: what
    was made under `root` is removed, if `root` is still the directory it was made in
    (not a link or another directory put in its place meanwhile: then nothing is)."""
    try:
        now = os.stat(root, follow_symlinks=False)
    except OSError:
        return
    if (now.st_dev, now.st_ino) != (made_here.st_dev, made_here.st_ino) or not stat.S_ISDIR(
        now.st_mode
    ):
        return
    if made:
        shutil.rmtree(root, ignore_errors=True)  # resists links inside (rmtree's own check)
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _build(
    root: Path, host: str, listen: str, store_url: str, store_password_file: Path | None
) -> list[str]:
    for d in ("secrets", "tls", "approvers", "profiles", "trust"):
        (root / d).mkdir(mode=0o700 if d == "secrets" else 0o755)

    conf = softhsm.write_config(root / "softhsm2.conf", root / "tokens")
    pin = softhsm.random_pin()
    so_pin = softhsm.random_pin()
    write_private(root / "secrets" / "token.pin", pin.encode())
    write_private(root / "secrets" / "token-so.pin", so_pin.encode())
    softhsm.init_token(conf, TOKEN_LABEL, so_pin, pin)

    ca = DevCA()
    ca.save(root / "tls" / "ca.pem", root / "tls" / "ca.key")
    cert, key = ca.issue("signer server", server_hosts=[host])
    (root / "tls" / "server.pem").write_bytes(cert)
    write_private(root / "tls" / "server.key", key)
    for name in _CLIENTS:
        cert, key = ca.issue(name)
        (root / "tls" / f"{name}.pem").write_bytes(cert)
        write_private(root / "tls" / f"{name}.key", key)
    for name in OFFICERS:
        approval_keys.generate(root / "approvers" / f"{name}.key")

    store = f"url = {json.dumps(store_url)}"
    if store_password_file is not None:
        store += f"\npassword_file = {json.dumps(str(store_password_file.resolve()))}"
    (root / "signer.toml").write_text(_server_config(listen, store))
    # Keys are generated through the admin path so their creation is audited.
    config_path = root / "signer.toml"
    generate_key(config_path, "audit", algorithm("ed25519"), actor="signer init")
    release = generate_key(config_path, "release", algorithm("ecdsa-p256"), actor="signer init")
    # The policy pins which token key signs under each name (a new one only by a version).
    text = config_path.read_text()
    config_path.write_text(
        text.replace(
            "[keys.release]\n",
            f'[keys.release]\nkey_id = "{release.key_id}"  # the token key that signs\n',
        )
    )
    # Policy version 1, approved by its officers (whose keys this environment holds).
    version = Version(1, load_config(config_path).policy_document, "", ())
    now = dt.datetime.now(dt.UTC)
    approvals = [
        sign_approval(
            version, o, approval_keys.load_signer(root / "approvers" / f"{o}.key", None), now
        )
        for o in OFFICERS
    ]
    first = policy_admin.adopt(config_path, approvals, actor="signer init")
    verifier = audit_verifier(config_path)
    (root / "trust" / "release.pem").write_text(release.public_key_pem)
    officer_pems = {o: (root / "approvers" / f"{o}.key.pub").read_text() for o in OFFICERS}
    (root / "trust" / "release.toml").write_text(
        _trust(verifier, release.public_key_pem, officer_pems)
    )
    (root / "trust" / "policy.toml").write_text(_policy_trust(first.sha256, verifier))
    for name, role in _CLIENTS.items():
        (root / "profiles" / f"{name}.toml").write_text(_profile(name, role, listen, verifier))
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "tokens" not in p.parts
    )


def _server_config(listen: str, store: str) -> str:
    approvers = ", ".join(f'"{o}"' for o in OFFICERS)
    identities = "\n".join(f'{n} = ["{r}"]' for n, r in _CLIENTS.items())
    keys = "\n".join(f'{o} = "approvers/{o}.key.pub"' for o in OFFICERS)
    return f"""\
# signer server configuration (dev environment made by `signer init`).
# Paths are relative to this file. Secrets are files (0600), never inline.

[server]
listen = "{listen}"
tls_cert = "tls/server.pem"
tls_key = "tls/server.key"
client_ca = "tls/ca.pem"       # client certificates must chain to this CA
max_message_bytes = 4194304
max_wait = "60s"               # longest single WaitSigningRequest long poll

[token]
module = "/usr/lib/softhsm/libsofthsm2.so"
label = "{TOKEN_LABEL}"
pin_file = "secrets/token.pin"
softhsm2_conf = "softhsm2.conf"

[store]                        # sqlite:///FILE (one server) or postgresql://... (replicas)
{store}

[audit]
key = "audit"                  # ed25519 key in the token for checkpoints
origin = "localhost/signer-dev"  # the log's name in its checkpoints

[log]
format = "auto"                # json | console | auto (console on a terminal)

# identity (certificate URI SAN, else CN) -> roles
[identities]
{identities}

# officer -> Ed25519 public key that must sign their approvals
[approvers]
{keys}

# who approves a change to everything above and below (a new policy version):
# a threshold of these officers of the version in force and of the new one
[policy]
officers = [{approvers}]
threshold = 2

[keys.release]
algorithm = "ecdsa-p256"
approvers = [{approvers}]
threshold = 2
requesters = ["ci"]
max_ttl = "1h"
"""


def _trust(verifier: str, release_pem: str, officers: dict[str, str]) -> str:
    """The consumer's trust file, every key written in it: a copy anywhere verifies."""
    quote = '"' * 3  # a TOML multi-line string holds a PEM as it is

    def inline(pem: str) -> str:
        return f"{quote}\n{pem.strip()}\n{quote}"

    lines = [
        "# What someone who downloads a release pins to verify it offline. Self-contained:",
        "# publish this file (next to the releases, on the project's site) and keep a copy.",
        "#   signer verify --bundle ARTIFACT.bundle.json --file ARTIFACT --trust release.toml",
        "threshold = 2                     # distinct officers who must have approved",
        f'audit_verifier = "{verifier}"',
        "",
        "# the release key's public key",
        f"public_key = {inline(release_pem)}",
        "",
        "# officer -> public key of their approvals",
        "[approvers]",
        *(f"{o} = {inline(pem)}" for o, pem in officers.items()),
    ]
    return "\n".join(lines) + "\n"


def _policy_trust(pinned: str, verifier: str) -> str:
    return f"""\
# What someone who downloads a release pins instead, once: policy version 1. The key,
# the officers and the threshold come from the version each bundle was signed under,
# reached from this one through approvals of the officers at every step (docs/policy.md):
#   signer verify --bundle ARTIFACT.bundle.json --file ARTIFACT --trust trust/policy.toml
policy = "{pinned}"
audit_verifier = "{verifier}"
"""


def _profile(name: str, role: str, listen: str, verifier: str) -> str:
    text = f"""\
# client profile for {name} ({role})
server = "{listen}"
ca = "../tls/ca.pem"
cert = "../tls/{name}.pem"
key = "../tls/{name}.key"
timeout = "30s"
audit_verifier = "{verifier}"   # pinned: proofs must be signed by this audit key
"""
    if role == "approver":
        text += f'approval_key = "../approvers/{name}.key"\n'
    return text
