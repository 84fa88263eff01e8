"""Start-up refusals: the server will not serve on a bad token, PIN, config or key.

Each case runs `signer serve` as a subprocess with a deadline and checks the
exit code, that the message names the problem and the fix, and that no PIN
ever shows in the output (invariant 7).
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
from typing import Any

import pytest

from signer.server.config import load_config
from testbed.commands import SIGNER, run
from testbed.env import Env
from testbed.process import running
from tests.harness import audit_events

serving = contextlib.contextmanager(running)

_WEAK_KEY_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.util.ec import encode_named_curve_parameters

    module, token_label, pin_file, label, sensitive, extractable = sys.argv[1:]
    lib = pkcs11.lib(module)
    token = lib.get_token(token_label=token_label)
    with token.open(user_pin=Path(pin_file).read_text().strip(), rw=True) as session:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(
            store=True,
            label=label,
            id=b"ecdsa-p256",
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: sensitive == "1",
                Attribute.EXTRACTABLE: extractable == "1",
                Attribute.SIGN: True,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            },
            public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
        )
    """
)


def _secrets(env: Env) -> list[str]:
    return [(env.root / "secrets" / f).read_text().strip() for f in ("token.pin", "token-so.pin")]


def _refused(env: Env, *secrets: str, code: int | None = None) -> str:
    """Run `signer serve`; it must exit non-zero without leaking a PIN. Returns stderr."""
    p = run([*SIGNER, "serve", "--config", str(env.config)], check=False, timeout=60)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    if code is not None:
        assert p.returncode == code, out
    assert "Traceback" not in out
    for secret in (*_secrets(env), *secrets):
        assert secret not in out
    return p.stderr


def _edit(env: Env, **tables: dict[str, Any]) -> None:
    cfg = env.read_config()
    for table, values in tables.items():
        cfg[table].update(values)
    env.write_config(cfg)


def test_wrong_pin_is_refused_without_printing_it(fresh_env: Env) -> None:
    """A wrong PIN stops start-up with an error naming the token and the PIN file."""
    pin_file = fresh_env.root / "secrets" / "token.pin"
    real = pin_file.read_text().strip()
    wrong = "wrong-" + real[::-1]
    pin_file.write_text(wrong + "\n")
    assert pin_file.stat().st_mode & 0o777 == 0o600
    err = _refused(fresh_env, real, wrong, code=1)
    assert "signer-dev" in err and "rejected the PIN" in err and "PIN file" in err


def test_pin_file_readable_by_others_is_refused(fresh_env: Env) -> None:
    """A PIN file readable by group or others is refused with a chmod hint."""
    pin_file = fresh_env.root / "secrets" / "token.pin"
    pin_file.chmod(0o644)
    err = _refused(fresh_env, code=2)
    assert "readable by group or others" in err and f"chmod 600 {pin_file}" in err


def test_unknown_token_label_is_refused(fresh_env: Env) -> None:
    """A token label that matches no token is named in the error."""
    _edit(fresh_env, token={"label": "no-such-token"})
    err = _refused(fresh_env)
    assert "no token labelled 'no-such-token'" in err and "token.label" in err


@pytest.mark.parametrize("threshold", [4, 0, -1])
def test_impossible_threshold_is_a_config_error(fresh_env: Env, threshold: int) -> None:
    """threshold outside 1..n exits 2 naming keys.release.threshold and the allowed range."""
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["threshold"] = threshold
    fresh_env.write_config(cfg)
    err = _refused(fresh_env, code=2)
    assert "keys.release.threshold" in err
    assert f"is {threshold} with 3 approvers" in err and "1 <= threshold <= 3" in err


def _unknown_role(cfg: dict[str, Any]) -> None:
    cfg["identities"]["ci"] = ["requestor"]


def _inline_pin(cfg: dict[str, Any], pin: str) -> None:
    cfg["token"]["pin"] = pin


