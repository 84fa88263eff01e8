"""The `signer:` private-key URI, and which securesystemslib keys a service key can be.

A URI names a service key and, optionally, how to reach it:

    signer:KEY_NAME[?profile=PATH][&timeout=15m][&artifact=NAME]

`profile` is a client profile (default $SIGNER_PROFILE), `timeout` how long
`sign()` waits for the officers (default 15m, at most 30d), `artifact` the name officers see
(default "tuf metadata"); values are percent-decoded, and anything else in the
URI is a ValueError: a URI is refused unless its key name and artifact name
obey the server's rules, and its artifact name is text an officer can be shown
(`signer.text`).

Service algorithms map to securesystemslib key types and schemes as
ecdsa-p256 -> ecdsa/ecdsa-sha2-nistp256, ecdsa-p384 -> ecdsa/ecdsa-sha2-nistp384,
rsa-pss-* -> rsa/rsassa-pss-sha256 (also -sha384, -sha512) and rsa-pkcs1-* ->
rsa/rsa-pkcs1v15-sha256 (also -sha384, -sha512). The service's RSA-PSS salt is
the hash length, which securesystemslib's verification (salt AUTO) accepts.
Ed25519 service keys sign no digests and are not supported; `check_supported`
refuses a public key of any other type or scheme.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from securesystemslib.exceptions import UnsupportedAlgorithmError
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # no __all__

from signer.algorithms import ALGORITHMS
from signer.parsing import MAX_TTL, parse_duration
from signer.text import DISPLAY_RULE, KEY_NAME, MAX_ARTIFACT, is_artifact_name

__all__ = [
    "DEFAULT_ARTIFACT",
    "DEFAULT_TIMEOUT",
    "SCHEME",
    "KeyURI",
    "check_supported",
    "parse_uri",
    "sslib_schemes",
]

SCHEME = "signer"
DEFAULT_TIMEOUT = dt.timedelta(minutes=15)
DEFAULT_ARTIFACT = "tuf metadata"

# The server's rules for key names and artifact names
# (signer.server.policy_config, signer.core.machine).
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PARAMS = ("profile", "timeout", "artifact")
_RSA_HASHES = ("sha256", "sha384", "sha512")


@dataclass(frozen=True)
class KeyURI:
    """A parsed `signer:` private-key URI."""

    key_name: str
    profile: Path | None = None
    timeout: dt.timedelta = DEFAULT_TIMEOUT
    artifact: str = DEFAULT_ARTIFACT

    def __str__(self) -> str:
        params = []
        if self.profile is not None:
            params.append(f"profile={quote(str(self.profile), safe='/')}")
        if self.timeout != DEFAULT_TIMEOUT:
            params.append(f"timeout={int(self.timeout.total_seconds())}s")
        if self.artifact != DEFAULT_ARTIFACT:
            params.append(f"artifact={quote(self.artifact, safe='')}")
        query = "?" + "&".join(params) if params else ""
        return f"{SCHEME}:{quote(self.key_name, safe='')}{query}"


def parse_uri(uri: str) -> KeyURI:
    """Parse `signer:KEY_NAME[?profile=PATH&timeout=DURATION&artifact=NAME]`; ValueError."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme != SCHEME:
        raise ValueError(f"{uri!r} is not a {SCHEME}: key URI (signer:KEY_NAME?profile=PATH)")
    if rest.startswith("/"):
        raise ValueError(f"{uri!r}: write {SCHEME}:KEY_NAME, without // or a leading /")
    if "#" in rest:
        raise ValueError(f"{uri!r}: a {SCHEME}: key URI has no #fragment")
    raw_name, has_query, query = rest.partition("?")
    key_name = _decode(raw_name, "the key name", uri)
    if not key_name:
        raise ValueError(f"{uri!r} names no key: write {SCHEME}:KEY_NAME")
    if not KEY_NAME.match(key_name):
        raise ValueError(
            f"{uri!r}: key name {key_name!r} must be 1-64 of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    values: dict[str, str] = {}
    if has_query:
        for part in query.split("&"):
            if not part:
                raise ValueError(f"{uri!r}: empty query parameter (a stray ? or &)")
            name, eq, raw = part.partition("=")
            if name not in _PARAMS:
                shown = name or part
                raise ValueError(f"{uri!r}: unknown parameter {shown!r}; use {', '.join(_PARAMS)}")
            if not eq:
                raise ValueError(f"{uri!r}: parameter {name} needs a value ({name}=...)")
            if name in values:
                raise ValueError(f"{uri!r}: parameter {name} is given twice")
            value = _decode(raw, f"parameter {name}", uri)
            if not value:
                raise ValueError(f"{uri!r}: parameter {name} is empty")
            values[name] = value
    timeout = DEFAULT_TIMEOUT
    if "timeout" in values:
        try:
            timeout = parse_duration(values["timeout"], high=MAX_TTL)
        except ValueError as e:
            raise ValueError(f"{uri!r}: timeout: {e}") from None
        if timeout <= dt.timedelta(0):
            raise ValueError(f"{uri!r}: timeout must be positive")
    artifact = values.get("artifact", DEFAULT_ARTIFACT)
    if not is_artifact_name(artifact):
        raise ValueError(f"{uri!r}: artifact must be 1-{MAX_ARTIFACT} characters {DISPLAY_RULE}")
    profile = Path(values["profile"]) if "profile" in values else None
    return KeyURI(key_name, profile, timeout, artifact)


def _decode(text: str, what: str, uri: str) -> str:
    if _BAD_ESCAPE.search(text):
        raise ValueError(f"{uri!r}: {what} has a bad percent-escape (use %XX)")
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"{uri!r}: {what} is not UTF-8 once percent-decoded") from None


def sslib_schemes(algorithm: str) -> tuple[str, tuple[str, ...]]:
    """The securesystemslib keytype and the schemes (default first) a service key supports."""
    alg = ALGORITHMS.get(algorithm)
    if alg is not None and alg.family == "ec" and alg.curve == "secp256r1":
        return "ecdsa", ("ecdsa-sha2-nistp256",)
    if alg is not None and alg.family == "ec" and alg.curve == "secp384r1":
        return "ecdsa", ("ecdsa-sha2-nistp384",)
    if alg is not None and alg.family == "rsa" and alg.scheme == "pss":
        return "rsa", tuple(f"rsassa-pss-{h}" for h in _RSA_HASHES)
    if alg is not None and alg.family == "rsa" and alg.scheme == "pkcs1":
        return "rsa", tuple(f"rsa-pkcs1v15-{h}" for h in _RSA_HASHES)
    raise UnsupportedAlgorithmError(
        f"service key algorithm {algorithm!r} has no securesystemslib scheme that signs a "
        "digest (supported: ecdsa-p256, ecdsa-p384, rsa-pss-*, rsa-pkcs1-*)"
    )


SUPPORTED = {
    (keytype, scheme)
    for name in ALGORITHMS
    if ALGORITHMS[name].signs_digests
    for keytype, schemes in [sslib_schemes(name)]
    for scheme in schemes
}


def check_supported(key: SSlibKey) -> None:
    if (key.keytype, key.scheme) not in SUPPORTED:
        raise ValueError(
            f"public key {key.keyid} is {key.keytype}/{key.scheme}; a {SCHEME}: key must be "
            + ", ".join(f"{t}/{s}" for t, s in sorted(SUPPORTED))
        )
