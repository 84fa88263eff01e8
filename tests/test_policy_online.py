"""Policy changes decided online (docs/architecture.md §11): officers list a proposal with `approver
policy list`, approve or deny it with their signed word over gRPC, and the approval that
completes both quorums adopts it; every server of the store takes it on without a restart,
requests whose key's rule it changes end unsigned, the others are signed under it, and
`signer audit verify` checks every decision. A proposal whose denials leave too few
officers is rejected; a decision from outside the officers, or over another version, is
refused and recorded nowhere."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomli_w
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ed25519

from approver.cli import main as approver_main
from signer.approval.ed25519 import Ed25519Signer
from signer.client.profile import remote_error
from signer.errors import ConfigError
from signer.policy_chain import Proposal, Version, details_of, sign_approval
from signer.policy_denial import PolicyDenial, sign_denial
from signer.server.config import load_config
from signer.server.policy_switch import config_under
from signer.v1 import approval_pb2, types_pb2
from testbed.commands import SIGNER, run, wait_until
from testbed.env import Env
from testbed.process import Running, running
from tests.harness import audit_events, ok, refused
from tests.synthetic_log import OFFICERS, Synth
from tests.tamper import audit_fetch, audit_verify

serving = contextlib.contextmanager(running)


def _propose(env: Env, cfg: dict[str, Any], name: str = "new") -> tuple[Path, int, Proposal]:
    """Write `cfg` beside the env's config and propose it: the file, the index of its
    `policy.proposed` entry, and the proposal."""
    new = env.root / f"{name}.toml"
    new.write_text(tomli_w.dumps(cfg))
    ok(run([*SIGNER, "policy", "propose", "--config", str(env.config), str(new)]))
    proposal = Proposal.from_bytes(new.with_name(new.name + ".proposal.json").read_bytes())
    (index,) = [
        e["index"]
        for e in audit_events(env)
        if e["event"] == "policy.proposed" and e["details"]["sha256"] == proposal.sha256
    ]
    return new, index, proposal


def _officer(env: Env, officer: str, *args: str) -> Result:
    """`approver policy ARGS` as `officer`, in this process."""
    return CliRunner().invoke(
        approver_main, ["policy", *args, "--profile", str(env.profile_path(officer))]
    )


def _versions(env: Env) -> list[int]:
    return [e["details"]["version"] for e in audit_events(env) if e["event"] == "policy.adopted"]


def _lifetime(r: Running) -> int:
    """The lifetime in seconds of a new request for `release` (its key's max_ttl); 0 if
    the server takes none (it does not enforce the version in force yet)."""
    try:
        made = r.clients.create()
    except grpc.RpcError as e:
        assert remote_error(e).reason == "POLICY_SUPERSEDED", e
        return 0
    return made.expire_time.seconds - made.create_time.seconds


def _approval_error(r: Running, officer: str, index: int, envelope: bytes) -> str:
    try:
        r.clients.approval(officer).ApprovePolicy(
            approval_pb2.ApprovePolicyRequest(index=index, envelope=envelope), timeout=10
        )
    except grpc.RpcError as e:
        return remote_error(e).reason
    raise AssertionError("the approval was taken")


def test_officers_adopt_online_and_every_replica_takes_the_version_on(fresh_env: Env) -> None:
    """Proposed by the admin, listed and approved by alice then bob over gRPC: version 3
    is in force at bob's approval, on the replica too, without a restart; the pending
    request whose key's rule changed is cancelled, the one on an unchanged key is signed
    under version 3; the log verifies offline; the old signer.toml no longer starts."""
    fresh_env.add_key("docs", "ecdsa-p256")
    fresh_env.adopt_policy()  # version 2
    other = fresh_env.replica(1)
    with serving(fresh_env) as a, serving(other) as b:
        kept = b.clients.create(key="docs")
        a.clients.approve("alice", kept)
        dropped = a.clients.create()
        assert _lifetime(b) == 3600  # the release key's max_ttl under version 2
        cfg = fresh_env.read_config()
        cfg["keys"]["release"]["max_ttl"] = "2h"
        new, index, proposal = _propose(fresh_env, cfg)

        listed = _officer(fresh_env, "alice", "list")
        assert listed.exit_code == 0, listed.output
        assert str(index) in listed.output and proposal.sha256[:16] in listed.output
        shown = _officer(fresh_env, "carol", "show", "--index", str(index))
        assert "keys.release.max_ttl_seconds" in shown.output and "7200" in shown.output
        done = _officer(fresh_env, "alice", "approve", "--index", str(index), "--yes")
        assert done.exit_code == 0 and "is recorded" in done.output, done.output
        assert _versions(fresh_env) == [1, 2]
        again = _officer(fresh_env, "alice", "approve", "--index", str(index), "--yes")
        assert again.exit_code == 0, again.output  # counted once
        done = _officer(fresh_env, "bob", "approve", "--index", str(index), "--yes")
        assert done.exit_code == 0 and "is adopted" in done.output, done.output
        assert _versions(fresh_env) == [1, 2, 3]
        approvals = [e for e in audit_events(fresh_env) if e["event"] == "policy.approved"]
        assert [e["actor"] for e in approvals] == ["alice", "bob"]

        wait_until(lambda: _lifetime(b) == 7200)  # the replica took version 3 on
        assert _lifetime(a) == 7200
        ended = a.clients.get(dropped.id)
        assert ended.state == types_pb2.REQUEST_STATE_CANCELLED
        assert "changed the rule of key release" in ended.status_message
        signed = b.clients.approve("bob", kept)
        assert signed.state == types_pb2.REQUEST_STATE_SIGNED
        (entry,) = [
            e
            for e in audit_events(fresh_env)
            if e["event"] == "request.signed" and e["request_id"] == kept.id
        ]
        assert entry["details"]["policy_sha256"] == proposal.sha256
        listed = _officer(fresh_env, "alice", "list")
        assert "no open policy proposals" in listed.output
        out = fresh_env.root / "audit"
        ok(audit_fetch(fresh_env, out))
    assert "OK: " in ok(audit_verify(out, str(fresh_env.profile("auditor").audit_verifier)))
    started = run([*SIGNER, "serve", "--config", str(fresh_env.config)], check=False, timeout=60)
    refused(started, "is version 2, older than version 3 in force", code=2)
    fresh_env.config.write_text(new.read_text())
    with serving(fresh_env) as a:
        assert _lifetime(a) == 7200


def test_decisions_that_cannot_count_are_refused_and_recorded_nowhere(fresh_env: Env) -> None:
    """An approver who is no policy officer (not even shown the proposal), an approval of
    another version, an approval signed with another officer's key, an approval issued
    31 days ago, a denial sent as an approval: each refused with its reason, no decision
    entry written."""
    fresh_env.add_client("dave", ["approver"], approval_key=True)
    fresh_env.adopt_policy()
    with serving(fresh_env) as r:
        cfg = fresh_env.read_config()
        cfg["keys"]["release"]["threshold"] = 3
        _, index, proposal = _propose(fresh_env, cfg)
        version = proposal.version
        now = dt.datetime.now(dt.UTC)
        alice = fresh_env.approval_key("alice")
        outsider = _officer(fresh_env, "dave", "approve", "--index", str(index), "--yes")
        assert outsider.exit_code != 0 and "no open policy proposal" in outsider.output
        dave = sign_approval(version, "dave", fresh_env.approval_key("dave"), now)
        assert _approval_error(r, "dave", index, dave) == "NOT_A_POLICY_OFFICER"
        other = Version(version.number + 1, version.document, version.previous_sha256, ())
        wrong = sign_approval(other, "alice", alice, now)
        assert _approval_error(r, "alice", index, wrong) == "STATEMENT_MISMATCH"
        as_bob = sign_approval(version, "bob", alice, now)
        assert _approval_error(r, "bob", index, as_bob) == "BAD_ENVELOPE"
        stale = sign_approval(version, "alice", alice, now - dt.timedelta(days=31))
        assert _approval_error(r, "alice", index, stale) == "STATEMENT_MISMATCH"
        denial = PolicyDenial(
            version.number, version.sha256, version.previous_sha256, "alice", "no", now
        )
        assert _approval_error(r, "alice", index, sign_denial(denial, alice)) == "BAD_ENVELOPE"
        assert _approval_error(r, "alice", index + 1000, wrong) == "UNKNOWN_PROPOSAL"
    events = {e["event"] for e in audit_events(fresh_env)}
    assert not events & {"policy.approved", "policy.denied"}


def test_denials_reject_a_proposal_and_a_competing_one_is_overtaken(fresh_env: Env) -> None:
    """Two proposals for the next version: bob and carol deny the first, which leaves one
    officer of three for a threshold of two: rejected, no longer listed, and alice's
    approval of it refused; alice and bob adopt the second; a third proposal made
    before that adoption is overtaken (its approvals count for nothing)."""
    with serving(fresh_env) as r:
        cfg = fresh_env.read_config()
        cfg["keys"]["release"]["threshold"] = 3
        _, first, _ = _propose(fresh_env, cfg, "first")
        cfg["keys"]["release"]["threshold"] = 1
        _, second, _ = _propose(fresh_env, cfg, "second")
        cfg["keys"]["release"]["max_ttl"] = "30m"
        _, third, _ = _propose(fresh_env, cfg, "third")
        no = _officer(fresh_env, "bob", "deny", "--index", str(first), "--reason", "no", "--yes")
        assert no.exit_code == 0 and "it is still open" in no.output, no.output
        no = _officer(fresh_env, "carol", "deny", "--index", str(first), "--reason", "x", "--yes")
        assert no.exit_code == 0 and "it is rejected" in no.output, no.output
        listed = _officer(fresh_env, "alice", "list", "--json").output
        assert f'"index": {first}' not in listed and f'"index": {second}' in listed
        late = _officer(fresh_env, "alice", "approve", "--index", str(first), "--yes")
        assert late.exit_code != 0 and f"no open policy proposal at audit entry {first}" in (
            late.output
        )
        for officer in ("alice", "bob"):
            done = _officer(fresh_env, officer, "approve", "--index", str(second), "--yes")
            assert done.exit_code == 0, done.output
        assert _versions(fresh_env) == [1, 2]
        overtaken = _officer(fresh_env, "alice", "approve", "--index", str(third), "--yes")
        assert overtaken.exit_code != 0 and "no open policy proposal" in overtaken.output
        wait_until(lambda: _signed_by_one(r))
    denials = [e for e in audit_events(fresh_env) if e["event"] == "policy.denied"]
    assert [(e["actor"], e["details"]["rejected"]) for e in denials] == [
        ("bob", False),
        ("carol", True),
    ]


def _signed_by_one(r: Running) -> bool:
    """Whether one approval signs now (version 2's threshold of 1 is enforced)."""
    request = r.clients.create()
    return r.clients.approve("alice", request).state == types_pb2.REQUEST_STATE_SIGNED


def test_a_version_a_running_server_cannot_take_on_stops_its_signing(fresh_env: Env) -> None:
    """Version 2 pins the release key to a key id the token does not hold (the officers
    approved it; the key is not there): the running server cannot take it on, so it
    takes no request and signs nothing, and says why in its log; its start fails."""
    with serving(fresh_env) as r:
        cfg = fresh_env.read_config()
        cfg["keys"]["release"]["key_id"] = "ab" * 32
        new, index, _ = _propose(fresh_env, cfg)
        for officer in ("alice", "bob"):
            done = _officer(fresh_env, officer, "approve", "--index", str(index), "--yes")
            assert done.exit_code == 0, done.output

        def superseded() -> bool:
            try:
                r.clients.create()
            except grpc.RpcError as e:
                return remote_error(e).reason == "POLICY_SUPERSEDED"
            return False

        wait_until(superseded)
        assert r.server.logged("policy version not taken on")
    fresh_env.config.write_text(new.read_text())
    started = run([*SIGNER, "serve", "--config", str(fresh_env.config)], check=False, timeout=60)
    refused(started, "keys.release.key_id", code=2)


@pytest.mark.parametrize("section", ["audit_key", "tls", "oidc"])
def test_what_only_a_restart_takes_on_is_named(fresh_env: Env, section: str) -> None:
    """A version that changes the audit key, the client CA or the OIDC issuers is not
    taken on by a running server: the error names the section and the restart; the
    version in force itself is rebuilt exactly."""
    config = load_config(fresh_env.config)
    document = dict(config.policy_document)
    document[section] = {"changed": True}
    named = "the OIDC issuers" if section == "oidc" else section
    with pytest.raises(ConfigError, match=f"changes {named}, which take.* only at a restart"):
        config_under(config, Version(2, document, "", ()))
    same = Version(2, dict(config.policy_document), "", ())
    assert config_under(config, same).policy_hash == config.policy_hash


def test_audit_verify_checks_every_policy_decision(tmp_path: Path) -> None:
    """Offline, each `policy.approved` and `policy.denied` entry must be the signed word of
    the officer it names, on an open proposal: a good log verifies; an approval signed by
    another officer, a denial recorded as an approval, and a decision on a proposal never
    made each fail at their entry."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    officers = {"policy": {"officers": ["alice", "bob", "carol"], "threshold": 2}}
    v1 = Version(1, {**s.policy(), **officers}, "", ())
    v2 = Version(2, {**s.policy(("alice", "bob", "dave")), **officers}, v1.sha256, ())
    now = s.t0

    def approval(officer: str, signer: str | None = None) -> str:
        raw = sign_approval(v2, officer, s.keys[signer or officer], now)
        return base64.b64encode(raw).decode()

    def denial(officer: str) -> str:
        statement = PolicyDenial(2, v2.sha256, v1.sha256, officer, "no", now)
        return base64.b64encode(sign_denial(statement, s.keys[officer])).decode()

    def verify(*decisions: tuple[str, str, str, int]) -> subprocess.CompletedProcess[str]:
        log = Synth(s.keys)
        signed = Version(
            1,
            v1.document,
            "",
            tuple(sign_approval(v1, o, s.keys[o], now) for o in ("alice", "bob")),
        )
        log.add("policy.adopted", "admin", details_of(signed, ("alice", "bob")), rid="")
        proposed = log.add(
            "policy.proposed",
            "admin",
            {
                "version": 2,
                "sha256": v2.sha256,
                "previous_sha256": v1.sha256,
                "document": dict(v2.document),
            },
            rid="",
        )
        for event, officer, envelope, shift in decisions:
            details = {
                "proposal": proposed + shift,
                "version": 2,
                "sha256": v2.sha256,
                "envelope": envelope,
            }
            if event == "policy.denied":
                details |= {"reason": "no", "rejected": False}
            log.add(event, officer, details, rid="")
        out = tmp_path / f"log{len(list(tmp_path.iterdir()))}"
        return audit_verify(out, log.write(out, ed25519.Ed25519PrivateKey.generate()))

    ok(
        verify(
            ("policy.approved", "alice", approval("alice"), 0),
            ("policy.denied", "carol", denial("carol"), 0),
        )
    )
    refused(
        verify(("policy.approved", "bob", approval("bob", "alice"), 0)),
        "entry 2 (policy.approved)",
        "not bob's",
    )
    refused(verify(("policy.approved", "carol", denial("carol"), 0)), "entry 2 (policy.approved)")
    refused(verify(("policy.approved", "alice", approval("alice"), 1)), "no open proposal")
