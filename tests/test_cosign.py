"""`--format cosign`: the signature file cosign reads and a Sigstore bundle v0.3, verified
by stock tools: `openssl dgst -verify` over the decoded signature and `@sigstore/verify`
(npm, the verifier of sigstore-js) given the public key as trust material; a tampered
artifact fails both, and a hash cosign cannot use is refused before anything is sent."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.cli.main import main
from signer.errors import VerificationError
from signer.formats.base import Evidence
from signer.formats.cosign import MEDIA_TYPE, CosignFormat, sigstore_bundle
from signer.model import Digest
from testbed.commands import SIGNER, run
from testbed.process import Running

ROOT = Path(__file__).resolve().parent.parent
SIGSTORE_VERIFY = ["node", str(ROOT / "tools" / "sigstore-verify.js")]


def _ci(shared: Running) -> list[str]:
    return ["--profile", str(shared.env.profile_path("ci"))]


def _signed(shared: Running, tmp_path: Path) -> tuple[Path, Path, str]:
    """An artifact signed with --format cosign through the real server, the key's PEM and
    the request's key id."""
    cli = CliRunner()
    artifact = tmp_path / "app.tar"
    artifact.write_bytes(b"a release signed for cosign users" * 100)
    sign = ["sign", "--key-name", "release", "--file", str(artifact), "--no-wait"]
    made = cli.invoke(main, [*sign, "--format", "cosign", *_ci(shared)])
    assert made.exit_code == 0, made.output
    request = shared.clients.get(made.stdout.strip())
    shared.clients.approve("alice", request)
    shared.clients.approve("bob", request)
    status = ["status", request.id, "--format", "cosign", "--file", str(artifact)]
    fetched = cli.invoke(main, [*status, *_ci(shared)])
    assert fetched.exit_code == 0, fetched.output
    assert "cosign signature written to" in fetched.stderr
    pem = tmp_path / "release.pem"
    key = ["public-key", "--key-name", "release", "--out", str(pem)]
    assert cli.invoke(main, [*key, *_ci(shared)]).exit_code == 0
    return artifact, pem, request.key_id


def test_cosign_outputs_verify_with_openssl_and_sigstore_js(
    shared: Running, tmp_path: Path
) -> None:
    """The .sig decodes to a DER signature openssl verifies over the file, the bundle is
    v0.3 naming the key id, @sigstore/verify accepts it; a changed file fails both."""
    artifact, pem, key_id = _signed(shared, tmp_path)
    sig, bundle = tmp_path / "app.tar.sig", tmp_path / "app.tar.sigstore.json"
    assert (tmp_path / "app.tar.sig.audit.json").exists()
    der = tmp_path / "app.tar.der"
    der.write_bytes(base64.b64decode(sig.read_text().strip(), validate=True))
    openssl = ["openssl", "dgst", "-sha256", "-verify", str(pem), "-signature", str(der)]
    assert "Verified OK" in run([*openssl, str(artifact)]).stdout
    doc = json.loads(bundle.read_text())
    assert doc["mediaType"] == MEDIA_TYPE
    assert doc["verificationMaterial"]["publicKey"]["hint"] == key_id
    assert "Verified OK" in run([*SIGSTORE_VERIFY, str(bundle), str(artifact), str(pem)]).stdout
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(artifact.read_bytes() + b"!")
    bad = run([*SIGSTORE_VERIFY, str(bundle), str(tampered), str(pem)], check=False)
    assert bad.returncode == 1 and "Verification FAILED" in bad.stderr
    assert run([*openssl, str(tampered)], check=False).returncode == 1
    check = [*SIGNER, "verify", "--format", "cosign", "--public-key", str(pem), "--signature"]
    for made in (sig, bundle):
        assert "cosign signature OK" in run([*check, str(made), "--file", str(artifact)]).stdout
        refused = run([*check, str(made), "--file", str(tampered)], check=False)
        assert refused.returncode == 1 and "INVALID" in refused.stderr


def test_cosign_refuses_a_hash_it_cannot_use(shared: Running, tmp_path: Path) -> None:
    """--hash sha384 with --format cosign is refused in one line before a request is made."""
    artifact = tmp_path / "a"
    artifact.write_bytes(b"x")
    sign = ["sign", "--key-name", "release", "--file", str(artifact), "--hash", "sha384"]
    r = CliRunner().invoke(main, [*sign, "--format", "cosign", "--no-wait", *_ci(shared)])
    assert r.exit_code == 1
    assert "cosign signatures are over SHA-256 digests; use --hash sha256" in r.stderr
    assert r.stdout == ""  # no request id: nothing was sent


def test_cosign_verify_checks_the_signature_and_the_bundle_digest(tmp_path: Path) -> None:
    """The format's own check accepts its .sig and its bundle over the right digest only."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "k.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    digest, other = Digest("sha256", bytes(range(32)), "a"), Digest("sha256", bytes(32), "a")
    der = key.sign(digest.value, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    fmt = CosignFormat()
    sig = tmp_path / "a.sig"
    sig.write_text(base64.b64encode(der).decode() + "\n")
    assert "OK" in fmt.verify(Evidence(sig, digest=digest, public_key=pem)).text
    with pytest.raises(VerificationError):
        fmt.verify(Evidence(sig, digest=other, public_key=pem))
    bundle = tmp_path / "a.sigstore.json"
    bundle.write_text(json.dumps(sigstore_bundle("kid", digest.value, der)))
    assert "OK" in fmt.verify(Evidence(bundle, digest=digest, public_key=pem)).text
    with pytest.raises(VerificationError, match="digest is not the artifact's"):
        fmt.verify(Evidence(bundle, digest=other, public_key=pem))
