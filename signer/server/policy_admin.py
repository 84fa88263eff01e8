"""The operator's side of the policy chain (docs/architecture.md §11), on the token and the store.

A change is made in three steps, none of which the operator can do alone:

1. `propose`: the new `signer.toml` is read and validated; its policy becomes a
   proposal (`Proposal`: the next version number, the hash of the version in
   force, the whole new document and the one before it), written to a file for
   the officers and recorded as a `policy.proposed` audit entry;
2. each officer reviews it with `approver policy show` (the diff and the whole
   document) and signs it with `approver policy approve`;
3. `adopt`: with the approvals of a threshold of the officers of the version in
   force and of the new one, the new document becomes the next version
   (`signer.core.policy_log.adopt`), recorded in the log in one transaction with
   its checkpoint. Without them nothing is written, and the error names whose
   approvals are missing.

The chain is read only from a log the token's tree head vouches for, and the
server refuses to start on a `signer.toml` whose policy is not the version in force
(`check_config`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path

from signer.audit.checkpoint import Checkpointer
from signer.core import policy_log
from signer.errors import ConfigError
from signer.policy_chain import Proposal, Version, check_chain, new_lifts
from signer.server import policy_head
from signer.server.admin import checkpointer_for, open_token
from signer.server.config import Config, load_config
from signer.store import Store, Tx
from signer.store.factory import open_store
from signer.token.hsm import Token

__all__ = [
    "adopt",
    "check_config",
    "checked_chain",
    "checked_in_force",
    "history",
    "propose",
    "require_trusted",
]


@contextlib.contextmanager
def _trusted_tx(config: Config) -> Iterator[tuple[Checkpointer, Tx, Token]]:
    """A store transaction on a log the token's tree head vouches for (else the head's
    error, before any policy is read from it), with the audit checkpointer and the token."""
    token = open_token(config)
    try:
        store: Store = open_store(config.store)
        try:
            with store.transaction() as tx:
                yield require_trusted(config, token, tx), tx, token
        finally:
            store.close()
    finally:
        token.close()


def require_trusted(config: Config, token: Token, tx: Tx) -> Checkpointer:
    """The audit checkpointer, once the token's tree head vouches for the log `tx` reads
    (else the head's error, before any policy is read from it)."""
    checkpointer = checkpointer_for(config, token)
    status = checkpointer.status(tx)
    if status.problem is not None:
        raise status.problem
    return checkpointer


def checked_in_force(config: Config, token: Token, tx: Tx) -> Version | None:
    """The version in force: the chain walked from version 1, and reaching the version
    the token records (`policy_head`)."""
    return checked_chain(config, token, tx)[1]


def checked_chain(config: Config, token: Token, tx: Tx) -> tuple[list[Version], Version | None]:
    """The chain the log holds (oldest first), and the version in force, as
    `checked_in_force` finds it."""
    chain = policy_log.read_chain(tx)
    policy_head.require(chain, policy_head.read(token, config.audit_key))
    return chain, check_chain(chain) if chain else None


def history(config_path: Path) -> list[tuple[Version, tuple[str, ...], dt.datetime]]:
    """Every version in force in turn, checked as a chain: who approved it, and when."""
    config = load_config(config_path)
    with _trusted_tx(config) as (_, tx, token):
        walked = policy_log.walk(tx)
        policy_head.require([v for v, _, _ in walked], policy_head.read(token, config.audit_key))
        return [(v, who, e.time) for v, who, e in walked]


def propose(config_path: Path, new_path: Path, actor: str) -> Proposal:
    """The next version with `new_path`'s policy (a whole new `signer.toml`, validated as
    the server would), recorded as a `policy.proposed` entry."""
    config = load_config(config_path)
    new = load_config(new_path)
    unpinned = sorted(n for n, k in new.keys.items() if not k.key_id)
    if unpinned:
        raise ConfigError(
            f"{new_path}: keys.{unpinned[0]}.key_id: missing; a server does not start on a "
            "policy that does not pin which token key signs (the key id `signer keys list` "
            "shows)"
        )
    with _trusted_tx(config) as (checkpointer, tx, token):
        current = checked_in_force(config, token, tx)
        if current is not None and current.sha256 == new.policy_hash:
            raise ConfigError(f"{new_path}: its policy is version {current.number}, in force")
        proposal = Proposal(
            current.number + 1 if current else 1,
            current.sha256 if current else "",
            new.policy_document,
            current.document if current else None,
        )
        tx.append_audit(
            dt.datetime.now(dt.UTC),
            policy_log.PROPOSED,
            actor,
            "",
            "",
            {
                "version": proposal.number,
                "sha256": proposal.sha256,
                "previous_sha256": proposal.previous_sha256,
                "document": dict(proposal.document),
            },
        )
        checkpointer.cover(tx)
    return proposal


def adopt(config_path: Path, approvals: Sequence[bytes], actor: str) -> Version:
    """Make `config_path`'s policy the next version, with these officers' approvals;
    PolicyChainError naming whose are missing, and nothing written, if they do not."""
    config = load_config(config_path)
    with _trusted_tx(config) as (checkpointer, tx, token):
        chain = policy_log.read_chain(tx)
        previous = check_chain(chain) if chain else None
        version = policy_log.adopt(
            tx, previous, config.policy_document, approvals, actor, dt.datetime.now(dt.UTC)
        )
        # The token may record this very version already (an adoption whose commit
        # failed after its record): adopting it again completes it; any other is refused.
        policy_head.require([*chain, version], policy_head.read(token, config.audit_key))
        checkpointer.cover(tx)
        # The token's marks of the freezes it lifts go before the commit: if it fails,
        # the rows stay and the server's start marks them again (`reconcile`).
        freezes = policy_head.TokenFreezes(token)
        for name, index in new_lifts(previous, version).items():
            freezes.unmark(name, index)
        policy_head.record(token, config.audit_key, version)  # before the commit
    return version


def check_config(config: Config, in_force: Version | None) -> None:
    """Refuse a config whose policy is not the version in force: an edited policy does
    nothing but stop the start, naming the way a change is made."""
    if in_force is None:
        raise ConfigError(
            f"{config.path}: the store holds no policy version yet; version 1 must be "
            "approved by its [policy] officers: `signer policy propose`, `approver policy "
            "approve`, `signer policy adopt` (see docs/policy.md)"
        )
    if config.policy_hash != in_force.sha256:
        raise ConfigError(
            f"{config.path}: its policy ({config.policy_hash[:16]}...) is not version "
            f"{in_force.number} in force ({in_force.sha256[:16]}...); nothing is signed under "
            "a policy the officers did not approve: propose the change with `signer policy "
            "propose`, or restore the file of the version in force"
        )
