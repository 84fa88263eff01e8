"""The CI client's token source: a token is reused until it nears expiry, then re-read.

A long wait for approvals can outlive a short-lived CI token; the client reads
the file (or variable) again once the cached token is within a minute of `exp`,
and keeps a token without a readable `exp` as it is.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from signer.client.ci_token import TokenSource
from signer.errors import ConfigError


def _jwt(exp: float | None, tag: str) -> str:
    def part(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    claims: dict[str, object] = {"sub": tag} if exp is None else {"sub": tag, "exp": exp}
    return f"{part({'alg': 'RS256'})}.{part(claims)}.sig"


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_reused_then_re_read_within_a_minute_of_expiry(tmp_path: Path) -> None:
    """The file is read once while the token is fresh, again 60 s before its exp."""
    clock, path = _Clock(), tmp_path / "token"
    path.write_text(_jwt(clock.now + 600, "first"))
    source = TokenSource(file=path, clock=clock)
    first = source.token()
    second = _jwt(clock.now + 1200, "second")
    path.write_text(second)
    clock.now += 500  # 100 s left: still fresh
    assert source.token() == first
    clock.now += 41  # 59 s left: refreshed from the file
    assert source.token() == second


def test_a_token_without_a_readable_expiry_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No exp claim (or not a JWT): nothing says when to refresh, so it is kept."""
    monkeypatch.setenv("TEST_TOKEN", _jwt(None, "opaque"))
    source = TokenSource(env="TEST_TOKEN", clock=_Clock())
    first = source.token()
    monkeypatch.setenv("TEST_TOKEN", "other")
    assert source.token() == first


def test_an_emptied_token_file_is_a_clear_error(tmp_path: Path) -> None:
    """A refresh that finds the file empty fails with a message naming the file."""
    clock, path = _Clock(), tmp_path / "token"
    path.write_text(_jwt(clock.now + 30, "soon"))  # already within the margin
    source = TokenSource(file=path, clock=clock)
    source.token()
    path.write_text("")
    with pytest.raises(ConfigError, match=f"OIDC token file {path} is empty"):
        source.token()
