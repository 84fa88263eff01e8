"""Operator commands that work on the token and store directly (no server).

Key generation and its `key.generated` audit entry (and, once the audit key
exists, a checkpoint covering it) go together: the key is
generated inside the store transaction that appends the entry, and destroyed
again if that transaction cannot commit, so the audit log shows every key the
service can sign with (invariant 3).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.algorithms import KeyAlgorithm
from signer.audit.checkpoint import Checkpointer
from signer.config import Config, load_config
from signer.errors import KeyNotFoundError
from signer.hsm import Token, TokenKey
from signer.store import open_store

__all__ = ["audit_verifier", "checkpointer_for", "generate_key", "list_keys", "open_token"]


def open_token(config: Config) -> Token:
    config.token.apply_environment()
    return Token(config.token.module, config.token.label, config.token.read_pin())


def checkpointer_for(config: Config, token: Token) -> Checkpointer:
    """Checkpoints signed by the audit key in the token, under the configured origin."""
    public = serialization.load_der_public_key(token.key(config.audit_key).spki_der)
    assert isinstance(public, ed25519.Ed25519PublicKey)
    return Checkpointer(
        config.audit_origin, public, lambda data: token.sign_message(config.audit_key, data)
    )


def generate_key(config_path: Path, name: str, alg: KeyAlgorithm, actor: str) -> TokenKey:
    cfg = load_config(config_path)
    token = open_token(cfg)
    store = open_store(cfg.store)
    try:
        key: TokenKey | None = None
        try:
            with store.transaction() as tx:
                key = token.generate(name, alg)
                tx.append_audit(
                    dt.datetime.now(dt.UTC),
                    "key.generated",
                    actor,
                    "",
                    name,
                    {
                        "key_name": name,
                        "algorithm": alg.name,
                        "key_id": key.key_id,
                        "token": cfg.token.label,
                        "attributes": key.attributes,
                    },
                )
                # Cover the entry with a checkpoint once the audit key exists; before
                # that, the next checkpoint (at server start) covers it.
                with contextlib.suppress(KeyNotFoundError):
                    checkpointer_for(cfg, token).cover(tx)
        except BaseException:
            if key is not None:
                token.destroy(name)
            raise
        return key
    finally:
        store.close()
        token.close()


def list_keys(config_path: Path) -> list[TokenKey]:
    token = open_token(load_config(config_path))
    try:
        return token.keys()
    finally:
        token.close()


def audit_verifier(config_path: Path) -> str:
    """The signed-note verifier string of the audit key: what auditors and clients pin."""
    cfg = load_config(config_path)
    token = open_token(cfg)
    try:
        return str(checkpointer_for(cfg, token).verifier)
    finally:
        token.close()
