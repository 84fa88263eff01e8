"""The `signer` command: server, admin, CI client and auditor commands."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import shlex
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from google.protobuf import duration_pb2, timestamp_pb2

from signer import __version__, logs
from signer.algorithms import ALGORITHMS, HASH_SIZES, algorithm
from signer.audit import merkle
from signer.audit.note import Verifier, open_checkpoint
from signer.audit.offline import verify_dir
from signer.audit.proofs import SignedProof
from signer.cli.kit import (
    EXIT_FAILED,
    call,
    echo,
    fail,
    handle_errors,
    json_opt,
    print_json,
    print_table,
    profile_opt,
    request_dict,
    say,
    server_opt,
    stderr,
    stubs,
)
from signer.client import workflow
from signer.client.auditor import fetch
from signer.client.profile import Profile, load_profile, paged
from signer.client.workflow import Asked
from signer.convert import HASH_FROM_PB, HASH_TO_PB
from signer.errors import ConfigError, ResponseMismatchError, VerificationError
from signer.formats.bundle import Bundle, Trust, dsse_envelope, verify_bundle
from signer.formats.intoto import PAYLOAD_TYPE, build_statement, pae_digest
from signer.model import Digest
from signer.parsing import MAX_TTL, parse_duration
from signer.server.admin import (
    audit_head,
    audit_verifier,
    generate_key,
    list_keys,
    open_token,
    reset_audit_head,
)
from signer.server.config import load_config
from signer.server.devenv import init_devenv
from signer.text import shown
from signer.v1 import audit_pb2, audit_pb2_grpc, signing_pb2, signing_pb2_grpc, types_pb2
from signer.verify import verify_digest

__all__ = ["main"]

format_opt = click.option(
    "--format",
    "fmt",
    type=click.Choice(["raw", "dsse", "bundle"]),
    default="raw",
    show_default=True,
    help="raw signatures, a DSSE envelope over an in-toto statement, or an evidence bundle.",
)
oidc_token_opt = click.option(
    "--oidc-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the CI job's OIDC ID token from this file (OIDC profiles).",
)
_config_opt = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Server config (TOML).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)
def main() -> None:
    """Threshold signing: keys in an HSM, signatures only after m-of-n approval."""


# -- set-up and server ---------------------------------------------------------------


@main.command()
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
    """Create a dev environment: token, keys, CA, certificates, config, profiles."""
    init_devenv(directory, listen, store_url, store_password_file)
    stderr.print(f"dev environment ready in {directory}")
    stderr.print(f"  start the server:  signer serve --config {directory}/signer.toml")
    stderr.print(f"  CI profile:        {directory}/profiles/ci.toml")
    stderr.print(f"  officers:          {directory}/profiles/{{alice,bob,carol}}.toml (2 of 3)")


@main.command()
@_config_opt
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics over plain HTTP here (overrides server.metrics_listen; "
    "off by default).",
)
@handle_errors
def serve(config_path: Path, metrics_listen: str | None) -> None:
    """Run the signing server until SIGTERM or SIGINT."""
    from signer.server.app import Server

    config = load_config(config_path)
    if metrics_listen is not None:
        config = config.with_metrics_listen(metrics_listen)
    logs.configure(config.log_format)
    server = Server.build(config)
    server.start()
    stderr.print(f"listening on {config.server.listen}", style="dim")
    if config.server.oidc_listen:
        stderr.print(f"listening for OIDC requesters on {config.server.oidc_listen}", style="dim")
    if config.server.metrics_listen:
        stderr.print(f"metrics on http://{config.server.metrics_listen}/metrics", style="dim")

    def stop(signum: int, frame: object) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait()


# -- keys (admin, on the token) -----------------------------------------------------


@main.group()
def keys() -> None:
    """Generate and inspect keys in the token (admin; runs where the token is)."""


@keys.command("generate")
@_config_opt
@click.option("--name", required=True, help="Key name (the CKA_LABEL).")
@click.option("--algorithm", "alg", required=True, type=click.Choice(list(ALGORITHMS)))
@handle_errors
def keys_generate(config_path: Path, name: str, alg: str) -> None:
    """Generate a sign-only key pair inside the token (audit-logged)."""
    key = generate_key(config_path, name, algorithm(alg), actor="admin (signer keys generate)")
    click.echo(f"{key.name} {alg} {key.key_id}")


@keys.command("list")
@_config_opt
@json_opt
@handle_errors
def keys_list(config_path: Path, as_json: bool) -> None:
    """List key pairs in the token with their security attributes."""
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
@_config_opt
@click.option("--name", required=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the PEM here.")
@handle_errors
def keys_public(config_path: Path, name: str, out: Path | None) -> None:
    """Print a key's public key (PEM) from the token."""
    token = open_token(load_config(config_path))
    try:
        pem = token.key(name).public_key_pem
    finally:
        token.close()
    _emit(pem, out)


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)


