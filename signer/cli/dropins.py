"""Drop-ins for the signing programs other tools call: `signer ssh-keygen`
(console script `signer-ssh-keygen`), what git runs as `gpg.ssh.program`, and
`signer gpg` (console script `signer-gpg`), what git runs as `gpg.program` and
rpm as `%__gpg`.

git signs a commit or tag with `PROGRAM -Y sign -n git -f KEYFILE [-U] BUFFER` and
reads `BUFFER.sig`. The drop-in finds the service's signing key whose public key
is the one in KEYFILE (the `user.signingkey` git was given), asks for an SSH
signature of BUFFER (`--format ssh`) with the profile in $SIGNER_PROFILE, waits
for the officers (at most $SIGNER_TIMEOUT, default 15m), checks the signature
and its audit proof as `signer sign` does, and writes `BUFFER.sig` (stdout when
no file is named). Every other call (`-Y verify`, `-Y find-principals`,
`-Y check-novalidate`, key generation...) runs the real ssh-keygen
($SIGNER_REAL_SSH_KEYGEN, else `ssh-keygen` on PATH) with the same arguments.

git signs with `gpg --status-fd=2 -bsau KEY` (the object on stdin, the armored
signature on stdout, `[GNUPG:] SIG_CREATED` on the status fd), rpm with `gpg
--no-armor -u KEY -sbo SIGFILE [-- FILE]`, apt repository tools with `gpg
--clearsign -o InRelease Release`. The gpg drop-in finds the service key whose
OpenPGP fingerprint (or long key ID, or name) is KEY, asks for an OpenPGP
signature of the data (`--format openpgp`), and writes it as gpg would. Every call
that signs nothing (`--verify`, `--import`, `--list-keys`...) runs the real gpg
($SIGNER_REAL_GPG, else `gpg` on PATH).
"""

from __future__ import annotations

import datetime as dt
import getopt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import click

from signer import pgp
from signer.algorithms import ALGORITHMS
from signer.cli._common import file_digest
from signer.cli._outputs import obtain
from signer.cli.kit import EXIT_USAGE, call, fail, handle_errors, stubs
from signer.client import workflow
from signer.client.profile import Profile, load_profile
from signer.errors import ConfigError, InvalidArgumentError
from signer.formats import openpgp, ssh
from signer.formats.base import PayloadKey
from signer.model import Digest
from signer.parsing import MAX_TTL, parse_duration
from signer.v1 import signing_pb2, signing_pb2_grpc, types_pb2

__all__ = ["gpg", "gpg_main", "ssh_keygen", "ssh_keygen_main"]

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


# gpg's options a signing call may carry; anything else in a signing call is refused.
_GPG_SHORT = "absu:o:qv"
_GPG_LONG = [
    "armor",
    "no-armor",
    "sign",
    "detach-sign",
    "clearsign",
    "clear-sign",
    "local-user=",
    "output=",
    "status-fd=",
    "digest-algo=",
    "no-verbose",
    "no-secmem-warning",
    "batch",
    "yes",
    "quiet",
    "verbose",
    "no-tty",
    "keyid-format=",
    "pinentry-mode=",
    "use-agent",
    "no-use-agent",
]


_SIGNING_COMMANDS = ("sign", "detach-sign", "clearsign", "clear-sign")


def _signs(args: Sequence[str]) -> bool:
    """Whether a gpg call could make a signature: -s or -b (alone or in a cluster such as
    -bsau), or a long option gpg would read as --sign, --detach-sign or --clearsign (gpg,
    like getopt, takes any unambiguous abbreviation: --detach-sig, --clearsig), anywhere:
    gpg reads `--` as the value of an option that takes one (`-o -- -sb`) and goes on, so
    no `--` ends the search. Anything that could sign is taken for signing: it is then
    signed through the service or refused, never passed to the real gpg."""
    for a in args:
        if a.startswith("--"):
            name = a[2:].split("=", 1)[0]
            if len(name) >= 2 and any(c.startswith(name) for c in _SIGNING_COMMANDS):
                return True
        elif a.startswith("-") and len(a) > 1:
            cluster = a[1:].split("u", 1)[0].split("o", 1)[0]  # up to an option's argument
            if "s" in cluster or "b" in cluster:
                return True
    return False


