"""`--format openpgp` through the real server and SoftHSM: `signer keys openpgp` makes each
key's certificate (a self-signature the officers approve) that gpg imports and
`signer public-key --format openpgp` serves; detached binary and armored signatures of
several files in one request, and a cleartext InRelease, verify with gpg, gpgv and sq,
and a tampered file fails each; officers see the checked trailer fields and each file's
digest labelled as the requester's claim; the evidence bundle catches a false claim;
bad input (unsuitable key, foreign or malformed hashed part, creation time far off) is
refused with a clear error."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from signer import pgp
from signer.cli.main import main
from signer.convert import digest_pb
from signer.errors import InvalidArgumentError, TooLargeError, VerificationError
from signer.formats.base import PayloadKey
from signer.formats.openpgp import (
    MAX_FILES,
    PAYLOAD_TYPE,
    OpenPgpFormat,
    OpenPgpRequest,
    check_certificate,
    document_request,
    hash_file,
)
from signer.model import Digest
from signer.v1 import signing_pb2
from testbed.commands import APPROVER, SIGNER, run
from testbed.gnupg import Gnupg
from testbed.process import Running
from tests.openpgp_env import OPENPGP_KEYS, UID

KEYS = OPENPGP_KEYS


def _ci(shared: Running) -> list[str]:
    return ["--profile", str(shared.env.profile_path("ci"))]


@pytest.fixture(params=KEYS)
def key(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _tools(tmp_path: Path, cert: bytes) -> Gnupg:
    tools = Gnupg(tmp_path, cert)
    assert tools.imported.returncode == 0, tools.imported.stderr.decode()
    return tools


def _sign(shared: Running, files: list[Path], key: str, *flags: str) -> str:
    """`signer sign --format openpgp FLAGS` of all `files` in one request, approved; the id."""
    cli = CliRunner()
    named = [a for f in files for a in ("--file", str(f))]
    made = cli.invoke(
        main,
        [
            "sign",
            "--key-name",
            key,
            "--format",
            "openpgp",
            *flags,
            *named,
            "--no-wait",
            *_ci(shared),
        ],
    )
    assert made.exit_code == 0, made.output
    request = shared.clients.get(made.stdout.strip())
    assert request.payload_type == PAYLOAD_TYPE and len(request.digests) == len(files)
    shared.clients.approve("alice", request)
    shared.clients.approve("bob", request)
    return request.id


def _fetch(shared: Running, request_id: str, files: list[Path], *extra: str) -> str:
    named = [a for f in files for a in ("--file", str(f))]
    status = ["status", request_id, "--format", "openpgp", *named, *extra, *_ci(shared)]
    fetched = CliRunner().invoke(main, status)
    assert fetched.exit_code == 0, fetched.output
    return fetched.stderr


def _release(tmp_path: Path) -> list[Path]:
    files = [tmp_path / n for n in ("lib-1.0.jar", "lib-1.0.pom", "lib-1.0-sources.jar")]
    for i, f in enumerate(files):
        f.write_bytes(f"maven artifact {i}\n".encode() * 300)
    return files


def test_the_certificate_is_approved_imported_and_served(
    shared: Running, openpgp_certs: dict[str, bytes], key: str, tmp_path: Path
) -> None:
    """The certificate's self-signature was an approved request; gpg imports it with the
    user ID and a good self-signature; `signer public-key --format openpgp` serves the same
    certificate, whose creation time the server gives for the key."""
    cert = pgp.parse_certificate(openpgp_certs[key])
    assert cert.uid == UID
    tools = _tools(tmp_path, openpgp_certs[key])
    fpr = cert.fingerprint.hex().upper()
    assert f"[GNUPG:] IMPORT_OK 1 {fpr}" in tools.imported.stdout.decode()
    listed = tools.gpg("--with-colons", "--check-sigs").stdout.decode()
    assert re.search(rf"^sig:!::.*:13x::{fpr}:", listed, re.M), listed
    served = CliRunner().invoke(
        main, ["public-key", "--key-name", key, "--format", "openpgp", *_ci(shared)]
    )
    assert served.exit_code == 0, served.output
    assert pgp.unarmor(served.stdout) == ("PUBLIC KEY BLOCK", openpgp_certs[key])
    info = shared.clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name=key), timeout=10
    )
    assert info.key.openpgp_created == cert.created


def test_only_a_certificate_in_the_form_written_here_is_accepted(
    openpgp_certs: dict[str, bytes],
) -> None:
    """A served certificate with anything added to its self-signature's unhashed area (a
    notation, another issuer key ID), re-encoded with old-format headers, or with a
    signature larger than the key, is refused with a clear error."""
    cert = openpgp_certs["k-ecdsa-p256"]
    parsed = pgp.parse_certificate(cert)
    sig = parsed.signature
    noisy = replace(sig, unhashed=sig.unhashed + bytes([9, 16]) + bytes(8))
    with pytest.raises(pgp.PgpFormatError, match="unhashed area"):
        pgp.parse_certificate(pgp.certificate(parsed.key_body, parsed.uid, noisy.encode()))
    rsa_cert = pgp.parse_certificate(openpgp_certs["k-rsa-pkcs1-3072"])
    huge = replace(rsa_cert.signature, mpis=(1 << 5000,))
    forged = pgp.certificate(rsa_cert.key_body, rsa_cert.uid, huge.encode())
    rsa_pem = pgp.public_key_of(rsa_cert.key_body).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(VerificationError, match="self-signature does not verify"):
        check_certificate(forged, rsa_pem.decode(), rsa_cert.created)
    old = bytes([0x99]) + len(parsed.key_body).to_bytes(2, "big") + parsed.key_body
    with pytest.raises(pgp.PgpFormatError, match="form this module writes"):
        pgp.parse_certificate(old + cert[len(pgp.packet(6, parsed.key_body)) :])


def test_a_key_without_a_certificate_says_how_to_make_one(shared: Running) -> None:
    """A key that cannot have an OpenPGP certificate: the error names the key types to use."""
    got = CliRunner().invoke(
        main, ["public-key", "--key-name", "k-rsa-pss-3072", "--format", "openpgp", *_ci(shared)]
    )
    assert got.exit_code == 1
    assert "rsa-pss-3072" in got.stderr and "rsa-pkcs1-3072" in got.stderr


@pytest.mark.parametrize("armor", [False, True])
def test_detached_signatures_of_a_release_verify_with_gpg_gpgv_and_sq(
    shared: Running, openpgp_certs: dict[str, bytes], key: str, tmp_path: Path, armor: bool
) -> None:
    """One request signs every file of a release (one approval for all); each signature,
    binary or armored, verifies with gpg, gpgv and sq; a tampered file fails each."""
    files = _release(tmp_path)
    request_id = _sign(shared, files, key, *(["--armor"] if armor else []))
    said = _fetch(shared, request_id, files)
    assert "one for all 3 files" in said
    tools = _tools(tmp_path, openpgp_certs[key])
    fpr = pgp.parse_certificate(openpgp_certs[key]).fingerprint.hex().upper()
    for f in files:
        sig = f.with_name(f.name + (".asc" if armor else ".sig"))
        if armor:
            assert sig.read_text().startswith("-----BEGIN PGP SIGNATURE-----\n")
        verified = tools.gpg("--verify", str(sig), str(f))
        assert verified.returncode == 0, verified.stderr.decode()
        assert f"[GNUPG:] VALIDSIG {fpr} " in verified.stdout.decode()
        assert tools.gpgv(str(sig), str(f)).returncode == 0
        assert tools.sq_verify("--detached", str(sig), str(f)).returncode == 0
    tampered = tmp_path / "tampered.jar"
    tampered.write_bytes(files[0].read_bytes() + b"!")
    sig = files[0].with_name(files[0].name + (".asc" if armor else ".sig"))
    assert tools.gpg("--verify", str(sig), str(tampered)).returncode != 0
    assert tools.gpgv(str(sig), str(tampered)).returncode != 0
    assert tools.sq_verify("--detached", str(sig), str(tampered)).returncode != 0


def test_a_file_changed_after_hashing_writes_nothing(shared: Running, tmp_path: Path) -> None:
    """When one file of a signed release changed since it was hashed, no signature is
    written, not even the others'."""
    files = _release(tmp_path)
    request_id = _sign(shared, files, "k-rsa-pkcs1-3072", "--armor")
    files[2].write_bytes(files[2].read_bytes() + b"changed")
    named = [a for f in files for a in ("--file", str(f))]
    status = ["status", request_id, "--format", "openpgp", *named, *_ci(shared)]
    got = CliRunner().invoke(main, status)
    assert got.exit_code == 1, got.output
    assert not list(tmp_path.glob("*.asc"))


