"""A tampered database is caught by the auditor's `signer audit fetch`.

Each test restores the baseline (tests/tamper.py) on its backend, edits the
database directly while no server runs, restarts the server and checks that the
auditor's fetch fails naming the problem. The token keeps the tree head the
audit key last signed, so a server refuses a log that no longer extends it
(tests/test_audit_head.py); here the operator has reset that head (`signer
audit head --reset`: the token's PIN, recorded in the log), the one way to make
the audit key sign such a log, and it is the auditors who must catch it.

The token is only used from subprocesses (the server, and a script that signs a
forged checkpoint with the real audit key); this process never loads PKCS#11.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from signer.audit.note import Checkpoint, Verifier, open_note
from testbed.commands import SIGNER, run
from testbed.env import Env
from tests.harness import ok, refused
from tests.tamper import (
    Baseline,
    Case,
    audit_fetch,
    audit_verify,
    copies,
    delete_entry,
    edit_actor,
    editing,
    fetched_size,
    reset_head,
    restore_db,
    rewrite_log,
    save_db,
    serving,
    swap_entries,
)


@pytest.fixture(scope="module")
def baseline(backend: str, baselines: Callable[[str], Baseline]) -> Baseline:
    """The baseline on the test's backend (server-side tests run on each)."""
    return baselines(backend)


@pytest.fixture
def case(baseline: Baseline, tmp_path: Path) -> Case:
    restore_db(baseline.env, baseline.saved)
    shutil.rmtree(baseline.env.root / "tokens")
    shutil.copytree(baseline.tokens, baseline.env.root / "tokens")
    return copies(baseline, tmp_path)


@pytest.mark.parametrize(
    ("kind", "phrase"),
    [
        ("edit", "do not hash to its signed checkpoint's root"),
        ("delete", "do not hash to its signed checkpoint's root"),
        ("swap", "do not hash to its signed checkpoint's root"),
        ("swap-raw", "asked for entry {k}, got {k1}"),
    ],
    ids=["edit", "delete", "swap", "swap-raw"],
)
def test_edited_entries_fail_fresh_and_incremental_fetch(
    case: Case, kind: str, phrase: str
) -> None:
    """Entries edited, deleted or swapped under an intact tree: any fetch reading them fails."""
    k = case.base.index("request.approved", "bob", after=case.base.n_mid)
    edit = {
        "edit": edit_actor(k),
        "delete": delete_entry(k),
        "swap": swap_entries(k),
        "swap-raw": swap_entries(k, renumber=False),
    }[kind]
    rewrite_log(case.env, edit)
    phrase = phrase.format(k=k, k1=k + 1)
    if kind == "delete":  # one entry fewer than the token's head: a reset before serving
        reset_head(case.env)
    with serving(case.env) as r:
        refused(audit_fetch(case.env, case.tmp / "fresh"), phrase)
        assert not (case.tmp / "fresh" / "checkpoint").exists()
        r.clients.create()  # more activity; the auditor's next fetch reads entry k
        before = (case.mid / "entries.jsonl").read_bytes()
        refused(audit_fetch(case.env, case.mid), phrase)
    assert (case.mid / "entries.jsonl").read_bytes() == before  # nothing written


@pytest.mark.parametrize("kind", ["edit", "swap", "delete"])
def test_rewritten_history_fails_incremental_fetch(case: Case, kind: str) -> None:
    """History rewritten with the tree rebuilt: auditors holding an older checkpoint see it."""
    base = case.base
    k = base.index("request.approved", "alice")
    assert k < base.n_mid - 1
    edit = {"edit": edit_actor(k), "delete": delete_entry(k), "swap": swap_entries(k)}[kind]
    rewrite_log(case.env, edit, rebuild=True)
    reset_head(case.env)
    with serving(case.env):
        refused(
            audit_fetch(case.env, case.mid),
            f"does not extend the {base.n_mid} verified before (fork or rewritten history)",
        )
        refused(
            audit_fetch(case.env, case.end),
            f"does not extend the {base.n} verified before (fork or rewritten history)",
        )