# -- CI client --------------------------------------------------------------------------


def _digests(
    files: tuple[Path, ...], raw: tuple[str, ...], hash_name: str
) -> list[types_pb2.Digest]:
    out = [
        types_pb2.Digest(
            algorithm=HASH_TO_PB[hash_name],
            value=_file_digest(f, hash_name),
            artifact_name=f.name,
        )
        for f in files
    ]
    for i, spec in enumerate(raw):
        name, _, rest = spec.partition(":")
        hex_value, _, artifact = rest.partition(":")
        if name not in HASH_SIZES:
            raise click.BadParameter(
                f"{spec!r}: use ALG:HEX[:ARTIFACT], ALG one of {', '.join(HASH_SIZES)}",
                param_hint="--digest",
            )
        try:
            value = bytes.fromhex(hex_value)
        except ValueError:
            raise click.BadParameter(
                f"{spec!r}: digest is not hex", param_hint="--digest"
            ) from None
        out.append(
            types_pb2.Digest(
                algorithm=HASH_TO_PB[name], value=value, artifact_name=artifact or f"digest-{i}"
            )
        )
    return out


def _file_digest(path: Path, hash_name: str) -> bytes:
    h = hashlib.new(hash_name)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _context(pairs: tuple[str, ...]) -> dict[str, str]:
    ctx = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="--context")
        ctx[k] = v
    return ctx


def _duration(text: str, hint: str, low: dt.timedelta = dt.timedelta(0)) -> dt.timedelta:
    try:
        return parse_duration(text, low, MAX_TTL)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=hint) from None


