"""The token adapter on a real SoftHSM token (docs/architecture.md §8).

One long-lived session: a batch of digests is signed in one loop, each
signature verifies; when the session is lost (closed under the server, or its
cached key handles gone stale) the adapter logs in again, re-finds the key and
the call succeeds, counted in `resets`; a bad digest in a batch is refused
before anything is signed. The token runs in a subprocess, as in every other
test (the PKCS#11 library is loaded once per process).
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from testbed.commands import run
from testbed.env import Env

_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from pathlib import Path

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    from signer.server.admin import open_token
    from signer.server.config import load_config
    from signer.errors import InvalidArgumentError
    from signer.verify import verify_digest

    config = load_config(Path(sys.argv[1]))
    token = open_token(config)
    spec = config.keys["release"]
    public = serialization.load_der_public_key(token.key("release").spki_der)
    out = {}

    def batch(n, tag):
        digests = [("sha256", hashlib.sha256(f"{tag}-{i}".encode()).digest()) for i in range(n)]
        sigs = token.sign_digests("release", spec.algorithm, digests)
        for (h, d), s in zip(digests, sigs, strict=True):
            verify_digest(public, h, d, s)  # raises if invalid
        return len(sigs)

    out["batch"] = batch(200, "a")
    out["resets_before"] = token.resets

    token._session.close()  # the session is gone under the adapter (a token reset)
    out["after_close"] = batch(3, "b")
    out["resets_after_close"] = token.resets

    stale = token._keys["release"]
    token._reopen()  # a new session: the cached handle from the old one is stale
    token._keys["release"] = stale
    token._session.close()
    out["after_stale"] = batch(3, "c")
    out["resets_after_stale"] = token.resets

    try:
        token.sign_digests(
            "release", spec.algorithm, [("sha256", b"x" * 32), ("sha256", b"short")]
        )
    except InvalidArgumentError as e:
        out["bad_digest"] = str(e)
    out["calls_ok_after"] = batch(1, "d")
    print(json.dumps(out))
    """
)


@pytest.mark.sqlite_only  # the store plays no part
def test_batch_signs_in_one_loop_and_a_lost_session_is_reopened(fresh_env: Env) -> None:
    """200 digests sign in one loop; a closed session or stale key handle is logged in
    again (counted in resets); a short digest is refused, and the token still signs."""
    p = run([sys.executable, "-c", _SCRIPT, str(fresh_env.config)], timeout=120)
    out = json.loads(p.stdout.splitlines()[-1])  # after the adapter's log lines
    assert "token session lost; logging in again" in p.stdout
    assert out["batch"] == 200
    assert out["resets_before"] == 0
    assert (out["after_close"], out["resets_after_close"]) == (3, 1)
    assert out["after_stale"] == 3 and out["resets_after_stale"] >= 2
    assert "sha256 digest must be 32 bytes" in out["bad_digest"]
    assert out["calls_ok_after"] == 1


_STEP_ASIDE = textwrap.dedent(
    """
    import hashlib, json, sys, threading, time
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization

    from signer.token import hsm
    from signer.server.admin import open_token
    from signer.server.config import load_config
    from signer.verify import verify_digest

    config = load_config(Path(sys.argv[1]))
    token = open_token(config)
    spec = config.keys["release"]
    public = serialization.load_der_public_key(token.key("release").spki_der)
    audit = serialization.load_der_public_key(token.key(config.audit_key).spki_der)
    digests = [("sha256", hashlib.sha256(b"%d" % i).digest()) for i in range(3000)]
    made = []  # the batch's signatures so far, counted as they come out of the token
    done = {}
    sign_one = hsm.sign_one

    def until(predicate, what):
        end = time.monotonic() + 60
        while not predicate():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.001)

    def counted(*args):
        made.append(sign_one(*args))
        if len(made) == 10:  # hold the batch here, the token in hand, until the
            until(lambda: token._urgent, "the checkpoint")  # checkpoint is waiting
        return made[-1]

    hsm.sign_one = counted
    private = token._private

    def private_counted(name):  # called under the token's lock, as the checkpoint signs
        if name == config.audit_key:
            done["before"] = len(made)
        return private(name)

    token._private = private_counted

    def batch():
        done["sigs"] = token.sign_digests("release", spec.algorithm, digests)

    t = threading.Thread(target=batch)
    t.start()
    until(lambda: len(made) >= 10, "the batch")  # under way, holding the token
    note = token.sign_message(config.audit_key, b"checkpoint")
    t.join()
    audit.verify(note, b"checkpoint")
    for (h, d), s in zip(digests, done["sigs"], strict=True):
        verify_digest(public, h, d, s)
    print(json.dumps({"n": len(done["sigs"]), "before_checkpoint": done["before"]}))
    """
)


@pytest.mark.sqlite_only  # the store plays no part
def test_a_checkpoint_signature_does_not_wait_for_a_batch(fresh_env: Env) -> None:
    """A batch signing under way steps aside for an audit checkpoint, then completes."""
    p = run([sys.executable, "-c", _STEP_ASIDE, str(fresh_env.config)], timeout=120)
    out = json.loads(p.stdout.splitlines()[-1])
    assert out["n"] == 3000
    assert 10 <= out["before_checkpoint"] < 3000  # the batch was under way, and stepped aside
