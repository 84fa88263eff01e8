"""The first keys of a new deployment, made from a config that holds nothing else yet.

A production deployment starts with an empty token: the audit key and the first
signing key are generated before the policy can be written, because each key of
the policy pins the `key_id` that generation prints. So `signer keys generate`,
`signer keys list` and `signer audit verifier` read only `[token]`, `[store]` and
`[audit]` (deploy/README.md, "Network HSM"; docs/bootstrap.md), and name what is
still missing when one of them is not there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from signer.audit.note import Verifier, open_checkpoint
from signer.tls import write_private
from signer.token import softhsm
from testbed.commands import SIGNER, run
from testbed.env import Db

TOKEN = "signer-first"


def _store(db: Db) -> str:
    lines = ["[store]", f"url = {json.dumps(db.url)}"]
    if db.password_file is not None:
        lines.append(f"password_file = {json.dumps(str(db.password_file))}")
    return "\n".join(lines)


def _token_and_store(root: Path, db: Db) -> str:
    """A fresh SoftHSM token (its PIN in a 0600 file) and the config tables naming it."""
    conf = softhsm.write_config(root / "softhsm2.conf", root / "tokens")
    pin = softhsm.random_pin()
    write_private(root / "token.pin", pin.encode())
    softhsm.init_token(conf, TOKEN, softhsm.random_pin(), pin)
    return f"""\
[token]
module = "{softhsm.DEFAULT_MODULE}"
label = "{TOKEN}"
pin_file = "token.pin"
softhsm2_conf = "softhsm2.conf"

{_store(db)}
"""


_AUDIT = """
[audit]
key = "audit"
origin = "example.com/signer"
"""


def _signer(*args: str, check: bool = True) -> tuple[int, str, str]:
    p = run([*SIGNER, *args], check=check)
    return p.returncode, p.stdout, p.stderr


def test_the_first_keys_need_only_the_token_the_store_and_the_audit_key(
    tmp_path: Path, new_db: Callable[[], Db]
) -> None:
    """With only [token], [store] and [audit] (no [server], [identities], [approvers],
    [keys] or [policy]), the audit key and a signing key are generated, listed, and
    recorded as `key.generated` entries under a checkpoint the printed verifier
    verifies."""
    db = new_db()
    config = tmp_path / "admin.toml"
    config.write_text(_token_and_store(tmp_path, db) + _AUDIT)
    made = {}
    for name, algorithm in (("audit", "ed25519"), ("release", "ecdsa-p256")):
        _, out, _ = _signer(
            "keys", "generate", "--config", str(config), "--name", name, "--algorithm", algorithm
        )
        shown_name, shown_algorithm, key_id = out.split()
        assert (shown_name, shown_algorithm) == (name, algorithm)
        made[name] = key_id
    _, out, _ = _signer("keys", "list", "--config", str(config), "--json")
    listed = {k["name"]: (k["key_id"], k["weaknesses"]) for k in json.loads(out)}
    assert listed == {name: (key_id, []) for name, key_id in made.items()}
    _, out, _ = _signer("audit", "verifier", "--config", str(config))
    verifier = Verifier.parse(out.strip())
    assert verifier.name == "example.com/signer"

    entries = [json.loads(bytes(e)) for (e,) in db.rows("SELECT entry FROM audit_log ORDER BY idx")]
    assert [(e["event"], e["details"]["key_id"]) for e in entries] == [
        ("key.generated", made["audit"]),
        ("key.generated", made["release"]),
    ]
    ((size, note),) = db.rows("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
    assert size == 2
    assert open_checkpoint(note, verifier).size == 2  # signed by the audit key just made


@pytest.mark.parametrize(
    ("left_out", "said"),
    [
        ("[audit]", "audit: missing table; add a [audit] section"),
        ("[token]", "token: missing table; add a [token] section"),
        ("[store]", "store: missing table; add a [store] section"),
    ],
)
def test_what_the_first_keys_still_need_is_named(
    tmp_path: Path, new_db: Callable[[], Db], left_out: str, said: str
) -> None:
    """A config without one of the three tables the first keys need exits 2 naming
    that table, and the token is left without a key."""
    db = new_db()
    tables = _token_and_store(tmp_path, db) + _AUDIT
    whole = tmp_path / "whole.toml"
    whole.write_text(tables)
    chunks = tables.split("\n\n")
    config = tmp_path / "admin.toml"
    config.write_text("\n\n".join(c for c in chunks if not c.strip().startswith(left_out)))
    code, out, err = _signer(
        "keys",
        "generate",
        "--config",
        str(config),
        "--name",
        "audit",
        "--algorithm",
        "ed25519",
        check=False,
    )
    assert code == 2 and not out
    assert f"{config.resolve()}: {said}" in err
    _, out, _ = _signer("keys", "list", "--config", str(whole), "--json")
    assert json.loads(out) == []
