"""OIDC ID tokens for CI requesters: verify, then read identity and claims.

A pipeline with no long-lived secret proves who it is with the short-lived ID
token its CI system mints for the job (GitHub Actions, GitLab CI...). It is
sent as `authorization: Bearer ...` on the server-authenticated TLS port.

Checked, in this order, before any claim is believed: the token parses; its
`iss` is a configured issuer; its `alg` is one that issuer allows (never
`none`, never HS*); its `kid` names a key in the issuer's JWKS (refetched, at
a bounded rate, when the kid is unknown); the signature verifies with that
key, whose own algorithm must match; `iss`, `aud`, `exp`, `nbf` and `iat`
hold within a small leeway. PyJWT does the JOSE work. The identity is
`oidc:ISSUER:<identity claim>`; the configured claims are recorded.

The pipeline's actor may not decide on its request (invariant 2): every
officer the actor claim maps to, and every officer named like the actor, is
barred. Actor names are compared as the issuer compares logins: without
regard to case unless the issuer is configured `actor_case = "sensitive"`,
so `Octo-Alice` is barred as the officer mapped from `octo-alice`.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jwt
import structlog

from signer.errors import ConfigError, UnauthenticatedError
from signer.model import TokenCaller
from signer.server.policy_config import IssuerConfig
from signer.text import DISPLAY_RULE, is_displayable

__all__ = ["MAX_TOKEN_BYTES", "Jwks", "OidcVerifier"]

log = structlog.get_logger("signer.server.oidc")
MAX_TOKEN_BYTES = 16 * 1024
_MAX_JWKS_BYTES = 1024 * 1024
_MAX_CLAIM = 1024


def _fail(reason: str, message: str) -> UnauthenticatedError:
    return UnauthenticatedError(f"OIDC token rejected: {message}", reason=reason)


class Jwks:
    """One issuer's signing keys: loaded from a file or fetched over https, cached."""

    def __init__(
        self,
        issuer: IssuerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[], bytes] | None = None,
    ) -> None:
        self.issuer = issuer
        self._clock = clock
        self._fetch = fetch or self._default_fetch
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        self._tried_at: float | None = None

    def load(self) -> None:
        """Load now; raises ConfigError when the keys cannot be had."""
        with self._lock:
            self._reload()

    def key(self, kid: str) -> jwt.PyJWK:
        """The key named `kid`; refetches (rate-limited) when it is unknown or stale."""
        with self._lock:
            now = self._clock()
            stale = (
                self._loaded_at is None
                or now - self._loaded_at > self.issuer.jwks_max_age.total_seconds()
            )
            may_retry = (
                self._tried_at is None
                or now - self._tried_at >= self.issuer.jwks_refresh.total_seconds()
            )
            if (stale or kid not in self._keys) and may_retry:
                try:
                    self._reload()
                except ConfigError as e:  # keep serving the keys we have
                    log.error("JWKS refresh failed", issuer=self.issuer.name, error=str(e))
            found = self._keys.get(kid)
        if found is None:
            raise _fail(
                "TOKEN_UNKNOWN_KEY",
                f"key id {kid[:64]!r} is not in the JWKS of issuer {self.issuer.name!r}",
            )
        return found

    def _reload(self) -> None:
        self._tried_at = self._clock()
        raw = self._fetch()
        try:
            doc = json.loads(raw)
            entries = doc["keys"]
            if not isinstance(entries, list):
                raise TypeError("keys is not a list")
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise ConfigError(f"JWKS of issuer {self.issuer.name!r} is not a JWK set: {e}") from e
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            if entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC"):
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError) as e:
                log.warning("JWKS key skipped", issuer=self.issuer.name, kid=entry["kid"], error=e)
        self._keys = keys
        self._loaded_at = self._tried_at
        log.info("JWKS loaded", issuer=self.issuer.name, keys=sorted(keys))

    def _default_fetch(self) -> bytes:
        if self.issuer.jwks_file is not None:
            try:
                data = self.issuer.jwks_file.read_bytes()[:_MAX_JWKS_BYTES]
            except OSError as e:
                raise ConfigError(f"cannot read JWKS file {self.issuer.jwks_file}: {e}") from e
            pinned = self.issuer.jwks_file_sha256
            if pinned and hashlib.sha256(data).hexdigest() != pinned:
                raise ConfigError(
                    f"JWKS file {self.issuer.jwks_file} is not the one the policy in force "
                    "records: a new key set is a policy change (docs/policy.md)"
                )
            return data
        url = self.issuer.jwks_url
        assert url is not None and url.startswith("https://")
        context = ssl.create_default_context(
            cafile=str(self.issuer.jwks_ca) if self.issuer.jwks_ca else None
        )
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as resp:  # noqa: S310
                return bytes(resp.read(_MAX_JWKS_BYTES))
        except (urllib.error.URLError, OSError) as e:
            raise ConfigError(f"cannot fetch JWKS {url}: {e}") from e


