"""`approver show --file F` and `approver approve --file F`: an officer checks the request
against their own copy of each artifact, whatever the format (plain digests, an SSH or
in-toto payload; OpenPGP in tests/test_openpgp.py); a file the request does not sign is
shown as matching nothing, and no approval is sent; nor is one when a statement's subject is
the file on one hash and not another, or carries a digest the file cannot check, when the
request signs more than the officer's files or names one twice."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from approver import cli, commands, review
from signer.cli.main import main
from signer.client.profile import load_profile
from signer.convert import digest_pb
from signer.formats.base import PayloadKey
from signer.formats.intoto import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae_digest
from signer.formats.openpgp import document_request
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT
from testbed.commands import APPROVER, run
from testbed.process import Running

FORMATS = {"raw": ["--hash", "sha256"], "ssh": ["--namespace", "file"], "dsse": []}


@pytest.fixture(autouse=True)
def _cancel_what_is_left(shared: Running) -> Iterator[None]:
    """Cancel the requests a test leaves pending: the shared server's requesters have a
    cap on pending requests that the rest of the session needs."""
    query = "SELECT id FROM requests WHERE state = 'PENDING' AND requester = 'ci'"
    before = set(shared.env.store.rows(query))
    yield
    for (rid,) in set(shared.env.store.rows(query)) - before:
        shared.clients.signing().CancelSigningRequest(
            signing_pb2.CancelSigningRequestRequest(id=rid), timeout=RPC_TIMEOUT
        )


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_officer_checks_the_request_against_their_own_files(
    shared: Running, tmp_path: Path, fmt: str
) -> None:
    """The file signed is shown as the artifact it is; another file matches nothing, and
    approving with it is refused before anything is sent."""
    mine, other = tmp_path / "app.tar", tmp_path / "other.tar"
    mine.write_bytes(f"the {fmt} release".encode())
    other.write_bytes(b"not the release")
    made = CliRunner().invoke(
        main,
        [
            *("sign", "--key-name", "release", "--format", fmt, *FORMATS[fmt]),
            *("--file", str(mine), "--no-wait"),
            *("--profile", str(shared.env.profile_path("ci"))),
        ],
    )
    assert made.exit_code == 0, made.output
    request_id = made.stdout.strip()
    alice = ["--profile", str(shared.env.profile_path("alice"))]
    good = run([*APPROVER, "show", request_id, "--file", str(mine), *alice])
    assert "is app.tar, as the request says" in good.stdout
    bad = run([*APPROVER, "show", request_id, "--file", str(other), *alice], check=False)
    assert bad.returncode == 1 and "MATCHES NOTHING" in bad.stdout
    refused = run(
        [*APPROVER, "approve", request_id, "--file", str(other), "--yes", *alice], check=False
    )
    assert refused.returncode == 1 and "not a file this request signs" in refused.stderr
    assert not shared.clients.get(request_id).approvals


def _statement_request(shared: Running, subjects: list[dict[str, Any]]) -> str:
    """A DSSE request over a statement with these subjects, made over gRPC."""
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {},
    }
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = types_pb2.Digest(
        algorithm=types_pb2.HASH_ALGORITHM_SHA256,
        value=pae_digest(PAYLOAD_TYPE, payload, "sha256"),
        artifact_name="statement",
    )
    made = shared.clients.create(digests=[digest], payload_type=PAYLOAD_TYPE, payload=payload)
    return made.id


def _checked(shared: Running, request_id: str, *files: Path) -> tuple[str, str]:
    """`approver show --file` and `approver approve --file` on the request: both refuse,
    nothing is sent. What each said."""
    alice = ["--profile", str(shared.env.profile_path("alice"))]
    mine = [a for f in files for a in ("--file", str(f))]
    # The approver is a client and opens no token: run in this process.
    shown = CliRunner().invoke(cli.main, ["show", request_id, *mine, *alice])
    assert shown.exit_code == 1, shown.output
    approved = CliRunner().invoke(cli.main, ["approve", request_id, *mine, "--yes", *alice])
    assert approved.exit_code == 1, approved.output
    assert "refusing to approve" in approved.stderr
    assert not shared.clients.get(request_id).approvals
    return " ".join(shown.output.split()), " ".join(approved.stderr.split())


def test_a_subject_is_the_file_only_if_every_digest_of_it_is(
    shared: Running, tmp_path: Path
) -> None:
    """A subject whose sha256 is the officer's file but whose sha512 is another file's is
    not that file; one that also carries a digest the file cannot check (a gitCommit,
    perhaps of other sources) is not vouched for either."""
    mine = tmp_path / "app.tar"
    mine.write_bytes(b"the release")
    sha256 = hashlib.sha256(mine.read_bytes()).hexdigest()
    mixed = _statement_request(
        shared,
        [{"name": "app.tar", "digest": {"sha256": sha256, "sha512": hashlib.sha512().hexdigest()}}],
    )
    shown, approved = _checked(shared, mixed, mine)
    assert "MATCHES NOTHING" in shown and "not a file this request signs" in approved
    commit = _statement_request(
        shared, [{"name": "app.tar", "digest": {"sha256": sha256, "gitCommit": "ab" * 20}}]
    )
    shown, approved = _checked(shared, commit, mine)
    assert "also has a gitCommit digest, which your file app.tar cannot check" in approved
    assert "cannot be checked" in shown


def test_a_request_signing_more_than_the_officers_files_is_refused(
    shared: Running, tmp_path: Path
) -> None:
    """With --file, a request that also signs an artifact none of the officer's files is
    (a statement's extra subject, a batch's extra file), that names one artifact twice, or
    that signs the officer's file under another name (an old build attested as a new
    version) is refused: the officer vouched for their files, not for the rest."""
    mine, extra = tmp_path / "app.tar", tmp_path / "extra.tar"
    mine.write_bytes(b"the release")
    extra.write_bytes(b"something else")
    digest = {"sha256": hashlib.sha256(mine.read_bytes()).hexdigest()}
    other = {"sha256": hashlib.sha256(b"planted").hexdigest()}
    more = _statement_request(
        shared, [{"name": "app.tar", "digest": digest}, {"name": "evil.tar", "digest": other}]
    )
    shown, approved = _checked(shared, more, mine)
    assert "also signs evil.tar, which none of your files is" in approved
    assert "error: the request also signs evil.tar" in shown
    twice = _statement_request(
        shared, [{"name": "app.tar", "digest": digest}, {"name": "app.tar", "digest": other}]
    )
    _, approved = _checked(shared, twice, mine)
    assert "names app.tar more than once" in approved

    renamed = _statement_request(shared, [{"name": "app-2.0.tar", "digest": digest}])
    shown, approved = _checked(shared, renamed, mine)
    assert "is signed as app-2.0.tar" in shown
    assert "signed under another name, app-2.0.tar" in approved

    batch = CliRunner().invoke(
        main,
        [
            *("sign", "--key-name", "release", "--format", "raw", "--hash", "sha256"),
            *("--file", str(mine), "--file", str(extra), "--no-wait"),
            *("--profile", str(shared.env.profile_path("ci"))),
        ],
    )
    assert batch.exit_code == 0, batch.output
    _, approved = _checked(shared, batch.stdout.strip(), mine)
    assert "also signs extra.tar, which none of your files is" in approved
    same_name = [
        types_pb2.Digest(
            algorithm=types_pb2.HASH_ALGORITHM_SHA256,
            value=hashlib.sha256(data).digest(),
            artifact_name="app.tar",
        )
        for data in (mine.read_bytes(), b"planted")
    ]
    _, approved = _checked(shared, shared.clients.create(digests=same_name).id, mine)
    assert "names app.tar more than once" in approved


def test_show_with_files_fails_on_what_approve_would_refuse(
    shared: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`approver show --file` exits 1 when the request itself must not be approved (here
    a server that sends a statement whose digest to sign is not its PAE), not only when a
    file matches nothing: a script that checks with `show` gets the answer `approve` would."""
    mine = tmp_path / "app.tar"
    mine.write_bytes(b"the release")
    request_id = _statement_request(
        shared,
        [{"name": "app.tar", "digest": {"sha256": hashlib.sha256(b"the release").hexdigest()}}],
    )
    real = review.fetch(load_profile(shared.env.profile_path("alice")), request_id)
    lying = types_pb2.SigningRequest()
    lying.CopyFrom(real)
    lying.digests[0].value = hashlib.sha256(b"something else").digest()
    monkeypatch.setattr(commands, "fetch", lambda profile, rid: lying)
    profile = ["--profile", str(shared.env.profile_path("alice"))]
    args = ["show", request_id, "--file", str(mine), *profile]
    shown = CliRunner().invoke(cli.main, args)
    assert shown.exit_code == 1, shown.output
    assert "is app.tar, as the request says" in shown.output
    assert "the digest to sign is not that of the statement shown" in shown.output
    monkeypatch.setattr(commands, "fetch", lambda profile, rid: real)
    assert CliRunner().invoke(cli.main, args).exit_code == 0


