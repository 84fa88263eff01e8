"""Signing keys are pinned by the policy (docs/architecture.md §11): which token key
signs under a name changes only through a version the officers approve.

Each key of the policy names its `key_id`; the server refuses to start on a key without
one, or when the token holds no version of the key with that id (a key swapped behind
the name by whoever holds the PIN). `signer keys rotate` makes the next version
(`NAME@N`), which signs only once a version pins it; what the old one signed stays
verifiable. `[[revoked]]` revokes a key id from a time on, never to be taken back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from signer.approval.ed25519 import Ed25519Signer
from signer.encoding import format_time
from signer.errors import ConfigError, PolicyChainError
from signer.policy_chain import Version, check_next, sign_approval
from signer.server.config import load_config
from signer.v1 import types_pb2
from testbed.clients import sha256_digest
from testbed.commands import SIGNER, run, wait_until
from testbed.env import Env
from testbed.process import Running, running
from tests.harness import audit_events, ok, refused
from tests.tamper import audit_fetch, audit_verify

serving = contextlib.contextmanager(running)


def next_second() -> dt.datetime:
    """The next whole second (a revocation's time has no fraction), once the clock is past
    it: what was logged before this call is earlier, what is logged after is later."""
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).replace(microsecond=0)
    wait_until(lambda: dt.datetime.now(dt.UTC) > at, timeout=5)
    return at


def _serve(env: Env) -> subprocess.CompletedProcess[str]:
    return run([*SIGNER, "serve", "--config", str(env.config)], check=False, timeout=60)


def _bundle(r: Running, name: str) -> tuple[Path, Path, dict[str, Any]]:
    """A file signed with `release` after alice's and bob's approval, and its bundle."""
    artifact = r.env.root / name
    artifact.write_bytes(os.urandom(512))
    request = r.clients.create(digests=[sha256_digest(artifact.read_bytes(), name)])
    r.clients.approve("alice", request)
    assert r.clients.approve("bob", request).state == types_pb2.REQUEST_STATE_SIGNED
    bundle = artifact.with_name(name + ".bundle.json")
    args = ["status", request.id, "--format", "bundle", "--out", str(bundle)]
    ok(run([*SIGNER, *args, "--profile", str(r.env.profile_path("ci"))]))
    return artifact, bundle, json.loads(bundle.read_text())


def _trust_for(env: Env, pem: str, name: str) -> Path:
    """A copy of trust/release.toml pinning the public key `pem`."""
    doc = tomllib.loads((env.root / "trust" / "release.toml").read_text())
    doc["public_key"] = pem
    path = env.root / "trust" / f"{name}.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def _verify(bundle: Path, artifact: Path, trust: Path) -> subprocess.CompletedProcess[str]:
    return _verify_chain(bundle, artifact, trust)


def _rotate(env: Env) -> tuple[str, str]:
    """`signer keys rotate --name release`: the new version's label and key id."""
    out = ok(run([*SIGNER, "keys", "rotate", "--config", str(env.config), "--name", "release"]))
    label, _, key_id = out.split()
    return label, key_id


def _public(env: Env) -> str:
    """The release key's public key as the env's config pins it."""
    args = ["keys", "public", "--config", str(env.config), "--name", "release"]
    return ok(run([*SIGNER, *args]))


def test_a_rotated_key_signs_once_pinned_and_its_old_bundles_still_verify(
    fresh_env: Env,
) -> None:
    """Rotation: the new version signs nothing until a version pins it; then it signs,
    the old one no longer does, and bundles of either verify with their own key."""
    env = fresh_env
    old_id = env.read_config()["keys"]["release"]["key_id"]
    old_trust = _trust_for(env, _public(env), "old")
    with serving(env) as r:
        first, first_bundle, first_doc = _bundle(r, "first.tar")
        label, new_id = _rotate(env)
        assert label == "release@2" and new_id != old_id
        # Not pinned yet: the running server still signs with the old version.
        _, _, doc = _bundle(r, "before.tar")
        assert doc["key"]["key_id"] == old_id
    cfg = env.read_config()
    cfg["keys"]["release"]["key_id"] = new_id
    now = format_time(dt.datetime.now(dt.UTC))
    cfg["revoked"] = [{"key_id": old_id, "at": now, "reason": "rotated"}]
    env.write_config(cfg)  # the officers adopt the version that pins it and revokes the old
    new_trust = _trust_for(env, _public(env), "new")
    out = env.root / "audit"
    with serving(env) as r:
        second, second_bundle, second_doc = _bundle(r, "second.tar")
        ok(audit_fetch(env, out))
    assert "OK: " in ok(audit_verify(out, str(env.profile("auditor").audit_verifier)))
    assert first_doc["key"]["key_id"] == old_id and second_doc["key"]["key_id"] == new_id
    assert "bundle OK" in ok(_verify(first_bundle, first, old_trust))
    assert "bundle OK" in ok(_verify(second_bundle, second, new_trust))
    refused(_verify(second_bundle, second, old_trust), "the pinned key")
    started = [e for e in audit_events(env) if e["event"] == "server.started"]
    generated = [e for e in audit_events(env) if e["event"] == "key.generated"][-1]["details"]
    assert generated["rotates"] == old_id and generated["label"] == "release@2"
    assert started[-1]["details"]["keys"]["release"] == {
        "key_id": new_id,
        "algorithm": "ecdsa-p256",
        "label": "release@2",
        "openpgp_created": generated["openpgp_created"],  # its own, kept beside release@2
    }


def test_a_key_without_key_id_is_refused_at_start(fresh_env: Env) -> None:
    """A policy whose key pins no key id does not start: whoever holds the PIN could
    otherwise change which key signs."""
    cfg = fresh_env.read_config()
    del cfg["keys"]["release"]["key_id"]
    fresh_env.write_config(cfg)  # even approved by the officers
    refused(_serve(fresh_env), "keys.release.key_id: missing", "signer keys list", code=2)


def test_a_proposal_whose_key_pins_no_key_id_is_refused(fresh_env: Env) -> None:
    """`signer policy propose` refuses, before anything is recorded, a policy the server
    would not start on: a key without its key id."""
    cfg = fresh_env.read_config()
    del cfg["keys"]["release"]["key_id"]
    new = fresh_env.root / "unpinned.toml"
    new.write_text(tomli_w.dumps(cfg))
    before = len(audit_events(fresh_env))
    args = ["policy", "propose", "--config", str(fresh_env.config), str(new)]
    refused(run([*SIGNER, *args], check=False), "keys.release.key_id: missing", code=2)
    assert len(audit_events(fresh_env)) == before


_SWAP = textwrap.dedent(
    """
    import sys
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    lib = pkcs11.lib(sys.argv[1])
    token = lib.get_token(token_label=sys.argv[2])
    with token.open(user_pin=sys.stdin.read().strip(), rw=True) as s:
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            for o in s.get_objects({Attribute.CLASS: cls, Attribute.LABEL: "release"}):
                o.destroy()
            for o in s.get_objects({Attribute.CLASS: cls, Attribute.LABEL: "release@2"}):
                o[Attribute.LABEL] = "release"
    """
)


def test_a_key_swapped_behind_its_name_is_refused_at_start(fresh_env: Env) -> None:
    """An admin who replaces the token key under the policy's name (here: destroys it and
    relabels another) cannot start the server: the policy pins the old key id."""
    env = fresh_env
    _, new_id = _rotate(env)
    cfg = env.read_config()
    module, label = cfg["token"]["module"], cfg["token"]["label"]
    pin = (env.root / "secrets" / "token.pin").read_text()
    conf = str(env.root / "softhsm2.conf")
    subprocess.run(
        [sys.executable, "-c", _SWAP, module, label],
        input=pin,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "SOFTHSM2_CONF": conf},
    )
    err = refused(_serve(env), "keys.release.key_id", "holds no version of key 'release'", code=2)
    assert new_id[:16] in err  # what the token does hold, named
    # Pinning the swapped-in key is a policy change like any other: approved, it starts.
    cfg["keys"]["release"]["key_id"] = new_id
    env.write_config(cfg)
    with serving(env) as r:
        _, _, doc = _bundle(r, "after.tar")
    assert doc["key"]["key_id"] == new_id