@main.command()
@profile_opt
@server_opt
@click.option("--key-name", required=True, help="Signing key to use.")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Artifact to sign (its digest is sent, not the file).",
)
@click.option(
    "--digest",
    "raw_digests",
    multiple=True,
    help="A precomputed digest ALG:HEX[:ARTIFACT], e.g. sha256:ab12...:app.tar.",
)
@click.option(
    "--hash",
    "hash_name",
    default="sha256",
    show_default=True,
    type=click.Choice(list(HASH_SIZES)),
    help="Hash for --file.",
)
@click.option("--context", "ctx", multiple=True, help="CI context KEY=VALUE (repeatable).")
@click.option("--ttl", default="", help="Request lifetime, e.g. 30m (capped by policy).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for the decision and write the signature.",
)
@click.option("--timeout", default="15m", show_default=True, help="How long --wait waits.")
@click.option("--idempotency-key", default="", help="Default: a fresh one per invocation.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output file (one artifact, or a bundle/envelope); default next to the first --file.",
)
@format_opt
@oidc_token_opt
@json_opt
@handle_errors
def sign(
    profile_path: Path | None,
    server: str | None,
    key_name: str,
    files: tuple[Path, ...],
    raw_digests: tuple[str, ...],
    hash_name: str,
    ctx: tuple[str, ...],
    ttl: str,
    wait: bool,
    timeout: str,
    idempotency_key: str,
    out: Path | None,
    fmt: str,
    oidc_token_file: Path | None,
    as_json: bool,
) -> None:
    """Ask for a signature; print the request id at once; optionally wait for it.

    --format raw writes one signature per artifact (ARTIFACT.sig, with its audit
    proof beside it); bundle writes one JSON bundle with the signatures, the
    officers' approvals and the audit proof (`signer verify --bundle`); dsse
    sends an in-toto Statement over the artifacts, which the officers see, and
    writes the signed DSSE envelope plus a bundle for it.
    """
    lifetime = _duration(ttl, "--ttl", dt.timedelta(seconds=1)) if ttl else None
    wait_for = _duration(timeout, "--timeout")  # both checked before anything is sent
    digests = _digests(files, raw_digests, hash_name)
    if not digests:
        raise click.UsageError("give --file or --digest")
    if fmt == "raw":
        if out is not None and len(digests) != 1:
            raise click.UsageError("--out needs exactly one --file or --digest")
        if wait and out is None and len(files) != len(digests):
            raise click.UsageError("with --digest, give --out (or use --no-wait)")
    elif wait and out is None and not files:
        raise click.UsageError(f"with --format {fmt} and only --digest, give --out")
    context = _context(ctx)
    payload_type, payload = "", b""
    if fmt == "dsse":
        payload_type = PAYLOAD_TYPE
        payload = build_statement(
            [(d.artifact_name, HASH_FROM_PB[d.algorithm], d.value) for d in digests],
            {"context": context} if context else {},
        )
        names = [d.artifact_name for d in digests]
        label = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
        digests = [
            types_pb2.Digest(
                algorithm=HASH_TO_PB[hash_name],
                value=pae_digest(payload_type, payload, hash_name),
                artifact_name=f"in-toto statement: {label}"[:512],
            )
        ]
    profile = load_profile(profile_path, server).with_token_file(oidc_token_file)
    ttl_pb = duration_pb2.Duration()
    if lifetime is not None:
        ttl_pb.FromTimedelta(lifetime)
    create = signing_pb2.CreateSigningRequestRequest(
        key_name=key_name,
        digests=digests,
        context=context,
        ttl=ttl_pb,
        idempotency_key=idempotency_key or str(uuid.uuid4()),
        payload_type=payload_type,
        payload=payload,
    )
    asked = Asked.of(create)
    with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
        request = workflow.create(profile, stub, create)
        echo(request.id)
        if not wait:
            return
        say(
            f"waiting for {request.threshold} approvals on {request.key_name} "
            f"(request {request.id})..."
        )
        asked = asked.for_request(request.id)
        last, _ = workflow.wait(profile, stub, asked, wait_for)
        request = last or request
        if as_json:
            print_json(request_dict(request))
        _finish(profile, stub, request, asked, fmt, files, out)


def _finish(
    profile: Profile,
    stub: Any,
    request: types_pb2.SigningRequest,
    asked: Asked,
    fmt: str,
    files: tuple[Path, ...],
    out: Path | None,
    own_digests: list[tuple[str, bytes]] | None = None,
) -> None:
    """Verify a decided request's signatures and proof, then write the chosen output."""
    state = request_dict(request)["state"]
    if state != "SIGNED":
        if state in ("PENDING", "APPROVED"):
            # The files' own digests are checked again only when they are named.
            again = " ".join(f"--file {shlex.quote(str(f))}" for f in files) or "--out FILE"
            fail(
                f"request {request.id} is still {state} after the timeout; "
                f"fetch it later with `signer status {request.id} {again}`"
            )
        fail(f"request {request.id} ended {state}: {request.status_message}")
    verified = workflow.verify_signed(profile, stub, request, asked, own_digests)
    proof, key = verified.proof, verified.key
    if fmt == "raw":
        targets = [out] if out is not None else [f.with_name(f.name + ".sig") for f in files]
        for path, sig in zip(targets, request.signatures, strict=True):
            _write_signature(path, sig, proof)
        return
    first = files[0] if files else None

    def target(suffix: str) -> Path:
        if out is not None:
            return out
        assert first is not None
        return first.with_name(first.name + suffix)

    if fmt == "bundle":
        path = target(".bundle.json")
        _write_json(path, _bundle(request, key, proof, None).to_json())
        say(f"bundle written to {path}")
        return
    if not request.payload or len(request.signatures) != 1:
        fail(f"request {request.id} has no DSSE payload; use --format raw or bundle")
    d = request.digests[0]
    if pae_digest(request.payload_type, request.payload, HASH_FROM_PB[d.algorithm]) != d.value:
        fail(f"request {request.id}: the signed digest is not that of its payload; not written")
    envelope = dsse_envelope(
        request.payload_type, request.payload, request.key_id, request.signatures[0]
    )
    path = target(".intoto.json")
    _write_json(path, envelope)
    bundle_path = path.with_name(path.name + ".bundle.json")
    _write_json(bundle_path, _bundle(request, key, proof, envelope).to_json())
    say(f"DSSE envelope written to {path} (bundle: {bundle_path})")


