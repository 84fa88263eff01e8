"""The policy chain on a real token and store (docs/architecture.md §11): no one alone
changes who may sign. `signer init` adopts version 1, approved by its officers; an
edited `signer.toml` only stops the start; `signer policy adopt` takes a new version
only with a threshold of the officers of the version in force and of the new one, each
person counted once; a replayed, forked or competing version is refused at adoption, at
start and by `signer audit verify`, which names the first bad link; the officers review
a proposal with `approver policy show` and sign it with `approver policy approve`."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ed25519

from approver.cli import main as approver_main
from signer.approval.ed25519 import Ed25519Signer
from signer.errors import PolicyChainError
from signer.policy_chain import Proposal, Version, details_of, sign_approval
from signer.server import policy_head
from signer.server.config import load_config
from signer.v1 import types_pb2
from testbed.commands import APPROVER, SIGNER, run, wait_until
from testbed.env import Env
from testbed.process import running
from tests.harness import audit_events, ok, refused
from tests.synthetic_log import OFFICERS, Synth
from tests.tamper import audit_verify


def _serve(env: Env) -> subprocess.CompletedProcess[str]:
    return run([*SIGNER, "serve", "--config", str(env.config)], check=False, timeout=60)


def _propose(env: Env, cfg: dict[str, Any], name: str = "new") -> tuple[Path, Proposal]:
    """Write `cfg` as a new config file beside the env's and propose it."""
    new = env.root / f"{name}.toml"
    new.write_text(tomli_w.dumps(cfg))  # beside the env's: the same relative paths
    ok(run([*SIGNER, "policy", "propose", "--config", str(env.config), str(new)]))
    proposal_file = new.with_name(new.name + ".proposal.json")
    return new, Proposal.from_bytes(proposal_file.read_bytes())


def _approve(env: Env, proposal: Path, officer: str) -> Path:
    """`officer` approves the proposal file with their own approver profile (the approver
    opens no token: run in this process)."""
    out = proposal.with_name(f"{proposal.name}.{officer}.approval")
    args = ["policy", "approve", str(proposal), "--yes", "--out", str(out)]
    done = CliRunner().invoke(approver_main, [*args, "--profile", str(env.profile_path(officer))])
    assert done.exit_code == 0, done.output
    return out


def _adopt(new: Path, *approvals: Path) -> subprocess.CompletedProcess[str]:
    args = [a for p in approvals for a in ("--approval", str(p))]
    return run([*SIGNER, "policy", "adopt", "--config", str(new), *args], check=False)


def _versions(env: Env) -> list[int]:
    return [e["details"]["version"] for e in audit_events(env) if e["event"] == "policy.adopted"]


def _raised(cfg: dict[str, Any]) -> dict[str, Any]:
    """The env's policy with the release key's threshold raised from 2 to 3."""
    cfg["keys"]["release"]["threshold"] = 3
    return cfg


def test_init_adopts_version_1_and_an_edited_policy_only_stops_the_start(
    fresh_env: Env,
) -> None:
    """Version 1 is the init policy, approved by alice, bob and carol; a `signer.toml`
    whose policy was edited by hand (a lower threshold) makes the start fail naming the
    way to change it, and records nothing."""
    (v1,) = [e for e in audit_events(fresh_env) if e["event"] == "policy.adopted"]
    assert v1["details"]["version"] == 1 and v1["details"]["previous_sha256"] == ""
    assert v1["details"]["approvers"] == ["alice", "bob", "carol"]
    assert v1["details"]["sha256"] == load_config(fresh_env.config).policy_hash
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["threshold"] = 1
    fresh_env.write_config(cfg, adopt=False)
    before = audit_events(fresh_env)
    message = refused(
        _serve(fresh_env), "is not version 1 in force", "signer policy propose", code=2
    )
    assert "nothing is signed under a policy the officers did not approve" in message
    assert audit_events(fresh_env) == before


