"""The requester's commands: `signer sign`, `status`, `cancel` and `public-key`.

What CI runs. Every answer is checked before it is used (`signer.client.workflow`):
it must be the request asked for, and a signature is written only after it
and its audit proof verify (`signer.cli._outputs`). With `status --file`, the
request's digests must be those of the files. `sign` sends one idempotency
key per invocation and its retries reuse it, so a flaky network never yields
two requests.
"""

from __future__ import annotations

import datetime as dt
import difflib
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from google.protobuf import duration_pb2

from signer import pgp
from signer.algorithms import HASH_SIZES, algorithm
from signer.bounds import clip
from signer.cli._common import digests_of, emit, file_digest
from signer.cli._outputs import finish, progress
from signer.cli.kit import (
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
    state_opt,
    stubs,
)
from signer.client import workflow
from signer.client.profile import Profile, RemoteError, load_profile, paged
from signer.client.workflow import Asked
from signer.convert import HASH_FROM_PB, STATE_TO_PB, digest_pb
from signer.errors import ResponseMismatchError
from signer.formats import registry
from signer.formats.base import PayloadKey
from signer.formats.openpgp import check_certificate, openpgp_algorithm
from signer.formats.ssh import public_key_line, ssh_algorithm
from signer.model import Digest, State
from signer.parsing import MAX_TTL, format_duration, parse_duration
from signer.v1 import signing_pb2, signing_pb2_grpc, types_pb2

__all__ = ["cancel", "list_", "public_key", "server_keys", "sign", "status"]