def _bundle(
    request: types_pb2.SigningRequest,
    key: types_pb2.KeyInfo,
    proof: SignedProof,
    envelope: dict[str, Any] | None,
) -> Bundle:
    approvals = [a.envelope for a in request.approvals if a.decision == types_pb2.DECISION_APPROVE]
    return Bundle(
        request_id=request.id,
        key_name=request.key_name,
        key_id=request.key_id,
        algorithm=request.algorithm,
        public_key_pem=key.public_key_pem,
        digests=tuple(
            Digest(HASH_FROM_PB[d.algorithm], d.value, d.artifact_name) for d in request.digests
        ),
        signatures=tuple(request.signatures),
        threshold=request.threshold,
        approvals=tuple(approvals),
        audit=proof,
        dsse=envelope,
    )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _write_signature(path: Path, signature: bytes, proof: SignedProof) -> None:
    """The signature, and beside it the proof that it is on the audit log."""
    path.write_bytes(signature)
    proof_path = path.with_name(path.name + ".audit.json")
    _write_json(proof_path, proof.to_json())
    say(f"signature written to {path} (audit proof: {proof_path})")


@main.command()
@click.argument("request_id")
@profile_opt
@server_opt
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="If SIGNED, write the signature (--format raw: a single one), bundle or envelope "
    "here. Give --file too to have the files' digests checked.",
)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The artifacts, in request order: their digests must be the request's.",
)
@format_opt
@oidc_token_opt
@json_opt
@handle_errors
def status(
    request_id: str,
    profile_path: Path | None,
    server: str | None,
    out: Path | None,
    files: tuple[Path, ...],
    fmt: str,
    oidc_token_file: Path | None,
    as_json: bool,
) -> None:
    """Show one of your requests (and fetch its signature).

    With --file, the request's digests must be those of the files, and each
    signature must verify over its file's own digest, before anything is written.
    """
    profile = load_profile(profile_path, server).with_token_file(oidc_token_file)
    asked = Asked(request_id=request_id)
    with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
        r = call(
            profile, stub.GetSigningRequest, signing_pb2.GetSigningRequestRequest(id=request_id)
        ).request
        workflow.check_response(r, asked)
        own = _own_digests(r, files) if files else None
        d = request_dict(r)
        if as_json:
            print_json(d)
        else:
            _show_request(d)
        if out is not None or files:
            if d["state"] != "SIGNED" or (fmt == "raw" and out and len(r.digests) != 1):
                fail(f"request {request_id} is {d['state']}; no single signature to write")
            _finish(profile, stub, r, asked, fmt, files, out, own)


def _own_digests(r: types_pb2.SigningRequest, files: tuple[Path, ...]) -> list[tuple[str, bytes]]:
    """The files' own digests, hashed as the request's are; they must be the request's."""
    if r.payload:
        raise click.UsageError(
            f"request {r.id} signs a DSSE statement, not the files; leave out --file"
        )
    if len(files) != len(r.digests):
        raise ResponseMismatchError(
            f"request {r.id} has {len(r.digests)} digests, {len(files)} files were given"
        )
    own = []
    for f, d in zip(files, r.digests, strict=True):
        hash_name = HASH_FROM_PB.get(d.algorithm)
        if hash_name is None:
            raise ResponseMismatchError(f"request {r.id} has a digest of an unknown hash")
        value = _file_digest(f, hash_name)
        if value != d.value:
            raise ResponseMismatchError(
                f"request {r.id}: the {hash_name} of {f} is not the request's digest "
                f"for {d.artifact_name}; nothing was written"
            )
        own.append((hash_name, value))
    return own


def _show_request(d: dict[str, Any]) -> None:
    rows = [
        [k, str(d[k])]
        for k in (
            "id",
            "state",
            "key_name",
            "key_id",
            "algorithm",
            "requester",
            "threshold",
            "create_time",
            "expire_time",
        )
    ]
    rows += [[f"context.{k}", v] for k, v in d["context"].items()]
    rows += [
        [f"digest[{i}]", f"{x['algorithm']}:{x['digest']}  {x['artifact']}"]
        for i, x in enumerate(d["digests"])
    ]
    rows += [
        [
            f"{a['decision']}d by" if a["decision"] == "deny" else "approved by",
            f"{a['approver']} at {a['time']} {a['reason']}",
        ]
        for a in d["approvals"]
    ]
    if d["status_message"]:
        rows.append(["status", d["status_message"]])
    print_table(f"request {d['id']}", ["field", "value"], rows)