def test_an_unpinned_edit_of_key_id_is_refused_at_start(fresh_env: Env) -> None:
    """Pointing keys.release.key_id at the new version without the officers' approval is
    an edited policy: the start fails, as for any other edit."""
    _, new_id = _rotate(fresh_env)
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["key_id"] = new_id
    fresh_env.write_config(cfg, adopt=False)
    refused(_serve(fresh_env), "is not version", "signer policy propose", code=2)


@pytest.mark.parametrize(
    ("revocation", "phrase"),
    [
        ({"at": "2026-01-01T00:00:00Z", "reason": "lost"}, "still signs with it"),
        ({"key_id": "a" * 64, "at": "2999-01-01T00:00:00Z", "reason": "x"}, "in the future"),
        ({"key_id": "a" * 64, "at": "2026-01-01T00:00:00Z", "reason": " "}, "must say why"),
        ({"key_id": "A" * 64, "at": "2026-01-01T00:00:00Z", "reason": "x"}, "64 lowercase hex"),
        ({"key_id": "a" * 64, "at": "yesterday", "reason": "x"}, "RFC 3339"),
    ],
    ids=["signing key", "future", "no reason", "not hex", "not a time"],
)
def test_a_bad_revocation_is_a_config_error(
    shared_env: Env, tmp_path: Path, revocation: dict[str, str], phrase: str
) -> None:
    """A revocation of the key still signing, in the future, without a reason, or
    malformed is refused naming revoked[0] and the fix; nothing starts."""
    cfg = shared_env.read_config()
    signing = cfg["keys"]["k-ecdsa-p256"]["key_id"]
    cfg["revoked"] = [{"key_id": signing, **revocation}]
    edited = shared_env.config.with_name(f"revoked-{tmp_path.name}.toml")  # same relative paths
    edited.write_text(tomli_w.dumps(cfg))
    try:
        with pytest.raises(ConfigError) as e:
            load_config(edited)
    finally:
        edited.unlink()
    assert "revoked[0]" in str(e.value) and phrase in str(e.value)


