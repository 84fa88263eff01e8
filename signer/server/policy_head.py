"""The policy version in force, kept in the token beside the audit key (docs/architecture.md §11).

The chain lives in the audit log, but whoever owns the database can hide its last
links without breaking the tree (the `event` column a listing filters on is not
hashed), and an operator with the token's PIN can accept an older or an empty log
(`signer audit head --reset`) and start a new chain from a version 1 of their own.
So every adoption also records the new version's number and hash in a private token
object that neither of them can write without the PIN and that a reset never lowers;
a chain that does not reach that version is refused (`require`), and so is a new
version 1 once any version was recorded. Written before the adoption commits: a
failed commit leaves the token ahead of the log, and the start is refused until the
same version is adopted again (with the same approvals) — fail closed, never open.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence

from signer.errors import PolicyChainError, TokenError
from signer.policy_chain import Version
from signer.token.hsm import Token

__all__ = [
    "APPLICATION",
    "FREEZES",
    "TokenFreezes",
    "TokenHead",
    "Watch",
    "read",
    "record",
    "require",
]

APPLICATION = "signer policy version in force"
FREEZES = "signer key frozen since"  # beside a signing key: the audit index of its freeze
_VALUE = re.compile(rb"(?P<number>[1-9][0-9]{0,17}) (?P<sha256>[0-9a-f]{64})\Z")


def read(token: Token, audit_key: str) -> tuple[int, str] | None:
    """(number, sha256) of the newest version the token records; None if none."""
    found = []
    for value in token.key_data(APPLICATION, audit_key):
        m = _VALUE.match(value)
        if m is None:
            raise TokenError(
                f"the token object {APPLICATION!r} does not hold a policy version; it was not "
                "written by this service"
            )
        found.append((int(m["number"]), m["sha256"].decode()))
    return max(found) if found else None


def record(token: Token, audit_key: str, version: Version) -> None:
    """Record `version` as the one in force: written first, the older ones removed after
    (a crash between leaves both, and the newer counts)."""
    token.replace_key_data(APPLICATION, audit_key, f"{version.number} {version.sha256}".encode())


def require(chain: Sequence[Version], recorded: tuple[int, str] | None) -> None:
    """PolicyChainError unless the chain (oldest first) holds the version the token
    records: it may be longer (a crash after the commit), never shorter or another."""
    if recorded is None:
        return
    number, sha256 = recorded
    held = next((v for v in chain if v.number == number), None)
    if held is None:
        raise PolicyChainError(
            f"the token records policy version {number} ({sha256[:16]}...) as adopted, but "
            f"the audit log's chain ends at version {len(chain) or 'none'}: versions were "
            "removed or hidden (or an older copy of the database restored); adopt them again "
            "with their approvals (docs/policy.md)"
        )
    if held.sha256 != sha256:
        raise PolicyChainError(
            f"policy version {number} in the audit log ({held.sha256[:16]}...) is not the one "
            f"the token records ({sha256[:16]}...): the chain was replaced"
        )


class TokenHead:
    """The token's record of the version in force, for the core's online adoption
    (`signer.core.policy_desk.PolicyHead`)."""

    def __init__(self, token: Token, audit_key: str) -> None:
        self._token = token
        self._audit_key = audit_key

    def require(self, chain: list[Version]) -> None:
        require(chain, read(self._token, self._audit_key))

    def record(self, version: Version) -> None:
        record(self._token, self._audit_key, version)

    def lift(self, key_name: str, index: int) -> None:
        TokenFreezes(self._token).unmark(key_name, index)


class Watch:
    """Whether the version a server enforces is still the one in force: the token's
    record read at most once a second (a version adopted meanwhile, on any host, stops
    this server's signing and new requests within that second, until it takes the new
    one on, `follow`; a token that cannot be read raises its TokenError)."""

    def __init__(self, token: Token, audit_key: str, loaded: Version | None) -> None:
        self._token = token
        self._audit_key = audit_key
        self._loaded = (loaded.number, loaded.sha256) if loaded is not None else None
        self._lock = threading.Lock()
        self._checked = -1.0
        self._why: str | None = None

    def superseded(self, fresh: bool = False) -> str | None:
        """Why the loaded version is not in force any more, or None if it is (`fresh`:
        read from the token now, as where a signature is recorded)."""
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._checked >= 1.0:
                # A token that cannot be read raises (UNAVAILABLE, as every token call):
                # nothing is signed meanwhile, and it is read again at the next call.
                recorded = read(self._token, self._audit_key)
                self._checked = now
                self._why = None
                # A token that records no version (a chain adopted before the token
                # kept one) has nothing to compare: the start checked the chain.
                if recorded is not None and recorded != self._loaded:
                    self._why = (
                        f"policy version {recorded[0]} is in force now; this server still "
                        f"enforces version {self._loaded[0] if self._loaded else 'none'}"
                    )
            return self._why

    def follow(self, version: Version) -> None:
        """`version` is the one this server enforces from now on."""
        with self._lock:
            self._loaded = (version.number, version.sha256)
            self._checked = -1.0


class TokenFreezes:
    """The freezes of signing keys, also kept as private token objects beside each key
    (`signer.core.signing.FreezeMarks`): deleting the database row lifts nothing. Only
    `signer policy adopt` (with the PIN, for a version the officers approved) removes
    one."""

    def __init__(self, token: Token) -> None:
        self._token = token

    def marks(self, key_name: str) -> list[int]:
        return sorted(
            int(v) for v in self._token.key_data(FREEZES, key_name) if v.isdigit() and len(v) < 19
        )

    def mark(self, key_name: str, index: int) -> None:
        if index not in self.marks(key_name):
            self._token.add_key_data(FREEZES, key_name, str(index).encode())

    def unmark(self, key_name: str, index: int) -> None:
        self._token.remove_key_data(FREEZES, key_name, str(index).encode())
