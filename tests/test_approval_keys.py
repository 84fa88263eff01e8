"""The approval-key seam (`signer.approval`): a new kind plugs in by registration alone.

A toy kind, ECDSA P-256 keys in PEM files, is written here against the
interface and registered for one test at a time (`registry.KINDS`, patched);
with no other module changed, the server config loads it, the approver's key
file signs with it, the core counts its approvals, and bundle verification and
the offline audit verifier accept them. Without it registered, the config, a
trust file and the offline verifier refuse the key, naming the kinds they
know. The Ed25519 kind keeps the encodings that recorded logs and policy
hashes were made with (known answers: RFC 8032 §7.1 public keys and
signature; the policy hash pinned from the code before the seam).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest
import tomli_w
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from signer.algorithms import ALGORITHMS
from signer.approval import files, registry
from signer.approval.ed25519 import Ed25519Key, Ed25519Signer
from signer.approval.keys import (
    ApprovalKey,
    ApprovalSigner,
    signature_error,
    spki_key_id,
    spki_pem,
)
from signer.audit.note import Verifier
from signer.audit.offline import Report, verify_dir
from signer.core.policy import KeyPolicy
from signer.dsse import Envelope, Statement, sign_statement
from signer.errors import ConfigError, EnvelopeError, VerificationError
from signer.formats.bundle import Bundle, Trust, verify_bundle
from signer.model import State
from signer.server.config import Config, ServerConfig, StoreConfig, TokenConfig, load_config
from testbed.env import Db
from tests.config_files import root as root  # a fixture
from tests.config_files import valid_config as _valid
from tests.config_files import write_config as _write
from tests.fakes import World, make_envelope, make_world
from tests.synthetic_log import Synth as _Synth

# -- a toy kind, written against the interface only ---------------------------------------

_TOY = "toy-p256"


class _P256Key(ApprovalKey):
    """An ECDSA P-256 approval key (SHA-256, DER signatures); policy value toy-p256:BASE64."""

    kind = _TOY
    label = "toy P-256"

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        self._key = public_key

    @classmethod
    def from_public_key(cls, public_key: PublicKeyTypes) -> Self | None:
        if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
            public_key.curve, ec.SECP256R1
        ):
            return cls(public_key)
        return None

    @classmethod
    def from_policy(cls, value: str) -> Self:
        try:
            der = base64.b64decode(value.removeprefix(f"{_TOY}:"), validate=True)
            key = cls.from_public_key(serialization.load_der_public_key(der))
        except (ValueError, binascii.Error, UnsupportedAlgorithm):
            key = None
        if key is None or key.policy_value() != value:
            raise ValueError(f"must be {_TOY}: and the base64 SPKI DER of a P-256 key")
        return key

    @classmethod
    def signer_for(cls, private_key: PrivateKeyTypes) -> ApprovalSigner | None:
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1
        ):
            return _P256Signer(private_key)
        return None

    @property
    def key_id(self) -> str:
        return spki_key_id(self._key)

    def verify(self, signature: bytes, data: bytes) -> None:
        try:
            self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise signature_error() from None

    def pem(self) -> bytes:
        return spki_pem(self._key)

    def policy_value(self) -> str:
        der = self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"{_TOY}:{base64.b64encode(der).decode()}"


class _P256Signer(ApprovalSigner):
    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self.private_key = private_key

    @classmethod
    def generate(cls) -> _P256Signer:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    def public_key(self) -> _P256Key:
        return _P256Key(self.private_key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))


@pytest.fixture
def toy_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy kind registered: the one line a new kind adds to the registry."""
    monkeypatch.setattr(registry, "KINDS", [Ed25519Key, _P256Key])


@pytest.fixture
def world(tmp_path: Path, new_db: Callable[[], Db]) -> Iterator[World]:
    """The core's test world with alice's approval key of the toy kind."""
    w = make_world(tmp_path, db=new_db())
    w.officers["alice"] = _P256Signer.generate()
    w.restart()
    yield w
    w.close()


def _signed_with_alice_and_bob(world: World) -> str:
    """The policy recorded as the server records it, then a request that alice (toy kind)
    and bob (Ed25519) approve; the core signs it."""
    world.record_policy()
    r = world.create()
    world.approve("alice", r)
    assert world.approve("bob", r).state is State.SIGNED
    return r.id


def _verify_offline(world: World, where: Path) -> Report:
    verifier = _Synth(world.officers, entries=world.audit()).write(
        where, ed25519.Ed25519PrivateKey.generate()
    )
    return verify_dir(where, Verifier.parse(verifier))


# -- a new kind plugs in -------------------------------------------------------------------


