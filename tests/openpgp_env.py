"""The shared server's OpenPGP certificates, made once per session with `signer keys
openpgp` (each a request alice and bob approve), for the OpenPGP and gpg drop-in tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from signer import pgp
from testbed.approving import approving
from testbed.commands import SIGNER
from testbed.process import Running

__all__ = ["OPENPGP_KEYS", "UID", "certify", "openpgp_certs"]

OPENPGP_KEYS = ("k-ecdsa-p256", "k-ecdsa-p384", "k-rsa-pkcs1-3072")
UID = "Release Team <release@example.org>"


def certify(shared: Running, key: str, out: Path, uid: str = UID) -> None:
    """`signer keys openpgp` for `key`, its request approved by alice and bob."""
    profile = ["--profile", str(shared.env.profile_path("ci"))]
    args = [*SIGNER, "keys", "openpgp", "--config", str(shared.env.config), *profile]
    done = approving(shared, [*args, "--name", key, "--uid", uid, "--out", str(out)])
    assert done.returncode == 0, done.stderr.decode()


@pytest.fixture(scope="session")
def openpgp_certs(shared: Running, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each OpenPGP key's certificate (binary), made once for the session."""
    root = tmp_path_factory.mktemp("openpgp-certs")
    out = {}
    for key in OPENPGP_KEYS:
        path = root / f"{key}.asc"
        certify(shared, key, path)
        out[key] = pgp.unarmor(path.read_text())[1]
    return out