def _hex_id(wanted: str) -> str | None:
    """A fingerprint or long key ID as gpg takes it (0x prefix, spaces, a trailing !), in
    upper case; None if `wanted` is not one."""
    text = wanted.strip().removesuffix("!").removeprefix("0x").removeprefix("0X")
    text = text.replace(" ", "").upper()
    if len(text) in (16, 40) and all(c in "0123456789ABCDEF" for c in text):
        return text
    return None


def _openpgp_key(
    profile: Profile, stub: signing_pb2_grpc.SigningServiceStub, wanted: str
) -> tuple[types_pb2.KeyInfo, bytes]:
    """The service key named by gpg's -u, from its own GetPublicKey answer: its OpenPGP
    fingerprint or long key ID, else its name; and the fingerprint the answer gives it."""
    hexed = _hex_id(wanted)
    names = [k.name for k in call(profile, stub.ListKeys, signing_pb2.ListKeysRequest()).keys]
    for name in names if hexed else [n for n in names if n == wanted]:
        key = workflow.public_key(profile, stub, name)
        if not key.openpgp_created:
            continue
        try:
            body = pgp.public_key_body(workflow.checked_key(key, name), key.openpgp_created)
        except ValueError:
            continue
        fpr = pgp.fingerprint(body)
        if hexed is None or fpr.hex().upper().endswith(hexed):
            return key, fpr
    raise ConfigError(
        f"no signing key on the server has OpenPGP fingerprint, key ID or name {wanted[:80]!r} "
        "(git: user.signingkey; rpm: %_gpg_name)"
    )


def _gpg_sign(args: Sequence[str]) -> None:
    try:
        opts, files = getopt.gnu_getopt(list(args), _GPG_SHORT, _GPG_LONG)
    except getopt.GetoptError as e:
        raise click.UsageError(f"gpg drop-in: {e} (a signing call takes only {_usage()})") from None
    flags = [name for name, _ in opts]
    given: dict[str, str] = {}
    for name, value in opts:  # the last one given counts, as with gpg
        given[{"--local-user": "-u", "--output": "-o"}.get(name, name)] = value
    user = given.get("-u")
    if not user:
        raise click.UsageError("gpg drop-in: give -u KEY (git: user.signingkey)")
    if len(files) > 1:
        raise click.UsageError("gpg drop-in: sign one file (or stdin) per call")
    clear = "--clearsign" in flags or "--clear-sign" in flags
    if not clear and "-b" not in flags and "--detach-sign" not in flags:
        raise click.UsageError(
            "gpg drop-in: it makes detached (-b) or cleartext (--clearsign) signatures, "
            "not signed messages (-s alone)"
        )
    armored = ("-a" in flags or "--armor" in flags) and "--no-armor" not in flags
    mode = "cleartext" if clear else "armor" if armored else "binary"
    status_fd = _status_fd(given.get("--status-fd"))
    hash_name = given.get("--digest-algo", "").lower()
    if hash_name and hash_name not in pgp.HASH_IDS:
        raise click.UsageError("gpg drop-in: --digest-algo must be SHA256, SHA384 or SHA512")
    wait_for = _timeout()
    profile = load_profile(None)
    if files and files[0] != "-":
        name, data = Path(files[0]).name, _read(Path(files[0]))
    else:
        name, data = "stdin", sys.stdin.buffer.read()
    with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
        key, fpr = _openpgp_key(profile, stub, user)
        if _called_by_rpm() and not key.algorithm.startswith("rsa-pkcs1-"):
            raise InvalidArgumentError(
                f"key {key.name} is {key.algorithm[:40]}: rpm 4.18 accepts only RSA OpenPGP "
                "keys; sign packages with an rsa-pkcs1-3072 or rsa-pkcs1-4096 key",
                reason="KEY_UNSUITABLE_FOR_FORMAT",
            )
        pem = workflow.checked_key(key, key.name)
        signing = PayloadKey(key.algorithm, pem, key.openpgp_created or None, int(time.time()))
        hash_name = hash_name or algorithm_hash(key)
        carried, _ = openpgp.document_request(mode, [(name, [data])], signing, hash_name)
        context = {"tool": f"gpg ({mode})", "file": name}
        signed = obtain(profile, stub, key.name, carried, context, wait_for)
    request, (packet,) = openpgp.signature_packets(signed)
    if request.file_digest(data) != signed.digests[0].value:
        fail(f"request {signed.request_id} signed other data than was sent; not written")
    if request.fingerprint != fpr:
        fail(f"request {signed.request_id} was signed as another OpenPGP key; not written")
    if mode == "binary":
        out = packet
    elif mode == "armor":
        out = pgp.armor("SIGNATURE", packet).encode()
    else:
        out = pgp.clearsign(data, packet)
    target = given.get("-o")
    if target is None and files and files[0] != "-":  # gpg's default: beside the file
        target = files[0] + (".sig" if mode == "binary" else ".asc")
    if target and target != "-":
        _write(Path(target), out, overwrite="--yes" in flags)
    else:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    if status_fd is not None:
        h = request.hashed
        kind = {"binary": "D", "armor": "D", "cleartext": "C"}[mode]
        line = (
            f"[GNUPG:] KEY_CONSIDERED {request.fingerprint.hex().upper()} 0\n"
            f"[GNUPG:] BEGIN_SIGNING H{pgp.HASH_IDS[h.hash_algorithm]}\n"
            f"[GNUPG:] SIG_CREATED {kind} {h.pubkey_algorithm} {pgp.HASH_IDS[h.hash_algorithm]} "
            f"{h.sig_type:02x} {h.created} {request.fingerprint.hex().upper()}\n"
        )
        os.write(status_fd, line.encode())


