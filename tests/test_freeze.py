"""Break glass (docs/architecture.md §11): any one officer freezes a key at once
(`approver freeze`), on every replica, and only a policy version the officers approve
lifts it. A frozen key takes no request and signs nothing, not even a request approved
before or while it froze; a freeze sent with another officer's key, for another key, or
issued long ago is refused, and so is one by a requester; a freeze given again changes
nothing. Offline, `signer audit verify` checks each freeze and refuses a signature made
while one held."""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ed25519

from approver.cli import main as approver_main
from signer.approval.ed25519 import Ed25519Signer
from signer.freeze import Freeze, sign_freeze
from signer.policy_chain import Version, sign_approval
from signer.v1 import approval_pb2, signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients
from testbed.commands import SIGNER, run
from testbed.env import Db, Env, make_env
from testbed.pg import PgServer
from testbed.process import Running, ServerProcess, running
from tests.harness import audit_events, ok, refused, rpc_error
from tests.synthetic_log import OFFICERS, Synth, valid_quorum
from tests.tamper import audit_verify

serving = contextlib.contextmanager(running)
KEY_ID = "ab" * 32  # the synthetic log's key id


def _freeze(env: Env, officer: str, reason: str = "the CI runner was compromised") -> str:
    """`approver freeze` (a client: run in this process)."""
    args = ["freeze", "release", "--reason", reason, "--yes"]
    done = CliRunner().invoke(approver_main, [*args, "--profile", str(env.profile_path(officer))])
    assert done.exit_code == 0, done.output
    return done.output


def _frozen_index(env: Env) -> int:
    (entry,) = [e for e in audit_events(env) if e["event"] == "key.frozen"]
    return int(entry["index"])


def _freeze_rpc(
    clients: Clients, caller: str, signer: str | None = None, **changes: Any
) -> approval_pb2.FreezeKeyResponse:
    """FreezeKey sent by `caller`, the statement signed with `signer`'s approval key."""
    info = clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name="release"), timeout=RPC_TIMEOUT
    )
    fields: dict[str, Any] = {
        "key_name": "release",
        "key_id": info.key.key_id,
        "officer": caller,
        "reason": "test",
        "issued_at": dt.datetime.now(dt.UTC),
        **changes,
    }
    envelope = sign_freeze(Freeze(**fields), clients.env.approval_key(signer or caller))
    asked = approval_pb2.FreezeKeyRequest(key_name="release", envelope=envelope)
    response: approval_pb2.FreezeKeyResponse = clients.approval(caller).FreezeKey(
        asked, timeout=RPC_TIMEOUT
    )
    return response


def test_one_officer_freezes_a_key_and_nothing_is_signed_with_it(fresh: Running) -> None:
    """Carol alone freezes `release`: a request approved by alice and bob after it fails
    unsigned, a new request is refused naming the freeze, and freezing again is the same
    freeze (one entry)."""
    c = fresh.clients
    pending = c.create()
    said = _freeze(fresh.env, "carol")
    index = _frozen_index(fresh.env)
    assert f"lift_freeze = {index}" in " ".join(said.split())
    c.approve("alice", pending)
    signed = c.approve("bob", pending)
    assert signed.state == types_pb2.REQUEST_STATE_FAILED and not signed.signatures
    assert "frozen by carol" in signed.status_message
    e = rpc_error(lambda: c.create())
    assert e.code is grpc.StatusCode.FAILED_PRECONDITION and e.reason == "KEY_FROZEN"
    assert f"audit entry {index}" in e.message
    _freeze(fresh.env, "alice", "again")
    assert _frozen_index(fresh.env) == index


def test_a_freeze_must_be_the_officers_own_fresh_word(fresh: Running) -> None:
    """Refused, and nothing frozen: signed with another officer's key, naming another
    officer or another key, issued an hour ago, or sent by a requester."""
    c = fresh.clients
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    for caller, signer, changes, code in (
        ("carol", "bob", {}, grpc.StatusCode.INVALID_ARGUMENT),
        ("carol", None, {"officer": "bob"}, grpc.StatusCode.INVALID_ARGUMENT),
        ("carol", None, {"key_id": "00" * 32}, grpc.StatusCode.INVALID_ARGUMENT),
        ("carol", None, {"issued_at": hour_ago}, grpc.StatusCode.INVALID_ARGUMENT),
        ("ci", "alice", {"officer": "ci"}, grpc.StatusCode.PERMISSION_DENIED),
    ):
        e = rpc_error(lambda: _freeze_rpc(c, caller, signer, **changes))  # noqa: B023
        assert e.code is code, (caller, signer, changes, e)
    assert not [e for e in audit_events(fresh.env) if e["event"] == "key.frozen"]
    request = c.create()
    c.approve("alice", request)
    assert c.approve("bob", request).state == types_pb2.REQUEST_STATE_SIGNED


def test_only_a_policy_version_the_officers_approve_lifts_a_freeze(fresh_env: Env) -> None:
    """A version naming another audit index is refused; one naming the freeze, approved
    by one officer, is refused and the key stays frozen; approved by the quorum, it lifts
    the freeze and signing resumes. A later freeze is not lifted by the old value carried
    on in later versions."""
    with serving(fresh_env):
        _freeze(fresh_env, "carol")
    index = _frozen_index(fresh_env)
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["lift_freeze"] = index + 1  # not this freeze
    fresh_env.write_config(cfg, adopt=False)
    signed = _approvals(fresh_env, "alice", "bob")
    refused(_adopt(fresh_env, *signed), f"names audit entry {index + 1}", f"at entry {index}")
    cfg["keys"]["release"]["lift_freeze"] = index
    fresh_env.write_config(cfg, adopt=False)
    refused(_adopt(fresh_env, *_approvals(fresh_env, "carol")), "1 of the 2 approvals")
    fresh_env.adopt_policy()
    with serving(fresh_env) as f:
        request = f.clients.create()
        f.clients.approve("alice", request)
        assert f.clients.approve("bob", request).state == types_pb2.REQUEST_STATE_SIGNED
        _freeze(fresh_env, "bob", "again")
    cfg["keys"]["release"]["max_ttl"] = "2h"  # another change; lift_freeze stays as it was
    fresh_env.write_config(cfg)
    with serving(fresh_env) as f:
        assert rpc_error(lambda: f.clients.create()).reason == "KEY_FROZEN"