def test_config_loads_a_registered_kind_from_its_pem_file(root: Path, toy_kind: None) -> None:
    """The config loader accepts a PEM key of a registered kind and records its policy value."""
    toy = _P256Signer.generate()
    (root / "approvers" / "toy.pub").write_bytes(toy.public_key().pem())
    cfg = _valid()
    cfg["approvers"]["alice"] = "approvers/toy.pub"
    loaded = load_config(_write(root, cfg))
    assert loaded.approver_keys["alice"] == toy.public_key()
    recorded = loaded.policy_document["approver_keys"]
    assert recorded["alice"] == toy.public_key().policy_value()
    assert recorded["alice"].startswith(f"{_TOY}:") and len(recorded["bob"]) == 64
    assert registry.key_from_policy(recorded["alice"]) == toy.public_key()


def test_approver_key_file_of_a_registered_kind_signs(tmp_path: Path, toy_kind: None) -> None:
    """The approver's key file (PKCS#8 PEM) of a registered kind loads and signs approvals
    its public key verifies."""
    toy = _P256Signer.generate()
    path = tmp_path / "alice.key"
    path.write_bytes(
        toy.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    signer = files.load_signer(path, None)
    statement = Statement("r", "release", "ab" * 32, (), "deny", "alice", dt.datetime.now(dt.UTC))
    assert Envelope.parse(sign_statement(statement, signer)).verify(toy.public_key()) == statement


def test_core_counts_an_approval_of_a_registered_kind(world: World, toy_kind: None) -> None:
    """The core verifies and counts alice's toy-kind approval; one signed by another key of
    that kind is refused as a bad signature."""
    r = world.create()
    forged = make_envelope(_P256Signer.generate(), r, "alice", world.clock())
    with pytest.raises(EnvelopeError) as e:
        world.core.decide("alice", r.id, forged, "approve")
    assert e.value.reason == "BAD_APPROVAL_SIGNATURE"
    world.approve("alice", r)
    assert world.approve("bob", r).state is State.SIGNED


def test_offline_verifier_reads_a_registered_kind_from_the_policy(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_kind: None
) -> None:
    """A log whose policy records a toy-kind key verifies offline with the kind registered;
    a verifier without it names the kind it does not know."""
    _signed_with_alice_and_bob(world)
    report = _verify_offline(world, tmp_path / "log")
    assert (report.signed, report.approvals, report.policies) == (1, 2, 1)
    monkeypatch.setattr(registry, "KINDS", [Ed25519Key])
    with pytest.raises(VerificationError) as e:
        _verify_offline(world, tmp_path / "again")
    assert str(e.value) == (
        "entry 0 (server.started): details.policy.approver_keys.alice is a key of kind "
        "'toy-p256', which this verifier does not know (it knows Ed25519)"
    )


def _trust_file(world: World, where: Path) -> Path:
    where.mkdir()
    (where / "release.pem").write_text(world.keys["release"].public_key_pem)
    for name, key in world.officers.items():
        (where / f"{name}.pub").write_bytes(key.public_key().pem())
    path = where / "trust.toml"
    trust = {
        "public_key": "release.pem",
        "threshold": 2,
        "audit_verifier": str(world.verifier),
        "approvers": {o: f"{o}.pub" for o in ("alice", "bob", "carol")},
    }
    path.write_text(tomli_w.dumps(trust))
    return path


def test_bundle_verification_pins_a_registered_kind(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_kind: None
) -> None:
    """A bundle whose quorum holds a toy-kind approval verifies against a trust file pinning
    that key; without the kind registered the trust file is refused."""
    request = world.get(_signed_with_alice_and_bob(world))
    proof = world.core.audit_proof(request.id)
    assert proof is not None
    bundle = Bundle(
        request_id=request.id,
        key_name=request.key_name,
        key_id=request.key_id,
        algorithm=request.algorithm,
        public_key_pem=world.keys["release"].public_key_pem,
        digests=request.digests,
        signatures=request.signatures,
        threshold=world.policy.threshold,
        approvals=tuple(a.envelope for a in request.approvals if a.decision == "approve"),
        audit=proof,
    )
    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(b"build 1")
    trust = _trust_file(world, tmp_path / "trust")
    verified = verify_bundle(Bundle.from_json(bundle.to_json()), Trust.load(trust), artifact)
    assert verified.approvers == ("alice", "bob")
    monkeypatch.setattr(registry, "KINDS", [Ed25519Key])
    with pytest.raises(ConfigError, match=r"approvers\.alice is not an Ed25519 key"):
        Trust.load(trust)


# -- unknown kinds are refused -------------------------------------------------------------


def test_config_refuses_a_key_of_no_known_kind(root: Path) -> None:
    """A PEM public key of no registered kind (P-384) is refused naming the entry, the
    file and the kinds this server supports."""
    ec_pub = root / "approvers" / "ec.pub"
    ec_pub.write_bytes(spki_pem(ec.generate_private_key(ec.SECP384R1()).public_key()))
    cfg = _valid()
    cfg["approvers"]["alice"] = "approvers/ec.pub"
    with pytest.raises(ConfigError) as e:
        load_config(_write(root, cfg))
    assert str(e.value) == (
        f"{(root / 'signer.toml').resolve()}: approvers.alice: {ec_pub.resolve()} "
        "is not an Ed25519, ECDSA P-256 or FIDO sk-ssh-ed25519 public key (make one: "
        "approver keygen)"
    )


def test_config_refusal_names_every_registered_kind(root: Path, toy_kind: None) -> None:
    """With two kinds registered, a key of neither (RSA) is refused naming both."""
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (root / "approvers" / "rsa.pub").write_bytes(spki_pem(rsa_pub))
    cfg = _valid()
    cfg["approvers"]["alice"] = "approvers/rsa.pub"
    with pytest.raises(ConfigError) as e:
        load_config(_write(root, cfg))
    assert str(e.value).endswith(
        f"approvers.alice: {(root / 'approvers' / 'rsa.pub').resolve()} is not an Ed25519 or "
        "toy P-256 public key (make one: approver keygen)"
    )


def test_policy_value_of_an_unknown_prefix_is_refused() -> None:
    """A policy value with an unknown `KIND:` prefix is refused naming the kind, and an
    Ed25519 kind name is no prefix (Ed25519 values are bare hex)."""
    for value in ("piv:MFkw", "ed25519:" + "00" * 32):
        with pytest.raises(ValueError, match="which this verifier does not know"):
            registry.key_from_policy(value)


# -- the Ed25519 kind keeps its encodings (known answers) ---------------------------------

# RFC 8032 §7.1, TEST 1 and TEST 2: the public keys; TEST 1's signature of "" (no
# private key is kept here, not even a published one).
_RFC8032_PUBLIC_1 = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
_RFC8032_PUBLIC_2 = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
_RFC8032_SIG_1 = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
    "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # RFC 8410 §4
# The policy hash of `_known_config()`, computed by the code before approval keys were a
# seam (raw Ed25519 keys in the config): recorded logs carry hashes made that way.
_POLICY_HASH = "a73aea8681d72d0cba2a7419ea82e3a54f4046cde58885532a93a2e0a271bef7"


def _ed25519_key(public_hex: str) -> Ed25519Key:
    return Ed25519Key(ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)))


