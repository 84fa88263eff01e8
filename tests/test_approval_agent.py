"""Officers' approval keys held by ssh-agent (docs/architecture.md §12): the profile names the key's
`.pub` file (`approval_key = "ssh-agent:PATH"`), the admin lists that same file under
`[approvers]`, and the agent's Ed25519 or ECDSA P-256 signatures are the approval
kinds' own; a FIDO key's (`sk-ssh-ed25519`) counts only with the user-presence flag.
A key the agent does not hold, no agent at all, and an agent that answers with
garbage or with another key's signature are each a clear error, and nothing is
sent."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval import registry
from signer.approval.keys import ApprovalSigner
from signer.approval.sk_ed25519 import KEY_TYPE, USER_PRESENT, SkEd25519Key, signed_bytes
from signer.approval.ssh_agent import AgentSigner
from signer.errors import ConfigError, EnvelopeError, VerificationError
from signer.model import State
from signer.server.config import load_config
from testbed.commands import APPROVER, run
from testbed.env import Env
from testbed.process import serving
from tests.config_files import root as root  # a fixture
from tests.config_files import valid_config, write_config
from tests.fakes import World
from tests.harness import ok, refused
from tests.tamper import alice_signs_and_the_log_verifies


@contextlib.contextmanager
def agent(root: Path) -> Iterator[str]:
    """An ssh-agent of this test's own, on a socket under `root`; killed at the end."""
    sock = root / "agent.sock"
    started = ok(run(["ssh-agent", "-a", str(sock)]))
    pid = int(re.search(r"SSH_AGENT_PID=(\d+)", started).group(1))  # type: ignore[union-attr]
    try:
        yield str(sock)
    finally:
        os.kill(pid, signal.SIGTERM)


def _ssh_key(root: Path, kind: str) -> Path:
    key = root / f"id_{kind}"
    args = ["-t", "ed25519"] if kind == "ed25519" else ["-t", "ecdsa", "-b", "256"]
    ok(run(["ssh-keygen", *args, "-N", "", "-q", "-C", "officer", "-f", str(key)]))
    return key