class _FormatChoice(click.Choice[str]):
    """The registry's format names, read when the option is parsed, not when imported."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(registry.FORMATS)

    @choices.setter
    def choices(self, _ignored: object) -> None:
        pass  # always the registry's


def _formats_help() -> str:
    """The formats' summaries as one sentence, in the registry's order."""
    *rest, last = (f.summary for f in registry.FORMATS.values())
    if not rest:
        return f"{last}."
    return f"{', '.join(rest)}{',' if len(rest) > 1 else ''} or {last}."


format_opt = click.option(
    "--format",
    "fmt",
    type=_FormatChoice(),
    default=next(iter(registry.FORMATS)),
    show_default=True,
    help=_formats_help(),
)
oidc_token_opt = click.option(
    "--oidc-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the CI job's OIDC ID token from this file (OIDC profiles).",
)


def _context(pairs: tuple[str, ...]) -> dict[str, str]:
    ctx = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="--context")
        if not k or not v:
            raise click.BadParameter(
                f"{p!r} has an empty {'key' if not k else 'value'}: give both, or leave it out",
                param_hint="--context",
            )
        ctx[k] = v
    return ctx


def _duration(text: str, hint: str, low: dt.timedelta = dt.timedelta(0)) -> dt.timedelta:
    try:
        return parse_duration(text, low, MAX_TTL)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=hint) from None


@click.command()
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
    default=None,
    type=click.Choice(list(HASH_SIZES)),
    help="Hash for --file. Default: the format's (cosign sha256, ssh sha512), else the "
    "key's own (sha384 for ecdsa-p384 keys, sha256 for the others).",
)
@click.option("--context", "ctx", multiple=True, help="CI context KEY=VALUE (repeatable).")
@click.option(
    "--namespace",
    default="",
    help="--format ssh: the SSH signature namespace (git signs with `git`, files with `file`).",
)
@click.option(
    "--armor", is_flag=True, help="--format openpgp: armored signatures (FILE.asc), not binary."
)
@click.option(
    "--clearsign",
    is_flag=True,
    help="--format openpgp: a cleartext signed message (apt's InRelease) of each text file.",
)
@click.option("--ttl", default="", help="Request lifetime, e.g. 30m (capped by policy).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for the decision and write the signature.",
)
@click.option(
    "--timeout",
    default="15m",
    show_default=True,
    envvar="SIGNER_TIMEOUT",
    show_envvar=True,
    help="How long --wait waits (as the drop-ins' SIGNER_TIMEOUT).",
)
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
    hash_name: str | None,
    ctx: tuple[str, ...],
    namespace: str,
    armor: bool,
    clearsign: bool,
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
    writes the signed DSSE envelope plus a bundle for it; cosign writes
    ARTIFACT.sig and ARTIFACT.sigstore.json; ssh (with --namespace) sends the
    files' SHA-512 and the namespace, the server derives the SSH signed data, and
    writes ARTIFACT.sig as ssh-keygen does; openpgp hashes each file with the
    signature's trailer and writes ARTIFACT.sig (binary), ARTIFACT.asc (--armor) or
    a cleartext signed ARTIFACT.asc (--clearsign), all files in one request.
    """
    lifetime = _duration(ttl, "--ttl", dt.timedelta(seconds=1)) if ttl else None
    wait_for = _duration(timeout, "--timeout")  # both checked before anything is sent
    if not files and not raw_digests:
        raise click.UsageError("give --file or --digest")
    output = registry.FORMATS[fmt]
    problem = output.out_problem(out, len(files), len(files) + len(raw_digests), wait)
    if problem:
        raise click.UsageError(problem)
    if namespace and fmt != "ssh":
        raise click.UsageError("--namespace is for --format ssh")
    if fmt == "ssh" and not namespace:
        raise click.UsageError("--format ssh needs --namespace (git signs with `git`)")
    if (armor or clearsign) and fmt != "openpgp":
        raise click.UsageError("--armor and --clearsign are for --format openpgp")
    if armor and clearsign:
        raise click.UsageError("give --armor or --clearsign, not both")
    if output.hashes_files and raw_digests:
        raise click.UsageError(
            f"--format {fmt} hashes each file with the signature's trailer: give --file, "
            "not --digest"
        )
    context = _context(ctx)
    params = {"namespace": namespace} if fmt == "ssh" else {}
    if fmt == "openpgp":
        params = {"mode": "cleartext" if clearsign else "armor" if armor else "binary"}
    chosen = hash_name or output.default_hash  # "": the key's own, known once it is fetched
    needs_key = output.key_bound or not chosen
    if not needs_key:  # what is refused is refused before anything is sent
        carried = output.carry(_own(files, raw_digests, chosen), context, chosen, params)
    profile = load_profile(profile_path, server).with_token_file(oidc_token_file)
    ttl_pb = duration_pb2.Duration()
    if lifetime is not None:
        ttl_pb.FromTimedelta(lifetime)
    with (
        stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,),
        _naming_keys(profile, stub, key_name),
    ):
        if needs_key:
            # The key's own hash, and for a typed format the signed digests derived for
            # the key's signature algorithm.
            key = workflow.public_key(profile, stub, key_name)
            chosen = chosen or _key_hash(key)
            if output.hashes_files:
                signing = PayloadKey(
                    key.algorithm,
                    workflow.checked_key(key, key_name),
                    key.openpgp_created or None,
                    int(time.time()),
                )
                carried = output.carry_files(files, params, signing, chosen)
            else:
                own = _own(files, raw_digests, chosen)
                carried = output.carry(own, context, chosen, params, key.algorithm)
        create = signing_pb2.CreateSigningRequestRequest(
            key_name=key_name,
            digests=[digest_pb(d) for d in carried.digests],
            context=context,
            ttl=ttl_pb,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            payload_type=carried.payload_type,
            payload=carried.payload,
        )
        asked = Asked.of(create)
        request = workflow.create(profile, stub, create)
        if as_json and wait:
            say(f"request {request.id}")  # stdout is the one JSON document
        else:
            echo(request.id)
        if lifetime is not None:
            _say_if_cut(request, lifetime)
        if not wait:
            return
        say(
            f"waiting for {request.threshold} approvals on {request.key_name} "
            f"(request {request.id})..."
        )
        asked = asked.for_request(request.id)
        last, _ = workflow.wait(profile, stub, asked, wait_for, progress)
        request = last or request
        if as_json:
            print_json(request_dict(request))
        finish(profile, stub, request, asked, fmt, files, out)


def _say_if_cut(request: types_pb2.SigningRequest, asked: dt.timedelta) -> None:
    """Say so when the server gave the request a shorter life than --ttl asked."""
    span = request.expire_time.ToDatetime() - request.create_time.ToDatetime()
    given = dt.timedelta(seconds=round(span.total_seconds()))
    if given < asked - dt.timedelta(seconds=1):
        say(
            f"--ttl {format_duration(asked)} is more than key {request.key_name} allows: "
            f"request {request.id} expires after {format_duration(given)}, at "
            f"{request.expire_time.ToJsonString()}"
        )


