"""The PKCS#11 token adapter: the only module that imports `pkcs11`.

Invariants upheld here (DESIGN §3.1, §8):
- keys are generated inside the token with SENSITIVE, EXTRACTABLE=false,
  PRIVATE and SIGN set explicitly and every other use off; there is no code
  path that imports or exports a private key;
- `check_key` refuses a private key that is extractable, not sensitive, not
  private, was ever extractable or non-sensitive, or can do more than sign;
- every token call runs under one lock on one long-lived logged-in session,
  because python-pkcs11 gives SoftHSM no locking callbacks; the session is
  never closed per request (closing logs every session out). Key handles are
  found once and cached. When the session is lost (token reset, session
  closed, logged out, stale handles, the token gone for a while: a SoftHSM
  token directory moved away and back, a network HSM restarting) the module
  is finalized and initialised again (SoftHSM 2.6 reads its token directory
  only in C_Initialize: once it has lost a token, C_GetSlotList fails until
  then), the token is found again by label (its slot may have changed), logged
  in to, the handles are re-found, and the call is tried once more. While the
  token cannot be found, calls fail at once with `TokenError` (UNAVAILABLE)
  and it is looked for again at most once a second; `check` is the probe the
  server's health status follows. Session handles are numbered afresh after
  C_Initialize, so a session from before is dropped, never closed (closing it
  could close a new one with the same number);
- a search that finds nothing on a token that went away returns no objects
  rather than an error: "no such object" is believed only once a key known to
  be there is found in the same session (`data_labels` anchors on the audit
  key), so a token that is gone never reads as one without a tree head;
- a batch of digests is signed in one loop on that session (`sign_digests`),
  holding the lock throughout except to let an audit checkpoint signature
  (`sign_message`) through: a 10,000-digest release never holds up the audit
  log, and so never every other call waiting on a commit.

PKCS#11 exceptions are translated to `TokenError`s here and nowhere else.
A key's algorithm name is recorded in its CKA_ID, so a key made for RSA-PSS is
never used with PKCS#1 v1.5 and vice versa.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
import structlog
from asn1crypto.core import OctetString
from asn1crypto.keys import ECDomainParameters
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from signer.algorithms import ALGORITHMS, DIGEST_INFO_PREFIX, HASH_SIZES, KeyAlgorithm
from signer.errors import (
    ConfigError,
    InvalidArgumentError,
    KeyNotFoundError,
    SignerError,
    TokenError,
    TokenNotFoundError,
    TokenPinError,
    WeakKeyError,
)

__all__ = ["SECURITY_ATTRIBUTES", "Token", "TokenKey"]

_ED25519_OID = "1.3.101.112"
_CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
_HASH_MECH = {"sha256": Mechanism.SHA256, "sha384": Mechanism.SHA384, "sha512": Mechanism.SHA512}
_MGF = {"sha256": MGF.SHA256, "sha384": MGF.SHA384, "sha512": MGF.SHA512}

# The private-key template: exactly these, nothing left to token defaults.
_PRIVATE_TEMPLATE: dict[Any, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
    Attribute.SIGN_RECOVER: False,
}
_PUBLIC_TEMPLATE: dict[Any, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
    Attribute.DERIVE: False,
}

# Attribute name -> value a private key must have.
SECURITY_ATTRIBUTES: dict[str, tuple[Any, bool]] = {
    "sensitive": (Attribute.SENSITIVE, True),
    "extractable": (Attribute.EXTRACTABLE, False),
    "private": (Attribute.PRIVATE, True),
    "always_sensitive": (Attribute.ALWAYS_SENSITIVE, True),
    "never_extractable": (Attribute.NEVER_EXTRACTABLE, True),
    "local": (Attribute.LOCAL, True),
    "sign": (Attribute.SIGN, True),
    "decrypt": (Attribute.DECRYPT, False),
    "unwrap": (Attribute.UNWRAP, False),
    "derive": (Attribute.DERIVE, False),
}


@dataclass(frozen=True)
class TokenKey:
    """A key pair in the token, as seen from outside: never the private part."""

    name: str
    algorithm: KeyAlgorithm | None  # None: a key this service did not make
    spki_der: bytes
    attributes: dict[str, bool]

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the public key's SubjectPublicKeyInfo DER."""
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def public_key_pem(self) -> str:
        key = serialization.load_der_public_key(self.spki_der)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    @property
    def weaknesses(self) -> list[str]:
        """The security attributes that break invariant 1, as `name=value`."""
        return [
            f"{name}={str(self.attributes.get(name)).lower()}"
            for name, (_, want) in SECURITY_ATTRIBUTES.items()
            if self.attributes.get(name) is not want
        ]


log = structlog.get_logger("signer.token")
T = TypeVar("T")


