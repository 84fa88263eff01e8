"""gpg, gpgv and sq against one OpenPGP certificate, in a throwaway GNUPGHOME (and HOME):
no agent, no network, no trust database to set up (`--trust-model always`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["GPG_FLAGS", "Gnupg"]

TIMEOUT = 60
GPG_FLAGS = ("--batch", "--no-tty", "--no-autostart", "--trust-model", "always")


class Gnupg:
    """The stock OpenPGP tools with `cert` imported (gpg) and as a keyring (gpgv, sq)."""

    def __init__(self, home: Path, cert: bytes):
        self.home = home / "gnupg"
        self.home.mkdir(mode=0o700)
        self.env = {"PATH": os.environ["PATH"], "HOME": str(home), "GNUPGHOME": str(self.home)}
        self.cert = home / "cert.pgp"
        self.cert.write_bytes(cert)
        self.imported = self.gpg("--import", str(self.cert))
        self.keyring = home / "keyring.pgp"
        self.keyring.write_bytes(self.export())

    def run(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(args, check=False, capture_output=True, timeout=TIMEOUT, env=self.env)

    def gpg(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return self.run(["gpg", *GPG_FLAGS, "--status-fd", "1", *args])

    def export(self, *args: str) -> bytes:
        """`gpg --export` (no status lines: they would go into the keyring)."""
        exported = self.run(["gpg", *GPG_FLAGS, "--export", *args])
        assert exported.returncode == 0, exported.stderr.decode()
        return exported.stdout

    def gpgv(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return self.run(["gpgv", "--status-fd", "1", "--keyring", str(self.keyring), *args])

    def sq_verify(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return self.run(["sq", "verify", "--signer-cert", str(self.cert), *args])
