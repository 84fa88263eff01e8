"""Evidence bundles against the consumer's trust file: its pinned key and threshold decide.

Another signing key or a higher threshold pinned, a bundle relabelled as the
pinned key, an officer left out: the real bundle (tests/bundle_env.py) is
refused. Bad trust files are configuration errors (exit 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from signer.approval.keys import spki_pem
from signer.errors import ConfigError
from signer.formats.bundle import Trust
from signer.v1 import signing_pb2
from testbed.clients import RPC_TIMEOUT
from tests.bundle_env import Signed, cli_refused, edited, rejects, trust_file, verify_cli

# -- the pinned key and threshold -----------------------------------------------------------------


def _public_pem(s: Signed, key_name: str) -> Path:
    key = (
        s.r.clients.signing()
        .GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name=key_name), timeout=RPC_TIMEOUT)
        .key
    )
    path = s.dir / f"{key_name}.pem"
    path.write_text(key.public_key_pem)
    return path


def test_trust_pins_another_signing_key_cli(signed: Signed) -> None:
    """A consumer pinning k-ecdsa-p384's public key refuses a bundle for release."""
    trust = trust_file(signed, "p384.toml", public_key=str(_public_pem(signed, "k-ecdsa-p384")))
    cli_refused(
        verify_cli(signed.bundle_path, signed.artifact, trust),
        "bundle INVALID",
        f"the bundle is for key {signed.request.key_id[:16]}..., the pinned key is",
    )


def test_bundle_relabelled_as_the_pinned_key(signed: Signed) -> None:
    """Relabelling the bundle as k-ecdsa-p384's does not make release's signature verify."""
    pem = _public_pem(signed, "k-ecdsa-p384")
    trust = Trust.load(trust_file(signed, "p384-inproc.toml", public_key=str(pem)))
    key = (
        signed.r.clients.signing()
        .GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name="k-ecdsa-p384"), timeout=RPC_TIMEOUT)
        .key
    )
    assert key.key_id != signed.request.key_id

    def edit(d: dict[str, Any]) -> None:
        d["key"].update(
            name=key.name,
            key_id=key.key_id,
            algorithm="ecdsa-p384",
            public_key_pem=key.public_key_pem,
        )

    rejects(signed, edited(signed, edit), "does not verify with the pinned key", trust=trust)


def test_threshold_pinned_higher_cli(signed: Signed) -> None:
    """A trust file pinning threshold 3 refuses a bundle of two approvals (exit 1)."""
    trust = trust_file(signed, "threshold3.toml", threshold=3)
    cli_refused(
        verify_cli(signed.bundle_path, signed.artifact, trust),
        "bundle INVALID",
        "2 distinct officers approved; the pinned threshold is 3",
    )


def test_trust_without_bob(signed: Signed) -> None:
    """A consumer who pins only alice and carol does not count bob's approval."""
    approvers = {
        o: str(signed.r.env.root / "approvers" / f"{o}.key.pub") for o in ("alice", "carol")
    }
    trust = Trust.load(trust_file(signed, "no-bob.toml", approvers=approvers))
    rejects(signed, signed.doc, "not signed by any pinned officer's key", trust=trust)


# -- trust-file errors (exit 2) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        ({"approvers": None}, "[approvers] must name NAME = PEM (or PEM-PATH) entries"),
        ({"threshold": 4}, "threshold 4 is more than the 3 approvers listed"),
    ],
    ids=["missing approvers", "threshold over approvers"],
)
def test_trust_file_errors_cli(signed: Signed, overrides: dict[str, Any], phrase: str) -> None:
    """A trust file with no approvers, or a threshold above their number, exits 2."""
    trust = trust_file(signed, f"bad-{'-'.join(overrides)}.toml", **overrides)
    cli_refused(verify_cli(signed.bundle_path, signed.artifact, trust), phrase, code=2)


def test_the_trust_file_init_writes_verifies_from_anywhere(signed: Signed, tmp_path: Path) -> None:
    """trust/release.toml holds its keys inline: copied alone into another directory, it
    verifies the bundle; a garbled inline key is a configuration error naming it."""
    alone = tmp_path / "elsewhere" / "release.toml"
    alone.parent.mkdir()
    alone.write_text((signed.r.env.root / "trust" / "release.toml").read_text())
    ok = verify_cli(signed.bundle_path, signed.artifact, alone)
    assert ok.returncode == 0 and "bundle OK" in ok.stdout, ok.stderr
    garbled = trust_file(
        signed, "garbled.toml", public_key="-----BEGIN PUBLIC KEY-----\nnot base64\n"
    )
    cli_refused(
        verify_cli(signed.bundle_path, signed.artifact, garbled),
        "public_key: not a PEM public key",
        code=2,
    )


RELEASE_PEM = "<release.pem>"  # replaced by the absolute path of the release public key


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        ({"threshold": 0}, "threshold must be a positive integer"),
        ({"threshold": True}, "threshold must be a positive integer"),
        ({"audit_verifier": "nope"}, "audit_verifier: verifier key 'nope' is not name+keyid+key"),
        ({"public_key": "/nonexistent.pem"}, "public_key: cannot load /nonexistent.pem"),
        ({"extra": 1}, "unknown setting 'extra'"),
        (
            {"approvers": {"alice": RELEASE_PEM}},
            "approvers.alice is not an Ed25519, ECDSA P-256 or FIDO sk-ssh-ed25519 key",
        ),
    ],
    ids=["zero", "bool", "verifier", "no public key", "unknown", "approver of no kind"],
)
def test_trust_file_errors(signed: Signed, overrides: dict[str, Any], phrase: str) -> None:
    """Each bad trust setting (threshold, verifier, key, unknown) is a ConfigError."""
    if overrides.get("approvers") == {"alice": RELEASE_PEM}:  # an RSA key: of no kind
        pem = signed.r.env.root / "trust" / "rsa.pem"
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem.write_bytes(spki_pem(rsa_key.public_key()))
        overrides = {"approvers": {"alice": str(pem)}}
    path = trust_file(signed, "bad-inproc.toml", **overrides)
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        Trust.load(path)


def test_a_trust_key_of_two_pem_blocks_is_refused(signed: Signed) -> None:
    """An inline key or a key file holding two PEM blocks is refused, not read as its
    first: which key is pinned must not be a guess."""
    pem = (signed.r.env.root / "trust" / "release.pem").read_text()
    two = signed.dir / "two.pem"
    two.write_text(pem + pem)
    for value, phrase in ((pem + pem, "give one PEM public key"), (str(two), "more than one")):
        trust = trust_file(signed, "two.toml", public_key=value)
        cli_refused(verify_cli(signed.bundle_path, signed.artifact, trust), phrase, code=2)
