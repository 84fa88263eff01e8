"""`approve` and `deny`: sign a decision on exactly the request shown (invariant 6).

The whole request is shown first (`approver.review`); an approval is refused,
nothing sent, for a request holding text that had to be escaped to be shown,
a digest that is not what its hash says, or a statement that did not parse (a
denial is always possible). The statement signed with the officer's own
approval key (whatever its kind) is built only from what was shown (request
id, key, key id, digests), and an answer for another request is reported as
an error. The key's passphrase comes from a file, an environment variable or a
prompt, never argv.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from approver.errors import ApproverError
from approver.review import check_files, describe, fetch
from signer.algorithms import HASH_SIZES
from signer.approval.files import load_signer
from signer.approval.keys import ApprovalSigner
from signer.approval.ssh_agent import AgentSigner
from signer.approval.token_uri import TokenKeyUri
from signer.cli.kit import call, request_dict, say, stubs
from signer.client.profile import Profile, load_profile
from signer.dsse import Statement, sign_statement
from signer.errors import ConfigError
from signer.formats import registry
from signer.model import Digest
from signer.parsing import read_secret
from signer.text import is_displayable
from signer.v1 import approval_pb2, approval_pb2_grpc

__all__ = ["approval_key", "decide", "token_pin", "token_support", "unshowable"]


def token_pin(label: str, pin_file: Path | None, pin_env: str | None) -> str:
    """The PIN of an officer's token: from a file, a variable, or the terminal."""
    if pin_file or pin_env:
        return read_secret(pin_file, pin_env, f"PIN of token {label}")
    if not sys.stdin.isatty():
        raise ConfigError(
            f"the PIN of token {label} is needed: set approval_pin_file or approval_pin_env "
            "in the profile, or run in a terminal to be asked"
        )
    return getpass.getpass(f"PIN of token {label} (then touch the key if it blinks): ")


def token_support() -> ModuleType:
    """`signer.token.approval`, which needs python-pkcs11: only officers whose key is in
    a token install it (`pip install 'signer[token]'`)."""
    try:
        return importlib.import_module("signer.token.approval")
    except ModuleNotFoundError as e:
        if e.name != "pkcs11":
            raise
        raise ConfigError(
            "a key in a token needs python-pkcs11, which this install lacks: "
            "pip install 'signer[token]'"
        ) from None


def approval_key(profile: Profile) -> ApprovalSigner:
    if profile.approval_agent_key is not None:
        return AgentSigner(profile.approval_agent_key)
    if profile.approval_token is not None:
        uri = TokenKeyUri.parse(profile.approval_token)
        support = token_support()  # before the PIN is asked for
        pin = token_pin(uri.token, profile.approval_pin_file, profile.approval_pin_env)
        signer: ApprovalSigner = support.TokenSigner(uri, pin)
        return signer
    if profile.approval_key is None:
        raise ConfigError(f"profile {profile.path} has no approval_key")
    passphrase = None
    if profile.approval_passphrase_file or profile.approval_passphrase_env:
        passphrase = read_secret(
            profile.approval_passphrase_file,
            profile.approval_passphrase_env,
            "approval key passphrase",
        )
    elif b"ENCRYPTED" in profile.approval_key.read_bytes()[:64] and sys.stdin.isatty():
        passphrase = getpass.getpass(f"passphrase for {profile.approval_key}: ")
    return load_signer(profile.approval_key, passphrase)


