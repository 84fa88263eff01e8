"""The operator's commands: `signer init`, `serve` and `keys`.

They run where the token is. The token PIN is read from a file or an environment
variable named in the config and a database password from a file, never from argv
(docs/architecture.md §3.7); keys are generated inside the token, sign-only, and
every generation is audit-logged (`signer.server.admin`). `signer keys` without a
subcommand is the client's listing of the keys a server offers.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path

import click

from signer import logs, pgp
from signer.algorithms import ALGORITHMS, algorithm
from signer.cli import requester
from signer.cli._common import config_opt, emit
from signer.cli._outputs import obtain
from signer.cli.kit import (
    handle_errors,
    json_opt,
    print_json,
    print_table,
    profile_opt,
    server_opt,
    stderr,
    stubs,
)
from signer.client import workflow
from signer.client.profile import load_profile
from signer.errors import (
    AuditHeadError,
    ConfigError,
    ResponseMismatchError,
    StoreError,
    TokenNotFoundError,
)
from signer.formats.base import PayloadKey
from signer.formats.bundle import write_beside
from signer.formats.openpgp import (
    certification_request,
    check_certificate,
    openpgp_algorithm,
    signature_packets,
)
from signer.formats.ssh import public_key_line, ssh_algorithm
from signer.parsing import MAX_TTL, parse_duration
from signer.text import DISPLAY_RULE, is_artifact_name
from signer.v1 import signing_pb2_grpc

__all__ = ["init", "keys", "serve"]

# The server's modules (and the token library and database driver they load) are
# imported by each command that needs them, so that the client's `signer keys`
# listing works where only the client is installed.
_OPENPGP_MAX_TIME = 0xFFFFFFFF  # signer.server.openpgp_keys.MAX_TIME: four octets


# -- set-up and server ---------------------------------------------------------------


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--listen",
    default="127.0.0.1:7443",
    show_default=True,
    help="HOST:PORT the server will listen on (in its certificate and profiles).",
)
@click.option(
    "--store-url",
    default="sqlite:///signer.db",
    show_default=True,
    help="Where requests and the audit log live: sqlite:///FILE or postgresql://USER@HOST/DB.",
)
@click.option(
    "--store-password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding the PostgreSQL password (chmod 600); never in the URL.",
)
@handle_errors
def init(directory: Path, listen: str, store_url: str, store_password_file: Path | None) -> None:
    """Create a dev environment: token, keys, CA, certificates, config, profiles.

    If it fails, it leaves nothing behind."""
    from signer.server.devenv import init_devenv

    try:
        init_devenv(directory, listen, store_url, store_password_file)
    except StoreError as e:
        raise ConfigError(str(e)) from None  # --store-url names a database it cannot open
    stderr.print(f"dev environment ready in {directory}")
    stderr.print(f"  start the server:  signer serve --config {directory}/signer.toml")
    stderr.print(f"  CI profile:        {directory}/profiles/ci.toml")
    stderr.print(f"  officers:          {directory}/profiles/{{alice,bob,carol}}.toml (2 of 3)")


@click.command()
@config_opt
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics over plain HTTP here (overrides server.metrics_listen; "
    "off by default).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Check the config, the TLS files, the token and its keys, the store and the "
    "policy in force, then exit (0: it would serve); serves nothing, writes nothing.",
)
@json_opt
@handle_errors
def serve(config_path: Path, metrics_listen: str | None, check: bool, as_json: bool) -> None:
    """Run the signing server until SIGTERM or SIGINT."""
    from signer.server.app import Server, preflight
    from signer.server.config import load_config
    from signer.server.readiness import notify

    config = load_config(config_path)
    if metrics_listen is not None:
        config = config.with_metrics_listen(metrics_listen)
    logs.configure(config.log_format)
    try:
        if check:
            found = preflight(config)
            if as_json:
                print_json({"ok": True, "checked": found})
            else:
                for line in found:
                    click.echo(f"ok  {line}")
            return
        server = Server.build(config)
    except (TokenNotFoundError, StoreError) as e:
        if isinstance(e, AuditHeadError):
            raise  # the stored log itself is wrong: not a matter of configuration
        raise ConfigError(str(e)) from None  # the token or database named cannot be opened
    server.start()
    stderr.print(f"listening on {config.server.listen}", style="dim")
    if config.server.oidc_listen:
        stderr.print(f"listening for OIDC requesters on {config.server.oidc_listen}", style="dim")
    if config.server.metrics_listen:
        stderr.print(f"metrics on http://{config.server.metrics_listen}/metrics", style="dim")

    def stop(signum: int, frame: object) -> None:
        notify("STOPPING=1")
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Ready only once a stop is handled: a SIGTERM right after READY stops it cleanly.
    notify("READY=1", f"STATUS=listening on {config.server.listen}")
    server.wait()


# -- keys (admin, on the token) -----------------------------------------------------


@click.group(invoke_without_command=True)
@profile_opt
@server_opt
@json_opt
@click.pass_context
@handle_errors
def keys(ctx: click.Context, profile_path: Path | None, server: str | None, as_json: bool) -> None:
    """The keys the server offers; with a subcommand, the keys in the token (admin).

    Without a subcommand: the signing keys the server lists, as `signer sign` finds
    them (with a profile). With one: generate and inspect keys in the token (admin;
    runs where the token is, with --config)."""
    if ctx.invoked_subcommand is not None:
        if profile_path or server or as_json:
            raise click.UsageError(
                "--profile, --server and --json before a subcommand are for the listing "
                f"`signer keys`; give {ctx.invoked_subcommand}'s own options after it"
            )
        return
    requester.server_keys(profile_path, server, as_json)


@keys.command("generate")
@config_opt
@click.option("--name", required=True, help="Key name (the CKA_LABEL).")
@click.option("--algorithm", "alg", required=True, type=click.Choice(list(ALGORITHMS)))
@json_opt
@handle_errors
def keys_generate(config_path: Path, name: str, alg: str, as_json: bool) -> None:
    """Generate a sign-only key pair inside the token (audit-logged)."""
    from signer.server.admin import generate_key

    key = generate_key(config_path, name, algorithm(alg), actor="admin (signer keys generate)")
    if as_json:
        print_json({"name": key.name, "algorithm": alg, "key_id": key.key_id})
        return
    click.echo(f"{key.name} {alg} {key.key_id}")


@keys.command("rotate")
@config_opt
@click.option("--name", required=True, help="The policy key to give a new version.")
@click.option(
    "--algorithm",
    "alg",
    type=click.Choice(list(ALGORITHMS)),
    help="The new version's algorithm (default: the key's).",
)
@json_opt
@handle_errors
def keys_rotate(config_path: Path, name: str, alg: str | None, as_json: bool) -> None:
    """Generate a new version of a key in the token (audit-logged). It signs once the
    officers adopt a policy that pins it; the old version stops signing then, and what
    it signed stays verifiable."""
    from signer.server.admin import rotate_key

    key, number = rotate_key(
        config_path, name, algorithm(alg) if alg else None, actor="admin (signer keys rotate)"
    )
    algorithm_name = key.algorithm.name if key.algorithm else None
    if as_json:
        print_json(
            {"name": key.name, "algorithm": algorithm_name, "key_id": key.key_id, "version": number}
        )
    else:
        click.echo(f"{key.name} {algorithm_name or '?'} {key.key_id}")
    stderr.print(
        f"version {number} of key {name} generated; it signs once the officers adopt a policy "
        f'with keys.{name}.key_id = "{key.key_id}" (signer policy propose; to revoke the '
        "old version too, add a [[revoked]] table in the same version: docs/policy.md)"
    )


@keys.command("list")
@config_opt
@json_opt
@handle_errors
def keys_list(config_path: Path, as_json: bool) -> None:
    """List key pairs in the token with their security attributes."""
    from signer.server.admin import list_keys

    found = list_keys(config_path)
    if as_json:
        print_json(
            [
                {
                    "name": k.name,
                    "algorithm": k.algorithm.name if k.algorithm else None,
                    "key_id": k.key_id,
                    "attributes": k.attributes,
                    "weaknesses": k.weaknesses,
                }
                for k in found
            ]
        )
        return
    rows = [
        [
            k.name,
            k.algorithm.name if k.algorithm else "?",
            k.key_id,
            " ".join(f"{n}={'yes' if v else 'no'}" for n, v in k.attributes.items()),
            "ok" if not k.weaknesses else "WEAK: " + ", ".join(k.weaknesses),
        ]
        for k in found
    ]
    print_table("keys in the token", ["name", "algorithm", "key id", "attributes", "check"], rows)


@keys.command("public")
@config_opt
@click.option("--name", required=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the PEM here.")
@handle_errors
def keys_public(config_path: Path, name: str, out: Path | None) -> None:
    """Print a key's public key (PEM) from the token."""
    from signer.server.admin import key_in_policy, open_token
    from signer.server.config import load_config

    cfg = load_config(config_path)
    token = open_token(cfg)
    try:
        pem = key_in_policy(cfg, token, name).public_key_pem
    finally:
        token.close()
    emit(pem, out)


