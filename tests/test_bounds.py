"""Every duration, size and count has a bound, and a bad local file or directory is named.

Durations and ports in the server config, a profile's timeout, `signer sign
--ttl/--timeout`, a `signer:` key URI, `audit show INDEX` and `audit list
--since` are range-checked with one clear error that names the file and key
(or the flag) and the allowed range, never an OverflowError traceback. A TLS
certificate and key that do not belong together stop `signer serve` with exit
2 before anything else is opened; `signer init` onto a file is a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.client.profile import load_profile
from signer.errors import ConfigError
from signer.parsing import parse_duration
from signer.server.config import load_config
from signer.sslib import parse_uri
from signer.tls import DevCA, check_server_files, write_private
from testbed.commands import SIGNER, run
from testbed.process import Running
from tests.config_files import root as root  # the fixture: TLS files, officers' keys, a PIN
from tests.config_files import valid_config, write_config
from tests.harness import audit_events

HUGE = "999999999999d"  # timedelta(days=...) of this overflowed


def _in(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        table = cfg
        for key in path[:-1]:
            table = table.setdefault(key, {})
        table[path[-1]] = value

    return change


def _with_issuer(root: Path) -> Callable[[dict[str, Any]], None]:
    (root / "idp.jwks.json").write_text('{"keys": []}')

    def change(cfg: dict[str, Any]) -> None:
        cfg["server"]["oidc_listen"] = "127.0.0.1:7444"
        cfg["oidc"] = {
            "ci": {
                "issuer": "https://token.actions.githubusercontent.com",
                "audience": "signer",
                "jwks_file": "idp.jwks.json",
            }
        }

    return change


_CONFIG_BOUNDS = [
    ("max-ttl-huge", ("keys", "release", "max_ttl"), HUGE, "from 1s to 30d"),
    ("max-ttl-over-30d", ("keys", "release", "max_ttl"), "31d", "from 1s to 30d"),
    ("max-ttl-digits", ("keys", "release", "max_ttl"), "9" * 5000 + "s", "is not a duration"),
    ("max-wait-huge", ("server", "max_wait"), HUGE, "from 1s to 1h"),
    ("max-wait-zero", ("server", "max_wait"), "0s", "from 1s to 1h"),
    ("message-timeout-zero", ("server", "message_timeout"), "0s", "from 1s to 5m"),
    ("message-timeout-huge", ("server", "message_timeout"), "1h", "from 1s to 5m"),
    ("leeway-huge", ("oidc", "ci", "leeway"), HUGE, "from 0s to 5m"),
    ("jwks-refresh-huge", ("oidc", "ci", "jwks_refresh"), HUGE, "from 1s to 1h"),
    ("jwks-max-age-short", ("oidc", "ci", "jwks_max_age"), "10s", "from 1m to 1d"),
    ("listen-port-high", ("server", "listen"), "127.0.0.1:70000", "port 1-65535"),
    ("oidc-listen-port-zero", ("server", "oidc_listen"), "127.0.0.1:0", "port 1-65535"),
]


@pytest.mark.parametrize(
    ("path", "value", "allowed"),
    [c[1:] for c in _CONFIG_BOUNDS],
    ids=[c[0] for c in _CONFIG_BOUNDS],
)
def test_config_value_out_of_range_names_file_key_and_range(
    root: Path, path: tuple[str, ...], value: str, allowed: str
) -> None:
    """A config duration or port out of range is a ConfigError naming file, key and range."""
    cfg = valid_config()
    _with_issuer(root)(cfg)
    _in(*path, value=value)(cfg)
    config = write_config(root, cfg)
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert str(e.value).startswith(f"{config.resolve()}: {'.'.join(path)}: "), str(e.value)
    assert allowed in str(e.value)


def test_config_durations_at_their_bounds_load(root: Path) -> None:
    """The largest values allowed load: 30d max_ttl, 1h max_wait, 5m leeway, 1d JWKS age."""
    cfg = valid_config()
    _with_issuer(root)(cfg)
    for path, value in [
        (("keys", "release", "max_ttl"), "30d"),
        (("server", "max_wait"), "1h"),
        (("oidc", "ci", "leeway"), "5m"),
        (("oidc", "ci", "jwks_max_age"), "1d"),
    ]:
        _in(*path, value=value)(cfg)
    loaded = load_config(write_config(root, cfg))
    assert loaded.keys["release"].max_ttl.days == 30
    assert loaded.issuers["ci"].jwks_max_age.days == 1


def test_parse_duration_has_an_upper_bound() -> None:
    """The one duration parser refuses what no setting needs (over 366d), naming the range."""
    with pytest.raises(
        ValueError, match=r"'999999999999d' is out of range: must be from 0s to 366d"
    ):
        parse_duration(HUGE)
    assert parse_duration("366d").days == 366


def _client_profile(tmp_path: Path, **extra: str) -> Path:
    """A profile with real (throwaway) TLS files for a server that is not there."""
    ca = DevCA("bounds CA")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    cert, key = ca.issue("auditor")
    (tmp_path / "client.pem").write_bytes(cert)
    write_private(tmp_path / "client.key", key)
    fields = {"server": "127.0.0.1:9", "ca": "ca.pem", "cert": "client.pem", "key": "client.key"}
    path = tmp_path / "profile.toml"
    path.write_text(tomli_w.dumps({**fields, **extra}))
    return path


@pytest.mark.parametrize("timeout", [HUGE, "2h", "0s"])
def test_profile_timeout_out_of_range_names_the_profile(tmp_path: Path, timeout: str) -> None:
    """A profile timeout outside 1s..1h is a ConfigError naming the profile and the range."""
    path = _client_profile(tmp_path, timeout=timeout)
    with pytest.raises(ConfigError, match=r"timeout: .* out of range: must be from 1s to 1h") as e:
        load_profile(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("timeout", [HUGE, "31d"])
def test_key_uri_timeout_out_of_range_is_a_value_error(timeout: str) -> None:
    """A signer: URI's timeout over 30d is a ValueError naming the URI and the range."""
    with pytest.raises(ValueError, match=r"timeout: .* out of range: must be from 0s to 30d"):
        parse_uri(f"signer:release?timeout={timeout}")
    assert parse_uri("signer:release?timeout=30d").timeout.days == 30