def test_a_cleartext_inrelease_verifies_with_gpgv(
    shared: Running, openpgp_certs: dict[str, bytes], tmp_path: Path
) -> None:
    """--clearsign writes a cleartext signed message gpgv and sq accept; a changed line fails."""
    release = tmp_path / "Release"
    release.write_text(
        "Origin: Example\nSuite: stable\n-dash line\nSHA256:\n "
        + hashlib.sha256(b"x").hexdigest()
        + " 1 main/binary-amd64/Packages\n"
    )
    in_release = tmp_path / "InRelease"
    request_id = _sign(shared, [release], "k-rsa-pkcs1-3072", "--clearsign")
    _fetch(shared, request_id, [release], "--out", str(in_release))
    text = in_release.read_text()
    assert text.startswith("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n")
    assert "\n- -dash line\n" in text
    tools = _tools(tmp_path, openpgp_certs["k-rsa-pkcs1-3072"])
    assert tools.gpgv(str(in_release)).returncode == 0
    assert tools.sq_verify(str(in_release)).returncode == 0
    changed = tmp_path / "InRelease.changed"
    changed.write_text(text.replace("Suite: stable", "Suite: stab1e"))
    assert tools.gpgv(str(changed)).returncode != 0
    assert tools.sq_verify(str(changed)).returncode != 0