def test_an_openpgp_request_for_another_key_is_refused(
    shared: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that shows an OpenPGP request naming another key than the one it signs
    with (the officer would read a fingerprint that is not the signing key's) is caught by
    the approver from the request alone: the payload's key is not the request's key id."""
    mine = tmp_path / "app.tar"
    mine.write_bytes(b"the release")
    served = shared.clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name="release"), timeout=10
    )
    now, created = int(time.time()), served.key.openpgp_created
    own = PayloadKey(served.key.algorithm, served.key.public_key_pem, created, now)
    carried, _ = document_request("binary", [("app.tar", [mine.read_bytes()])], own, "sha256")
    made = shared.clients.create(
        digests=[digest_pb(d) for d in carried.digests],
        payload_type=carried.payload_type,
        payload=carried.payload,
    )
    real = review.fetch(load_profile(shared.env.profile_path("alice")), made.id)
    other_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    other = PayloadKey(served.key.algorithm, other_pem, created, now)
    forged, _ = document_request("binary", [("app.tar", [mine.read_bytes()])], other, "sha256")
    lying = types_pb2.SigningRequest()
    lying.CopyFrom(real)
    lying.payload = forged.payload
    del lying.digests[:]
    lying.digests.extend(digest_pb(d) for d in forged.digests)
    monkeypatch.setattr(commands, "fetch", lambda profile, rid: lying)
    profile = ["--profile", str(shared.env.profile_path("alice"))]
    shown = CliRunner().invoke(cli.main, ["show", made.id, "--file", str(mine), *profile])
    assert shown.exit_code == 1, shown.output
    assert "ANOTHER KEY" in shown.output
    assert "not the key it is signed with" in shown.output
    monkeypatch.setattr(commands, "fetch", lambda profile, rid: real)
    honest = CliRunner().invoke(cli.main, ["show", made.id, "--file", str(mine), *profile])
    assert honest.exit_code == 0, honest.output
    assert "ANOTHER KEY" not in honest.output


def test_identical_files_under_their_own_names_are_each_one_artifact(
    shared: Running, tmp_path: Path
) -> None:
    """Two of the officer's files with the same bytes (v1.tar and latest.tar), signed as
    two subjects: each file is the subject of its own name, and the request is approved;
    one file for both is not enough."""
    v1, latest = tmp_path / "v1.tar", tmp_path / "latest.tar"
    for f in (v1, latest):
        f.write_bytes(b"the same release")
    digest = {"sha256": hashlib.sha256(b"the same release").hexdigest()}
    both = _statement_request(
        shared, [{"name": "latest.tar", "digest": digest}, {"name": "v1.tar", "digest": digest}]
    )
    alice = ["--profile", str(shared.env.profile_path("alice"))]
    shown = run([*APPROVER, "show", both, "--file", str(v1), "--file", str(latest), *alice])
    assert "is v1.tar, as the request says" in shown.stdout
    assert "is latest.tar, as the request says" in shown.stdout
    _, approved = _checked(shared, both, v1)
    assert "also signs latest.tar, which none of your files is" in approved
    done = run(
        [*APPROVER, "approve", both, "--file", str(v1), "--file", str(latest), "--yes", *alice]
    )
    assert done.returncode == 0, done.stderr