@keys.command("ssh")
@config_opt
@click.option("--name", required=True)
@click.option(
    "--principal",
    help="The allowed_signers principal (e.g. release@example.org); default: the key name.",
)
@handle_errors
def keys_ssh(config_path: Path, name: str, principal: str | None) -> None:
    """Print a key's OpenSSH public key and its allowed_signers line (for
    `ssh-keygen -Y verify` and git's gpg.ssh.allowedSignersFile)."""
    from signer.server.admin import key_in_policy, open_token
    from signer.server.config import load_config

    cfg = load_config(config_path)
    token = open_token(cfg)
    try:
        key = key_in_policy(cfg, token, name)
    finally:
        token.close()
    ssh_algorithm(key.algorithm.name if key.algorithm else "", name)  # say which to use
    line = public_key_line(key.public_key_pem)
    click.echo(f"{line} {name}")
    click.echo(f'{principal or name} namespaces="git,file" {line}')


@keys.command("openpgp-created")
@config_opt
@click.option("--name", required=True)
@click.option(
    "--set",
    "set_to",
    type=click.IntRange(1, _OPENPGP_MAX_TIME),
    help="Give a key that has none this time (seconds since 1970): audit-logged, never changed.",
)
@click.option(
    "--remove",
    "remove",
    type=click.IntRange(1, _OPENPGP_MAX_TIME),
    help="Of two times kept beside the key, remove this one (audit-logged).",
)
@handle_errors
def keys_openpgp_created(
    config_path: Path, name: str, set_to: int | None, remove: int | None
) -> None:
    """Print the OpenPGP creation time the token keeps for a key, and the fingerprint it
    makes (exit 1 if none). With --set, give one to a key generated before keys got it,
    or to a token restored without it: the time in its published certificate (or its
    `key.generated` entry), so its fingerprint stays the one users pinned; a key never
    published as OpenPGP may take any time up to now. With --remove, of two times kept
    (OpenPGP is refused for the key until one is left), remove the wrong one."""
    from signer.server import openpgp_keys
    from signer.server.admin import (
        SKEW as OPENPGP_SKEW,
    )
    from signer.server.admin import (
        key_in_policy,
        open_token,
        remove_openpgp_created,
        set_openpgp_created,
    )
    from signer.server.config import load_config

    if set_to is not None and remove is not None:
        raise click.UsageError("give --set or --remove, not both")
    if remove is not None:
        remove_openpgp_created(
            config_path, name, remove, actor="admin (signer keys openpgp-created)"
        )
    if set_to is not None:
        if set_to > time.time() + OPENPGP_SKEW:
            raise click.BadParameter(f"{set_to} is in the future", param_hint="--set")
        set_openpgp_created(config_path, name, set_to, actor="admin (signer keys openpgp-created)")
    cfg = load_config(config_path)
    token = open_token(cfg)
    try:
        key = key_in_policy(cfg, token, name)
        pem = key.public_key_pem
        created = openpgp_keys.creation_time(token, key.name)
    finally:
        token.close()
    if created is None:
        stderr.print(
            f"key {name} has no OpenPGP creation time: give it one with --set (the time in "
            "its published certificate, if it has one; `gpg --list-packets` shows it)"
        )
        raise click.exceptions.Exit(1)
    when = dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fingerprint = pgp.fingerprint(pgp.public_key_body(pem, created)).hex().upper()
    click.echo(f"{name} {created} {when} {fingerprint}")