def test_truncated_tail_is_a_rollback(case: Case) -> None:
    """The last entries, their nodes and checkpoints deleted: the auditor's fetch says rollback."""
    n = case.base.n
    rewrite_log(case.env, lambda rows: rows[:-4])
    reset_head(case.env)  # audit.head_reset and server.started: n - 2
    with serving(case.env):
        refused(
            audit_fetch(case.env, case.end),
            f"rollback: the server's log has {n - 2} entries; {n} were verified before",
        )
        assert (
            fetched_size(ok(audit_fetch(case.env, case.mid))) == n - 2
        )  # still extends the older copy


def test_restored_old_database_is_refused_then_a_fork_once_reset(case: Case) -> None:
    """An old copy of the database put back: the server refuses it; reset, auditors see a fork."""
    env, n = case.env, case.base.n
    old = save_db(env, case.tmp / "old")
    with serving(env) as r:  # server.started + one request: n + 2
        r.clients.create()
        assert fetched_size(ok(audit_fetch(env, case.end))) == n + 2
    restore_db(env, old)
    p = run([*SIGNER, "serve", "--config", str(env.config)], check=False, timeout=60)
    assert p.returncode != 0 and "rolled back or truncated" in " ".join(p.stderr.split())
    reset_head(env)  # n + 1
    with serving(env):  # server.started: n + 2 again, other entries
        refused(
            audit_fetch(env, case.end),
            f"fork: the server signed two different logs of {n + 2} entries",
        )


_FORGE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import pkcs11
    from pkcs11 import Mechanism, ObjectClass

    from signer.audit.note import Checkpoint, Verifier, sign_note

    module, token_label, pin_file, key_label, vkey, size, root = sys.argv[1:]
    verifier = Verifier.parse(vkey)
    token = pkcs11.lib(module).get_token(token_label=token_label)
    with token.open(user_pin=Path(pin_file).read_text().strip()) as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_label)
        text = Checkpoint(verifier.name, int(size), bytes.fromhex(root)).text()
        note = sign_note(
            text,
            verifier.name,
            verifier.public_key,
            lambda message: bytes(key.sign(message, mechanism=Mechanism.EDDSA)),
        )
    sys.stdout.write(note)
    """
)


def _forge_checkpoint(env: Env, verifier: str, size: int, root: bytes) -> str:
    """A checkpoint signed with the env's real audit key, in a subprocess using PKCS#11."""
    cfg = env.read_config()
    p = run(
        [
            sys.executable,
            "-c",
            _FORGE_SCRIPT,
            cfg["token"]["module"],
            cfg["token"]["label"],
            str(env.root / "secrets" / "token.pin"),
            cfg["audit"]["key"],
            verifier,
            str(size),
            root.hex(),
        ],
        env={"SOFTHSM2_CONF": str(env.root / "softhsm2.conf")},
        timeout=60,
    )
    return p.stdout


def test_checkpoint_forged_with_the_real_key_is_a_fork(case: Case) -> None:
    """A rewritten log with a checkpoint the real audit key signed: fetch and verify see a fork."""
    base, env = case.base, case.env
    k = base.index("request.approved", "alice")
    root = rewrite_log(env, edit_actor(k), rebuild=True)
    forged = _forge_checkpoint(env, base.verifier, base.n, root)
    cp = Checkpoint.parse(open_note(forged, [Verifier.parse(base.verifier)]))  # a valid signature
    assert (cp.size, cp.root) == (base.n, root)
    with editing(env.store) as execute:
        execute("UPDATE checkpoints SET note = ? WHERE size = ?", forged, base.n)
    assert env.store.rows("SELECT note FROM checkpoints WHERE size = ?", base.n) == [(forged,)]
    reset_head(env)

    with serving(env):
        refused(
            audit_fetch(env, case.end),
            f"does not extend the {base.n} verified before (fork or rewritten history)",
        )
    # Offline: the forged note beside the auditor's own checkpoint of the same size.
    (case.end / "checkpoint").write_text(forged)
    refused(
        audit_verify(case.end, base.verifier),
        f"two checkpoints of size {base.n} have different roots: the log forked",
    )