class OidcVerifier:
    """Verifies bearer tokens against the configured issuers."""

    def __init__(
        self,
        issuers: Mapping[str, IssuerConfig],
        jwks: Mapping[str, Jwks] | None = None,
        officers: Iterable[str] = (),
    ) -> None:
        self._by_iss = {i.issuer: i for i in issuers.values()}
        self._officers = tuple(officers)  # every officer's name, to bar one named like the actor
        self._jwks = dict(jwks) if jwks is not None else {n: Jwks(i) for n, i in issuers.items()}

    def use_officers(self, officers: Iterable[str]) -> None:
        """The officers from now on (a policy version adopted while the server runs)."""
        self._officers = tuple(officers)

    def load(self) -> None:
        """Fetch every issuer's keys once; a failure is logged and retried on use."""
        for name, jwks in self._jwks.items():
            try:
                jwks.load()
            except ConfigError as e:
                log.error("JWKS not loaded; will retry on first token", issuer=name, error=str(e))

    def verify(self, token: str) -> TokenCaller:
        if len(token) > MAX_TOKEN_BYTES:
            raise _fail("TOKEN_MALFORMED", f"token is over {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.InvalidTokenError, RecursionError) as e:
            # PyJWT raises a bare InvalidTokenError (not DecodeError) for a non-string kid
            # or an unsupported crit header; a deeply nested payload overflows json.loads.
            raise _fail("TOKEN_MALFORMED", f"not a JWT ({str(e)[:200]})") from None
        iss = unverified.get("iss")
        issuer = self._by_iss.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise _fail("TOKEN_ISSUER", f"issuer {str(iss)[:128]!r} is not trusted by this server")
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise _fail(
                "TOKEN_ALGORITHM",
                f"alg {str(alg)[:16]!r} is not allowed for issuer {issuer.name!r} "
                f"(allowed: {', '.join(issuer.algorithms)})",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _fail("TOKEN_UNKNOWN_KEY", "the token header has no kid")
        key = self._jwks[issuer.name].key(kid)
        if key.algorithm_name != alg:
            raise _fail(
                "TOKEN_ALGORITHM", f"key {kid!r} is for {key.algorithm_name}, the token says {alg}"
            )
        claims = self._decode(token, key, alg, issuer)
        return self._caller(issuer, claims)

    @staticmethod
    def _decode(token: str, key: jwt.PyJWK, alg: str, issuer: IssuerConfig) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                leeway=issuer.leeway,
                options={"require": ["exp", "iat", "iss", "aud"], "strict_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise _fail("TOKEN_EXPIRED", "the token has expired; get a fresh one") from None
        except jwt.ImmatureSignatureError:
            raise _fail("TOKEN_NOT_YET_VALID", "the token is not valid yet (nbf/iat)") from None
        except jwt.InvalidAudienceError:
            raise _fail(
                "TOKEN_AUDIENCE", f"the token's audience is not {issuer.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise _fail("TOKEN_ISSUER", "the token's issuer does not match") from None
        except jwt.MissingRequiredClaimError as e:
            raise _fail("TOKEN_CLAIMS", f"the token has no {e.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise _fail("TOKEN_SIGNATURE", "the signature does not verify") from None
        except jwt.InvalidTokenError as e:
            raise _fail("TOKEN_INVALID", str(e)) from None
        return claims

    def _caller(self, issuer: IssuerConfig, claims: Mapping[str, Any]) -> TokenCaller:
        recorded: dict[str, str] = {}
        for name in issuer.recorded_claims:
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, bool | int):
                value = str(value).lower() if isinstance(value, bool) else str(value)
            if not isinstance(value, str) or len(value) > _MAX_CLAIM or not is_displayable(value):
                raise _fail(
                    "TOKEN_CLAIMS",
                    f"claim {name!r} must be a string of at most {_MAX_CLAIM} characters "
                    f"{DISPLAY_RULE}",
                )
            recorded[name] = value
        subject = recorded.get(issuer.identity_claim, "")
        if not subject:
            raise _fail("TOKEN_CLAIMS", f"the token has no {issuer.identity_claim!r} claim")
        actor = recorded.get(issuer.actor_claim, "")
        return TokenCaller(
            issuer=issuer.name,
            identity=f"oidc:{issuer.name}:{subject}",
            claims=recorded,
            actor=actor,
            barred=self._barred(issuer, actor),
        )

    def _barred(self, issuer: IssuerConfig, actor: str) -> tuple[str, ...]:
        """The actor itself, the officers it maps to and the officers named like it."""
        mapped = {o for a, o in issuer.officers.items() if issuer.same_actor(a, actor)}
        named = {o for o in self._officers if issuer.same_actor(o, actor)}
        return tuple(sorted(b for b in mapped | named | {actor} if b))