def _write(path: Path, data: bytes, overwrite: bool) -> None:
    """Write the signature as gpg does: an existing file only with --yes."""
    try:
        with path.open("wb" if overwrite else "xb") as f:
            f.write(data)
    except FileExistsError:
        raise ConfigError(f"{path} exists; give --yes to overwrite it") from None
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from None


def _called_by_rpm() -> bool:
    """Whether rpm (rpmsign, rpmbuild --sign) ran this call: its parent's name says."""
    try:
        parent = Path(f"/proc/{os.getppid()}/comm").read_text().strip()
    except OSError:
        return False
    return parent in ("rpm", "rpmsign", "rpmbuild")


def _usage() -> str:
    return "-s/-b/--clearsign, -a/--armor, -u KEY, -o FILE, --status-fd N, --digest-algo"


def _status_fd(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) > 1023:
        raise click.UsageError(f"gpg drop-in: --status-fd {text[:20]!r} is not a descriptor")
    return int(text)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def algorithm_hash(key: types_pb2.KeyInfo) -> str:
    """The key's own hash (sha384 for P-384, else sha256)."""
    alg = ALGORITHMS.get(key.algorithm)
    return alg.default_hash if alg is not None else "sha256"


def run_gpg(args: Sequence[str]) -> None:
    if _signs(args):
        _gpg_sign(args)
        return
    _pass_through("SIGNER_REAL_GPG", "gpg", args)


_PASS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.command("ssh-keygen", context_settings=_PASS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def ssh_keygen(args: tuple[str, ...]) -> None:
    """A drop-in for git's gpg.ssh.program: `-Y sign` signs through the service, every
    other call runs the real ssh-keygen."""
    run_ssh_keygen(_raw("ssh-keygen", args))


@click.command("gpg", context_settings=_PASS)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def gpg(args: tuple[str, ...]) -> None:
    """A drop-in for git's gpg.program and rpm's %__gpg: signing calls sign through the
    service (OpenPGP), every other call runs the real gpg."""
    run_gpg(_raw("gpg", args))


def _raw(name: str, parsed: tuple[str, ...]) -> tuple[str, ...]:
    """The arguments exactly as given to `signer NAME ...`: click drops the first `--`,
    which the real tool must see (a file named `-o` after `--` is a file, not an option)."""
    argv = sys.argv[1:]
    return tuple(argv[1:]) if argv[:1] == [name] else parsed


def _console(run: Callable[[Sequence[str]], None]) -> None:
    """A console script: the arguments as given, no click parsing; errors as one line."""
    try:
        handle_errors(run)(sys.argv[1:])
    except click.UsageError as e:
        fail(e.format_message(), EXIT_USAGE)
    sys.exit(0)


def gpg_main() -> None:
    """The `signer-gpg` console script (git's gpg.program and rpm's %__gpg take one path)."""
    _console(run_gpg)


def ssh_keygen_main() -> None:
    """The `signer-ssh-keygen` console script (git's gpg.ssh.program takes one path)."""
    _console(run_ssh_keygen)
