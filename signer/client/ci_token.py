"""Where a CI job's OIDC ID token comes from, on the client side.

In order: a file (`--oidc-token-file` or the profile's `oidc_token_file`),
an environment variable (the profile's `oidc_token_env`, default
`SIGNER_OIDC_TOKEN`; GitLab's `id_tokens` put it there), or, inside GitHub
Actions, the runner's token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL and
ACTIONS_ID_TOKEN_REQUEST_TOKEN, with the profile's `oidc_audience`). A token
is re-read or re-fetched when it is near expiry, so a long wait for the
officers outlives one token. The token is never logged or put in argv.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from signer.errors import ConfigError

__all__ = ["DEFAULT_TOKEN_ENV", "TokenSource", "github_actions_token"]

DEFAULT_TOKEN_ENV = "SIGNER_OIDC_TOKEN"  # noqa: S105 (a variable name)
_REFRESH_MARGIN = 60.0  # seconds before exp when a fresh token is fetched
_MAX_RESPONSE = 64 * 1024


def _expiry(token: str) -> float | None:
    """The token's exp claim, read without verification (only to know when to refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError, AttributeError, RecursionError):
        return None


def github_actions_token(audience: str, timeout: float = 10.0) -> str:
    """Ask the GitHub Actions runner for an ID token with this audience."""
    url = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL", "")
    secret = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
    if not url or not secret:
        raise ConfigError(
            "no OIDC token: ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are not set "
            "(in GitHub Actions, give the job `permissions: id-token: write`)"
        )
    parts = urllib.parse.urlsplit(url)
    loopback = False
    try:
        loopback = ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        loopback = parts.hostname == "localhost"
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ConfigError("ACTIONS_ID_TOKEN_REQUEST_URL must be an https:// URL")
    sep = "&" if parts.query else "?"
    full = f"{url}{sep}{urllib.parse.urlencode({'audience': audience})}"
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        full, headers={"Authorization": f"Bearer {secret}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
            body: Any = json.loads(resp.read(_MAX_RESPONSE))
    except urllib.error.HTTPError as e:
        raise ConfigError(f"the GitHub Actions token endpoint refused: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"cannot get a token from the GitHub Actions runner: {e}") from None
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ConfigError("the GitHub Actions token endpoint returned no token")
    return value


class TokenSource:
    """Yields a current token; re-reads or re-fetches it when it nears expiry."""

    def __init__(
        self,
        *,
        file: Path | None = None,
        env: str = DEFAULT_TOKEN_ENV,
        audience: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.file, self.env, self.audience, self._clock = file, env, audience, clock
        self._lock = threading.Lock()
        self._token: str | None = None

    def describe(self) -> str:
        if self.file is not None:
            return f"file {self.file}"
        if os.environ.get(self.env):
            return f"environment variable {self.env}"
        return "the GitHub Actions runner"

    def token(self) -> str:
        with self._lock:
            if self._token is not None:
                exp = _expiry(self._token)
                if exp is None or exp - self._clock() > _REFRESH_MARGIN:
                    return self._token
            self._token = self._read()
            return self._token

    def _read(self) -> str:
        if self.file is not None:
            try:
                value = self.file.read_text().strip()
            except OSError as e:
                raise ConfigError(f"cannot read OIDC token file {self.file}: {e.strerror}") from e
            if not value:
                raise ConfigError(f"OIDC token file {self.file} is empty")
            return value
        value = os.environ.get(self.env, "").strip()
        if value:
            return value
        if os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
            if not self.audience:
                raise ConfigError(
                    "set oidc_audience in the profile: the audience the server expects"
                )
            return github_actions_token(self.audience)
        raise ConfigError(
            f"no OIDC token: pass --oidc-token-file, set {self.env}, or run in GitHub "
            "Actions with `permissions: id-token: write`"
        )


class _BearerPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self._source.token()
        except ConfigError as e:
            callback((), e)
            return
        callback((("authorization", f"Bearer {token}"),), None)


def call_credentials(source: TokenSource) -> grpc.CallCredentials:
    return grpc.metadata_call_credentials(_BearerPlugin(source), name="oidc")