def _known_config() -> Config:
    return Config(
        path=Path("/x/signer.toml"),
        server=ServerConfig("127.0.0.1:7443", Path("s.pem"), Path("s.key"), Path("ca.pem")),
        token=TokenConfig("/lib.so", "t", None, "PIN"),
        store=StoreConfig("sqlite:///x.db", Path("x.db")),
        audit_key="audit",
        audit_origin="signer",
        identities={
            "alice": frozenset({"approver"}),
            "bob": frozenset({"approver"}),
            "ci": frozenset({"requester"}),
        },
        approver_keys={
            "alice": _ed25519_key(_RFC8032_PUBLIC_1),
            "bob": _ed25519_key(_RFC8032_PUBLIC_2),
        },
        keys={
            "release": KeyPolicy(
                "release",
                ALGORITHMS["ecdsa-p256"],
                ("alice", "bob"),
                2,
                ("ci",),
                dt.timedelta(hours=1),
            )
        },
    )


def test_ed25519_policy_value_and_policy_hash_are_unchanged() -> None:
    """An Ed25519 key's policy value is the raw key's 64 lowercase hex digits, read back
    to the same key, and a policy's hash is the one logs were written with."""
    key = _ed25519_key(_RFC8032_PUBLIC_1)
    assert key.policy_value() == _RFC8032_PUBLIC_1
    assert registry.key_from_policy(_RFC8032_PUBLIC_1) == key
    config = _known_config()
    assert config.policy_document["approver_keys"] == {
        "alice": _RFC8032_PUBLIC_1,
        "bob": _RFC8032_PUBLIC_2,
    }
    assert config.policy_hash == _POLICY_HASH


def test_ed25519_key_id_pem_and_signature_known_answers() -> None:
    """RFC 8032 TEST 1: the key id is SHA-256 of the RFC 8410 SPKI, and the key verifies
    the RFC's signature, refusing any other."""
    spki = _ED25519_SPKI_PREFIX + bytes.fromhex(_RFC8032_PUBLIC_1)
    key = _ed25519_key(_RFC8032_PUBLIC_1)
    assert key.key_id == hashlib.sha256(spki).hexdigest()
    assert (
        serialization.load_pem_public_key(key.pem()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == spki
    )
    signature = bytes.fromhex(_RFC8032_SIG_1)
    key.verify(signature, b"")
    for sig, data in ((signature, b"x"), (b"", b""), (signature[:63], b""), (bytes(64), b"")):
        with pytest.raises(VerificationError) as e:
            key.verify(sig, data)
        assert e.value.reason == "BAD_APPROVAL_SIGNATURE"


def test_ed25519_signer_signs_what_its_key_verifies() -> None:
    """A throwaway Ed25519 signer's signature verifies with its public key and no other."""
    signer = Ed25519Signer.generate()
    signer.public_key().verify(signer.sign(b"statement"), b"statement")
    with pytest.raises(VerificationError):
        Ed25519Signer.generate().public_key().verify(signer.sign(b"statement"), b"statement")
