"""A call that cannot reach the server says which address was tried, from where, and
what to check: nothing listening, or the port of the other kind of requester.

A certificate profile sent to the OIDC port, and an OIDC profile sent to the
mutual-TLS port, are each told that this is what happened; `SIGNER_SERVER`
overrides the profile's address and is named when it is the one tried.
"""

from __future__ import annotations

import os
import uuid

import pytest

from testbed.commands import SIGNER, free_port, run
from tests.oidc_env import OidcRunning

pytestmark = pytest.mark.sqlite_only("what is checked is the client's")


def _status(profile: str, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    p = run(
        [*SIGNER, "status", str(uuid.uuid4()), "--profile", profile, *extra], env=env, check=False
    )
    return p.returncode, p.stderr


def test_a_certificate_profile_at_the_oidc_port_is_told_so(oidc: OidcRunning) -> None:
    """ci's profile with --server at the OIDC port: the error names the port mix-up."""
    profile = str(oidc.oidc.env.profile_path("ci"))
    code, err = _status(profile, "--server", oidc.oidc.oidc_address)
    assert code == 1
    assert f"{oidc.oidc.oidc_address} (given by --server)" in err
    assert "looks like the server's OIDC port (server.oidc_listen)" in err


def test_an_oidc_profile_at_the_mutual_tls_port_is_told_so(oidc: OidcRunning) -> None:
    """The pipeline's OIDC profile with --server at the mutual-TLS port: told so."""
    o = oidc.oidc
    env = o.cli_env(SIGNER_OIDC_TOKEN=o.mint())
    address = f"127.0.0.1:{o.env.port}"
    code, err = _status(str(o.pipeline_profile), "--server", address, env=env)
    assert code == 1
    assert "looks like the server's mutual-TLS port (server.listen)" in err


def test_nothing_listening_names_the_address_and_where_it_came_from(
    oidc: OidcRunning,
) -> None:
    """No server at the address: the error names it, and $SIGNER_SERVER when it was that."""
    profile = str(oidc.oidc.env.profile_path("ci"))
    address = f"127.0.0.1:{free_port()}"
    code, err = _status(profile, env={**os.environ, "SIGNER_SERVER": address})
    assert code == 1
    assert f"nothing answers at {address} (from $SIGNER_SERVER)" in err
    assert "is `signer serve` running there" in err
    code, err = _status(profile, env={**os.environ, "SIGNER_SERVER": "no-port"})
    assert code == 2 and "$SIGNER_SERVER must be HOST:PORT" in err