def test_a_change_needs_a_threshold_of_the_old_and_of_the_new_officers(
    fresh_env: Env, tmp_path: Path
) -> None:
    """Approvals from m-1 officers, from one officer twice, or only from the officers a
    change brings in are refused, naming whose approvals are missing, and nothing is
    written; with a threshold of both, the new version is in force and the server starts
    under it (and refuses the old file)."""
    fresh_env.add_client("dave", ["approver"], approval_key=True)
    fresh_env.add_client("erin", ["approver"], approval_key=True)
    fresh_env.adopt_policy()  # version 2: dave and erin are approvers
    cfg = fresh_env.read_config()
    cfg["policy"] = {"officers": ["dave", "erin"], "threshold": 2}  # the admin's friends
    new, proposal = _propose(fresh_env, cfg)
    assert proposal.number == 3
    proposal_file = new.with_name(new.name + ".proposal.json")
    shown = ok(run([*APPROVER, "policy", "show", str(proposal_file)]))
    assert "policy.officers" in shown and '["dave", "erin"]' in " ".join(shown.split())

    alice = _approve(fresh_env, proposal_file, "alice")
    dave, erin = (_approve(fresh_env, proposal_file, o) for o in ("dave", "erin"))
    before = _versions(fresh_env)
    refused(_adopt(new, alice, dave, erin), "1 of the 2 approvals", "version 2's policy officers")
    again = tmp_path / "alice-again.approval"
    version = Version(proposal.number, proposal.document, proposal.previous_sha256, ())
    signer = fresh_env.approval_key("alice")
    again.write_bytes(
        sign_approval(version, "alice", signer, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    )
    refused(_adopt(new, alice, again, dave, erin), "1 of the 2 approvals", "needed from bob, carol")
    refused(_adopt(new, dave, erin), "0 of the 2 approvals", "version 2's policy officers")
    assert _versions(fresh_env) == before

    bob = _approve(fresh_env, proposal_file, "bob")
    refused(_adopt(new, alice, bob, dave), "1 of the 2 approvals", "its own policy officers")
    ok(_adopt(new, alice, bob, dave, erin))
    assert _versions(fresh_env) == [*before, 3]
    refused(_serve(fresh_env), "is version 2, older than version 3 in force", code=2)
    fresh_env.config.write_text(new.read_text())
    with contextlib.contextmanager(running)(fresh_env):
        pass
    started = [e for e in audit_events(fresh_env) if e["event"] == "server.started"]
    assert started[-1]["details"]["policy_hash"] == proposal.sha256


def test_competing_proposals_and_replays_are_refused(fresh_env: Env) -> None:
    """Two proposals for version 2, both approved: the first adopted is version 2, the
    other is refused (its approvals are of a version 2 after version 1, not of what
    follows version 2); adopting it again, or version 1's document, is refused too."""
    a_new, _ = _propose(fresh_env, _raised(fresh_env.read_config()), "a")
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["max_ttl"] = "2h"
    b_new, _ = _propose(fresh_env, cfg, "b")
    a_file, b_file = (p.with_name(p.name + ".proposal.json") for p in (a_new, b_new))
    a = [_approve(fresh_env, a_file, o) for o in ("alice", "bob")]
    b = [_approve(fresh_env, b_file, o) for o in ("alice", "bob")]
    ok(_adopt(a_new, *a))
    refused(_adopt(b_new, *b), "policy version 3 has 0 of the 2 approvals")
    refused(_adopt(a_new, *a), "is version 2, already in force")
    v1 = fresh_env.root / "v1.toml"
    v1.write_text(fresh_env.config.read_text())  # still version 1's policy
    refused(_adopt(v1, *a), "policy version 3 has 0 of the 2 approvals")
    assert _versions(fresh_env) == [1, 2]


_REPLAY = textwrap.dedent(
    """
    import datetime as dt, json, sys
    from pathlib import Path

    from signer.server.config import load_config
    from signer.store.factory import open_store

    store = open_store(load_config(Path(sys.argv[1])).store)
    with store.transaction() as tx:  # behind the server's back: version 1's entry again
        tx.append_audit(dt.datetime.now(dt.UTC), "policy.adopted", "signer init", "", "",
                        json.loads(sys.argv[2]))
    store.close()
    """
)


def test_a_replayed_version_in_the_log_stops_the_start_and_fails_audit_verify(
    fresh_env: Env, tmp_path: Path
) -> None:
    """Whoever owns the database appends version 1's own entry again after version 2 (to
    roll the policy back): the server refuses to start, naming the replay, and `signer
    audit verify` names that entry as the first bad link."""
    new, _ = _propose(fresh_env, _raised(fresh_env.read_config()))
    proposal_file = new.with_name(new.name + ".proposal.json")
    ok(_adopt(new, *(_approve(fresh_env, proposal_file, o) for o in ("alice", "carol"))))
    fresh_env.config.write_text(new.read_text())
    (v1,) = [e for e in audit_events(fresh_env) if e["details"].get("version") == 1]
    done = subprocess.run(
        [sys.executable, "-c", _REPLAY, str(fresh_env.config), json.dumps(v1["details"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    refused(_serve(fresh_env), "policy version 1 cannot follow version 2 (a replay")
    assert _versions(fresh_env) == [1, 2, 1]


def _adopted(s: Synth, version: Version, officers: tuple[str, ...]) -> int:
    now = s.t0 + dt.timedelta(seconds=len(s.entries))
    approvals = tuple(sign_approval(version, o, s.keys[o], now) for o in officers)
    signed = Version(version.number, version.document, version.previous_sha256, approvals)
    return s.add("policy.adopted", "admin", details_of(signed, officers), rid="")


def test_audit_verify_walks_the_chain_and_names_the_first_bad_link(tmp_path: Path) -> None:
    """Offline, the log's policy versions are walked from version 1 with the server's own
    rule: a good chain verifies; a replay of version 1, a version approved by too few of
    the officers in force, and a server started under a policy that is not the version in
    force each fail at their entry."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    officers = {"policy": {"officers": ["alice", "bob", "carol"], "threshold": 2}}
    v1 = Version(1, {**s.policy(), **officers}, "", ())
    v2 = Version(2, {**s.policy(("alice", "bob", "dave")), **officers}, v1.sha256, ())

    def verify(*steps: Callable[[Synth], object]) -> subprocess.CompletedProcess[str]:
        log = Synth(s.keys)
        _adopted(log, v1, ("alice", "bob"))
        for step in steps:
            step(log)
        out = tmp_path / f"log{len(list(tmp_path.iterdir()))}"
        verifier = log.write(out, ed25519.Ed25519PrivateKey.generate())
        return audit_verify(out, verifier)

    good = verify(
        lambda x: _adopted(x, v2, ("bob", "carol")), lambda x: x.started(dict(v2.document))
    )
    assert "2 policy versions chained" in ok(good)
    replay = verify(
        lambda x: _adopted(x, v2, ("bob", "carol")), lambda x: _adopted(x, v1, ("alice", "bob"))
    )
    refused(replay, "entry 2 (policy.adopted)", "version 1 cannot follow version 2")
    short = verify(lambda x: _adopted(x, v2, ("bob",)))
    refused(
        short, "entry 1 (policy.adopted)", "1 of the 2 approvals", "still needed from alice, carol"
    )
    unapproved = verify(lambda x: x.started(dict(v2.document)))
    refused(unapproved, "entry 1 (server.started)", "not version 1 in force")
    assert "trusted on first use" not in ok(good)
    late = Synth(s.keys)
    late.started(s.policy())  # a store that ran before the chain: version 1 comes later
    _adopted(late, v1, ("alice", "bob"))
    out = tmp_path / "late"
    said = ok(audit_verify(out, late.write(out, ed25519.Ed25519PrivateKey.generate())))
    assert "adopted after 1 server starts" in said and "trusted on first use" in said


def test_a_version_hidden_in_the_database_stops_the_start(fresh_env: Env) -> None:
    """Whoever owns the database relabels version 2's entry (the column a listing filters
    on is not hashed, so the tree still matches): the chain read would end at version 1,
    but the token records version 2 as adopted, and the start is refused naming it."""
    new, _ = _propose(fresh_env, _raised(fresh_env.read_config()))
    proposal_file = new.with_name(new.name + ".proposal.json")
    ok(_adopt(new, *(_approve(fresh_env, proposal_file, o) for o in ("alice", "bob"))))
    (v2,) = [
        e
        for e in audit_events(fresh_env)
        if e["event"] == "policy.adopted" and e["details"]["version"] == 2
    ]
    if fresh_env.store.backend == "sqlite":
        fresh_env.store.rows("DROP TRIGGER audit_log_no_update")
    else:
        fresh_env.store.rows("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
    fresh_env.store.rows(
        "UPDATE audit_log SET event = 'policy.proposed' WHERE idx = ?", v2["index"]
    )
    message = refused(_serve(fresh_env), "records policy version 2", "versions were removed")
    assert "ends at version 1" in message


def test_the_token_head_accepts_only_a_chain_that_reaches_it() -> None:
    """`policy_head.require`: nothing recorded accepts any chain; a chain holding the
    recorded version (or going past it, after a crash) is accepted; a shorter chain, an
    empty one (a new version 1 on an emptied store) or another version 2 is refused."""
    officers = {"policy": {"officers": ["a"], "threshold": 1}}
    v1 = Version(1, {"x": 1, **officers}, "", ())
    v2 = Version(2, {"x": 2, **officers}, v1.sha256, ())
    other = Version(2, {"x": 3, **officers}, v1.sha256, ())
    policy_head.require([v1], None)
    policy_head.require([v1, v2], (2, v2.sha256))
    policy_head.require([v1, v2], (1, v1.sha256))
    for chain, says in (([v1], "ends at version 1"), ([], "ends at version none")):
        with pytest.raises(PolicyChainError, match=says):
            policy_head.require(chain, (2, v2.sha256))
    with pytest.raises(PolicyChainError, match="the chain was replaced"):
        policy_head.require([v1, other], (2, v2.sha256))


def test_an_officer_signs_only_a_proposal_that_can_count(fresh_env: Env) -> None:
    """`approver policy approve` writes nothing for a proposal holding text it cannot
    show, for an officer of neither version, or for an officer whose key the proposal
    records otherwise; nor over a file that exists; a tampered proposal is not read."""
    fresh_env.add_client("dave", ["approver"], approval_key=True)
    config = load_config(fresh_env.config)
    (*_, last) = fresh_env.policy_chain()

    def attempt(document: dict[str, Any], officer: str, name: str) -> str:
        path = fresh_env.root / f"{name}.proposal.json"
        proposal = Proposal(last.number + 1, last.sha256, document, dict(last.document))
        path.write_text(json.dumps(proposal.to_json()))
        out = fresh_env.root / f"{name}.approval"
        args = ["policy", "approve", str(path), "--yes", "--out", str(out)]
        profile = ["--profile", str(fresh_env.profile_path(officer))]
        done = run([*APPROVER, *args, *profile], check=False)
        assert not out.exists()
        return refused(done)

    good = dict(config.policy_document)
    hidden = {**good, "audit_key": "audit\u202e"}
    assert "text that cannot be shown" in attempt(hidden, "alice", "hidden")
    assert "dave is not a policy officer" in attempt(good, "dave", "outsider")
    keys = {**good["approver_keys"], "alice": good["approver_keys"]["bob"]}
    assert "records another approval key for alice" in attempt(
        {**good, "approver_keys": keys}, "alice", "swapped"
    )
    tampered = fresh_env.root / "tampered.proposal.json"
    proposal = Proposal(last.number + 1, last.sha256, good, dict(last.document)).to_json()
    tampered.write_text(json.dumps({**proposal, "document": {**good, "audit_key": "x"}}))
    shown = run([*APPROVER, "policy", "show", str(tampered)], check=False)
    assert "sha256 is not the document's" in refused(shown)


def test_a_running_server_takes_on_a_version_adopted_offline(fresh_env: Env) -> None:
    """A version adopted with `signer policy adopt` while a server runs (a change to the
    policy officers' threshold, not to the release key's rule): the server takes it on
    without a restart, and a request it holds, approved once under the version before,
    is signed at the next approval under the new one."""
    with contextlib.contextmanager(running)(fresh_env) as f:
        waiting = f.clients.create()
        f.clients.approve("alice", waiting)
        cfg = fresh_env.read_config()
        cfg["policy"]["threshold"] = 3
        new, _ = _propose(fresh_env, cfg)
        proposal_file = new.with_name(new.name + ".proposal.json")
        officers = ("alice", "bob", "carol")
        ok(_adopt(new, *(_approve(fresh_env, proposal_file, o) for o in officers)))
        (*_, v2) = fresh_env.policy_chain()
        f.clients.approve("bob", waiting)  # signed once the server enforces version 2
        wait_until(lambda: f.clients.get(waiting.id).state == types_pb2.REQUEST_STATE_SIGNED)
    (signed,) = [
        e
        for e in audit_events(fresh_env)
        if e["event"] == "request.signed" and e["request_id"] == waiting.id
    ]
    assert signed["details"]["policy_sha256"] == v2.sha256


def test_an_approval_held_back_for_months_does_not_count(fresh_env: Env) -> None:
    """Approvals issued 31 days ago (kept back by whoever collected them), or an hour in
    the future, are refused at adoption, naming whose, and nothing is written."""
    cfg = _raised(fresh_env.read_config())
    fresh_env.write_config(cfg, adopt=False)
    version = fresh_env.next_version()
    now = dt.datetime.now(dt.UTC)
    for when, name in ((now - dt.timedelta(days=31), "old"), (now + dt.timedelta(hours=1), "new")):
        paths = []
        for officer in ("alice", "bob"):
            path = fresh_env.root / f"{name}-{officer}.approval"
            path.write_bytes(sign_approval(version, officer, fresh_env.approval_key(officer), when))
            paths.append(path)
        args = [a for p in paths for a in ("--approval", str(p))]
        done = run(
            [*SIGNER, "policy", "adopt", "--config", str(fresh_env.config), *args], check=False
        )
        refused(done, "alice's approval was issued at", "ask for it again")
    assert _versions(fresh_env) == [1]


def test_a_version_the_token_records_but_the_log_lost_is_adopted_again(
    fresh_env: Env,
) -> None:
    """The token records version 2 but its commit failed (the log ends at version 1): the
    start is refused, another version 2 is refused, and `signer policy adopt` with the
    approvals of that very version completes it."""
    cfg = _raised(fresh_env.read_config())
    new, proposal = _propose(fresh_env, cfg)
    proposal_file = new.with_name(new.name + ".proposal.json")
    approvals = [_approve(fresh_env, proposal_file, o) for o in ("alice", "bob")]
    # In a process of its own: a process loads one SoftHSM configuration, at its first use.
    record = textwrap.dedent(
        f"""
        from pathlib import Path
        from signer.policy_chain import Proposal
        from signer.server import policy_head
        from signer.server.admin import open_token
        from signer.server.config import load_config
        proposal = Proposal.from_bytes(Path({str(proposal_file)!r}).read_bytes())
        token = open_token(load_config(Path({str(fresh_env.config)!r})))
        policy_head.record(token, "audit", proposal.version)
        token.close()
        """
    )
    ok(run([sys.executable, "-c", record]))
    refused(_serve(fresh_env), "the token records policy version 2", "chain ends at version 1")
    other = _raised(fresh_env.read_config())
    other["keys"]["release"]["max_ttl"] = "2h"
    other_new = fresh_env.root / "other.toml"
    other_new.write_text(tomli_w.dumps(other))
    document = load_config(other_new).policy_document
    rival = Version(2, document, proposal.previous_sha256, ())
    signed = []
    for officer in ("alice", "bob"):
        path = fresh_env.root / f"rival-{officer}.approval"
        now = dt.datetime.now(dt.UTC)
        path.write_bytes(sign_approval(rival, officer, fresh_env.approval_key(officer), now))
        signed.append(path)
    refused(_adopt(other_new, *signed), "is not the one the token records")
    ok(_adopt(new, *approvals))
    assert _versions(fresh_env) == [1, 2]
