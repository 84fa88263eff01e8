"""Where an officer's approval key in their own PKCS#11 token is: an RFC 7512 URI.

    pkcs11:token=LABEL;object=KEY?module-path=MODULE

`token` is the token's label, `object` the key's label, `module-path` the module;
nothing else is accepted, and a PIN never (`pin-value` and `pin-source` are refused:
the PIN comes from the profile's `approval_pin_file` or `approval_pin_env`, or the
terminal). Pure: a profile reads it without loading the token adapter
(`signer.token.approval` signs with the key).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["ALGORITHMS_IN_TOKENS", "TokenKeyUri", "is_uri"]

ALGORITHMS_IN_TOKENS = ("ecdsa-p256", "ed25519")  # what an approval key in a token may be
_PATH_ATTRIBUTES = {"token", "object"}
_QUERY_ATTRIBUTES = {"module-path"}


def is_uri(value: str) -> bool:
    return value.startswith("pkcs11:")


@dataclass(frozen=True)
class TokenKeyUri:
    """Where an officer's key is: the module, the token's label, the key's label."""

    module: str
    token: str
    object: str

    @classmethod
    def parse(cls, uri: str) -> TokenKeyUri:
        """RFC 7512 `pkcs11:token=T;object=O?module-path=M`, strictly; ValueError naming
        what is wrong."""
        if not is_uri(uri) or len(uri) > 4096:
            raise ValueError("must be a pkcs11: URI (RFC 7512)")
        path, _, query = uri.removeprefix("pkcs11:").partition("?")
        found: dict[str, str] = {}
        for part, allowed, sep in ((path, _PATH_ATTRIBUTES, ";"), (query, _QUERY_ATTRIBUTES, "&")):
            for item in filter(None, part.split(sep)):
                name, eq, value = item.partition("=")
                if name in ("pin-value", "pin-source"):
                    raise ValueError(
                        f"{name}: a PIN is never in the URI; use approval_pin_file or "
                        "approval_pin_env, or type it when asked"
                    )
                if not eq or name not in allowed or name in found:
                    raise ValueError(
                        f"{name!r} is not one of {', '.join(sorted(allowed))} (or is repeated)"
                    )
                found[name] = unquote(value, errors="strict")
        missing = sorted((_PATH_ATTRIBUTES | _QUERY_ATTRIBUTES) - found.keys())
        if missing:
            raise ValueError(f"names no {', '.join(missing)}")
        if not all(found.values()):
            raise ValueError("token, object and module-path must not be empty")
        return cls(found["module-path"], found["token"], found["object"])

    def __str__(self) -> str:
        return f"pkcs11:token={self.token};object={self.object}"
