"""Drop-ins for the signing programs other tools call: `signer ssh-keygen`
(console script `signer-ssh-keygen`), what git runs as `gpg.ssh.program`.

git signs a commit or tag with `PROGRAM -Y sign -n git -f KEYFILE [-U] BUFFER` and
reads `BUFFER.sig`. The drop-in finds the service's signing key whose public key
is the one in KEYFILE (the `user.signingkey` git was given), asks for an SSH
signature of BUFFER (`--format ssh`) with the profile in $SIGNER_PROFILE, waits
for the officers (at most $SIGNER_TIMEOUT, default 15m), checks the signature
and its audit proof as `signer sign` does, and writes `BUFFER.sig` (stdout when
no file is named). Every other call (`-Y verify`, `-Y find-principals`,
`-Y check-novalidate`, key generation...) runs the real ssh-keygen
($SIGNER_REAL_SSH_KEYGEN, else `ssh-keygen` on PATH) with the same arguments.
"""

from __future__ import annotations

import datetime as dt
import getopt
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from signer.cli._common import file_digest
from signer.cli._outputs import obtain
from signer.cli.kit import call, fail, handle_errors, stubs
from signer.client import workflow
from signer.client.profile import Profile, load_profile
from signer.errors import ConfigError
from signer.formats import ssh
from signer.model import Digest
from signer.parsing import MAX_TTL, parse_duration
from signer.v1 import signing_pb2, signing_pb2_grpc

__all__ = ["ssh_keygen", "ssh_keygen_main"]

_SIGN_OPTIONS = "n:f:O:UqI:"  # what `ssh-keygen -Y sign` takes (-I, -q accepted, ignored)


_PASSED = "SIGNER_DROPIN_PASSED"  # set for the real tool: a drop-in reached again stops


def _real(env: str, program: str) -> str:
    """The real program: $ENV (an absolute path), else the first `program` in PATH's
    absolute directories that is not this drop-in (git runs it inside a worktree, so a
    relative entry could name the repository's own `./ssh-keygen`)."""
    named = os.environ.get(env)
    if named:
        if not os.path.isabs(named):
            raise ConfigError(f"${env} must be an absolute path, not {named[:80]!r}")
        return named
    me = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isabs(directory):
            continue
        found = shutil.which(program, path=directory)
        if found and (me is None or Path(found).resolve() != me):
            return found
    raise ConfigError(f"no {program} found on PATH to pass this call to (set ${env})")


def _pass_through(env: str, program: str, args: Sequence[str]) -> NoReturn:
    if os.environ.get(_PASSED):
        raise ConfigError(
            f"the {program} this drop-in passes calls to is a drop-in again; set ${env} "
            f"to the real {program}"
        )
    real = _real(env, program)
    try:
        os.execve(real, [real, *args], {**os.environ, _PASSED: "1"})  # noqa: S606 -- the real tool, same arguments
    except OSError as e:
        raise ConfigError(f"cannot run {real}: {e.strerror}") from None


def _key_line(path: Path) -> tuple[str, str]:
    """(type, base64) of the OpenSSH public key in `path` (or `path`.pub)."""
    for candidate in (path, path.with_name(path.name + ".pub")):
        try:
            fields = candidate.read_text().split()
        except (OSError, UnicodeDecodeError):
            continue
        if len(fields) >= 2 and fields[0].startswith(("ecdsa-sha2-", "ssh-rsa")):
            return fields[0], fields[1]
    raise ConfigError(
        f"{path} holds no OpenSSH public key: set git's user.signingkey to the file "
        "`signer keys ssh` printed the key into"
    )


def _find_key(
    profile: Profile, stub: signing_pb2_grpc.SigningServiceStub, wanted: tuple[str, str], path: Path
) -> str:
    """The name of the service's signing key whose public key is `wanted` (from `path`)."""
    keys = call(profile, stub.ListKeys, signing_pb2.ListKeysRequest()).keys
    for key in keys:
        try:
            line = ssh.public_key_line(workflow.checked_key(key, key.name)).split()
        except (ValueError, TypeError):
            continue  # a key OpenSSH cannot name (Ed25519 audit keys are not listed anyway)
        if (line[0], line[1]) == wanted:
            return str(key.name)
    raise ConfigError(f"no signing key on the server has the public key in {path}")


def _timeout() -> dt.timedelta:
    text = os.environ.get("SIGNER_TIMEOUT", "15m")
    try:
        return parse_duration(text, dt.timedelta(seconds=1), MAX_TTL)
    except ValueError as e:
        raise ConfigError(f"SIGNER_TIMEOUT: {e}") from None


def _hashed(path: Path, hash_name: str) -> bytes:
    try:
        return file_digest(path, hash_name)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def _sign(args: Sequence[str]) -> None:
    """`-Y sign -n NAMESPACE -f KEYFILE [FILE...]`: an SSH signature of each FILE."""
    try:
        opts, files = getopt.getopt(list(args), _SIGN_OPTIONS)
    except getopt.GetoptError as e:
        raise click.UsageError(f"ssh-keygen -Y sign: {e}") from None
    given = dict(opts)
    if "-n" not in given or "-f" not in given:
        raise click.UsageError("ssh-keygen -Y sign needs -n NAMESPACE and -f KEYFILE")
    hash_name = "sha512"
    for name, value in opts:
        if name == "-O" and value.startswith("hashalg="):
            hash_name = value.removeprefix("hashalg=")
            if hash_name not in ssh.ARTIFACT_HASHES:
                raise click.UsageError("hashalg must be sha512 or sha256")
    namespace = ssh.check_namespace(given["-n"])
    wait_for = _timeout()
    profile = load_profile(None)
    with tempfile.TemporaryDirectory() as scratch:
        if files:
            paths = [Path(f) for f in files]
        else:
            stdin = Path(scratch) / "stdin"
            stdin.write_bytes(sys.stdin.buffer.read())
            paths = [stdin]
        artifacts = [Digest(hash_name, _hashed(p, hash_name), p.name) for p in paths]
        wanted = _key_line(Path(given["-f"]))
        with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
            key_name = _find_key(profile, stub, wanted, Path(given["-f"]))
            key = workflow.public_key(profile, stub, key_name)
            carried = ssh.SshFormat().carry(
                artifacts, {}, hash_name, {"namespace": namespace}, key.algorithm
            )
            context = {"tool": "ssh-keygen -Y sign", "namespace": namespace}
            signed = obtain(profile, stub, key_name, carried, context, wait_for)
        if tuple(ssh.public_key_line(signed.public_key_pem).split()[:2]) != wanted:
            fail(
                f"request {signed.request_id} was signed by a key other than the one in "
                f"{given['-f']}"
            )
        targets = [p.with_name(p.name + ".sig") for p in paths]
        ssh.write_signatures(signed, targets)
        if not files:
            sys.stdout.write(targets[0].read_text())


def run_ssh_keygen(args: Sequence[str]) -> None:
    if list(args[:2]) == ["-Y", "sign"]:
        _sign(args[2:])
        return
    _pass_through("SIGNER_REAL_SSH_KEYGEN", "ssh-keygen", args)


_PASS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.command("ssh-keygen", context_settings=_PASS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def ssh_keygen(args: tuple[str, ...]) -> None:
    """A drop-in for git's gpg.ssh.program: `-Y sign` signs through the service, every
    other call runs the real ssh-keygen."""
    run_ssh_keygen(args)


def ssh_keygen_main() -> None:
    """The `signer-ssh-keygen` console script (git's gpg.ssh.program takes one path)."""
    ssh_keygen.main(sys.argv[1:], prog_name="signer-ssh-keygen")
