"""The OpenPGP facts a real SoftHSM token keeps beside a key (`signer.server.openpgp_keys`):
the creation time is fixed once and a later call never moves it; a public data object that
anyone with a session could plant under the same application and label is not read; a new
certificate is written before the old is removed, the newer self-signature wins while both
are there, and a certificate of another key under the same name is not served. Run in a
subprocess: the token's module is loaded once per process, with its config."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from testbed.env import Env

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