class _TokenGone(p11e.PKCS11Error):
    """A search came back without a key known to be in the token: it went away."""


# The session (or the token behind it) went away: open and log in again, then retry.
_SESSION_LOST = (
    _TokenGone,
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.DeviceRemoved,
    p11e.TokenNotPresent,
)


_RECOVERY_INTERVAL = 1.0  # seconds between attempts to find a lost token again


class Token:
    """One logged-in session on one token; every call serialized by one lock."""

    def __init__(self, module_path: str, label: str, pin: str) -> None:
        self._lock = threading.RLock()
        self._urgent = 0  # checkpoint signatures waiting: a batch steps aside for them
        self._urgent_done = threading.Condition()
        self._keys: dict[str, Any] = {}
        self._pin = pin  # kept in memory only, to log in again after a token reset
        self.label = label
        self.module_path = module_path
        self.resets = 0  # sessions reopened after being lost
        self.errors = 0  # token calls that failed
        self._lost: TokenError | None = None  # why the token cannot be reached, while it cannot
        self._next_attempt = 0.0  # monotonic time of the next attempt to find it again
        if not os.path.exists(module_path):
            raise ConfigError(
                f"PKCS#11 module {module_path} does not exist; install it "
                "(Debian: apt-get install softhsm2) or fix token.module",
                reason="TOKEN_MODULE_MISSING",
            )
        try:
            lib = pkcs11.lib(module_path)
            token = lib.get_token(token_label=label)
        except p11e.NoSuchToken:
            raise TokenNotFoundError(
                f"no token labelled {label!r} in {module_path}; check token.label "
                "(and SOFTHSM2_CONF / token.softhsm2_conf for SoftHSM)"
            ) from None
        except p11e.MultipleTokensReturned:
            raise TokenNotFoundError(f"more than one token labelled {label!r}") from None
        except p11e.PKCS11Error as e:
            raise TokenError(f"cannot open PKCS#11 module {module_path}: {_name(e)}") from e
        self._lib = lib
        self._token = token
        self._session: Any = self._login()

    def _login(self) -> Any:
        try:
            return self._token.open(user_pin=self._pin, rw=True)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
            raise TokenPinError(
                f"the token {self.label!r} rejected the PIN; check the PIN file or variable "
                "(the PIN itself is never printed)"
            ) from None
        except p11e.PinLocked:
            raise TokenPinError(f"the PIN of token {self.label!r} is locked") from None
        except p11e.PKCS11Error as e:
            raise TokenError(f"cannot log in to token {self.label!r}: {_name(e)}") from e

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        with self._lock:
            try:
                if self._session is None:  # lost earlier: find it again first
                    self._reopen()
                yield
            except SignerError:
                raise
            except p11e.PKCS11Error as e:
                self.errors += 1
                raise TokenError(f"token {self.label!r}: {what} failed: {_name(e)}") from e

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` under the lock; if the session was lost, log in again and retry once.

        Only for calls that change nothing in the token (signing, reading) or that
        are idempotent (setting a label), so a retry cannot do anything twice.
        """
        with self._call(what):
            try:
                return fn()
            except _SESSION_LOST as e:
                log.warning(
                    "token session lost; logging in again", token=self.label, error=_name(e)
                )
                self._reopen()
            return fn()

    def _reopen(self) -> None:
        """Drop the session and every cached handle; initialise the module again, find
        the token by label and log in. While that fails, tries at most once a second."""
        lost = self._lost
        if lost is not None and time.monotonic() < self._next_attempt:
            self.errors += 1
            raise type(lost)(str(lost), reason=lost.reason)
        self._keys.clear()
        if self._session is not None:
            with contextlib.suppress(p11e.PKCS11Error):  # the session may be gone already
                self._session.close()
            self._session = None  # from here on, never touched again (see the docstring)
        try:
            self._session = self._find_again()
        except TokenError as e:
            self.errors += 1
            self._next_attempt = time.monotonic() + _RECOVERY_INTERVAL
            if self._lost is None:
                log.error("token unreachable; calls fail until it is back", token=self.label)
            self._lost = e
            raise
        if self._lost is not None:
            log.warning("token reachable again; logged in", token=self.label)
        self._lost = None
        self.resets += 1

    def _find_again(self) -> Any:
        try:
            self._lib.reinitialize()
            self._token = self._lib.get_token(token_label=self.label)
        except p11e.NoSuchToken:
            raise TokenNotFoundError(
                f"the token {self.label!r} is not reachable (no token with that label in "
                f"{self.module_path}); it is looked for again at the next call"
            ) from None
        except p11e.MultipleTokensReturned:
            raise TokenNotFoundError(f"more than one token labelled {self.label!r}") from None
        except p11e.PKCS11Error as e:
            raise TokenError(f"the token {self.label!r} is not reachable: {_name(e)}") from e
        return self._login()

    def check(self, names: Sequence[str]) -> None:
        """Raise TokenError unless every key in `names` is found in the token now.

        The probe behind the server's health status: a key missing from a search
        means the token went away under the session (see the docstring), so the
        token is looked for again (at most once a second) before the probe fails.
        """

        def find_all() -> None:
            for name in names:
                if self._find(ObjectClass.PRIVATE_KEY, name) is None:
                    raise KeyNotFoundError(f"no key named {name!r} in token {self.label!r}")

        with self._call("checking the token"):
            try:
                find_all()
            except KeyNotFoundError:
                self._reopen()
                find_all()

    def close(self) -> None:
        # Already closed or token gone: nothing left to release.
        with self._lock, contextlib.suppress(p11e.PKCS11Error):
            if self._session is not None:
                self._session.close()

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
            private, public = dict(_PRIVATE_TEMPLATE), dict(_PUBLIC_TEMPLATE)
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
                curve = _ED25519_OID if ed else str(algorithm.curve)
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
                raise _TokenGone(f"key {beside!r} not found beside {application!r}")
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

    def _data_objects(self, application: str) -> list[Any]:
        return list(
            self._session.get_objects(
                {Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: application}
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
                signatures.append(_sign_one(priv, algorithm, hash_name, digest))

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

    # -- internals (caller holds the lock) --------------------------------

    def _find(self, cls: Any, name: str) -> Any | None:
        found = list(self._session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: name}))
        if len(found) > 1:
            raise TokenError(f"more than one {cls.name} labelled {name!r} in the token")
        return found[0] if found else None

    def _private(self, name: str) -> Any:
        priv = self._keys.get(name)
        if priv is None:
            priv = self._find(ObjectClass.PRIVATE_KEY, name)
            if priv is None:
                raise KeyNotFoundError(f"no key named {name!r} in token {self.label!r}")
            self._keys[name] = priv
        return priv

    def _describe(self, name: str) -> TokenKey:
        priv = self._find(ObjectClass.PRIVATE_KEY, name)
        pub = self._find(ObjectClass.PUBLIC_KEY, name)
        if priv is None or pub is None:
            raise KeyNotFoundError(
                f"no key pair named {name!r} in token {self.label!r}; "
                "see `signer keys list` or create it with `signer keys generate`"
            )
        attrs = {n: _bool_attr(priv, a) for n, (a, _) in SECURITY_ATTRIBUTES.items()}
        return TokenKey(name, _algorithm_of(priv), _spki(pub), attrs)


def _sign_one(priv: Any, algorithm: KeyAlgorithm, hash_name: str, digest: bytes) -> bytes:
    if algorithm.scheme == "ecdsa":
        raw = priv.sign(digest, mechanism=Mechanism.ECDSA)  # r || s
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
    if algorithm.scheme == "pss":
        param = (_HASH_MECH[hash_name], _MGF[hash_name], HASH_SIZES[hash_name])
        return bytes(priv.sign(digest, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=param))
    data = DIGEST_INFO_PREFIX[hash_name] + digest  # pkcs1
    return bytes(priv.sign(data, mechanism=Mechanism.RSA_PKCS))


def _slot_of(obj: Any) -> int:
    raw = bytes(obj[Attribute.VALUE])
    if raw not in (b"0", b"1"):
        raise TokenError(f"a token data object of this service holds an unknown slot {raw[:16]!r}")
    return int(raw)


def _name(e: Exception) -> str:
    return type(e).__name__ + (f" ({e})" if str(e) else "")


def _bool_attr(obj: Any, attr: Any) -> bool:
    try:
        return bool(obj[attr])
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return False


def _algorithm_of(priv: Any) -> KeyAlgorithm | None:
    try:
        raw = bytes(priv[Attribute.ID]).decode("ascii")
    except (p11e.AttributeTypeInvalid, UnicodeDecodeError):
        return None
    return ALGORITHMS.get(raw)


def _spki(pub: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a PKCS#11 public key object."""
    key_type = pub[Attribute.KEY_TYPE]
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    if key_type == KeyType.RSA:
        n = int.from_bytes(pub[Attribute.MODULUS], "big")
        e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
        public = rsa.RSAPublicNumbers(e, n).public_key()
    else:
        point = OctetString.load(bytes(pub[Attribute.EC_POINT])).native
        if key_type == KeyType.EC_EDWARDS:
            public = ed25519.Ed25519PublicKey.from_public_bytes(point)
        else:
            params = ECDomainParameters.load(bytes(pub[Attribute.EC_PARAMS]))
            curve = _CURVES.get(str(params.chosen.native))
            if curve is None:
                raise TokenError(f"unsupported EC curve {params.chosen.native}")
            public = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