def _cli_refused(p: Any, *phrases: str) -> str:
    message = " ".join(p.stderr.split())
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    for phrase in phrases:
        assert phrase in message, message
    return message


@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [
        ("--ttl", HUGE, "from 1s to 30d"),
        ("--ttl", "31d", "from 1s to 30d"),
        ("--timeout", HUGE, "from 0s to 30d"),
    ],
)
def test_sign_duration_flags_out_of_range_send_nothing(
    shared: Running, flag: str, value: str, allowed: str
) -> None:
    """`signer sign --ttl/--timeout` out of range exits 2 naming the flag; no request is made."""
    before = len(audit_events(shared.env))
    profile = str(shared.env.profile_path("ci"))
    digest = "sha256:" + "ab" * 32 + ":app.tar"
    p = run(
        [
            *SIGNER,
            "sign",
            "--profile",
            profile,
            "--key-name",
            "release",
            "--digest",
            digest,
            "--out",
            "/dev/null",
            flag,
            value,
        ],
        check=False,
    )
    _cli_refused(p, flag, allowed)
    assert len(audit_events(shared.env)) == before


def test_audit_show_index_past_int64_is_a_usage_error(tmp_path: Path) -> None:
    """`audit show` with an index no log can have exits 2 naming the range, not a traceback."""
    profile = str(_client_profile(tmp_path))
    p = run([*SIGNER, "audit", "show", str(10**30), "--profile", profile], check=False)
    _cli_refused(p, "INDEX", "0<=x<=9223372036854775806")


def test_audit_list_time_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    """`audit list --since` at a time its zone pushes out of range exits 2 naming the flag."""
    profile = str(_client_profile(tmp_path))
    since = "0001-01-01T00:00:00+01:00"
    p = run([*SIGNER, "audit", "list", "--since", since, "--profile", profile], check=False)
    _cli_refused(p, "--since", "not an ISO time")


# -- the server's TLS files ------------------------------------------------------------------


def _other_key(root: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = root / "tls" / "other.key"
    write_private(path, key)
    return path


def test_check_server_files_names_the_problem(root: Path) -> None:
    """A matching pair passes; another key, a garbage key, an encrypted key or CA are named."""
    tls = root / "tls"
    check_server_files(tls / "server.pem", tls / "server.key", tls / "ca.pem")
    other = _other_key(root)
    with pytest.raises(ValueError, match="does not match the certificate"):
        check_server_files(tls / "server.pem", other)
    (tls / "garbage.pem").write_text("not PEM")
    with pytest.raises(ValueError, match=r"garbage\.pem is not a PEM private key"):
        check_server_files(tls / "server.pem", tls / "garbage.pem")
    with pytest.raises(ValueError, match=r"garbage\.pem is not a PEM certificate"):
        check_server_files(tls / "garbage.pem", tls / "server.key")
    with pytest.raises(ValueError, match=r"garbage\.pem is not a PEM certificate"):
        check_server_files(tls / "server.pem", tls / "server.key", tls / "garbage.pem")
    secret = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    write_private(tls / "encrypted.key", secret)
    with pytest.raises(ValueError, match=r"encrypted\.key is encrypted"):
        check_server_files(tls / "server.pem", tls / "encrypted.key")


def test_serve_with_mismatched_certificate_and_key_exits_2_saying_so(root: Path) -> None:
    """`signer serve` with another key than its certificate's exits 2 naming both files."""
    cfg = valid_config()
    cfg["server"]["tls_key"] = str(_other_key(root))
    config = write_config(root, cfg)
    p = run([*SIGNER, "serve", "--config", str(config)], check=False, timeout=60)
    message = _cli_refused(
        p, "server.tls_cert, tls_key, client_ca", "does not match the certificate"
    )
    assert "address in use" not in message
    assert not (root / "signer.db").exists()  # nothing was opened before the check


# -- signer init -----------------------------------------------------------------------------


def test_init_onto_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """`signer init FILE` and `signer init FILE/sub` exit 2 with one line; the file is kept."""
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    p = run([*SIGNER, "init", str(target)], check=False)
    _cli_refused(p, f"{target} is a file, not a directory")
    p = run([*SIGNER, "init", str(target / "env")], check=False)
    _cli_refused(p, f"cannot use {target / 'env'} as a new directory")
    assert target.read_text() == "keep me"


def test_init_with_a_port_out_of_range_is_a_clear_error(tmp_path: Path) -> None:
    """`signer init --listen HOST:70000` exits 2 naming the range, and creates nothing."""
    p = run([*SIGNER, "init", str(tmp_path / "env"), "--listen", "127.0.0.1:70000"], check=False)
    _cli_refused(p, "--listen", "1-65535")
    assert not (tmp_path / "env").exists()