def _own(files: tuple[Path, ...], raw: tuple[str, ...], hash_name: str) -> list[Digest]:
    """The artifacts' own digests: the files' with `hash_name`, then the --digest ones."""
    return [
        Digest(HASH_FROM_PB[d.algorithm], d.value, d.artifact_name)
        for d in digests_of(files, raw, hash_name)
    ]


def _key_hash(key: types_pb2.KeyInfo) -> str:
    try:
        return algorithm(key.algorithm).default_hash
    except KeyError:
        raise ResponseMismatchError(
            f"the server says key {key.name} is {key.algorithm[:40]!r}, an unknown algorithm"
        ) from None


@click.command()
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
        own = _own_digests(r, files, fmt) if files else None
        d = request_dict(r)
        if as_json:
            print_json(d)
        else:
            _show_request(d)
        if out is not None or files:
            one_each = registry.FORMATS[fmt].per_artifact
            if d["state"] != "SIGNED":
                fail(f"request {request_id} is {d['state']}, not SIGNED: there is no signature")
            if one_each and out and len(r.digests) != 1:
                fail(
                    f"request {request_id} has {len(r.digests)} signatures, one per artifact: "
                    "give each file with --file instead of --out, or use --format bundle"
                )
            finish(profile, stub, r, asked, fmt, files, out, own)


def _own_digests(
    r: types_pb2.SigningRequest, files: tuple[Path, ...], fmt: str
) -> list[tuple[str, bytes]] | None:
    """The files' own digests, hashed as the request's are; they must be the request's
    (for a typed request, those its payload lists; then None: its signatures are over
    what the format derives from them)."""
    if len(files) != len(r.digests):
        raise ResponseMismatchError(
            f"request {r.id} has {len(r.digests)} digests, {len(files)} files were given"
        )
    own: list[tuple[str, bytes]] | None = []
    listed: Sequence[types_pb2.Digest] = r.digests
    if r.payload:
        carrier = registry.shown_by(r.payload_type)
        artifacts = carrier.artifacts(r.payload)
        if artifacts is None:
            raise click.UsageError(
                f"request {r.id} signs a DSSE statement, not the files; leave out --file"
            )
        if carrier.name != fmt:
            raise click.UsageError(
                f"request {r.id} is a {carrier.name} request; use --format {carrier.name}"
            )
        if len(artifacts) != len(files):
            raise ResponseMismatchError(
                f"request {r.id} lists {len(artifacts)} files, {len(files)} were given"
            )
        listed = [digest_pb(a) for a in artifacts]
        own = None  # each signature is over the format's structure, derived from the files
    for f, d in zip(files, listed, strict=True):
        hash_name = HASH_FROM_PB.get(d.algorithm)
        if hash_name is None:
            raise ResponseMismatchError(f"request {r.id} has a digest of an unknown hash")
        value = file_digest(f, hash_name)
        if value != d.value:
            raise ResponseMismatchError(
                f"request {r.id}: the {hash_name} of {f} is not the request's digest "
                f"for {d.artifact_name}; nothing was written"
            )
        if own is not None:
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
            "denied by" if a["decision"] == "deny" else "approved by",
            f"{a['approver']} at {a['time']} {a['reason']}",
        ]
        for a in d["approvals"]
    ]
    if d["status_message"]:
        rows.append(["status", d["status_message"]])
    print_table(f"request {d['id']}", ["field", "value"], rows)


@click.command("list")
@profile_opt
@server_opt
@state_opt
@oidc_token_opt
@json_opt
@handle_errors
def list_(
    profile_path: Path | None,
    server: str | None,
    state: str,
    oidc_token_file: Path | None,
    as_json: bool,
) -> None:
    """List your own requests in one state (pending by default), oldest first."""
    profile = load_profile(profile_path, server).with_token_file(oidc_token_file)
    mine = None if profile.uses_oidc else profile.identity
    wanted = STATE_TO_PB[State(state.upper())]
    with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
        found = list(
            paged(
                profile,
                stub.ListSigningRequests,
                signing_pb2.ListSigningRequestsRequest(state=wanted, page_size=50),
                lambda r: r.requests,
            )
        )
    # A pipeline's own identity is the server's to name (from its token's claims); the
    # listing must still be of one requester, an OIDC one.
    requesters = {r.requester for r in found}
    for r in found:
        workflow.check_response(r, Asked())
        theirs = r.requester != mine if mine is not None else not r.requester.startswith("oidc:")
        if r.state != wanted or theirs or len(requesters) > 1:
            raise ResponseMismatchError(
                f"the server listed request {r.id} of another requester or state as yours"
            )
    rows = [_listed(r) for r in found]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"your {state} requests",
        ["id", "key", "digests", "approvals", "created", "expires"],
        [
            [
                d["id"],
                d["key_name"],
                str(d["digest_count"]),
                f"{sum(a['decision'] == 'approve' for a in d['approvals'])}/{d['threshold']}",
                d["create_time"],
                d["expire_time"],
            ]
            for d in rows
        ],
        empty=f"you have no {state} requests",
    )


