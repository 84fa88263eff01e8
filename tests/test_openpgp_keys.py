"""The OpenPGP facts a real SoftHSM token keeps beside a key (`signer.server.openpgp_keys`):
the creation time is fixed when the key is generated and recorded in its `key.generated`
entry; only `signer keys openpgp-created --set` gives one to a key without it, never twice;
the server never takes one from the database; two different ones are refused; a public data
object that anyone with a session could plant under the same application and label is not
read; a new
certificate is written before the old is removed, the newer self-signature wins while both
are there, and a certificate of another key under the same name is not served. Run in a
subprocess: the token's module is loaded once per process, with its config."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from testbed.commands import SIGNER, run
from testbed.env import Env
from testbed.process import running
from tests.harness import audit_events, ok, refused
from tests.synthetic_log import OFFICERS, Synth
from tests.tamper import audit_verify

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
    out["first"] = openpgp_keys.creation_time(token, "release")

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
    token.add_key_data(openpgp_keys.CREATED, "release", b"1800000000")  # a second, private one
    try:
        openpgp_keys.creation_time(token, "release")
    except Exception as e:
        out["two"] = str(e)
    token.remove_key_data(openpgp_keys.CREATED, "release", b"1800000000")

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
    """Fixed at generation and logged with it, a planted public object ignored, two private
    ones refused naming both; the newer certificate wins mid-replace, one is kept after it,
    another key's is not served."""
    out = json.loads(_script(fresh_env, _SCRIPT))
    (generated,) = [
        e
        for e in audit_events(fresh_env)
        if e["event"] == "key.generated" and e["details"]["key_name"] == "release"
    ]
    assert out["first"] == out["planted"] == generated["details"]["openpgp_created"]
    assert abs(out["first"] - time.time()) < 3600
    assert "2 different OpenPGP creation times" in out["two"]
    assert f"{out['first']}, 1800000000" in out["two"]
    assert out["stored"] and out["both"]
    assert out["kept"] == 1
    assert out["other_key"] == ""


_SET_TIME = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from signer import pgp
    from signer.server import openpgp_keys
    from signer.server.admin import open_token
    from signer.server.config import load_config

    token = open_token(load_config(Path(sys.argv[1])))
    what = sys.argv[2]
    if what == "clear":  # restored without the creation time (its certificate kept)
        for value in token.key_data(openpgp_keys.CREATED, "release"):
            token.remove_key_data(openpgp_keys.CREATED, "release", value)
    elif what == "add":  # a second time beside the first
        token.add_key_data(openpgp_keys.CREATED, "release", sys.argv[3].encode())
    elif what == "certify":  # a certificate of the key made with this creation time
        body = pgp.public_key_body(token.key("release").public_key_pem, int(sys.argv[3]))
        fpr = pgp.fingerprint(body)
        hashed = pgp.Hashed(0x13, pgp.ECDSA, "sha256", int(sys.argv[3]) + 1, fpr, 3, ("sha256",))
        sig = pgp.signature_packet(hashed, bytes(32), bytes.fromhex("3006020101020101"))
        openpgp_keys.store_certificate(token, "release", pgp.certificate(body, "R <r@e.org>", sig))
    """
)


# Whoever owns the database appends entries that name a time for the key, and junk.
_PLANT = textwrap.dedent(
    """
    import datetime as dt, sys
    from pathlib import Path

    from signer.server.config import load_config
    from signer.store.factory import open_store

    store = open_store(load_config(Path(sys.argv[1])).store)
    with store.transaction() as tx:
        for t in (1000, -1, 2**40, True, "x"):
            keys = {"release": {"key_id": sys.argv[2], "openpgp_created": t}}
            tx.append_audit(dt.datetime.now(dt.UTC), "server.started", "signer", "", "",
                            {"keys": keys})
            tx.append_audit(dt.datetime.now(dt.UTC), "key.openpgp_created", "admin", "",
                            "release", {"key_name": "release", "openpgp_created": t})
    store.close()
    """
)


def _script(env: Env, script: str, *args: str) -> str:
    """Run `script` on the env's config in a process of its own; what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", script, str(env.config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _started(env: Env) -> list[int | None]:
    return [
        e["details"]["keys"]["release"].get("openpgp_created")
        for e in audit_events(env)
        if e["event"] == "server.started" and e["actor"] == "signer" and "version" in e["details"]
    ]


