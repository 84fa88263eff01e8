"""Secrets in the server config: read only from private files or the environment, never shown.

A PIN file readable by others is refused with a chmod hint, a missing or empty
source says which, and no error message contains the secret (invariant 7).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from signer.errors import ConfigError
from signer.parsing import read_secret
from signer.server.config import load_config
from signer.tls import write_private
from tests.config_files import PIN, valid_config, write_config
from tests.config_files import root as root  # a fixture


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_read_secret_refuses_shared_file(tmp_path: Path, mode: int) -> None:
    """A PIN file readable by group or others is refused with a chmod hint, value unseen."""
    f = tmp_path / "token.pin"
    f.write_text(PIN)
    f.chmod(mode)
    with pytest.raises(ConfigError) as e:
        read_secret(f, None, "token PIN")
    assert f"chmod 600 {f}" in str(e.value)
    assert PIN not in str(e.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_read_secret_reads_private_file(tmp_path: Path, mode: int) -> None:
    """A 0600 or 0400 file is read and stripped of surrounding whitespace."""
    f = tmp_path / "token.pin"
    f.write_text(f"  {PIN}\n")
    f.chmod(mode)
    assert read_secret(f, None, "token PIN") == PIN


def test_read_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment variable supplies the secret."""
    monkeypatch.setenv("SIGNER_TEST_PIN", PIN)
    assert read_secret(None, "SIGNER_TEST_PIN", "token PIN") == PIN


def _secret_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delenv("SIGNER_TEST_PIN", raising=False)
    monkeypatch.setenv("SIGNER_BLANK_PIN", "   ")
    empty = tmp_path / "empty.pin"
    write_private(empty, b"\n")
    shared = tmp_path / "shared.pin"
    shared.write_text(PIN)
    shared.chmod(0o644)
    calls: list[tuple[Path | None, str | None]] = [
        (None, "SIGNER_TEST_PIN"),
        (None, "SIGNER_BLANK_PIN"),
        (None, None),
        (tmp_path / "missing.pin", None),
        (tmp_path, None),
        (empty, None),
        (shared, None),
    ]
    out = []
    for file, env in calls:
        with pytest.raises(ConfigError) as e:
            read_secret(file, env, "token PIN")
        out.append(str(e.value))
    return out


def test_read_secret_errors_are_actionable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing env var, no source, unreadable or empty file: each error says which."""
    missing_env, blank_env, none, missing, directory, empty, shared = _secret_errors(
        tmp_path, monkeypatch
    )
    assert "SIGNER_TEST_PIN" in missing_env and "not set" in missing_env
    assert "SIGNER_BLANK_PIN" in blank_env
    assert "no token PIN configured" in none
    assert str(tmp_path / "missing.pin") in missing and "cannot read" in missing
    assert "cannot read" in directory
    assert "empty" in empty
    assert "chmod 600" in shared


def test_secret_never_in_error_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No read_secret error contains the secret's value."""
    for message in _secret_errors(tmp_path, monkeypatch):
        assert PIN not in message and "4242" not in message


def test_pin_env_config(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pin_env names a variable; the PIN comes from it, and a missing one is an error."""
    cfg = valid_config()
    del cfg["token"]["pin_file"]
    cfg["token"]["pin_env"] = "SIGNER_TEST_PIN"
    loaded = load_config(write_config(root, cfg))
    monkeypatch.delenv("SIGNER_TEST_PIN", raising=False)
    with pytest.raises(ConfigError, match="SIGNER_TEST_PIN"):
        loaded.token.read_pin()
    monkeypatch.setenv("SIGNER_TEST_PIN", PIN)
    assert loaded.token.read_pin() == PIN
