"""Errors and adjustments a newcomer meets say what happened and what to do.

A malformed `--digest` and an empty `--context` value are usage errors (exit 2,
nothing sent); a `--ttl` past the key's maximum is said, with the lifetime
given; `approver keygen` without a passphrase says loudly that the key is not
encrypted; `signer version` and `approver version` print the version;
`signer list` lists a requester's own requests, checked to be its own; `signer
keys` lists the server's keys, and a misspelt key name gets the closest one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from signer import __version__
from testbed.clients import Clients
from testbed.commands import APPROVER, SIGNER, run
from testbed.env import Env
from tests.hostile import hostile

pytestmark = [
    pytest.mark.sqlite_only("what is checked is the client's"),
    pytest.mark.usefixtures("shared"),
]


def _sign(env: Env, *args: str) -> list[str]:
    profile = str(env.profile_path("ci3"))
    return [*SIGNER, "sign", "--profile", profile, "--key-name", "release", *args]


@pytest.mark.parametrize(
    ("digest", "said"),
    [
        ("sha256:abcd", "a sha256 digest is 32 bytes (64 hex digits), not 2"),
        ("sha512:" + "00" * 32, "a sha512 digest is 64 bytes (128 hex digits), not 32"),
        ("sha256:xyz", "digest is not hex"),
        ("md5:" + "00" * 16, "ALG one of sha256"),
    ],
)
def test_a_malformed_digest_is_a_usage_error(shared_env: Env, digest: str, said: str) -> None:
    """A --digest of the wrong length, not hex, or of an unknown hash exits 2, naming it."""
    p = run(_sign(shared_env, "--digest", digest, "--no-wait"), check=False)
    assert p.returncode == 2, p.stderr
    assert said in p.stderr and "--digest" in p.stderr
    assert not p.stdout  # no request id: nothing was sent


@pytest.mark.parametrize("pair", ["repository=", "=org/app"])
def test_an_empty_context_key_or_value_is_refused(
    shared_env: Env, tmp_path: Path, pair: str
) -> None:
    """`--context KEY=` (or `=VALUE`) is refused before anything is sent."""
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"a")
    p = run(_sign(shared_env, "--file", str(artifact), "--context", pair, "--no-wait"), check=False)
    assert p.returncode == 2
    assert "has an empty" in p.stderr and not p.stdout


def test_a_ttl_past_the_keys_maximum_is_said(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """`--ttl 3h` on a key whose max_ttl is 1h: the request is made, and the cut is said."""
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"ttl")
    p = run(_sign(shared_env, "--file", str(artifact), "--ttl", "3h", "--no-wait"))
    request_id = p.stdout.strip()
    assert f"--ttl 3h is more than key release allows: request {request_id} expires after 1h" in (
        p.stderr
    )
    quiet = run(_sign(shared_env, "--file", str(artifact), "--ttl", "30m", "--no-wait"))
    assert "--ttl" not in quiet.stderr


def test_an_unencrypted_approval_key_is_said_loudly(tmp_path: Path) -> None:
    """`approver keygen` without a passphrase writes the key and warns that it is not
    encrypted, naming the options that encrypt it."""
    p = run([*APPROVER, "keygen", "--out", str(tmp_path / "alice")])
    assert "is not encrypted" in p.stderr and "--encrypt" in p.stderr
    assert (tmp_path / "alice.pub").exists()
    made = json.loads(run([*APPROVER, "keygen", "--out", str(tmp_path / "bob"), "--json"]).stdout)
    assert made["public_key"] == f"{tmp_path / 'bob'}.pub" and made["encrypted"] is False
    assert len(made["key_id"]) == 64


def test_version_commands_print_the_version() -> None:
    """`signer version` and `approver version` print the package version."""
    assert run([*SIGNER, "version"]).stdout == f"signer {__version__}\n"
    assert run([*APPROVER, "version"]).stdout == f"approver {__version__}\n"


def test_signer_list_shows_your_own_requests_only(shared_env: Env, clients: Clients) -> None:
    """`signer list` lists the caller's pending requests, not another requester's."""
    mine = clients.create(who="ci2")
    theirs = clients.create(who="ci")
    profile = str(shared_env.profile_path("ci2"))
    listed = json.loads(run([*SIGNER, "list", "--profile", profile, "--json"]).stdout)
    ids = {d["id"] for d in listed}
    assert mine.id in ids and theirs.id not in ids
    assert {d["state"] for d in listed} == {"PENDING"}
    assert {d["requester"] for d in listed} == {mine.requester}
    none = run([*SIGNER, "list", "--profile", profile, "--state", "failed"])
    assert none.stdout == "you have no failed requests\n"


def test_signer_list_refuses_a_request_of_another_requester(shared_env: Env) -> None:
    """A server that lists someone else's request as yours is caught."""
    Clients(shared_env).create(who="ci3")

    def tamper(method: str, answer: Any) -> Any:
        if method == "ListSigningRequests":
            for r in answer.requests:
                r.requester = "someone-else"
        return answer

    with hostile(shared_env, "ci3", tamper) as proxy:
        p = run([*SIGNER, "list", "--profile", str(proxy.profile("ci3"))], check=False)
    assert p.returncode == 1
    assert "of another requester or state as yours" in p.stderr