def _created(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [*SIGNER, "keys", "openpgp-created", "--config", str(env.config), "--name"]
    return run([*argv, "release", *args], check=False, timeout=60)


def test_a_restored_token_gets_its_creation_time_only_from_the_operator(fresh_env: Env) -> None:
    """A token restored without the creation time does not take one from the database
    (whose owner could choose the key's fingerprint, or plant junk that stops every start):
    the server starts without it and OpenPGP is refused until the operator gives the key's
    own time with `signer keys openpgp-created --set`, audit-logged; a time is given once,
    1..2^32-1, not in the future, the one of the certificate the token keeps, and then never
    changed. Two times beside a key refuse OpenPGP for it alone, until `--remove`."""
    with serving(fresh_env):
        pass
    (first,) = _started(fresh_env)
    assert first is not None
    shown = _created(fresh_env)
    assert shown.returncode == 0 and shown.stdout.split()[:2] == ["release", str(first)]
    assert "already" in refused(_created(fresh_env, "--set", str(first + 1)), code=2)

    _script(fresh_env, _SET_TIME, "certify", str(first))
    _script(fresh_env, _SET_TIME, "clear")
    key_id = next(
        e
        for e in audit_events(fresh_env)
        if e["event"] == "key.generated" and e["details"]["key_name"] == "release"
    )
    _script(fresh_env, _PLANT, key_id["details"]["key_id"])
    with serving(fresh_env):
        pass
    assert _started(fresh_env) == [first, None]
    assert "no OpenPGP creation time" in refused(_created(fresh_env))

    before = len(audit_events(fresh_env))
    for bad, says in (
        ("0", "not in the range"),
        (str(2**32), "not in the range"),
        ("x", "not a valid integer"),
        (str(int(time.time()) + 3600), "in the future"),
    ):
        assert says in refused(_created(fresh_env, "--set", bad), code=2), bad
    assert len(audit_events(fresh_env)) == before
    assert _created(fresh_env).returncode == 1
    assert f"made with creation time {first}" in refused(
        _created(fresh_env, "--set", str(first - 60)), code=2
    )
    assert len(audit_events(fresh_env)) == before

    ok(_created(fresh_env, "--set", str(first)))
    (logged,) = [
        e
        for e in audit_events(fresh_env)
        if e["event"] == "key.openpgp_created" and e["actor"].startswith("admin (signer")
    ]
    assert logged["details"] == {
        "key_name": "release",
        "key_id": key_id["details"]["key_id"],
        "openpgp_created": first,
    }
    with serving(fresh_env):
        pass
    assert _started(fresh_env) == [first, None, first]

    # Two times beside the key: OpenPGP is refused for it alone, the server still starts,
    # and the operator removes the wrong one.
    _script(fresh_env, _SET_TIME, "add", str(first + 7))
    with serving(fresh_env):
        pass
    assert _started(fresh_env) == [first, None, first, None]
    assert "--remove T" in refused(_created(fresh_env), "2 different OpenPGP creation times")
    assert "nothing removed" in refused(_created(fresh_env, "--remove", "12345"), code=2)
    ok(_created(fresh_env, "--remove", str(first + 7)))
    assert ok(_created(fresh_env)).split()[:2] == ["release", str(first)]
    removed = [e for e in audit_events(fresh_env) if "removed" in e["details"]]
    assert [e["details"]["removed"] for e in removed] == [first + 7]


_ROLLBACK = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import pkcs11

    from signer.algorithms import algorithm
    from signer.server import admin, openpgp_keys
    from signer.server.config import load_config
    from signer.store.sql import SqlTx

    def fail(*args, **kwargs):
        raise OSError("disk full")

    SqlTx.append_audit = fail  # the key.generated entry cannot be written
    try:
        admin.generate_key(Path(sys.argv[1]), "k", algorithm("ecdsa-p256"), "admin")
    except OSError as e:
        error = str(e)
    token = admin.open_token(load_config(Path(sys.argv[1])))
    keys = sorted(k.name for k in token.keys())
    left = [str(o[pkcs11.Attribute.LABEL]) for o in token._data_objects(openpgp_keys.CREATED)]
    print(json.dumps([error, keys, left]))
    """
)


def test_a_key_whose_entry_cannot_be_written_leaves_no_creation_time(fresh_env: Env) -> None:
    """Generating a key whose `key.generated` entry cannot be written destroys the key and
    its creation time: a later key of that name gets its own, not the dead key's."""
    assert json.loads(_script(fresh_env, _ROLLBACK)) == [
        "disk full",
        ["audit", "release"],
        ["release"],
    ]


def test_audit_verify_refuses_a_second_creation_time_for_a_key(tmp_path: Path) -> None:
    """Offline, a key's OpenPGP creation time is fixed by its `key.generated` entry or its
    first `key.openpgp_created`: the same time again (a restore) verifies, another one (a
    new fingerprint for the same key) fails at its entry."""
    key_id = "ab" * 32

    def log(*times: int) -> subprocess.CompletedProcess[str]:
        s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
        s.add("key.generated", "admin", {"key_name": "k", "key_id": key_id, "openpgp_created": 100})
        for t in times:
            s.add(
                "key.openpgp_created",
                "admin",
                {"key_name": "k", "key_id": key_id, "openpgp_created": t},
            )
        out = tmp_path / f"log{len(times)}"
        return audit_verify(out, s.write(out, ed25519.Ed25519PrivateKey.generate()))

    ok(log(100))
    refused(log(100, 200), "entry 2 (key.openpgp_created)", "has OpenPGP creation time 100")
