"""Officers' approval keys in their own PKCS#11 token (docs/architecture.md §12): a second SoftHSM
token stands in for a YubiKey. `approver keygen --pkcs11` makes an ECDSA P-256 or an
Ed25519 key in it (the PIN from a file, never argv), the profile names it by its
RFC 7512 URI, and the officer's approvals, signed inside the token, count at the
server and verify offline like a key in a file. A URI that names no key, one that
carries a PIN, a second key under one label, or an officer key that is the public key
of a signing key, each get a clear error."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.approval import registry
from signer.approval.ecdsa_p256 import EcdsaP256Key
from signer.approval.keys import spki_key_id
from signer.approval.token_uri import TokenKeyUri
from signer.errors import VerificationError
from signer.tls import write_private
from signer.token import softhsm
from testbed.commands import APPROVER, SIGNER, run
from testbed.env import Env
from testbed.process import serving
from tests.harness import ok, refused
from tests.tamper import alice_signs_and_the_log_verifies

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


class OfficerToken:
    """An officer's own token: its SoftHSM configuration, label and PIN file."""

    def __init__(self, root: Path, label: str) -> None:
        self.conf = softhsm.write_config(root / f"{label}.conf", root / f"{label}-tokens")
        self.label = label
        self.pin_file = root / f"{label}.pin"
        pin = softhsm.random_pin()
        write_private(self.pin_file, pin.encode())
        softhsm.init_token(self.conf, label, softhsm.random_pin(), pin)

    def uri(self, key: str) -> str:
        return f"pkcs11:token={self.label};object={key}?module-path={MODULE}"

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def keygen(self, key: str, algorithm: str, out: Path) -> str:
        done = run(
            [
                *APPROVER,
                "keygen",
                "--pkcs11",
                self.uri(key),
                "--algorithm",
                algorithm,
                "--pin-file",
                str(self.pin_file),
                "--out",
                str(out),
            ],
            env=self.env,
            check=False,
        )
        return ok(done)


def _officer_in_token(env: Env, token: OfficerToken, name: str, algorithm: str) -> None:
    """`name` approves the release key with a key made in `token`."""
    pub = env.root / "approvers" / f"{name}.pub"
    said = token.keygen(f"{name}-approval", algorithm, pub)
    assert "key id" in said and token.uri(f"{name}-approval") in said
    profile = env.add_client(name, ["approver"])
    with profile.open("a") as f:
        f.write(f'approval_key = "{token.uri(name + "-approval")}"\n')
        f.write(f'approval_pin_file = "{token.pin_file}"\n')
    cfg = env.read_config()
    cfg["approvers"][name] = str(pub)
    cfg["keys"]["release"]["approvers"].append(name)
    env.write_config(cfg)


@pytest.mark.sqlite_only("the officer's key is what is tested; the store plays no part")
@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ed25519"])
def test_an_officer_approves_with_a_key_in_their_token(
    fresh_env: Env, tmp_path: Path, algorithm: str
) -> None:
    """dave's key is made in his token; his approval, signed there, and alice's sign the
    request, and the log verifies offline with his key as the policy records it."""
    token = OfficerToken(tmp_path, "dave-token")
    _officer_in_token(fresh_env, token, "dave", algorithm)
    with serving(fresh_env) as r:
        request = r.clients.create()
        profile = ["--profile", str(fresh_env.profile_path("dave"))]
        approved = run([*APPROVER, "approve", request.id, "--yes", *profile], env=token.env)
        assert "approved" in approved.stdout + approved.stderr
        alice_signs_and_the_log_verifies(r, request, "dave")


