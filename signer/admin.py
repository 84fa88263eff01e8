"""Operator commands that work on the token and store directly (no server).

Key generation and its `key.generated` audit entry go together: the key is
generated inside the store transaction that appends the entry, and destroyed
again if that transaction cannot commit, so the audit log shows every key the
service can sign with (invariant 3).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from signer.algorithms import KeyAlgorithm
from signer.config import Config, load_config
from signer.hsm import Token, TokenKey
from signer.store import SqliteStore

__all__ = ["generate_key", "list_keys", "open_token"]


def open_token(config: Config) -> Token:
    config.token.apply_environment()
    return Token(config.token.module, config.token.label, config.token.read_pin())


def generate_key(config_path: Path, name: str, alg: KeyAlgorithm, actor: str) -> TokenKey:
    cfg = load_config(config_path)
    token = open_token(cfg)
    store = SqliteStore(cfg.store_path)
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