@keys.command("openpgp")
@config_opt
@profile_opt
@click.option("--name", required=True, help="The signing key (rsa-pkcs1-* or ecdsa-*).")
@click.option("--uid", required=True, help='The user ID, e.g. "Release <rel@example.org>".')
@click.option("--out", type=click.Path(path_type=Path), help="Write the armored certificate here.")
@click.option("--yes", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--timeout", default="15m", show_default=True, help="How long to wait.")
@handle_errors
def keys_openpgp(
    config_path: Path,
    profile_path: Path | None,
    name: str,
    uid: str,
    out: Path | None,
    yes: bool,
    timeout: str,
) -> None:
    """Make the key's OpenPGP certificate: its public key with the creation time the token
    keeps and a self-signature on --uid, a signing request the officers approve (sent with
    the requester --profile). Printed armored, and kept in the token for `signer
    public-key --format openpgp`."""
    from signer.server import openpgp_keys
    from signer.server.admin import key_in_policy, open_token
    from signer.server.config import load_config

    try:
        wait_for = parse_duration(timeout, dt.timedelta(seconds=1), MAX_TTL)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--timeout") from None
    if not is_artifact_name(uid):
        raise click.BadParameter(f"a user ID is one line {DISPLAY_RULE}", param_hint="--uid")
    if out is not None and out.exists() and not yes:  # before the officers are asked
        raise click.BadParameter(f"{out} exists; give --yes to overwrite it", param_hint="--out")
    config = load_config(config_path)
    token = open_token(config)
    try:
        key = key_in_policy(config, token, name)
        algorithm_name = key.algorithm.name if key.algorithm else ""
        openpgp_algorithm(algorithm_name, name)
        created = openpgp_keys.creation_time(token, key.name)
    finally:
        token.close()
    if created is None:
        raise ConfigError(
            f"key {name} has no OpenPGP creation time: give it the one from its key.generated "
            "entry or its published certificate with `signer keys openpgp-created --set`"
        )
    profile = load_profile(profile_path)
    with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
        served = workflow.public_key(profile, stub, name)
        if workflow.checked_key(served, name) != key.public_key_pem:
            raise ResponseMismatchError(f"the server's key {name} is not the one in the token")
        signing = PayloadKey(algorithm_name, key.public_key_pem, created, int(time.time()))
        if served.openpgp_created != created:
            raise ResponseMismatchError(
                f"the server gives key {name} OpenPGP creation time {served.openpgp_created}, "
                f"the token {created}: restart the server"
            )
        carried, _ = certification_request(uid, signing)
        context = {"tool": "signer keys openpgp"}  # the user ID is in the payload
        signed = obtain(profile, stub, name, carried, context, wait_for)
    checked, (packet,) = signature_packets(signed)
    cert = pgp.certificate(checked.key, checked.uid, packet)
    check_certificate(cert, key.public_key_pem, created)
    emit(pgp.armor("PUBLIC KEY BLOCK", cert), out)  # out first: a crash after loses nothing
    if out is not None:
        stderr.print(write_beside(signed, out))
    token = open_token(config)
    try:
        openpgp_keys.store_certificate(token, key.name, cert)
    finally:
        token.close()
    stderr.print(
        f"OpenPGP certificate of {name}: {pgp.fingerprint(checked.key).hex().upper()} {uid}"
    )