def test_officers_see_the_checked_fields_and_the_claimed_digests(
    shared: Running, openpgp_certs: dict[str, bytes], tmp_path: Path
) -> None:
    """`approver show` names the key's fingerprint, the signature's creation time and hash,
    and each file's digest labelled as the requester's claim."""
    files = _release(tmp_path)[:1]
    cli = CliRunner()
    made = cli.invoke(
        main,
        [
            *("sign", "--key-name", "k-ecdsa-p256", "--format", "openpgp"),
            *("--file", str(files[0]), "--no-wait", *_ci(shared)),
        ],
    )
    assert made.exit_code == 0, made.output
    request_id = made.stdout.strip()
    alice = ["--profile", str(shared.env.profile_path("alice"))]
    shown = run([*APPROVER, "show", request_id, *alice], env={"COLUMNS": "200"}).stdout
    fpr = pgp.parse_certificate(openpgp_certs["k-ecdsa-p256"]).fingerprint.hex().upper()
    assert " ".join(fpr[i : i + 4] for i in range(0, 40, 4)) in shown
    assert "(claimed by the requester)" in shown
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() in shown
    described = json.loads(run([*APPROVER, "show", request_id, "--json", *alice]).stdout)
    assert described["openpgp"]["mode"] == "binary"
    assert described["openpgp"]["claimed_artifacts"][0]["name"] == "lib-1.0.jar"
    assert described["payload_matches_digest"] is True