def _approvals(env: Env, *officers: str) -> list[Path]:
    """`officers`' approvals of the next version with the env's config as written."""
    version = _proposal(env)
    out = []
    for o in officers:
        path = env.root / f"v{version.number}-{o}.approval"
        path.write_bytes(sign_approval(version, o, env.approval_key(o), _now()))
        out.append(path)
    return out


def _adopt(env: Env, *approvals: Path) -> subprocess.CompletedProcess[str]:
    args = [a for p in approvals for a in ("--approval", str(p))]
    return run([*SIGNER, "policy", "adopt", "--config", str(env.config), *args], check=False)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _proposal(env: Env) -> Version:
    """The next version with the env's config as it is written."""
    return env.next_version()


def test_a_freeze_on_one_replica_holds_on_the_other(pg: PgServer, tmp_path: Path) -> None:
    """Two servers on one PostgreSQL store: alice freezes the key through one; the other
    refuses new requests for it at once and does not sign one approved through it."""
    env = make_env(tmp_path / "env", Db(pg.database("freeze"), pg.password_file))
    other = env.replica(1)
    first, second = ServerProcess(env).start(), ServerProcess(other).start()
    a, b = Clients(env), Clients(other)
    try:
        request = b.create()
        b.approve("carol", request)
        _freeze(env, "alice")
        assert rpc_error(lambda: b.create()).reason == "KEY_FROZEN"
        done = b.approve("bob", request)
        assert done.state == types_pb2.REQUEST_STATE_FAILED and not done.signatures
        assert a.get(request.id).state == types_pb2.REQUEST_STATE_FAILED
    finally:
        a.close()
        b.close()
        first.stop()
        second.stop()


def test_audit_verify_refuses_a_signature_made_while_a_key_was_frozen(tmp_path: Path) -> None:
    """Offline: a freeze signed by an approver of the key verifies; a signature after it
    fails at its entry; a freeze signed with another officer's key, or issued a day
    before its entry (replayed), fails."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    officers = {"policy": {"officers": ["alice", "bob", "carol"], "threshold": 2}}

    def freeze(x: Synth, signer: str = "carol", late: int = 0) -> int:
        statement = Freeze("release", KEY_ID, "carol", "stop", x.t0 - dt.timedelta(hours=late))
        envelope = sign_freeze(statement, x.keys[signer]).decode()
        details = {"key_name": "release", "key_id": KEY_ID, "reason": "stop", "envelope": envelope}
        return x.add("key.frozen", "carol", details, rid="")

    def log(*steps: Callable[[Synth], object]) -> subprocess.CompletedProcess[str]:
        x = Synth(s.keys)
        v1 = Version(1, {**x.policy(), **officers}, "", ())
        x.started(dict(v1.document))
        for step in steps:
            step(x)
        out = tmp_path / f"log{len(list(tmp_path.iterdir()))}"
        return audit_verify(out, x.write(out, ed25519.Ed25519PrivateKey.generate()))

    ok(log(freeze))
    refused(log(freeze, valid_quorum), "(request.signed)", "signed while key 'release' was frozen")
    refused(
        log(lambda x: freeze(x, "bob")), "entry 1 (key.frozen)", "the freeze is not signed by carol"
    )


def test_a_freeze_deleted_from_the_database_still_holds(fresh_env: Env) -> None:
    """Whoever owns the database deletes the freeze's row: the token's mark still freezes
    the key, the next start gives the row back, and only a policy version lifts it."""
    with serving(fresh_env) as f:
        _freeze(fresh_env, "carol")
        index = _frozen_index(fresh_env)
        fresh_env.store.rows("DELETE FROM frozen_keys")
        e = rpc_error(lambda: f.clients.create())
        assert e.reason == "KEY_FROZEN" and "kept in the token" in e.message
    with serving(fresh_env) as f:
        assert rpc_error(lambda: f.clients.create()).reason == "KEY_FROZEN"
    assert fresh_env.store.rows("SELECT since_index FROM frozen_keys") == [(index,)]
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["lift_freeze"] = index
    fresh_env.write_config(cfg)
    with serving(fresh_env) as f:
        request = f.clients.create()
        f.clients.approve("alice", request)
        assert f.clients.approve("bob", request).state == types_pb2.REQUEST_STATE_SIGNED


def test_freezing_a_key_whose_row_was_deleted_gives_it_back(fresh: Running) -> None:
    """A freeze given again after someone deleted the row of the first is the first
    (its row given back from the token's mark, no second entry), so one lift lifts it."""
    _freeze(fresh.env, "carol")
    index = _frozen_index(fresh.env)
    fresh.env.store.rows("DELETE FROM frozen_keys")
    _freeze(fresh.env, "alice", "again")
    assert _frozen_index(fresh.env) == index
    assert fresh.env.store.rows("SELECT since_index FROM frozen_keys") == [(index,)]