@click.command()
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


@click.command("public-key")
@profile_opt
@server_opt
@click.option("--key-name", required=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the key here.")
@click.option(
    "--format",
    "key_format",
    default="pem",
    show_default=True,
    type=click.Choice(["pem", "ssh", "openpgp"]),
    help="pem: SubjectPublicKeyInfo PEM; ssh: the OpenSSH line git's user.signingkey and "
    "allowed_signers take; openpgp: the key's armored OpenPGP certificate (gpg --import).",
)
@handle_errors
def public_key(
    profile_path: Path | None, server: str | None, key_name: str, out: Path | None, key_format: str
) -> None:
    """Fetch a signing key's public key from the server (checked against its key id)."""
    profile = load_profile(profile_path, server)
    with (
        stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,),
        _naming_keys(profile, stub, key_name),
    ):
        key = workflow.public_key(profile, stub, key_name, key_format == "openpgp")
    pem = workflow.checked_key(key, key_name)
    if key_format == "ssh":
        ssh_algorithm(key.algorithm, key_name)  # a key SSH cannot use: say which to use
        emit(f"{public_key_line(pem)} {key_name}\n", out)
    elif key_format == "openpgp":
        openpgp_algorithm(key.algorithm, key_name)
        if not key.openpgp_certificate:
            fail(
                f"key {key_name} has no OpenPGP certificate yet; an operator makes it with "
                f"`signer keys openpgp --name {key_name} --uid 'NAME <EMAIL>'`"
            )
        check_certificate(key.openpgp_certificate, pem, key.openpgp_created or None)
        emit(pgp.armor("PUBLIC KEY BLOCK", key.openpgp_certificate), out)
    else:
        emit(pem, out)


def _listed(r: types_pb2.SigningRequest) -> dict[str, Any]:
    """A listed request as JSON: a batch is listed with its first digests only, so its
    count is the server's and its manifest hash unknown here (`signer status` has it)."""
    d = request_dict(r)
    if r.digest_count > len(r.digests):
        d["digest_count"], d["manifest_sha256"] = r.digest_count, None
    return d


def server_keys(profile_path: Path | None, server: str | None, as_json: bool) -> None:
    """Print the signing keys the server lists, each checked to be the key its id names."""
    profile = load_profile(profile_path, server)
    with stubs(profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
        found = list(call(profile, stub.ListKeys, signing_pb2.ListKeysRequest()).keys)
    for k in found:
        workflow.checked_key(k, k.name)
    rows = [
        {
            "name": k.name,
            "algorithm": k.algorithm,
            "key_id": k.key_id,
            "openpgp": bool(k.openpgp_created),
        }
        for k in found
    ]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"signing keys on {profile.server}",
        ["name", "algorithm", "key id", "openpgp"],
        [[r["name"], r["algorithm"], r["key_id"], "yes" if r["openpgp"] else "no"] for r in rows],
    )


def known_keys_hint(profile: Profile, stub: Any, key_name: str) -> str:
    """For an unknown key name: the closest names the server lists, or the names."""
    try:
        listed = call(profile, stub.ListKeys, signing_pb2.ListKeysRequest()).keys
    except RemoteError:
        return "list the keys with `signer keys`"
    names = [clip(k.name, 64) for k in listed][:1000]
    close = difflib.get_close_matches(key_name, names, n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(close)}? (`signer keys` lists them)"
    if not names:
        return "the server offers no signing keys"
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return f"the server's keys: {', '.join(names[:10])}{more}"


@contextmanager
def _naming_keys(profile: Profile, stub: Any, key_name: str) -> Iterator[None]:
    """An unknown key name fails with the names it may have meant."""
    try:
        yield
    except RemoteError as e:
        if e.reason != "UNKNOWN_KEY":
            raise
        hint = known_keys_hint(profile, stub, key_name)
        raise RemoteError(e.code, f"{e.message}; {hint}", e.reason) from None
