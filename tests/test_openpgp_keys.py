"""The OpenPGP facts a real SoftHSM token keeps beside a key (`signer.server.openpgp_keys`):
the creation time is fixed once and a later call never moves it; a public data object that
anyone with a session could plant under the same application and label is not read; a new
certificate is written before the old is removed, the newer self-signature wins while both
are there, and a certificate of another key under the same name is not served. Run in a
subprocess: the token's module is loaded once per process, with its config."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap

from testbed.commands import SIGNER, run
from testbed.env import Env
from testbed.process import running
from tests.harness import audit_events

serving = contextlib.contextmanager(running)

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import pkcs11
    from pkcs11 import Attribute, ObjectClass
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from signer import pgp
    from signer.server import openpgp_keys
    from signer.server.admin import open_token
    from signer.server.config import load_config

    config = load_config(Path(sys.argv[1]))
    token = open_token(config)
    out = {}
    out["first"] = openpgp_keys.creation_time(token, "release", 1_800_000_000)
    out["again"] = openpgp_keys.creation_time(token, "release", 1_900_000_000)

    # Anyone who can open a session, without the PIN, plants an earlier public time.
    lib = pkcs11.lib(config.token.module)
    with lib.get_token(token_label=config.token.label).open(rw=True) as session:
        session.create_object({
            Attribute.CLASS: ObjectClass.DATA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.APPLICATION: openpgp_keys.CREATED,
            Attribute.LABEL: "release",
            Attribute.VALUE: b"1000",
        })
    out["planted"] = openpgp_keys.creation_time(token, "release")

    pem = token.key("release").public_key_pem

    def cert(public_key_pem, signed_at):
        body = pgp.public_key_body(public_key_pem, out["first"])
        fpr = pgp.fingerprint(body)
        hashed = pgp.Hashed(0x13, pgp.ECDSA, "sha256", signed_at, fpr, 3, ("sha256",))
        sig = pgp.signature_packet(hashed, bytes(32), bytes.fromhex("3006020101020101"))
        return pgp.certificate(body, "R <r@example.org>", sig)

    old, new = cert(pem, 1_800_000_100), cert(pem, 1_800_000_200)
    openpgp_keys.store_certificate(token, "release", old)
    out["stored"] = openpgp_keys.certificate(token, "release", pem) == old
    token.add_key_data(openpgp_keys.CERTIFICATE, "release", new)  # a crash mid-replace
    out["both"] = openpgp_keys.certificate(token, "release", pem) == new
    openpgp_keys.store_certificate(token, "release", new)
    out["kept"] = len(token.key_data(openpgp_keys.CERTIFICATE, "release"))
    other = (
        ec.generate_private_key(ec.SECP256R1()).public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    out["other_key"] = openpgp_keys.certificate(token, "release", other)
    print(json.dumps({k: v if not isinstance(v, bytes) else v.hex() for k, v in out.items()}))
    """
)


def test_the_token_keeps_one_creation_time_and_the_newest_certificate(fresh_env: Env) -> None:
    """Fixed once, never moved, a planted public object ignored; the newer certificate wins
    mid-replace, one is kept after it, another key's is not served."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(fresh_env.config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["first"] == out["again"] == out["planted"] == 1_800_000_000
    assert out["stored"] and out["both"]
    assert out["kept"] == 1
    assert out["other_key"] == ""


_SET_TIME = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from signer.server import openpgp_keys
    from signer.server.admin import open_token
    from signer.server.config import load_config

    token = open_token(load_config(Path(sys.argv[1])))
    for value in token.key_data(openpgp_keys.CREATED, "release"):
        token.remove_key_data(openpgp_keys.CREATED, "release", value)
    if sys.argv[2]:
        token.add_key_data(openpgp_keys.CREATED, "release", sys.argv[2].encode())
    """
)


def _set_time(env: Env, value: str) -> None:
    """Remove the key's creation time from the token (a restore without its data
    objects), and with `value` put another in its place."""
    done = subprocess.run(
        [sys.executable, "-c", _SET_TIME, str(env.config), value],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _started(env: Env) -> list[int]:
    return [
        e["details"]["keys"]["release"]["openpgp_created"]
        for e in audit_events(env)
        if e["event"] == "server.started"
    ]


def test_a_restored_token_gets_the_logged_creation_time_back(fresh_env: Env) -> None:
    """A token restored without the creation time gets the one every `server.started`
    recorded for this key, so its OpenPGP fingerprint does not change; a token that holds
    another time for the same key stops the start, naming both."""
    with serving(fresh_env):
        pass
    (first,) = _started(fresh_env)
    _set_time(fresh_env, "")
    with serving(fresh_env):
        pass
    assert _started(fresh_env) == [first, first]
    _set_time(fresh_env, str(first + 1))
    p = run([*SIGNER, "serve", "--config", str(fresh_env.config)], check=False, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"keeps OpenPGP creation time {first + 1}" in p.stderr
    assert f"recorded {first}" in p.stderr
    assert _started(fresh_env) == [first, first]