def _pin_instead_of_file(cfg: dict[str, Any], pin: str) -> None:
    del cfg["token"]["pin_file"]
    cfg["token"]["pin"] = pin


def _missing_public_key_file(cfg: dict[str, Any]) -> None:
    cfg["approvers"]["alice"] = "approvers/gone.key.pub"


def _approver_without_key(cfg: dict[str, Any]) -> None:
    cfg["identities"]["dave"] = ["approver"]
    cfg["keys"]["release"]["approvers"].append("dave")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_unknown_role, ["identities.ci", "unknown role 'requestor'", "requester, approver"]),
        (_inline_pin, ["token.pin", "never written in config", "pin_file or pin_env"]),
        (_pin_instead_of_file, ["token.pin", "never written in config", "pin_file or pin_env"]),
        (_missing_public_key_file, ["approvers.alice", "cannot load public key", "gone.key.pub"]),
        (
            _approver_without_key,
            ["keys.release.approvers", "'dave' has no public key", "[approvers]"],
        ),
    ],
    ids=["unknown-role", "inline-pin", "pin-instead-of-file", "missing-key-file", "no-key"],
)
def test_config_errors_name_the_key_and_fix(fresh_env: Env, edit: Any, expected: list[str]) -> None:
    """Each config mistake exits 2 with the file, the key at fault and what to do."""
    cfg = fresh_env.read_config()
    real_pin = _secrets(fresh_env)[0]
    if "pin" in edit.__name__:
        edit(cfg, real_pin)
    else:
        edit(cfg)
    fresh_env.write_config(cfg)
    err = _refused(fresh_env, code=2)
    assert str(fresh_env.config) in err
    for text in expected:
        assert text in err


def _add_weak_key(env: Env, label: str, *, sensitive: bool, extractable: bool) -> None:
    """Create a badly protected P-256 key in the env's token, from a separate process."""
    cfg = env.read_config()
    run(
        [
            sys.executable,
            "-c",
            _WEAK_KEY_SCRIPT,
            cfg["token"]["module"],
            cfg["token"]["label"],
            str(env.root / "secrets" / "token.pin"),
            label,
            "1" if sensitive else "0",
            "1" if extractable else "0",
        ],
        env={"SOFTHSM2_CONF": str(env.root / "softhsm2.conf")},
        timeout=60,
    )


def _use_key(env: Env, name: str) -> None:
    cfg = env.read_config()
    pinned = {**cfg["keys"]["release"], "key_id": _keys_list(env)[name]["key_id"]}
    cfg["keys"] = {"release": cfg["keys"]["release"], name: pinned}
    env.write_config(cfg)


def _keys_list(env: Env) -> dict[str, dict[str, Any]]:
    p = run([*SIGNER, "keys", "list", "--config", str(env.config), "--json"], timeout=60)
    for secret in _secrets(env):
        assert secret not in p.stdout + p.stderr
    return {k["name"]: k for k in json.loads(p.stdout)}


def test_weak_keys_are_refused_at_start_and_shown_by_keys_list(fresh_env: Env) -> None:
    """A non-sensitive or extractable private key stops start-up and shows as WEAK."""
    _add_weak_key(fresh_env, "weak-sensitive", sensitive=False, extractable=False)
    _add_weak_key(fresh_env, "weak-extractable", sensitive=True, extractable=True)

    _use_key(fresh_env, "weak-sensitive")
    err = _refused(fresh_env, code=1)
    assert "key 'weak-sensitive'" in err and "not protected" in err
    assert "sensitive=false" in err and "signer keys generate" in err
    _use_key(fresh_env, "weak-extractable")
    err = _refused(fresh_env, code=1)
    assert "key 'weak-extractable'" in err and "extractable=true" in err
    assert not any(e["event"] == "server.started" for e in audit_events(fresh_env))

    keys = _keys_list(fresh_env)
    assert keys["weak-sensitive"]["attributes"]["sensitive"] is False
    assert "sensitive=false" in keys["weak-sensitive"]["weaknesses"]
    assert "always_sensitive=false" in keys["weak-sensitive"]["weaknesses"]
    assert keys["weak-extractable"]["attributes"]["extractable"] is True
    assert "extractable=true" in keys["weak-extractable"]["weaknesses"]
    assert "never_extractable=false" in keys["weak-extractable"]["weaknesses"]
    assert keys["release"]["weaknesses"] == [] and keys["audit"]["weaknesses"] == []
    table = run([*SIGNER, "keys", "list", "--config", str(fresh_env.config)], timeout=60).stdout
    assert "WEAK" in table and "weak-extractable" in table


