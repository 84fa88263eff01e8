"""`signer gpg` (console script `signer-gpg`), the drop-in for the gpg calls git and rpm
make, with the stock tools checking the result: `git commit -S` and `git tag -s` through
it, then `git verify-commit` and `git verify-tag` (passed through to the real gpg);
`rpmsign --addsign` through it, then `rpm -K` in a private rpmdb; a signed apt
repository (`InRelease` and `Release.gpg`) that `gpgv` and `apt-get update` (in a
temporary root) accept. Each with a tampered artifact that must fail; an ECDSA key for
rpm, an unknown key and an unknown option are refused with a clear error."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from signer import pgp
from signer.cli.dropins import _write
from signer.errors import ConfigError
from testbed.approving import approving, dropin_env
from testbed.commands import run
from testbed.gnupg import Gnupg
from testbed.process import Running

DROPIN = str(Path(sys.executable).with_name("signer-gpg"))
RSA = "k-rsa-pkcs1-3072"


def _fpr(cert: bytes) -> str:
    return pgp.parse_certificate(cert).fingerprint.hex().upper()


def _gnupg(tmp_path: Path, cert: bytes) -> Gnupg:
    tools = Gnupg(tmp_path, cert)
    assert tools.imported.returncode == 0, tools.imported.stderr.decode()
    (tools.home / "gpg.conf").write_text("trust-model always\n")
    return tools


def _env(shared: Running, tools: Gnupg, home: Path) -> dict[str, str]:
    return dropin_env(shared, home, GNUPGHOME=str(tools.home))


def _forged(repo: Path, env: dict[str, str], kind: str, ref: str) -> str:
    """The object `ref` with its message changed and its signature kept."""
    raw = run(["git", "-C", str(repo), "cat-file", kind, ref], env=env).stdout
    return subprocess.run(
        ["git", "-C", str(repo), "hash-object", "-t", kind, "-w", "--stdin"],
        input=raw.replace("release 1.0", "release 6.6"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.mark.parametrize("key", [RSA, "k-ecdsa-p256"])
def test_git_signs_commits_and_tags_through_the_gpg_dropin(
    shared: Running, openpgp_certs: dict[str, bytes], tmp_path: Path, key: str
) -> None:
    """git commit -S and git tag -s with gpg.program = signer-gpg wait for the officers and
    make signatures git verify-commit and verify-tag accept (through the real gpg); the
    same signature on a changed commit or tag does not verify."""
    tools = _gnupg(tmp_path, openpgp_certs[key])
    home = tmp_path / "home"
    home.mkdir()
    env = _env(shared, tools, home)
    repo = tmp_path / "repo"
    run(["git", "init", "-q", str(repo)], env=env)
    for k, v in {"gpg.program": DROPIN, "user.signingkey": _fpr(openpgp_certs[key])}.items():
        run(["git", "-C", str(repo), "config", k, v], env=env)
    (repo / "README").write_text("signed release\n")
    run(["git", "-C", str(repo), "add", "README"], env=env)
    git = ["git", "-C", str(repo)]

    done = approving(shared, [*git, "commit", "-q", "-S", "-m", "release 1.0"], env=env)
    assert done.returncode == 0, done.stderr.decode()
    verified = run([*git, "verify-commit", "-v", "HEAD"], env=env)
    assert "Good signature from" in verified.stderr and "Release Team" in verified.stderr

    done = approving(shared, [*git, "tag", "-s", "v1.0", "-m", "release 1.0"], env=env)
    assert done.returncode == 0, done.stderr.decode()
    verified = run([*git, "verify-tag", "v1.0"], env=env)
    assert "Good signature from" in verified.stderr

    bad_commit = _forged(repo, env, "commit", "HEAD")
    assert run([*git, "verify-commit", bad_commit], env=env, check=False).returncode != 0
    bad_tag = _forged(repo, env, "tag", "v1.0")
    assert run([*git, "verify-tag", bad_tag], env=env, check=False).returncode != 0


def _rpm(tmp_path: Path) -> Path:
    """A tiny noarch package built with rpmbuild."""
    top = tmp_path / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    spec = top / "SPECS" / "hello.spec"
    spec.write_text(
        textwrap.dedent(
            """\
            Name: hello
            Version: 1.0
            Release: 1
            Summary: a package signed through the service
            License: MIT
            BuildArch: noarch
            %description
            A package signed through the service.
            %install
            mkdir -p %{buildroot}/opt/hello
            echo hello > %{buildroot}/opt/hello/hello.txt
            %files
            /opt/hello/hello.txt
            """
        )
    )
    run(["rpmbuild", "--quiet", "--define", f"_topdir {top}", "--nodeps", "-bb", str(spec)])
    (built,) = (top / "RPMS" / "noarch").glob("*.rpm")
    return built


def _rpmsign(rpm: Path, fpr: str) -> list[str]:
    return [
        *("rpmsign", "--define", f"__gpg {DROPIN}", "--define", f"_gpg_name {fpr}"),
        *("--addsign", str(rpm)),
    ]


def test_rpmsign_signs_through_the_dropin_and_rpm_checks_it(
    shared: Running, openpgp_certs: dict[str, bytes], tmp_path: Path
) -> None:
    """rpmsign --addsign with %__gpg = signer-gpg makes a header signature rpm -K accepts
    once the certificate is imported into a private rpmdb; a changed package fails."""
    tools = _gnupg(tmp_path, openpgp_certs[RSA])
    home = tmp_path / "home"
    home.mkdir()
    env = _env(shared, tools, home)
    package = _rpm(tmp_path)
    done = approving(shared, _rpmsign(package, _fpr(openpgp_certs[RSA])), env=env)
    assert done.returncode == 0, done.stderr.decode()
    db = tmp_path / "rpmdb"
    db.mkdir()
    cert = tmp_path / "release.asc"
    cert.write_text(pgp.armor("PUBLIC KEY BLOCK", openpgp_certs[RSA]))
    run(["rpm", "--dbpath", str(db), "--import", str(cert)], env=env)
    checked = run(["rpm", "--dbpath", str(db), "-Kv", str(package)], env=env)
    assert "Header V4 RSA/SHA256 Signature, key ID" in checked.stdout
    assert "digests signatures OK" in run(["rpm", "--dbpath", str(db), "-K", str(package)]).stdout
    tampered = tmp_path / "tampered.rpm"
    data = bytearray(package.read_bytes())
    data[-100] ^= 0x01
    tampered.write_bytes(bytes(data))
    bad = run(["rpm", "--dbpath", str(db), "-K", str(tampered)], env=env, check=False)
    assert bad.returncode != 0
    unsigned = run(["rpm", "--dbpath", str(tmp_path / "empty"), "-K", str(package)], check=False)
    assert unsigned.returncode != 0  # without the certificate, the signature is not trusted


def test_rpm_with_an_ecdsa_key_is_refused_naming_rsa(
    shared: Running, openpgp_certs: dict[str, bytes], tmp_path: Path
) -> None:
    """rpm 4.18 cannot check ECDSA OpenPGP signatures: the drop-in refuses before asking."""
    tools = _gnupg(tmp_path, openpgp_certs["k-ecdsa-p256"])
    home = tmp_path / "home"
    home.mkdir()
    package = _rpm(tmp_path)
    refused = run(
        _rpmsign(package, _fpr(openpgp_certs["k-ecdsa-p256"])),
        env=_env(shared, tools, home),
        check=False,
    )
    assert refused.returncode != 0
    assert "rpm 4.18 accepts only RSA OpenPGP keys" in refused.stderr
    assert "rsa-pkcs1-3072" in refused.stderr


def _repository(root: Path) -> Path:
    """An apt repository: dists/stable/main/binary-all/Packages(.gz) and Release."""
    dist = root / "dists" / "stable"
    binary = dist / "main" / "binary-all"
    binary.mkdir(parents=True)
    packages = textwrap.dedent(
        """\
        Package: hello
        Version: 1.0
        Architecture: all
        Maintainer: Release Team <release@example.org>
        Filename: pool/main/h/hello/hello_1.0_all.deb
        Size: 1
        SHA256: 0000000000000000000000000000000000000000000000000000000000000000
        Description: a package in a repository signed through the service

        """
    ).encode()
    (binary / "Packages").write_bytes(packages)
    (binary / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    lines = [
        "Origin: Example",
        "Label: Example",
        "Suite: stable",
        "Codename: stable",
        "Date: Thu, 03 Dec 2026 00:00:00 UTC",
        "Architectures: all",
        "Components: main",
        "SHA256:",
    ]
    for f in sorted(binary.iterdir()):
        data = f.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} main/binary-all/{f.name}")
    release = dist / "Release"
    release.write_text("\n".join(lines) + "\n")
    return dist


def _apt_update(root: Path, repo: Path, keyring: Path) -> subprocess.CompletedProcess[str]:
    """apt-get update against the file: repository, everything under `root`."""
    for d in ("etc/apt/sources.list.d", "etc/apt/preferences.d", "var/lib/apt/lists/partial"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    sources = root / "etc/apt/sources.list"
    sources.write_text(f"deb [signed-by={keyring}] file:{repo} stable main\n")
    options = {
        "Dir": str(root),
        "Dir::Etc::SourceList": str(sources),
        "Dir::Etc::SourceParts": str(root / "etc/apt/sources.list.d"),
        "Dir::State::status": str(root / "var/lib/dpkg/status"),
        "Dir::Etc::Trusted": str(root / "etc/apt/trusted.gpg"),
        "Dir::Etc::TrustedParts": str(root / "etc/apt/trusted.gpg.d"),
        "APT::Architecture": "amd64",
        "APT::Architectures": "all",
        "APT::Sandbox::User": "root",
        "Acquire::Languages": "none",
        "Debug::NoLocking": "1",
    }
    args = ["apt-get", "update", *(a for k, v in options.items() for a in ("-o", f"{k}={v}"))]
    return run(args, check=False)


def test_an_apt_repository_signed_through_the_dropin_passes_gpgv_and_apt_get_update(
    shared: Running, openpgp_certs: dict[str, bytes], tmp_path: Path
) -> None:
    """`gpg --clearsign -o InRelease Release` and `gpg -abs -o Release.gpg Release` through
    the drop-in (what repository tools run; and maven-gpg-plugin's armored detached call):
    gpgv accepts them; apt-get update in a
    temporary root trusts the repository; a changed InRelease or Packages file fails."""
    tools = _gnupg(tmp_path, openpgp_certs[RSA])
    home = tmp_path / "home"
    home.mkdir()
    env = _env(shared, tools, home)
    repo = tmp_path / "repo"
    dist = _repository(repo)
    fpr = _fpr(openpgp_certs[RSA])
    release = dist / "Release"
    maven = ["--no-tty", "--armor", "--detach-sign", "--local-user", fpr, "--output"]
    for args in (
        ["--clearsign", "-u", fpr, "-o", str(dist / "InRelease"), str(release)],
        ["-abs", "-u", fpr, "-o", str(dist / "Release.gpg"), str(release)],
        [*maven, str(tmp_path / "Release.asc"), str(release)],  # maven-gpg-plugin's call
    ):
        done = approving(shared, [DROPIN, "--batch", "--yes", *args], env=env)
        assert done.returncode == 0, done.stderr.decode()
    assert tools.gpgv(str(dist / "InRelease")).returncode == 0
    assert tools.gpgv(str(dist / "Release.gpg"), str(release)).returncode == 0
    assert tools.gpgv(str(tmp_path / "Release.asc"), str(release)).returncode == 0
    keyring = tmp_path / "release.gpg"
    keyring.write_bytes(tools.keyring.read_bytes())

    updated = _apt_update(tmp_path / "root", repo, keyring)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "W:" not in updated.stderr and "E:" not in updated.stderr, updated.stderr
    lists = list((tmp_path / "root/var/lib/apt/lists").glob("*Packages*"))
    assert lists, "apt-get update fetched no Packages list"

    changed = tmp_path / "changed"
    shutil.copytree(repo, changed)
    cdist = changed / "dists/stable"
    (cdist / "InRelease").write_text(
        (cdist / "InRelease").read_text().replace("Label: Example", "Label: Exampl3")
    )
    (cdist / "Release.gpg").unlink()
    assert tools.gpgv(str(cdist / "InRelease")).returncode != 0
    refused = _apt_update(tmp_path / "root2", changed, keyring)
    assert refused.returncode == 100
    assert "BADSIG" in refused.stdout + refused.stderr and "is not signed" in refused.stderr

    swapped = tmp_path / "swapped"
    shutil.copytree(repo, swapped)
    packages = swapped / "dists/stable/main/binary-all/Packages"
    packages.write_bytes(packages.read_bytes().replace(b"Version: 1.0", b"Version: 6.6"))
    (packages.with_suffix(".gz")).unlink()
    mismatch = _apt_update(tmp_path / "root3", swapped, keyring)
    assert mismatch.returncode == 100 and "Hash Sum mismatch" in mismatch.stderr


def test_the_dropin_refuses_unknown_keys_and_options(
    shared: Running, openpgp_certs: dict[str, bytes], tmp_path: Path
) -> None:
    """A -u that names no key of the service, or an option a signing call cannot honour: a
    one-line error and nothing asked; a call that signs nothing goes to the real gpg."""
    tools = _gnupg(tmp_path, openpgp_certs[RSA])
    home = tmp_path / "home"
    home.mkdir()
    env = _env(shared, tools, home)
    unknown = run([DROPIN, "-bsau", "0" * 40], env=env, input="data", check=False)
    assert unknown.returncode == 2 and "no signing key on the server" in unknown.stderr
    odd = run([DROPIN, "-bsau", "x", "--textmode"], env=env, input="data", check=False)
    assert odd.returncode == 2 and "textmode" in odd.stderr
    listed = run([DROPIN, "--with-colons", "--list-keys"], env=env)
    assert _fpr(openpgp_certs[RSA]) in listed.stdout
    # gpg's abbreviations of its signing commands sign through the service (or are refused
    # here): never a signature by whatever secret key the real gpg might find.
    for abbreviated in ("--detach-sig", "--detach", "--clearsig", "--clears"):
        got = run([DROPIN, abbreviated, "-u", "no-such-key"], env=env, input="x", check=False)
        assert got.returncode == 2 and "no signing key on the server" in got.stderr, abbreviated
    inline = run([DROPIN, "-s", "-u", "no-such-key"], env=env, input="x", check=False)
    assert inline.returncode == 2 and "not signed messages" in inline.stderr
    dry = run([DROPIN, "-bsn", "-u", "x"], env=env, input="x", check=False)
    assert dry.returncode == 2 and "gpg drop-in" in dry.stderr


def test_the_console_script_passes_every_argument_to_the_real_gpg(tmp_path: Path) -> None:
    """A call that signs nothing reaches the real gpg with its arguments exactly, `--`
    included (a file named like an option stays a file); a signing option hidden behind an
    option's `--` value is still taken for signing, and an existing output file is kept
    unless --yes is given."""
    log = tmp_path / "args.log"
    stub = tmp_path / "gpg-stub"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\n')
    stub.chmod(0o755)
    env = {"SIGNER_REAL_GPG": str(stub), "SIGNER_PROFILE": str(tmp_path / "none.toml")}
    run([DROPIN, "--verify", "--", "-o.sig", "data"], env=env)
    assert log.read_text().splitlines() == ["--verify", "--", "-o.sig", "data"]
    log.unlink()
    hidden = run([DROPIN, "-o", "--", "-sb", "f.txt"], env=env, check=False)
    assert hidden.returncode == 2 and "give -u KEY" in hidden.stderr
    assert not log.exists()
    existing = tmp_path / "exists.asc"
    existing.write_text("keep me")
    with pytest.raises(ConfigError, match="give --yes"):
        _write(existing, b"new", overwrite=False)
    assert existing.read_text() == "keep me"
    _write(existing, b"new", overwrite=True)
    assert existing.read_bytes() == b"new"