@pytest.mark.sqlite_only("the officer's key is what is tested; the store plays no part")
def test_bad_token_keys_are_named(fresh_env: Env, tmp_path: Path) -> None:
    """A profile URI naming a key the token does not hold, or carrying a PIN; a second
    key under one label; an officer's key that is a signing key's public key: each a
    clear error, and nothing signed or written."""
    token = OfficerToken(tmp_path, "erin-token")
    _officer_in_token(fresh_env, token, "erin", "ecdsa-p256")
    again = run(
        [
            *APPROVER,
            "keygen",
            "--pkcs11",
            token.uri("erin-approval"),
            "--pin-file",
            str(token.pin_file),
            "--out",
            str(tmp_path / "again.pub"),
        ],
        env=token.env,
        check=False,
    )
    refused(again, "the token holds one already; not replacing it", code=2)
    assert not (tmp_path / "again.pub").exists()
    profile = fresh_env.profile_path("erin")
    text = profile.read_text()
    profile.write_text(text.replace("object=erin-approval", "object=nobody"))
    with serving(fresh_env) as r:
        request = r.clients.create()
        args = [*APPROVER, "approve", request.id, "--yes", "--profile", str(profile)]
        refused(run(args, env=token.env, check=False), "holds no key labelled 'nobody'", code=2)
        profile.write_text(text.replace("object=erin-approval", "object=erin-approval;pin-value=1"))
        refused(run(args, env=token.env, check=False), "a PIN is never in the URI", code=2)
        assert r.clients.get(request.id).approvals == []
    cfg = fresh_env.read_config()
    cfg["approvers"]["erin"] = "trust/release.pem"
    fresh_env.write_config(cfg, adopt=False)
    started = run([*SIGNER, "serve", "--config", str(fresh_env.config)], check=False, timeout=60)
    refused(started, "approvers.erin", "is the public key of signing key 'release'", code=2)


def test_the_ecdsa_p256_kind_reads_only_its_own_encoding() -> None:
    """A P-256 approval key round-trips through its policy value; a value of another
    curve, not base64, not canonical, or without the prefix is refused; a malformed or
    foreign signature raises the kind's one error, never another exception."""
    private = ec.generate_private_key(ec.SECP256R1())
    signer = EcdsaP256Key.signer_for(private)
    assert signer is not None
    key = signer.public_key()
    assert registry.key_from_policy(key.policy_value()) == key
    assert key.key_id == spki_key_id(private.public_key())
    key.verify(signer.sign(b"statement"), b"statement")
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = p384.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    value = key.policy_value()
    for bad in (
        "ecdsa-p256:" + base64.b64encode(der).decode(),
        "ecdsa-p256:not base64!",
        value + "=",
        value.removeprefix("ecdsa-p256:"),
    ):
        with pytest.raises(ValueError):
            EcdsaP256Key.from_policy(bad)
    other = EcdsaP256Key.signer_for(ec.generate_private_key(ec.SECP256R1()))
    assert other is not None
    for signature in (b"", b"\x30" * 80, other.sign(b"statement"), signer.sign(b"other")):
        with pytest.raises(VerificationError) as e:
            key.verify(signature, b"statement")
        assert e.value.reason == "BAD_APPROVAL_SIGNATURE"


@pytest.mark.parametrize(
    ("uri", "phrase"),
    [
        ("file:///key.pem", "must be a pkcs11: URI"),
        ("pkcs11:token=t;object=o", "names no module-path"),
        ("pkcs11:token=t?module-path=/m.so", "names no object"),
        ("pkcs11:token=t;object=o;id=%01?module-path=/m.so", "'id' is not one of object, token"),
        ("pkcs11:token=t;token=u;object=o?module-path=/m.so", "or is repeated"),
        ("pkcs11:token=t;object=o?module-path=/m.so&pin-value=1234", "a PIN is never in the URI"),
        ("pkcs11:token=t;object=o?module-path=/m.so&pin-source=file:/p", "a PIN is never"),
        ("pkcs11:token=;object=o?module-path=/m.so", "must not be empty"),
    ],
)
def test_a_token_key_uri_is_read_strictly(uri: str, phrase: str) -> None:
    """Only token, object and module-path, each once and not empty; a PIN never."""
    with pytest.raises(ValueError, match=re.escape(phrase)):
        TokenKeyUri.parse(uri)
    good = TokenKeyUri.parse("pkcs11:token=alice%20key;object=approval?module-path=/m.so")
    assert (good.token, good.object, good.module) == ("alice key", "approval", "/m.so")