@pytest.mark.sqlite_only("the officer's key is what is tested; the store plays no part")
@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_an_officer_approves_with_a_key_in_ssh_agent(
    fresh_env: Env, tmp_path: Path, kind: str
) -> None:
    """dave's key is in ssh-agent; the admin lists his .pub file; his approval, signed by
    the agent, and alice's sign the request; the log verifies offline."""
    key = _ssh_key(tmp_path, kind)
    profile = fresh_env.add_client("dave", ["approver"])
    with profile.open("a") as f:
        f.write(f'approval_key = "ssh-agent:{key}.pub"\n')
    cfg = fresh_env.read_config()
    cfg["approvers"]["dave"] = f"{key}.pub"
    cfg["keys"]["release"]["approvers"].append("dave")
    fresh_env.write_config(cfg)
    with agent(tmp_path) as sock, serving(fresh_env) as r:
        env = {"SSH_AUTH_SOCK": sock}
        request = r.clients.create()
        args = [*APPROVER, "approve", request.id, "--yes", "--profile", str(profile)]
        refused(run(args, env=env, check=False), "ssh-agent holds no key", code=2)
        refused(run(args, env={"SSH_AUTH_SOCK": ""}, check=False), "SSH_AUTH_SOCK", code=2)
        assert not r.clients.get(request.id).approvals
        ok(run(["ssh-add", "-q", str(key)], env=env))
        ok(run(args, env=env))
        alice_signs_and_the_log_verifies(r, request, "dave")


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@contextlib.contextmanager
def fake_agent(root: Path, blob: bytes, signature: bytes) -> Iterator[str]:
    """An agent that holds `blob` and answers every sign request with `signature`."""
    path = str(root / "fake.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    server.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    (n,) = struct.unpack(">I", conn.recv(4))
                    kind = conn.recv(n)[0]
                    if kind == 11:
                        answer = bytes([12]) + struct.pack(">I", 1) + _string(blob) + _string(b"")
                    else:
                        answer = bytes([14]) + _string(signature)
                    conn.sendall(_string(answer))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.close()
        thread.join(timeout=5)


def test_a_hostile_agent_is_caught(tmp_path: Path) -> None:
    """An agent that answers with garbage, with another key's signature, or with a
    signature of another kind gives an error, never a signature."""
    mine = ed25519.Ed25519PrivateKey.generate()
    pub = tmp_path / "mine.pub"
    openssh = mine.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    pub.write_bytes(openssh + b" officer\n")
    blob = base64.b64decode(openssh.split()[1])
    other = ed25519.Ed25519PrivateKey.generate().sign(b"statement")
    cases: list[tuple[bytes, type[Exception], str]] = [
        (b"\x00\x00\x00\x09garbage", ConfigError, "a bad signature"),
        (_string(b"ssh-ed25519") + _string(other), VerificationError, "does not verify"),
        (_string(b"ssh-rsa") + _string(b"x" * 64), ConfigError, "not one of the Ed25519 key"),
    ]
    for i, (answer, error, phrase) in enumerate(cases):
        where = tmp_path / str(i)
        where.mkdir()
        with fake_agent(where, blob, answer) as sock:
            signer = AgentSigner(pub, sock)
            with pytest.raises(error, match=phrase):
                signer.sign(b"statement")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        bad = tmp_path / "bad.pub"
        bad.write_text("ssh-ed25519 !!!\n")
        AgentSigner(bad, "/nonexistent")


class SoftKey(ApprovalSigner):
    """A FIDO authenticator in software: signs as `sk-ssh-ed25519` does, with or without
    the user-presence flag."""

    def __init__(self, touched: bool = True, application: bytes = b"ssh:") -> None:
        self._key = ed25519.Ed25519PrivateKey.generate()
        self.flags = USER_PRESENT if touched else 0
        self.counter = 7
        self._public = SkEd25519Key(self._key.public_key(), application)

    def public_key(self) -> SkEd25519Key:
        return self._public

    def raw(self, data: bytes) -> bytes:
        """The authenticator's own signature, as an agent returns it."""
        self.counter += 1
        return self._key.sign(
            signed_bytes(self._public.application, self.flags, self.counter, data)
        )

    def sign(self, data: bytes) -> bytes:
        raw = self.raw(data)
        return bytes([self.flags]) + self.counter.to_bytes(4, "big") + raw


def test_a_fido_key_approves_only_with_a_touch(world: World, tmp_path: Path) -> None:
    """carol's FIDO key, listed by its OpenSSH line: its approval with the user-presence
    flag counts and signs the request; one made without a touch, or bound to another
    application, is refused; its policy value reads back as the same key."""
    key = SoftKey()
    line = tmp_path / "carol.pub"
    line.write_bytes(key.public_key().pem())
    listed = registry.key_from_openssh(line.read_bytes())
    assert listed == key.public_key()
    assert registry.key_from_policy(key.public_key().policy_value()) == key.public_key()
    world.officers["carol"] = key
    keys = {**world.core.approver_keys, "carol": key.public_key()}
    world.core.enforce(dataclasses.replace(world.core.enforced, approver_keys=keys))
    untouched = SoftKey(touched=False)
    untouched._key = key._key  # the same key, no touch
    untouched._public = key.public_key()
    other_app = SoftKey(application=b"ssh:other")
    other_app._key = key._key
    r = world.create()
    for fake in (untouched, other_app):
        world.officers["carol"] = fake
        with pytest.raises(EnvelopeError, match="does not verify"):
            world.approve("carol", r)
    world.officers["carol"] = key
    world.approve("carol", r)
    assert world.approve("alice", r).state is State.SIGNED


def test_an_agent_fido_signature_carries_its_flags(tmp_path: Path) -> None:
    """Through an agent, a FIDO key's signature comes with its flags and counter, and
    verifies as the kind's; one the agent reports without a touch is refused."""
    for touched in (True, False):
        key = SoftKey(touched=touched)
        pub = tmp_path / f"sk-{touched}.pub"
        pub.write_bytes(key.public_key().pem())
        raw = key.raw(b"statement")
        answer = (
            _string(KEY_TYPE) + _string(raw) + bytes([key.flags]) + struct.pack(">I", key.counter)
        )
        where = tmp_path / f"agent-{touched}"
        where.mkdir()
        with fake_agent(where, key.public_key().wire(), answer) as sock:
            signer = AgentSigner(pub, sock)
            if touched:
                key.public_key().verify(signer.sign(b"statement"), b"statement")
            else:
                with pytest.raises(VerificationError):
                    signer.sign(b"statement")


def test_weak_and_foreign_openssh_keys_are_refused(tmp_path: Path) -> None:
    """An Ed25519 or FIDO key of small order (the identity, the point of order 2) or not
    canonically encoded verifies signatures no one made: refused as a policy value and as
    a key line; a FIDO ECDSA key (it would be read as a plain one, losing its touch) and
    a certificate line are refused as approval keys; a real key passes."""
    weak = [
        "01" + "00" * 31,  # the identity
        "ec" + "ff" * 30 + "7f",  # (0, -1), of order 2
        "ed" + "ff" * 30 + "7f",  # y = p: not canonical
    ]
    for raw in weak:
        with pytest.raises(ValueError):
            registry.key_from_policy(raw)
        wire = _string(KEY_TYPE) + _string(bytes.fromhex(raw)) + _string(b"ssh:")
        with pytest.raises(ValueError):
            SkEd25519Key.from_wire(wire)
    real = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    assert registry.key_from_policy(real).policy_value() == real
    blob = base64.b64encode(b"\x00" * 8).decode()
    for kind in ("sk-ecdsa-sha2-nistp256@openssh.com", "ssh-ed25519-cert-v01@openssh.com"):
        with pytest.raises(ValueError, match="an OpenSSH key for approvals is"):
            registry.key_from_openssh(f"{kind} {blob} officer".encode())


def test_a_key_may_take_only_fido_approvals(world: World, root: Path) -> None:
    """`approval_kinds = ["sk-ssh-ed25519"]`: alice's file key approval does not count
    toward the quorum, carol's and bob's FIDO ones do; the config refuses such a key
    while an approver holds another kind, naming the officer; the offline verifier
    applies the same rule (tests/test_limits.py replays the log)."""
    fido = {o: SoftKey() for o in ("bob", "carol")}
    world.officers.update(fido)
    keys = {**world.core.approver_keys, **{o: k.public_key() for o, k in fido.items()}}
    policy = dataclasses.replace(world.policy, approval_kinds=("sk-ssh-ed25519",))
    world.core.enforce(
        dataclasses.replace(world.core.enforced, approver_keys=keys, policies={"release": policy})
    )
    r = world.create()
    world.approve("alice", r)
    assert world.approve("bob", r).state is State.PENDING  # alice's does not count
    assert world.approve("carol", r).state is State.SIGNED
    assert policy.as_dict()["approval_kinds"] == ["sk-ssh-ed25519"]
    cfg = valid_config()
    cfg["keys"]["release"]["approval_kinds"] = ["sk-ssh-ed25519"]
    with pytest.raises(ConfigError, match="approver 'alice' has a key of kind ed25519"):
        load_config(write_config(root, cfg))
    cfg["keys"]["release"]["approval_kinds"] = ["yubikey"]
    with pytest.raises(ConfigError, match="'yubikey' is not a kind; kinds: ecdsa-p256"):
        load_config(write_config(root, cfg))