def test_keys_list_on_a_healthy_token(fresh_env: Env) -> None:
    """`signer keys list` shows release (ecdsa-p256) and audit (ed25519), every check ok."""
    keys = _keys_list(fresh_env)
    assert set(keys) == {"release", "audit"}
    assert keys["release"]["algorithm"] == "ecdsa-p256"
    assert keys["audit"]["algorithm"] == "ed25519"
    for k in keys.values():
        assert k["weaknesses"] == []
        assert len(k["key_id"]) == 64
        assert k["attributes"] == {
            "sensitive": True,
            "extractable": False,
            "private": True,
            "always_sensitive": True,
            "never_extractable": True,
            "local": True,
            "sign": True,
            "decrypt": False,
            "unwrap": False,
            "derive": False,
        }
    table = run([*SIGNER, "keys", "list", "--config", str(fresh_env.config)], timeout=60).stdout
    assert "release" in table and "audit" in table and "WEAK" not in table
    assert "sensitive=yes" in table and "extractable=no" in table


def test_every_start_records_policy_hash(fresh_env: Env) -> None:
    """Each start appends `server.started` with the loaded policy's hash and key ids."""
    first_hash = load_config(fresh_env.config).policy_hash
    for _ in range(2):
        with serving(fresh_env):
            pass
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["threshold"] = 3
    fresh_env.write_config(cfg)
    second_hash = load_config(fresh_env.config).policy_hash
    assert second_hash != first_hash
    with serving(fresh_env):
        pass

    started = [e for e in audit_events(fresh_env) if e["event"] == "server.started"]
    assert [e["details"]["policy_hash"] for e in started] == [first_hash, first_hash, second_hash]
    keys = _keys_list(fresh_env)
    for e in started:
        assert e["actor"] == "signer"
        assert e["details"]["keys"] == {
            "release": {
                "key_id": keys["release"]["key_id"],
                "algorithm": "ecdsa-p256",
                # fixed when the key was generated, the same at every start
                "openpgp_created": started[0]["details"]["keys"]["release"]["openpgp_created"],
            }
        }
    pin = _secrets(fresh_env)[0].encode()
    for f in fresh_env.root.glob("signer.db*"):  # SQLite: the files, WAL included
        assert pin not in f.read_bytes()
    assert _stored_values(fresh_env) >= len(started)  # what the database holds, either backend
    assert pin.decode() not in (fresh_env.root / "server.log").read_text()


def _stored_values(env: Env) -> int:
    """Assert no secret of the env is in any column of any table; return how many rows."""
    db = env.store
    tables = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if db.backend == "sqlite"
        else "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    )
    secrets = [s.encode() for s in _secrets(env)]
    count = 0
    for (table,) in db.rows(tables):
        for row in db.rows(f'SELECT * FROM "{table}"'):  # noqa: S608
            count += 1
            for value in row:
                raw = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                for secret in secrets:
                    assert secret not in raw, f"a PIN is stored in table {table}"
    return count


def test_port_in_use_is_refused_before_anything_is_recorded(fresh_env: Env) -> None:
    """A listen address already taken is a config error (exit 2); no server.started entry."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", fresh_env.port))
        s.listen(1)
        err = _refused(fresh_env, code=2)
    assert "server.listen" in err and str(fresh_env.port) in err
    assert not any(e["event"] == "server.started" for e in audit_events(fresh_env))