def test_the_bundle_recomputes_the_signed_digest_and_catches_a_false_claim(
    shared: Running, openpgp_certs: dict[str, bytes], tmp_path: Path
) -> None:
    """A requester who claims one file's digest but sends another file's hash state gets a
    signature the bundle check refuses for the claimed file; an honest request's passes."""
    honest, other = tmp_path / "honest.tar", tmp_path / "other.tar"
    honest.write_bytes(b"the file officers were told about")
    other.write_bytes(b"a different file altogether")
    key = "release"
    info = shared.clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name=key), timeout=10
    )
    signing = PayloadKey(
        info.key.algorithm, info.key.public_key_pem, info.key.openpgp_created, int(time.time())
    )
    _, request = document_request(
        "binary", [("honest.tar", [honest.read_bytes()])], signing, "sha256"
    )
    swapped = hash_file("honest.tar", [other.read_bytes()], "sha256", "binary")
    lying = OpenPgpRequest(
        "binary",
        request.key,
        request.hashed,
        [replace(swapped, claimed=request.artifacts[0].claimed)],
    )
    made = shared.clients.create(
        key=key,
        digests=[digest_pb(d) for d in lying.signed_digests()],
        payload_type=PAYLOAD_TYPE,
        payload=lying.to_bytes(),
    )
    # An officer with their own copy of the file sees that the claim is not the whole story.
    alice = ["--profile", str(shared.env.profile_path("alice"))]
    shown = run([*APPROVER, "show", made.id, "--file", str(honest), *alice], check=False)
    assert shown.returncode == 1 and "MATCHES NOTHING" in shown.stdout
    not_sent = run(
        [*APPROVER, "approve", made.id, "--file", str(honest), "--yes", *alice], check=False
    )
    assert not_sent.returncode == 1 and "not a file this request signs" in not_sent.stderr
    assert not shared.clients.get(made.id).approvals  # nothing was sent
    shared.clients.approve("alice", made)
    shared.clients.approve("bob", made)
    out = tmp_path / "honest.tar.sig"
    refused = CliRunner().invoke(
        main,
        ["status", made.id, "--format", "openpgp", "--file", str(honest), *_ci(shared)],
    )
    assert refused.exit_code == 1 and "changed since it was hashed" in refused.stderr
    _fetch(shared, made.id, [], "--out", str(out))
    trust = shared.env.root / "trust" / "release.toml"
    bundle = out.with_name(out.name + ".bundle.json")
    check = [*SIGNER, "verify", "--bundle", str(bundle), "--trust", str(trust), "--file"]
    caught = run([*check, str(honest)], check=False)
    assert caught.returncode == 1 and "claim was false" in caught.stderr
    cli = CliRunner()
    made_good = cli.invoke(
        main,
        [
            *("sign", "--key-name", key, "--format", "openpgp", "--file", str(honest)),
            *("--no-wait", *_ci(shared)),
        ],
    )
    good_id = made_good.stdout.strip()
    checked = run([*APPROVER, "approve", good_id, "--file", str(honest), "--yes", *alice])
    assert "is honest.tar, as the request says" in checked.stdout
    shared.clients.approve("bob", shared.clients.get(good_id))
    _fetch(shared, good_id, [honest])
    ok = run([*check, str(honest)], check=False, input=None)
    assert ok.returncode == 0, ok.stderr


def _payload_key(shared: Running, key: str) -> PayloadKey:
    info = shared.clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name=key), timeout=10
    )
    return PayloadKey(
        info.key.algorithm, info.key.public_key_pem, info.key.openpgp_created, int(time.time())
    )


