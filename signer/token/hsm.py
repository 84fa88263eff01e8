"""The PKCS#11 token adapter: `Token`, the key operations on one `Connection`.

Only `signer.token` imports `pkcs11` (tests/test_imports.py). Invariants
upheld here (docs/architecture.md §3.1, §8), with the session rules of
`signer.token.connection` and the key rules of `signer.token.keys`:
- keys are generated inside the token from the sign-only templates; there is
  no code path that imports or exports a private key;
- `check_key` refuses a private key that is extractable, not sensitive, not
  private, was ever extractable or non-sensitive, or can do more than sign,
  or that this service did not make, or of another algorithm than configured;
- a search that finds nothing on a token that went away returns no objects
  rather than an error: "no such object" is believed only once a key known to
  be there is found in the same session (`data_labels` anchors on the audit
  key), so a token that is gone never reads as one without a tree head;
- a batch of digests is signed in one loop on that session (`sign_digests`),
  holding the lock throughout except to let an audit checkpoint signature
  (`sign_message`) through: a 10,000-digest release never holds up the audit
  log, and so never every other call waiting on a commit.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from signer.algorithms import HASH_SIZES, KeyAlgorithm
from signer.errors import (
    ConfigError,
    InvalidArgumentError,
    KeyNotFoundError,
    TokenError,
    WeakKeyError,
)
from signer.token.connection import Connection, TokenGone
from signer.token.keys import (
    ED25519_OID,
    PRIVATE_TEMPLATE,
    PUBLIC_TEMPLATE,
    SECURITY_ATTRIBUTES,
    TokenKey,
    algorithm_of,
    bool_attr,
    sign_one,
    spki,
)

__all__ = ["Token", "label_of_version", "version_of_label"]


def label_of_version(name: str, version: int) -> str:
    """The CKA_LABEL of version `version` of key `name` (the first keeps the bare name)."""
    return name if version == 1 else f"{name}@{version}"


def version_of_label(name: str, label: str) -> int | None:
    """Which version of key `name` the label `label` is, None if it is not one of its."""
    if label == name:
        return 1
    head, at, tail = label.rpartition("@")
    if head != name or not at or not tail.isdigit() or tail.startswith("0") or len(tail) > 6:
        return None
    return int(tail) if int(tail) >= 2 else None


class Token(Connection):
    """A token's keys, data objects and signatures, every call on one locked session."""

    def __init__(self, module_path: str, label: str, pin: str) -> None:
        self._urgent = 0  # checkpoint signatures waiting: a batch steps aside for them
        self._urgent_done = threading.Condition()
        super().__init__(module_path, label, pin)

    # -- keys -------------------------------------------------------------

    def generate(self, name: str, algorithm: KeyAlgorithm) -> TokenKey:
        """Generate a sign-only key pair named `name` inside the token."""
        with self._call(f"generating {name}"):
            if self._find(ObjectClass.PRIVATE_KEY, name) or self._find(
                ObjectClass.PUBLIC_KEY, name
            ):
                raise InvalidArgumentError(
                    f"a key named {name!r} already exists in token {self.label!r}",
                    reason="KEY_EXISTS",
                )
            kid = algorithm.name.encode()
            private, public = dict(PRIVATE_TEMPLATE), dict(PUBLIC_TEMPLATE)
            if algorithm.family == "rsa":
                self._session.generate_keypair(
                    KeyType.RSA,
                    algorithm.bits,
                    store=True,
                    label=name,
                    id=kid,
                    private_template=private,
                    public_template=public,
                )
            else:
                ed = algorithm.family == "ed25519"
                curve = ED25519_OID if ed else str(algorithm.curve)
                params = self._session.create_domain_parameters(
                    KeyType.EC_EDWARDS if ed else KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                    local=True,
                )
                params.generate_keypair(
                    store=True,
                    label=name,
                    id=kid,
                    mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN
                    if ed
                    else Mechanism.EC_KEY_PAIR_GEN,
                    private_template=private,
                    public_template=public,
                )
            return self._describe(name)

    def destroy(self, name: str) -> None:
        """Remove a key pair (used only to undo a generation whose audit entry failed)."""
        with self._call(f"destroying {name}"):
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                obj = self._find(cls, name)
                if obj is not None:
                    obj.destroy()
            self._keys.pop(name, None)

    def keys(self) -> list[TokenKey]:
        """Every key pair in the token, sorted by name."""
        with self._call("listing keys"):
            names = {
                str(o[Attribute.LABEL])
                for o in self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            }
            return [self._describe(n) for n in sorted(names)]

    def versions(self, name: str) -> list[TokenKey]:
        """Every key pair of key `name`: labelled `name` (its first) or `name@N` (the Nth,
        from `signer keys rotate`; `@` is in no key name), in version order."""
        with self._call(f"listing the versions of {name}"):
            labels = [
                str(o[Attribute.LABEL])
                for o in self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})
            ]
        found = [(version_of_label(name, x), x) for x in labels]
        return [self.key(x) for n, x in sorted(f for f in found if f[0] is not None)]

    def key_by_id(self, name: str, key_id: str) -> TokenKey:
        """The version of key `name` whose key id is `key_id`; KeyNotFoundError naming the
        versions the token holds if none is."""
        versions = self.versions(name)
        for k in versions:
            if k.key_id == key_id:
                return k
        held = ", ".join(f"{k.name} ({k.key_id[:16]}...)" for k in versions) or "none"
        raise KeyNotFoundError(
            f"token {self.label!r} holds no version of key {name!r} with key id "
            f"{key_id[:16]}... (it holds: {held})"
        )

    def key(self, name: str) -> TokenKey:
        """One key pair by name; KeyNotFoundError if absent."""
        return self._retrying(f"reading key {name}", lambda: self._describe(name))

    def check_key(self, name: str, expected: KeyAlgorithm | None = None) -> TokenKey:
        """Return the key if it upholds invariant 1 (and has `expected` algorithm)."""
        key = self.key(name)
        if key.weaknesses:
            raise WeakKeyError(
                f"key {name!r} in token {self.label!r} is not protected: "
                f"{', '.join(key.weaknesses)}; generate a new key with `signer keys generate`"
            )
        if key.algorithm is None:
            raise WeakKeyError(
                f"key {name!r} was not generated by this service (no algorithm in CKA_ID); "
                "generate one with `signer keys generate`",
                reason="UNKNOWN_KEY_ALGORITHM",
            )
        if expected is not None and key.algorithm != expected:
            raise ConfigError(
                f"key {name!r} in the token is {key.algorithm.name}, config says {expected.name}",
                reason="KEY_ALGORITHM_MISMATCH",
            )
        return key

    # -- private data objects (the audit tree head) -------------------------

    def data_labels(self, application: str, beside: str) -> dict[int, str]:
        """CKA_LABEL of each private data object of `application`, by slot (its CKA_VALUE).

        `beside` names the key these objects belong to: it must be found in the same
        session after them, so a token that went away never reads as holding none.
        """

        def read() -> dict[int, str]:
            out: dict[int, str] = {}
            for obj in self._data_objects(application):
                slot = _slot_of(obj)
                if slot in out:
                    raise TokenError(f"two token objects {application!r} in slot {slot}")
                out[slot] = str(obj[Attribute.LABEL])
            if self._find(ObjectClass.PRIVATE_KEY, beside) is None:
                raise TokenGone(f"key {beside!r} not found beside {application!r}")
            return out

        return self._retrying(f"reading {application}", read)

    def set_data_label(self, application: str, slot: int, label: str) -> None:
        """Relabel the data object of `application` in `slot`; create it (private, on the
        token, its slot as CKA_VALUE) if there is none."""

        def write() -> None:
            for obj in self._data_objects(application):
                if _slot_of(obj) == slot:
                    obj[Attribute.LABEL] = label
                    return
            self._session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: True,
                    Attribute.APPLICATION: application,
                    Attribute.VALUE: str(slot).encode(),
                    Attribute.LABEL: label,
                }
            )

        self._retrying(f"writing {application}", write)

    # -- facts kept beside a key (its OpenPGP creation time and certificate) --------

    def key_data(self, application: str, name: str) -> list[bytes]:
        """CKA_VALUE of each private data object of `application` kept beside key `name`
        (labelled with its name). The key must be found in the same session after them,
        so a token that went away never reads as holding none."""

        def read() -> list[bytes]:
            found = [
                bytes(o[Attribute.VALUE])
                for o in self._data_objects(application)
                if str(o[Attribute.LABEL]) == name
            ]
            if self._find(ObjectClass.PRIVATE_KEY, name) is None:
                raise KeyNotFoundError(f"no key named {name!r} in token {self.label!r}")
            return found

        return self._retrying(f"reading {application} of {name}", read)

    def add_key_data(self, application: str, name: str, value: bytes) -> None:
        """Keep `value` beside key `name`: a new private, unmodifiable data object."""
        with self._call(f"writing {application} of {name}"):
            if self._find(ObjectClass.PRIVATE_KEY, name) is None:
                raise KeyNotFoundError(f"no key named {name!r} in token {self.label!r}")
            self._session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.APPLICATION: application,
                    Attribute.VALUE: value,
                    Attribute.LABEL: name,
                }
            )

    def remove_key_data(self, application: str, name: str, value: bytes) -> None:
        """Destroy the data objects of `application` beside key `name` holding `value`."""
        with self._call(f"removing {application} of {name}"):
            for o in self._data_objects(application):
                if str(o[Attribute.LABEL]) == name and bytes(o[Attribute.VALUE]) == value:
                    o.destroy()

    def replace_key_data(self, application: str, name: str, value: bytes) -> None:
        """Keep `value` as the one object of `application` beside key `name`: written
        first, the others removed after (a crash between leaves both, never none)."""
        kept = self.key_data(application, name)
        if value not in kept:
            self.add_key_data(application, name, value)
        for v in kept:
            if v != value:
                self.remove_key_data(application, name, v)

    def _data_objects(self, application: str) -> list[Any]:
        """This service's data objects of `application`: private token objects only, which
        no one can make without the user PIN (a public object with the same application,
        made by anyone who can open a session, is not one of them)."""
        return list(
            self._session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.APPLICATION: application,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                }
            )
        )

    # -- signing ----------------------------------------------------------

    def sign_digest(
        self, name: str, algorithm: KeyAlgorithm, hash_name: str, digest: bytes
    ) -> bytes:
        """Sign a precomputed digest; ECDSA results are DER-encoded."""
        return self.sign_digests(name, algorithm, [(hash_name, digest)])[0]

    def sign_digests(
        self, name: str, algorithm: KeyAlgorithm, digests: Sequence[tuple[str, bytes]]
    ) -> list[bytes]:
        """Sign (hash name, digest) pairs in order, in one loop on the session.

        The loop gives the lock up only while a checkpoint signature is waiting,
        then carries on where it stopped.
        """
        for hash_name, digest in digests:
            if len(digest) != HASH_SIZES[hash_name]:
                raise InvalidArgumentError(
                    f"{hash_name} digest must be {HASH_SIZES[hash_name]} bytes"
                )
        if algorithm.scheme not in ("ecdsa", "pss", "pkcs1"):
            raise InvalidArgumentError(f"{algorithm.name} keys do not sign digests")

        signatures: list[bytes] = []

        def sign_until_urgent() -> None:
            priv = self._private(name)
            while len(signatures) < len(digests) and not self._urgent:
                hash_name, digest = digests[len(signatures)]
                signatures.append(sign_one(priv, algorithm, hash_name, digest))

        while True:
            self._retrying(f"signing with {name}", sign_until_urgent)
            if len(signatures) == len(digests):
                return signatures
            with self._urgent_done:
                self._urgent_done.wait_for(lambda: not self._urgent, timeout=1.0)

    def sign_message(self, name: str, message: bytes) -> bytes:
        """Ed25519 signature over a whole message (audit checkpoints), ahead of batches."""
        with self._urgent_done:
            self._urgent += 1
        try:
            return self._retrying(
                f"signing with {name}",
                lambda: bytes(self._private(name).sign(message, mechanism=Mechanism.EDDSA)),
            )
        finally:
            with self._urgent_done:
                self._urgent -= 1
                self._urgent_done.notify_all()

    def _describe(self, name: str) -> TokenKey:
        priv = self._find(ObjectClass.PRIVATE_KEY, name)
        pub = self._find(ObjectClass.PUBLIC_KEY, name)
        if priv is None or pub is None:
            raise KeyNotFoundError(
                f"no key pair named {name!r} in token {self.label!r}; "
                "see `signer keys list` or create it with `signer keys generate`"
            )
        attrs = {n: bool_attr(priv, a) for n, (a, _) in SECURITY_ATTRIBUTES.items()}
        return TokenKey(name, algorithm_of(priv), spki(pub), attrs)


def _slot_of(obj: Any) -> int:
    raw = bytes(obj[Attribute.VALUE])
    if raw not in (b"0", b"1"):
        raise TokenError(f"a token data object of this service holds an unknown slot {raw[:16]!r}")
    return int(raw)