def _version(number: int, document: dict[str, Any], previous: Version | None) -> Version:
    """`document` as version `number` after `previous`, approved by every officer."""
    bare = Version(number, document, previous.sha256 if previous else "", ())
    return Version(number, document, bare.previous_sha256, tuple(_approvals(bare)))


_OFFICER_KEYS = {o: Ed25519Signer.generate() for o in ("alice", "bob", "carol")}


def _approvals(v: Version) -> list[bytes]:
    now = dt.datetime.now(dt.UTC)
    return [sign_approval(v, o, k, now) for o, k in _OFFICER_KEYS.items()]


def _document(**extra: Any) -> dict[str, Any]:
    keys = {o: k.public_key().policy_value() for o, k in _OFFICER_KEYS.items()}
    return {
        "keys": {"release": {"name": "release", "key_id": "b" * 64}},
        "approver_keys": keys,
        "policy": {"officers": sorted(keys), "threshold": 2},
        **extra,
    }


def test_a_revocation_is_never_taken_back() -> None:
    """A version that drops a revocation, or moves its time later, is no link of the
    chain; keeping it (or moving it earlier) is."""
    revoked = {"key_id": "a" * 64, "at": "2026-06-01T00:00:00Z", "reason": "laptop stolen"}
    first = _version(1, _document(revoked=[revoked]), None)
    check_next(None, first)
    for later in ([], [{**revoked, "at": "2026-07-01T00:00:00Z"}]):
        with pytest.raises(PolicyChainError, match="never taken back"):
            check_next(first, _version(2, _document(revoked=later), first))
    earlier = [{**revoked, "at": "2026-05-01T00:00:00Z"}]
    check_next(first, _version(2, _document(revoked=earlier), first))


def test_a_version_whose_key_signs_with_a_revoked_key_id_is_refused() -> None:
    """No version may pin a key id it revokes (checked offline too, not only at load)."""
    revoked = {"key_id": "b" * 64, "at": "2026-06-01T00:00:00Z", "reason": "compromised"}
    with pytest.raises(PolicyChainError, match="which it revokes"):
        check_next(None, _version(1, _document(revoked=[revoked]), None))


def _policy_trust(env: Env, pinned: str, name: str) -> Path:
    """A trust file pinning one policy version (and the audit verifier) only."""
    verifier = next(
        line
        for line in (env.root / "trust" / "release.toml").read_text().splitlines()
        if line.startswith("audit_verifier")
    )
    path = env.root / "trust" / f"{name}.toml"
    path.write_text(f'policy = "{pinned}"\n{verifier}\n')
    return path


def _verify_chain(
    bundle: Path, artifact: Path, trust: Path, newer: Path | None = None
) -> subprocess.CompletedProcess[str]:
    extra = ["--chain", str(newer)] if newer is not None else []
    return run([*SIGNER, *_verify_args(bundle, artifact, trust), *extra], check=False)


def _verify_args(bundle: Path, artifact: Path, trust: Path) -> list[str]:
    return ["verify", "--bundle", str(bundle), "--file", str(artifact), "--trust", str(trust)]