def _refused(shared: Running, key: str, digests: list[Digest], payload: bytes) -> str:
    with pytest.raises(grpc.RpcError) as e:
        shared.clients.create(
            key=key,
            digests=[digest_pb(d) for d in digests],
            payload_type=PAYLOAD_TYPE,
            payload=payload,
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(e.value.details())


def test_the_server_refuses_foreign_stale_and_malformed_trailers(shared: Running) -> None:
    """Creation time far off, another key's fingerprint, a hashed part of the wrong type or
    with extra subpackets, and digests that do not match the files listed: each refused."""
    signing = _payload_key(shared, "k-rsa-pkcs1-3072")
    carried, request = document_request("binary", [("a.tar", [b"data"])], signing, "sha256")
    digests = list(carried.digests)

    def payload_with(hashed: pgp.Hashed) -> bytes:
        return OpenPgpRequest(request.mode, request.key, hashed, request.artifacts).to_bytes()

    h = request.hashed
    ahead = pgp.Hashed(
        h.sig_type, h.pubkey_algorithm, h.hash_algorithm, h.created + 3600, h.issuer_fingerprint
    )
    assert "more than 300 s from the server's clock" in _refused(
        shared, "k-rsa-pkcs1-3072", digests, payload_with(ahead)
    )
    before = pgp.Hashed(
        h.sig_type,
        h.pubkey_algorithm,
        h.hash_algorithm,
        h.created - 7 * 86400,
        h.issuer_fingerprint,
    )
    assert "before the key's" in _refused(shared, "k-rsa-pkcs1-3072", digests, payload_with(before))
    foreign = pgp.Hashed(h.sig_type, h.pubkey_algorithm, h.hash_algorithm, h.created, bytes(20))
    assert "names issuer 0000" in _refused(
        shared, "k-rsa-pkcs1-3072", digests, payload_with(foreign)
    )
    text = pgp.Hashed(
        pgp.TEXT, h.pubkey_algorithm, h.hash_algorithm, h.created, h.issuer_fingerprint
    )
    assert "signature type 0x00" in _refused(
        shared, "k-rsa-pkcs1-3072", digests, payload_with(text)
    )
    extra = json.loads(carried.payload)
    extra["hashed"] = (
        h.encode()[:4]
        + (len(h.encode()) - 6 + 3).to_bytes(2, "big")
        + h.encode()[6:]
        + bytes([2, 27, 3])
    ).hex()
    assert "key flags" in _refused(
        shared,
        "k-rsa-pkcs1-3072",
        digests,
        json.dumps(extra, sort_keys=True, separators=(",", ":")).encode(),
    )
    renamed = [Digest("sha256", digests[0].value, "b.tar")]
    assert "each file's hash finished with this trailer" in _refused(
        shared, "k-rsa-pkcs1-3072", renamed, carried.payload
    )
    twice = json.loads(carried.payload)
    twice["artifacts"] *= 2
    assert "listed twice" in _refused(
        shared,
        "k-rsa-pkcs1-3072",
        digests * 2,
        json.dumps(twice, sort_keys=True, separators=(",", ":")).encode(),
    )
    # The same request sent for another key: its hashed part is not one that key makes.
    assert "public-key algorithm 1; this key is ecdsa-p256" in _refused(
        shared, "k-ecdsa-p256", digests, carried.payload
    )


def test_a_document_request_cannot_carry_a_certification_or_any_other_digest(
    shared: Running, openpgp_certs: dict[str, bytes]
) -> None:
    """The digest a file request asks for must be the server's own finish of the file's hash
    over the checked trailer: a certification of another user ID on the key (which would
    add that user ID to its certificate), or any digest chosen freely, is refused."""
    signing = _payload_key(shared, "k-rsa-pkcs1-3072")
    carried, request = document_request("armor", [("app.tar", [b"app"])], signing, "sha256")
    cert = pgp.parse_certificate(openpgp_certs["k-rsa-pkcs1-3072"])
    smuggled = pgp.Hashed(
        pgp.POSITIVE_CERTIFICATION,
        pgp.RSA,
        "sha256",
        request.hashed.created,
        cert.fingerprint,
        key_flags=0x03,
        preferred_hashes=("sha256",),
    )
    certification = pgp.certification_digest(cert.key_body, "Mallory <m@evil.example>", smuggled)
    for value in (certification, hashlib.sha256(b"anything").digest()):
        assert "not each file's hash finished with this trailer" in _refused(
            shared, "k-rsa-pkcs1-3072", [Digest("sha256", value, "app.tar")], carried.payload
        )


def test_unsuitable_keys_are_refused_naming_the_key_types_to_use(
    shared: Running, tmp_path: Path
) -> None:
    """An RSA-PSS key cannot make OpenPGP signatures: refused before anything is sent,
    naming rsa-pkcs1-* and ecdsa-*; `signer keys openpgp` refuses it too, and refuses to
    overwrite an existing --out without --yes before the officers are asked."""
    f = tmp_path / "a.tar"
    f.write_bytes(b"x")
    got = CliRunner().invoke(
        main,
        [
            *("sign", "--key-name", "k-rsa-pss-3072", "--format", "openpgp"),
            *("--file", str(f), "--no-wait", *_ci(shared)),
        ],
    )
    assert got.exit_code == 1
    assert "rsa-pss-3072" in got.stderr and "rsa-pkcs1-3072" in got.stderr
    assert "refuse RSA-PSS" in got.stderr
    # A process of its own: the token's module is loaded once per process, with its config.
    args = [*SIGNER, "keys", "openpgp", "--config", str(shared.env.config), *_ci(shared)]
    made = run([*args, "--name", "k-rsa-pss-3072", "--uid", UID], check=False)
    assert made.returncode == 1 and "ecdsa-p256" in made.stderr
    kept = tmp_path / "release.asc"
    kept.write_text("the certificate published last year\n")
    again = run([*args, "--name", "release", "--uid", UID, "--out", str(kept)], check=False)
    assert again.returncode == 2 and "exists; give --yes" in again.stderr
    assert kept.read_text() == "the certificate published last year\n"


def test_digests_instead_of_files_are_refused() -> None:
    """An OpenPGP signature hashes the file with its trailer: bare digests are refused."""
    with pytest.raises(InvalidArgumentError, match="give --file"):
        OpenPgpFormat().carry([Digest("sha256", bytes(32), "a")], {}, "sha256", {})


def _offline_request() -> tuple[OpenPgpRequest, PayloadKey]:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    key = PayloadKey("ecdsa-p256", pem, 1_700_000_000, 1_700_000_600)
    _, request = document_request("armor", [("a.jar", [b"a"]), ("b.pom", [b"b"])], key, "sha256")
    return request, key


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_a_mangled_payload_is_refused_or_reads_back_exactly(data: st.DataObject) -> None:
    """Any change to a valid payload's bytes is refused with InvalidArgumentError (or
    TooLargeError), or parses to a request that encodes back to exactly those bytes."""
    request, _ = _offline_request()
    raw = bytearray(request.to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    try:
        parsed = OpenPgpRequest.parse(bytes(raw))
    except (InvalidArgumentError, TooLargeError):
        return
    assert parsed.to_bytes() == bytes(raw)


def test_a_certification_is_not_accepted_as_a_document_signature() -> None:
    """A self-signature's hashed part (0x13, with key flags) sent as a detached request, or
    a document trailer sent as a certification, is refused naming the signature type."""
    request, _ = _offline_request()
    cert = pgp.Hashed(
        pgp.POSITIVE_CERTIFICATION,
        pgp.ECDSA,
        "sha256",
        request.hashed.created,
        request.hashed.issuer_fingerprint,
        key_flags=0x03,
        preferred_hashes=("sha256",),
    )
    payload = json.loads(request.to_bytes())
    payload["hashed"] = cert.encode().hex()
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(InvalidArgumentError, match="not a document signature"):
        OpenPgpRequest.parse(raw)
    as_cert = {"mode": "certify", "key": payload["key"], "uid": UID}
    as_cert["hashed"] = request.hashed.encode().hex()
    raw = json.dumps(as_cert, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(InvalidArgumentError, match="not a positive certification"):
        OpenPgpRequest.parse(raw)


def test_offline_checks_need_no_clock_but_the_server_checks_it() -> None:
    """Offline (no `now`), the key, issuer and times relative to the key are checked; at the
    server also the clock and the creation time the token keeps."""
    request, key = _offline_request()
    offline = PayloadKey(key.algorithm, key.public_key_pem)
    request.check(offline)
    with pytest.raises(InvalidArgumentError, match="more than 300 s"):
        request.check(replace(key, now=request.hashed.created + 301))
    with pytest.raises(InvalidArgumentError, match="creation time is 1700000001"):
        request.check(replace(key, openpgp_created=1_700_000_001))
    with pytest.raises(InvalidArgumentError, match="no OpenPGP creation time"):
        request.check(replace(key, openpgp_created=None))


def test_an_ecdsa_key_signs_with_its_curves_own_hash_and_a_request_is_bounded() -> None:
    """P-256 signs with SHA-256 only (ECDSA would truncate SHA-512 into another hash's
    signature); one request names at most MAX_FILES files."""
    _, key = _offline_request()
    with pytest.raises(
        InvalidArgumentError, match="ecdsa-p256 key makes OpenPGP signatures with sha256"
    ):
        document_request("binary", [("a", [b"a"])], key, "sha512")
    files = [(f"f{i}", [b"x"]) for i in range(MAX_FILES + 1)]
    _, request = document_request("binary", files, key, "sha256")
    with pytest.raises(TooLargeError, match=f"the limit is {MAX_FILES}"):
        OpenPgpRequest.parse(request.to_bytes())