def test_signer_keys_lists_the_keys_and_an_unknown_key_gets_a_suggestion(
    shared_env: Env, tmp_path: Path
) -> None:
    """`signer keys` lists the server's keys; a misspelt --key-name is answered with the
    closest name it lists."""
    profile = str(shared_env.profile_path("ci3"))
    keys = json.loads(run([*SIGNER, "keys", "--profile", profile, "--json"]).stdout)
    assert "release" in {k["name"] for k in keys}
    assert all(len(k["key_id"]) == 64 for k in keys)
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"a")
    typo = [*_sign(shared_env, "--file", str(artifact), "--no-wait")]
    typo[typo.index("release")] = "relaese"
    p = run(typo, check=False)
    assert p.returncode == 1
    assert "no signing key named 'relaese'; did you mean release?" in p.stderr
    p = run([*SIGNER, "public-key", "--profile", profile, "--key-name", "zzzz"], check=False)
    assert p.returncode == 1 and "the server's keys:" in p.stderr


def test_client_options_before_the_subcommand(shared_env: Env, clients: Clients) -> None:
    """`signer --profile P list` and `approver --profile P show ID` work as with the
    options after the subcommand; an option after it still wins."""
    made = clients.create(who="ci2")
    ci2 = str(shared_env.profile_path("ci2"))
    listed = json.loads(run([*SIGNER, "--profile", ci2, "list", "--json"]).stdout)
    assert made.id in {d["id"] for d in listed}
    alice = str(shared_env.profile_path("alice"))
    shown = json.loads(run([*APPROVER, "--profile", alice, "show", made.id, "--json"]).stdout)
    assert shown["id"] == made.id
    wrong = str(shared_env.profile_path("ci3"))  # its own, after the subcommand, wins
    mine = run([*SIGNER, "--profile", wrong, "list", "--profile", ci2, "--json"]).stdout
    assert made.id in {d["id"] for d in json.loads(mine)}


def test_signer_timeout_sets_the_wait_of_sign(shared_env: Env, tmp_path: Path) -> None:
    """SIGNER_TIMEOUT is sign's --timeout: a bad value is refused as a bad --timeout,
    before anything is sent."""
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"t")
    p = run(_sign(shared_env, "--file", str(artifact)), env={"SIGNER_TIMEOUT": "soon"}, check=False)
    assert p.returncode == 2 and "--timeout" in p.stderr and not p.stdout


def test_sign_json_prints_one_json_document(shared_env: Env, tmp_path: Path) -> None:
    """`signer sign --json` (waiting) prints one JSON document on stdout, the request id
    going to stderr; undecided at --timeout, it exits 3."""
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"json")
    p = run(_sign(shared_env, "--file", str(artifact), "--json", "--timeout", "1s"), check=False)
    assert p.returncode == 3, p.stderr
    d = json.loads(p.stdout)
    assert d["state"] == "PENDING" and f"request {d['id']}" in p.stderr
