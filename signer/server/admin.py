"""Operator commands that work on the token and store directly (no server).

`audit head` shows the token's audit tree head against the stored log, and
`reset_audit_head` is the one deliberate way to make the audit key accept a
log that does not extend it (a restored backup): it needs the token's PIN and
is recorded in the log it accepts (`signer.audit.checkpoint`).

Key generation and its `key.generated` audit entry (and, once the audit key
exists, a checkpoint covering it) go together: the key is
generated inside the store transaction that appends the entry, and destroyed
again if that transaction cannot commit, so the audit log shows every key the
service can sign with (invariant 3). A key that can make OpenPGP signatures
gets its OpenPGP creation time in that same step (`openpgp_keys`), recorded
in the entry; `set_openpgp_created` gives one, audit-logged the same way, to
a key that has none (generated before, or a token restored without it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.algorithms import KeyAlgorithm
from signer.audit.checkpoint import Checkpointer, HeadStatus, RefusalObserver
from signer.audit.head import TokenHeads, TreeHead
from signer.errors import ConfigError, InvalidArgumentError, KeyNotFoundError, TokenError
from signer.server import openpgp_keys
from signer.server.config import (
    Config,
    TokenStoreConfig,
    load_config,
    load_token_store_config,
)
from signer.store import Tx
from signer.store.factory import open_store
from signer.token.hsm import Token, label_of_version, version_of_label
from signer.token.keys import TokenKey

__all__ = [
    "audit_head",
    "audit_verifier",
    "checkpointer_for",
    "generate_key",
    "list_keys",
    "open_token",
    "remove_openpgp_created",
    "reset_audit_head",
    "set_openpgp_created",
]

OPENPGP_CREATED = "key.openpgp_created"
SKEW = 300  # seconds a creation time given by hand may be ahead of this clock


def open_token(config: Config | TokenStoreConfig) -> Token:
    config.token.apply_environment()
    return Token(config.token.module, config.token.label, config.token.read_pin())


def checkpointer_for(
    config: Config | TokenStoreConfig, token: Token, observer: RefusalObserver | None = None
) -> Checkpointer:
    """Checkpoints signed by the audit key in the token, under the configured origin,
    only over trees that extend the tree head the token keeps beside that key."""
    key = token.key(config.audit_key)
    public = serialization.load_der_public_key(key.spki_der)
    assert isinstance(public, ed25519.Ed25519PublicKey)
    return Checkpointer(
        config.audit_origin,
        public,
        lambda data: token.sign_message(config.audit_key, data),
        heads=TokenHeads(token, config.audit_key, key.key_id),
        observer=observer,
    )


def generate_key(config_path: Path, name: str, alg: KeyAlgorithm, actor: str) -> TokenKey:
    """Generate key `name` (its first version) in the token, recorded as `key.generated`.
    Reads only the config's `[token]`, `[store]` and `[audit]`: the first keys are made
    before a policy can name them."""
    return _generate(load_token_store_config(config_path), name, name, alg, actor, {})


def rotate_key(
    config_path: Path, name: str, alg: KeyAlgorithm | None, actor: str
) -> tuple[TokenKey, int]:
    """Generate the next version of policy key `name` (labelled `name@N`; of the same
    algorithm unless `alg`), recorded as `key.generated` naming the key id it is to replace.
    It signs nothing until a policy version pins it (`keys.NAME.key_id`); the old version
    stays in the token, unused, and its signatures stay verifiable."""
    cfg = load_config(config_path)
    rule = cfg.keys.get(name)
    if rule is None:
        raise ConfigError(f"{cfg.path}: keys.{name}: no such key in the policy; see [keys]")
    token = open_token(cfg)
    try:
        current = key_in_policy(cfg, token, name)
        number = 1 + max(version_of_label(name, k.name) or 1 for k in token.versions(name))
    finally:
        token.close()
    chosen = alg or rule.algorithm or current.algorithm
    if chosen is None:
        raise ConfigError(f"key {name} was not made by this service; give --algorithm")
    details = {"version": number, "rotates": current.key_id}
    key = _generate(cfg, name, label_of_version(name, number), chosen, actor, details)
    return key, number


def _generate(
    cfg: Config | TokenStoreConfig,
    name: str,
    label: str,
    alg: KeyAlgorithm,
    actor: str,
    more: dict[str, Any],
) -> TokenKey:
    token = open_token(cfg)
    store = open_store(cfg.store)
    created = int(time.time()) if openpgp_keys.can_openpgp(alg) else None
    try:
        key: TokenKey | None = None
        tx: Tx | None = None
        try:
            with store.transaction() as tx:
                key = token.generate(label, alg)
                if created is not None:
                    openpgp_keys.set_creation_time(token, label, created)
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
                        **({"openpgp_created": created} if created is not None else {}),
                        **({"label": label} if label != name else {}),
                        **more,
                    },
                )
                _cover(cfg, token, tx)
        except BaseException:
            if key is not None and not (tx is not None and tx.committed):
                token.destroy(label)  # its entry was not written; with it written, keep it
                _forget_creation_time(token, label, created)
            raise
        return key
    finally:
        store.close()
        token.close()


def set_openpgp_created(config_path: Path, name: str, created: int, actor: str) -> TokenKey:
    """Give key `name`, which has none, the OpenPGP creation time `created`: in the token,
    and in a `key.openpgp_created` entry of the same transaction (removed again if that
    cannot commit). Refused if the key has one already (its fingerprint would change), if
    it cannot make OpenPGP signatures, or if `created` is not a time up to now."""
    if not 0 < created <= openpgp_keys.MAX_TIME:
        raise InvalidArgumentError(
            f"an OpenPGP creation time is 1..{openpgp_keys.MAX_TIME} (seconds since 1970), "
            f"not {created}"
        )
    if created > time.time() + SKEW:
        raise InvalidArgumentError(f"OpenPGP creation time {created} is in the future")
    cfg = load_config(config_path)
    token = open_token(cfg)
    try:
        key = key_in_policy(cfg, token, name)
        label = key.name  # the version the policy pins (name@N once rotated)
        if key.algorithm is None or not openpgp_keys.can_openpgp(key.algorithm):
            shown = key.algorithm.name if key.algorithm else "a key this service did not make"
            raise ConfigError(f"key {name} ({shown}) cannot make OpenPGP signatures")
        kept = openpgp_keys.creation_time(token, label)
        if kept is not None:
            raise ConfigError(
                f"key {name} has OpenPGP creation time {kept} already; it is part of the key's "
                "OpenPGP fingerprint and is never changed"
            )
        certified = openpgp_keys.certified_time(token, label, key.public_key_pem)
        if certified is not None and certified != created:
            raise ConfigError(
                f"the token keeps key {name}'s OpenPGP certificate, made with creation time "
                f"{certified}: give that time, or its fingerprint changes"
            )
        value = str(created).encode()
        store = open_store(cfg.store)
        try:
            tx: Tx | None = None
            written = False
            try:
                with store.transaction() as tx:
                    token.add_key_data(openpgp_keys.CREATED, label, value)
                    written = True
                    try:  # another admin at the same moment: two times; keep neither ours
                        openpgp_keys.creation_time(token, label)
                    except TokenError:
                        raise ConfigError(
                            f"another OpenPGP creation time was given to key {name} at the "
                            "same moment; see `signer keys openpgp-created`"
                        ) from None
                    _record_created(cfg, token, tx, actor, key, created)
            except BaseException:
                if written and not (tx is not None and tx.committed):
                    token.remove_key_data(openpgp_keys.CREATED, label, value)
                raise
        finally:
            store.close()
        return key
    finally:
        token.close()


def remove_openpgp_created(config_path: Path, name: str, wrong: int, actor: str) -> int:
    """Where the token keeps two OpenPGP creation times beside key `name` (OpenPGP is
    refused for it until one is left), remove `wrong`, recorded as a `key.openpgp_created`
    entry naming what was removed; return the one left. Refused unless there are exactly
    two and `wrong` is one of them."""
    cfg = load_config(config_path)
    token = open_token(cfg)
    try:
        key = key_in_policy(cfg, token, name)
        label = key.name  # the version the policy pins (name@N once rotated)
        raw = token.key_data(openpgp_keys.CREATED, label)
        times = sorted({int(v) for v in raw if v.isdigit() and len(v) <= 10})
        if len(times) != 2 or wrong not in times or len(raw) != len(set(raw)):
            raise ConfigError(
                f"key {name} does not keep two OpenPGP creation times of which one is {wrong}; "
                "nothing removed"
            )
        (left,) = [t for t in times if t != wrong]
        store = open_store(cfg.store)
        try:
            with store.transaction() as tx:
                _record_created(cfg, token, tx, actor, key, left, removed=wrong)
        finally:
            store.close()
        # Removed once recorded: a crash before leaves both, and the command runs again.
        token.remove_key_data(openpgp_keys.CREATED, label, str(wrong).encode())
        return left
    finally:
        token.close()


def _record_created(
    cfg: Config, token: Token, tx: Tx, actor: str, key: TokenKey, created: int, **more: int
) -> None:
    """The `key.openpgp_created` entry of `key` (and its checkpoint) in `tx`."""
    name = key.name.partition("@")[0]  # the key's name, whichever version of it
    details = {"key_name": name, "key_id": key.key_id, "openpgp_created": created, **more}
    tx.append_audit(dt.datetime.now(dt.UTC), OPENPGP_CREATED, actor, "", name, details)
    _cover(cfg, token, tx)


def _cover(cfg: Config | TokenStoreConfig, token: Token, tx: Tx) -> None:
    """Cover the entries of `tx` with a checkpoint once the audit key exists; before
    that, the next checkpoint (at server start) covers them."""
    with contextlib.suppress(KeyNotFoundError):
        checkpointer_for(cfg, token).cover(tx)


def _forget_creation_time(token: Token, name: str, created: int | None) -> None:
    if created is not None:
        token.remove_key_data(openpgp_keys.CREATED, name, str(created).encode())


def key_in_policy(cfg: Config, token: Token, name: str) -> TokenKey:
    """Signing key `name` as `cfg`'s policy pins it (the version with its `key_id`), or
    its first version (labelled `name`) where the policy pins none."""
    rule = cfg.keys.get(name)
    if rule is not None and rule.key_id:
        return token.key_by_id(name, rule.key_id)
    return token.key(name)


def list_keys(config_path: Path) -> list[TokenKey]:
    token = open_token(load_token_store_config(config_path))
    try:
        return token.keys()
    finally:
        token.close()


def audit_verifier(config_path: Path) -> str:
    """The signed-note verifier string of the audit key: what auditors and clients pin."""
    cfg = load_token_store_config(config_path)
    token = open_token(cfg)
    try:
        return str(checkpointer_for(cfg, token).verifier)
    finally:
        token.close()


@contextlib.contextmanager
def _audit_tx(config_path: Path) -> Iterator[tuple[Checkpointer, Tx]]:
    """The audit checkpointer over the token, and one store transaction; both closed after."""
    cfg = load_config(config_path)
    token = open_token(cfg)
    try:
        store = open_store(cfg.store)
        try:
            with store.transaction() as tx:
                yield checkpointer_for(cfg, token), tx
        finally:
            store.close()
    finally:
        token.close()


def audit_head(config_path: Path) -> HeadStatus:
    """The token's audit tree head and whether the stored log extends it (changes nothing)."""
    with _audit_tx(config_path) as (checkpointer, tx):
        return checkpointer.status(tx)


def reset_audit_head(config_path: Path, reason: str, actor: str) -> TreeHead:
    """Accept the stored log as it is (after restoring a backup): an `audit.head_reset`
    entry records why, the token's head moves to the log with it, a checkpoint covers it."""
    with _audit_tx(config_path) as (checkpointer, tx):
        return checkpointer.reset(tx, actor, reason, dt.datetime.now(dt.UTC))