@main.command()
@click.argument("request_id")
@profile_opt
@server_opt
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@handle_errors
def cancel(request_id: str, profile_path: Path | None, server: str | None, reason: str) -> None:
    """Cancel one of your pending requests."""
    profile = load_profile(profile_path, server)
    with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
        call(
            profile,
            stub.CancelSigningRequest,
            signing_pb2.CancelSigningRequestRequest(id=request_id, reason=reason),
        )
    say(f"request {request_id} cancelled")


@main.command("public-key")
@profile_opt
@server_opt
@click.option("--key-name", required=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the PEM here.")
@handle_errors
def public_key(
    profile_path: Path | None, server: str | None, key_name: str, out: Path | None
) -> None:
    """Fetch a signing key's public key (PEM) from the server."""
    profile = load_profile(profile_path, server)
    with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
        key = call(
            profile, stub.GetPublicKey, signing_pb2.GetPublicKeyRequest(key_name=key_name)
        ).key
    _emit(workflow.checked_key(key, key_name), out)


@main.command()
@click.option(
    "--public-key",
    "public_key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The signing key's public key (PEM), for --signature.",
)
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--digest", "raw_digest", help="ALG:HEX instead of --file.")
@click.option(
    "--hash", "hash_name", default="sha256", show_default=True, type=click.Choice(list(HASH_SIZES))
)
@click.option("--signature", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--scheme",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "ecdsa", "pss", "pkcs1"]),
)
@click.option(
    "--bundle",
    "bundle_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An evidence bundle (signer sign --format bundle|dsse) instead of --signature.",
)
@click.option(
    "--trust",
    "trust_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Pinned trust for --bundle (TOML: public_key, threshold, audit_verifier, [approvers]).",
)
@json_opt
@handle_errors
def verify(
    public_key_path: Path | None,
    file: Path | None,
    raw_digest: str | None,
    hash_name: str,
    signature: Path | None,
    scheme: str,
    bundle_path: Path | None,
    trust_path: Path | None,
    as_json: bool,
) -> None:
    """Verify a signature offline (exit 0 valid, 1 invalid).

    With --bundle and --trust: the signature, its quorum (m distinct pinned
    officers approved exactly this request) and its inclusion in a checkpoint
    signed by the pinned audit key, all offline.
    """
    if bundle_path is not None:
        if file is None or trust_path is None:
            raise click.UsageError("--bundle needs --file and --trust")
        if signature is not None or raw_digest is not None:
            raise click.UsageError("--bundle replaces --signature and --digest")
        trust = Trust.load(trust_path)
        try:
            result = verify_bundle(Bundle.read(bundle_path), trust, file)
        except VerificationError as e:
            fail(f"bundle INVALID: {e}", EXIT_FAILED)
        if as_json:
            print_json(
                {
                    "request_id": result.request_id,
                    "key_name": result.key_name,
                    "artifact": result.artifact,
                    "approvers": list(result.approvers),
                    "log_index": result.log_index,
                    "tree_size": result.tree_size,
                }
            )
            return
        echo(
            f"bundle OK: {file.name} signed by key {result.key_name} after approval by "
            f"{', '.join(result.approvers)} ({len(result.approvers)} of the required "
            f"{trust.threshold}); on the audit log at index {result.log_index} "
            f"(checkpoint of {result.tree_size} entries signed by {trust.audit_verifier.name})"
        )
        return
    if public_key_path is None or signature is None:
        raise click.UsageError("give --public-key and --signature (or --bundle and --trust)")
    if (file is None) == (raw_digest is None):
        raise click.UsageError("give exactly one of --file or --digest")
    digest = _digests((file,) if file else (), (raw_digest,) if raw_digest else (), hash_name)[0]
    try:
        pub = serialization.load_pem_public_key(public_key_path.read_bytes())
    except ValueError:
        raise ConfigError(f"{public_key_path} is not a PEM public key") from None
    hname = {v: k for k, v in HASH_TO_PB.items()}[digest.algorithm]
    try:
        used = verify_digest(pub, hname, digest.value, signature.read_bytes(), scheme)
    except InvalidSignature:
        fail("signature INVALID", EXIT_FAILED)
    click.echo(f"signature OK ({used}, {hname})")


# -- auditor ----------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Read the audit log (auditor role)."""


def _time(text: str | None, hint: str) -> timestamp_pb2.Timestamp | None:
    if not text:
        return None
    ts = timestamp_pb2.Timestamp()
    try:
        ts.FromDatetime(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except (ValueError, OverflowError):  # OverflowError: a time zone shifts it past 0001..9999
        raise click.BadParameter(
            f"{text!r} is not an ISO time from 0001 to 9999", param_hint=hint
        ) from None
    return ts


@audit.command("verifier")
@_config_opt
@handle_errors
def audit_verifier_cmd(config_path: Path) -> None:
    """Print the audit key's signed-note verifier string (pin it in profiles)."""
    click.echo(audit_verifier(config_path))


@audit.command("head")
@_config_opt
@click.option(
    "--reset",
    is_flag=True,
    help="Make the audit key accept the stored log as it is (after restoring a backup); "
    "needs the token PIN, recorded in the log.",
)
@click.option("--reason", default="", help="Why (required with --reset; recorded in the log).")
@json_opt
@handle_errors
def audit_head_cmd(config_path: Path, reset: bool, reason: str, as_json: bool) -> None:
    """Show the token's audit tree head and whether the stored log extends it (admin)."""
    if reset:
        if not reason.strip() or not reason.isprintable() or len(reason) > 1024:
            raise click.UsageError("--reset needs --reason: one line of up to 1024 characters")
        new = reset_audit_head(config_path, reason, actor="admin (signer audit head --reset)")
        click.echo(
            f"tree head reset: the audit key now signs extensions of the stored log of "
            f"{new.size} entries (root {new.root_b64}), recorded as audit.head_reset"
        )
        return
    st = audit_head(config_path)
    if as_json:
        print_json(
            {
                "head": st.head.as_dict() if st.head is not None else None,
                "store": st.tree.as_dict(),
                "consistent": st.consistent,
                "reason": st.problem.reason if st.problem is not None else None,
                "problem": str(st.problem) if st.problem is not None else None,
            }
        )
    else:
        if st.head is None:
            click.echo("token head: none yet (set from the stored checkpoint at the next one)")
        else:
            click.echo(f"token head: size {st.head.size}, root {st.head.root_b64}")
        click.echo(f"stored log: size {st.tree.size}, root {st.tree.root_b64}")
        if st.problem is None:
            click.echo("consistent: the stored log extends the token's head")
    if st.problem is not None:
        fail(f"{st.problem.reason}: {st.problem}")


def _audit_filters(fn: Any) -> Any:
    """The filters shared by `audit list` and `audit export`."""
    for opt in reversed(
        [
            click.option("--event", default="", help="e.g. request.signed"),
            click.option("--actor", default="", help="Who acted (any identity)."),
            click.option("--approver", default="", help="Decisions by this officer."),
            click.option("--requester", default="", help="Events of requests made by this CI."),
            click.option("--request", "request_id", default=""),
            click.option("--key", "key_name", default=""),
            click.option("--since", help="ISO time, inclusive."),
            click.option("--until", help="ISO time, exclusive."),
            click.option(
                "--limit", default=1_000_000, show_default=True, type=click.IntRange(1, 10_000_000)
            ),
        ]
    ):
        fn = opt(fn)
    return fn


def _audit_events(profile: Profile, f: dict[str, Any]) -> Iterator[audit_pb2.AuditEvent]:
    if f["approver"] and f["actor"] and f["approver"] != f["actor"]:
        raise click.UsageError("--approver and --actor name different identities")
    req = audit_pb2.ListAuditEventsRequest(
        event=f["event"],
        actor=f["approver"] or f["actor"],
        request_id=f["request_id"],
        key_name=f["key_name"],
        requester=f["requester"],
        start_time=_time(f["since"], "--since"),
        end_time=_time(f["until"], "--until"),
        page_size=1000,
    )
    with stubs(profile, audit_pb2_grpc.AuditServiceStub) as (stub,):
        events = paged(profile, stub.ListAuditEvents, req, lambda r: r.events, f["limit"])
        for e in itertools.islice(events, f["limit"]):
            if f["approver"] and e.event not in ("request.approved", "request.denied"):
                continue
            yield e


@audit.command("list")
@profile_opt
@server_opt
@_audit_filters
@json_opt
@handle_errors
def audit_list(
    profile_path: Path | None, server: str | None, as_json: bool, **filters: Any
) -> None:
    """List audit events, oldest first, with filters."""
    events = list(_audit_events(load_profile(profile_path, server), filters))
    if as_json:
        print_json([json.loads(e.entry) for e in events])
        return
    rows = [[str(e.index), e.time.ToJsonString(), e.event, e.actor, e.request_id] for e in events]
    print_table("audit events", ["#", "time", "event", "actor", "request"], rows)


@audit.command("export")
@profile_opt
@server_opt
@_audit_filters
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@handle_errors
def audit_export(profile_path: Path | None, server: str | None, fmt: str, **filters: Any) -> None:
    """Write matching entries to stdout, one canonical JSON entry per line."""
    for e in _audit_events(load_profile(profile_path, server), filters):
        line = e.entry.decode("utf-8", errors="replace")
        click.echo(shown(line))  # honest entries hold nothing it changes


@audit.command("show")
@click.argument("index", type=click.IntRange(0, 2**63 - 2))
@profile_opt
@server_opt
@handle_errors
def audit_show(index: int, profile_path: Path | None, server: str | None) -> None:
    """Show one entry in full, with its inclusion proof in the latest checkpoint."""
    profile = load_profile(profile_path, server)
    with stubs(profile, audit_pb2_grpc.AuditServiceStub) as (stub,):
        got = call(
            profile, stub.GetEntries, audit_pb2.GetEntriesRequest(start=index, end=index + 1)
        ).events
        if not got:
            fail(f"no entry {index} in the log")
        cp = call(profile, stub.GetCheckpoint, audit_pb2.GetCheckpointRequest())
        proof = call(
            profile,
            stub.GetInclusionProof,
            audit_pb2.GetInclusionProofRequest(index=index, tree_size=cp.tree_size),
        )
    entry = got[0].entry
    checked = "not checked (no audit_verifier in the profile)"
    if profile.audit_verifier is not None:
        checkpoint = open_checkpoint(cp.checkpoint, profile.audit_verifier)
        merkle.verify_inclusion(
            merkle.leaf_hash(entry), index, checkpoint.size, list(proof.hashes), checkpoint.root
        )
        checked = f"included in the signed checkpoint of size {checkpoint.size}"
    print_json(json.loads(entry))
    say(f"entry {index}: {checked}")


@audit.command("fetch")
@profile_opt
@server_opt
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the local copy (created; updated incrementally).",
)
@handle_errors
def audit_fetch(profile_path: Path | None, server: str | None, out: Path) -> None:
    """Fetch new entries, verifying the checkpoint and consistency with the last fetch."""
    result = fetch(load_profile(profile_path, server), out)
    click.echo(
        f"fetched {result.new_size - result.old_size} entries; {out} holds "
        f"{result.new_size}, consistent with the last verified checkpoint"
    )


@audit.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--verifier",
    "vkey",
    required=True,
    help="Audit verifier key (name+keyid+key) or a file holding it.",
)
@json_opt
@handle_errors
def audit_verify(directory: Path, vkey: str, as_json: bool) -> None:
    """Verify a fetched log offline: tree, checkpoints, and every signature's quorum."""
    text = Path(vkey).read_text().strip() if Path(vkey).is_file() else vkey
    try:
        verifier = Verifier.parse(text)
    except VerificationError as e:
        raise ConfigError(f"--verifier: {e}") from None
    try:
        report = verify_dir(directory, verifier)
    except VerificationError as e:
        fail(f"verification FAILED: {e}")
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    click.echo(
        f"OK: {report.entries} entries, {report.checkpoints} checkpoints signed by "
        f"{verifier.name}; {report.signed} signatures each backed by a valid quorum "
        f"({report.approvals} approvals verified, {report.policies} policies in force)"
    )
