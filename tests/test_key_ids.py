"""One key, one key id, one default hash: DSSE envelopes, bundles, the Sigstore bundle's
hint and `signer.sslib` name a service key by the hex SHA-256 of its SubjectPublicKeyInfo,
and `signer sign` hashes files with the key's own hash unless told otherwise."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from signer.cli.main import main
from signer.sslib import import_key
from signer.v1 import signing_pb2, types_pb2
from testbed.process import Running


def _ci(shared: Running) -> list[str]:
    return ["--profile", str(shared.env.profile_path("ci"))]


def _spki_id(pem: str) -> str:
    public = serialization.load_pem_public_key(pem.encode())
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _signed(shared: Running, tmp_path: Path, key: str, fmt: str, *extra: str) -> str:
    """Sign a file with `key` in `fmt` (approved by alice and bob); return the request id."""
    cli = CliRunner()
    artifact = tmp_path / f"{fmt}.tar"
    artifact.write_bytes(f"one key id, {fmt}".encode())
    sign = ["sign", "--key-name", key, "--file", str(artifact), "--format", fmt, "--no-wait"]
    made = cli.invoke(main, [*sign, *extra, *_ci(shared)])
    assert made.exit_code == 0, made.output
    request = shared.clients.get(made.stdout.strip())
    shared.clients.approve("alice", request)
    shared.clients.approve("bob", request)
    status = ["status", request.id, "--format", fmt]
    where = ["--out", f"{artifact}.intoto.json"] if fmt == "dsse" else ["--file", str(artifact)]
    fetched = cli.invoke(main, [*status, *where, *_ci(shared)])
    assert fetched.exit_code == 0, fetched.output
    return request.id


def test_every_output_names_the_key_by_one_key_id(shared: Running, tmp_path: Path) -> None:
    """The DSSE envelope's keyid, the bundles' key id, the Sigstore hint and the SSlibKey's
    keyid are all the SPKI SHA-256 of the service key."""
    pem = (
        shared.clients.signing()
        .GetPublicKey(
            signing_pb2.GetPublicKeyRequest(key_name="release"),
            timeout=20,
        )
        .key.public_key_pem
    )
    key_id = _spki_id(pem)
    _signed(shared, tmp_path, "release", "dsse")
    envelope = json.loads((tmp_path / "dsse.tar.intoto.json").read_text())
    assert [s["keyid"] for s in envelope["signatures"]] == [key_id]
    bundle = json.loads((tmp_path / "dsse.tar.intoto.json.bundle.json").read_text())
    assert bundle["key"]["key_id"] == key_id
    _signed(shared, tmp_path, "release", "cosign")
    sigstore = json.loads((tmp_path / "cosign.tar.sigstore.json").read_text())
    assert sigstore["verificationMaterial"]["publicKey"]["hint"] == key_id
    _, sslib_key = import_key("release", shared.env.profile_path("ci"))
    assert sslib_key.keyid == key_id


def test_the_hash_defaults_to_the_keys_own(shared: Running, tmp_path: Path) -> None:
    """Without --hash a P-384 key's request is over SHA-384, a P-256 key's over SHA-256;
    --hash still decides when given."""
    cli = CliRunner()
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"hash defaults")
    for key, extra, expected in (
        ("k-ecdsa-p384", [], types_pb2.HASH_ALGORITHM_SHA384),
        ("k-ecdsa-p256", [], types_pb2.HASH_ALGORITHM_SHA256),
        ("k-ecdsa-p384", ["--hash", "sha512"], types_pb2.HASH_ALGORITHM_SHA512),
    ):
        sign = ["sign", "--key-name", key, "--file", str(artifact), "--no-wait", *extra]
        made = cli.invoke(main, [*sign, *_ci(shared)])
        assert made.exit_code == 0, made.output
        request = shared.clients.get(made.stdout.strip())
        assert [d.algorithm for d in request.digests] == [expected]