def test_a_verifier_who_pinned_version_1_walks_the_chain_and_sees_revocations(
    fresh_env: Env,
) -> None:
    """Trust pins policy version 1 only. A bundle signed under version 2 (a rotated key,
    the old one revoked from a time) verifies through the chain it carries; one the old
    key signed before the revocation time still verifies, one it signed after fails once
    the verifier has the newer chain; a chain the old officers never approved, or that
    stops short of the version signed under, fails."""
    env = fresh_env
    first_version = env.policy_chain()[0].sha256
    trust = _policy_trust(env, first_version, "pinned-v1")
    with serving(env) as r:
        early, early_bundle, _ = _bundle(r, "early.tar")
        revoked_at = format_time(next_second())
        late, late_bundle, _ = _bundle(r, "late.tar")  # the old key, after the revocation time
    assert "under policy version 1" in ok(_verify_chain(early_bundle, early, trust))
    _, new_id = _rotate(env)
    cfg = env.read_config()
    old_id = cfg["keys"]["release"]["key_id"]
    cfg["keys"]["release"]["key_id"] = new_id
    cfg["revoked"] = [{"key_id": old_id, "at": revoked_at, "reason": "key leaked"}]
    env.write_config(cfg)
    with serving(env) as r:
        now, now_bundle, doc = _bundle(r, "now.tar")
    assert [v["version"] for v in doc["policy"]["versions"]] == [1, 2]
    assert "under policy version 2" in ok(_verify_chain(now_bundle, now, trust))
    assert "bundle OK" in ok(_verify_chain(early_bundle, early, trust, now_bundle))
    assert "bundle OK" in ok(_verify_chain(late_bundle, late, trust))  # not known yet
    refused(_verify_chain(late_bundle, late, trust, now_bundle), "was revoked at", "key leaked")

    # Version 2 with one officer's approval only: not a link the verifier follows.
    forged = json.loads(now_bundle.read_text())
    forged["policy"]["versions"][1]["approvals"] = forged["policy"]["versions"][1]["approvals"][:1]
    forged_path = now_bundle.with_name("forged.bundle.json")
    forged_path.write_text(json.dumps(forged))
    refused(_verify_chain(forged_path, now, trust), "bundle INVALID", "approvals it needs")
    # A chain stopped at version 1, which pins the old key: not what signed.
    short = json.loads(now_bundle.read_text())
    short["policy"]["versions"] = short["policy"]["versions"][:1]
    short_path = now_bundle.with_name("short.bundle.json")
    short_path.write_text(json.dumps(short))
    refused(_verify_chain(short_path, now, trust), "policy version 1 pins")
    # A pin the chain does not hold.
    other = _policy_trust(env, "c" * 64, "pinned-other")
    refused(_verify_chain(now_bundle, now, other), "is not in the chain")
    # Version 3 changes the lifetime only; a bundle signed under it, its chain cut at
    # version 2 (which pins the same key): logged under another version than it reaches.
    cfg["keys"]["release"]["max_ttl"] = "2h"
    env.write_config(cfg)
    with serving(env) as r:
        third, third_bundle, _ = _bundle(r, "third.tar")
    cut = json.loads(third_bundle.read_text())
    cut["policy"]["versions"] = cut["policy"]["versions"][:2]
    cut_path = third_bundle.with_name("cut.bundle.json")
    cut_path.write_text(json.dumps(cut))
    assert "under policy version 3" in ok(_verify_chain(third_bundle, third, trust))
    refused(_verify_chain(cut_path, third, trust), "logged under policy", "not version 2")


def test_a_signing_key_pinned_to_the_audit_key_is_refused(fresh_env: Env) -> None:
    """keys.release.key_id naming the audit key (even approved) does not start: the
    checkpoint key never signs artifacts. An audit key named like a key version
    (`release@2`) is a config error."""
    keys = {
        k["name"]: k["key_id"]
        for k in json.loads(
            ok(run([*SIGNER, "keys", "list", "--config", str(fresh_env.config), "--json"]))
        )
    }
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["key_id"] = keys["audit"]
    fresh_env.write_config(cfg)
    refused(_serve(fresh_env), "holds no version of key 'release'", code=2)
    cfg["audit"]["key"] = "release@2"
    fresh_env.config.write_text(tomli_w.dumps(cfg))
    refused(_serve(fresh_env), "audit.key: key names are", code=2)