def unshowable(d: dict[str, Any]) -> list[str]:
    """What in this request an officer could not be shown faithfully (empty if nothing).

    An approval is never signed over text that had to be escaped to be shown, a
    digest that is not what its hash says, or a statement that did not parse.
    """
    texts: list[tuple[str, str]] = [
        ("request id", d["id"]),
        ("key", d["key_name"]),
        ("key id", d["key_id"]),
        ("algorithm", d["algorithm"]),
        ("requester", d["requester"]),
        ("status", d["status_message"]),
    ]
    texts += [(f"context {k}", f"{k}={v}") for k, v in d["context"].items()]
    texts += [(f"digest {i} artifact", x["artifact"]) for i, x in enumerate(d["digests"])]
    texts += [
        (f"{a['approver']}'s decision", f"{a['approver']} {a['reason']}") for a in d["approvals"]
    ]
    if "caller" in d:
        c = d["caller"]
        texts += [("oidc issuer", c["issuer"]), ("oidc actor", c["actor"])]
        texts += [(f"claim {k}", f"{k}={v}") for k, v in c["claims"].items()]
        texts += [("barred officers", o) for o in c["barred_approvers"]]
    problems = [
        f"the {what} holds characters that cannot be shown"
        for what, t in texts
        if not is_displayable(t)
    ]
    for i, x in enumerate(d["digests"]):
        size = HASH_SIZES.get(x["algorithm"])
        if size is None or len(x["digest"]) != 2 * size:
            problems.append(f"digest {i} is not a valid sha256, sha384 or sha512 digest")
    if "payload_type" in d:
        if not is_displayable(d["payload_type"]):
            problems.append("the payload type holds characters that cannot be shown")
        problems += registry.shown_by(d["payload_type"]).problems(d)
    return problems


def _shown_digests(d: dict[str, Any]) -> tuple[Digest, ...]:
    return tuple(
        Digest(x["algorithm"], bytes.fromhex(x["digest"]), x["artifact"]) for x in d["digests"]
    )


def decide(
    profile_path: Path | None,
    server: str | None,
    request_id: str,
    decision: str,
    reason: str,
    yes: bool,
    files: Sequence[Path] = (),
) -> None:
    """Show the whole request, ask, sign a statement built from what was shown, send it.
    With `files` (the officer's own copies), an approval needs each to be one it signs."""
    profile = load_profile(profile_path, server)
    key = approval_key(profile)
    d = request_dict(fetch(profile, request_id))
    _, file_rows, file_problems = check_files(d, files)
    describe(d, page=None, extra=file_rows)
    if d["state"] != "PENDING":
        raise ApproverError(f"request {request_id} is {d['state']}; nothing to decide")
    problems = unshowable(d) + file_problems
    if decision == "approve" and problems:
        raise ApproverError(f"request {request_id}: {'; '.join(problems)}; refusing to approve")
    if not yes and not click.confirm(
        f"{decision} this request as {profile.identity}?", default=False, err=True
    ):
        raise ApproverError("not confirmed; nothing was sent")
    digests = _shown_digests(d)
    statement = Statement(
        request_id=d["id"],
        key_name=d["key_name"],
        key_id=d["key_id"],
        decision=decision,
        approver=profile.identity,
        issued_at=dt.datetime.now(dt.UTC),
        reason=reason,
        **Statement.binding(
            digests,
            d.get("payload_type", ""),
            base64.b64decode(d["payload"]) if "payload" in d else b"",
        ),
    )
    envelope = sign_statement(statement, key)
    with stubs(profile, approval_pb2_grpc.ApprovalServiceStub) as (stub,):
        if decision == "approve":
            resp = call(
                profile, stub.Approve, approval_pb2.ApproveRequest(id=request_id, envelope=envelope)
            )
        else:
            resp = call(
                profile, stub.Deny, approval_pb2.DenyRequest(id=request_id, envelope=envelope)
            )
    after = request_dict(resp.request)
    if (after["id"], after["key_name"], after["key_id"], _shown_digests(after)) != (
        d["id"],
        d["key_name"],
        d["key_id"],
        digests,
    ):
        raise ApproverError(
            f"the server answered the {decision} of request {request_id} with a different "
            "request (id, key, key id or digests differ); your signed decision covers only "
            "the request shown above"
        )
    say(_outcome(decision, after))


def _outcome(decision: str, after: dict[str, Any]) -> str:
    """What the officer's decision did: "approved; 1 of 2 approvals", or how it ended."""
    if decision == "deny":
        return f"denied; request {after['id']} is {after['state']}"
    approved = sum(a["decision"] == "approve" for a in after["approvals"])
    count = f"{approved} of {after['threshold']} approvals"
    if after["state"] == "PENDING":
        return f"approved; request {after['id']} has {count}, waiting for more"
    return f"approved; request {after['id']} has {count} and is {after['state']}"
