"""Client side: profiles (small TOML files) and channels with mutual TLS or OIDC.

A profile names the server address, CA, client certificate and key (or, for a
CI job without any secret, OIDC settings: `oidc_audience`, `oidc_token_file`,
`oidc_token_env`; see `signer.client.ci_token`), and for officers the approval key;
`--server` or `SIGNER_SERVER` overrides its address, and `SIGNER_PROFILE` names a
default profile. A call that fails before the server could answer says what to
check: the address and where it came from, or the port of the other kind. The
caller's identity is read from its own certificate, the same way the server
reads it. Every call gets a deadline.

Listings come a page at a time (`list_requests`), and `fetch_request` gives an
officer one request with every digest, paging through a large batch's digests:
what it returns is checked to be whole (as many digests as the request says it
has, the pages agreeing with what the request carried), so a batch is never
shown or signed in part.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from signer.approval.ssh_agent import PREFIX as AGENT_PREFIX
from signer.approval.token_uri import TokenKeyUri
from signer.audit.note import Verifier
from signer.client.ci_token import DEFAULT_TOKEN_ENV, TokenSource, call_credentials
from signer.errors import ConfigError, SignerError, VerificationError
from signer.parsing import parse_duration
from signer.text import DISPLAY_RULE, is_displayable, shown
from signer.tls import identity_from_cert
from signer.v1 import approval_pb2, approval_pb2_grpc, types_pb2

__all__ = [
    "Profile",
    "RemoteError",
    "call",
    "fetch_request",
    "list_requests",
    "load_profile",
    "remote_error",
]

MAX_DIGESTS = 10_000  # the most a request may have (the server's limit)


@dataclass(frozen=True)
class Profile:
    path: Path
    server: str
    ca: Path
    cert: Path | None
    key: Path | None
    approval_key: Path | None = None
    approval_passphrase_file: Path | None = None
    approval_passphrase_env: str | None = None
    approval_token: str | None = None  # a pkcs11: URI, for a key in the officer's token
    approval_agent_key: Path | None = None  # the .pub file of a key ssh-agent holds
    approval_pin_file: Path | None = None
    approval_pin_env: str | None = None
    timeout: dt.timedelta = dt.timedelta(seconds=30)
    audit_verifier: Verifier | None = None
    oidc_audience: str = ""
    oidc_token_file: Path | None = None
    oidc_token_env: str = DEFAULT_TOKEN_ENV
    server_from: str = ""  # where `server` came from: "--server", "$SIGNER_SERVER"; "" the file

    @property
    def uses_oidc(self) -> bool:
        return self.cert is None

    @property
    def identity(self) -> str:
        if self.cert is None:
            raise ConfigError(f"profile {self.path} has no client certificate (cert, key)")
        return identity_from_cert(self.cert.read_bytes())

    def with_token_file(self, path: Path | None) -> Profile:
        """This profile with `--oidc-token-file` applied."""
        if path is None:
            return self
        if not self.uses_oidc:
            raise ConfigError(
                f"profile {self.path} uses a client certificate; --oidc-token-file needs an "
                "OIDC profile (server, ca, oidc_audience; no cert or key)"
            )
        return dataclasses.replace(self, oidc_token_file=path)

    def channel(self) -> grpc.Channel:
        if self.cert is None or self.key is None:
            source = TokenSource(
                file=self.oidc_token_file, env=self.oidc_token_env, audience=self.oidc_audience
            )
            source.token()  # fail now, with a clear message, if there is no token
            creds = grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes()),
                call_credentials(source),
            )
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes(),
                private_key=self.key.read_bytes(),
                certificate_chain=self.cert.read_bytes(),
            )
        return grpc.secure_channel(
            self.server,
            creds,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )


def load_profile(path: Path | None, server: str | None = None) -> Profile:
    """Load a profile from `path` or $SIGNER_PROFILE; `server` overrides its address."""
    if path is None:
        env = os.environ.get("SIGNER_PROFILE")
        if not env:
            raise ConfigError("no profile: pass --profile FILE or set SIGNER_PROFILE")
        path = Path(env)
    path = path.resolve()
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"profile {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"profile {path}: not valid TOML: {e}") from None
    for k, v in raw.items():
        if isinstance(v, str) and not (is_displayable(k) and is_displayable(v)):
            raise ConfigError(f"profile {path}: {shown(k)} must be {DISPLAY_RULE}")

    def file(key: str, required: bool = True) -> Path | None:
        value = raw.get(key)
        if value is None:
            if required:
                raise ConfigError(f"profile {path}: {key} is missing")
            return None
        if not isinstance(value, str):
            raise ConfigError(f"profile {path}: {key} must be a string path")
        p = Path(value)
        p = p if p.is_absolute() else (path.parent / p).resolve()
        if not p.is_file():
            raise ConfigError(f"profile {path}: {key}: file {p} does not exist")
        return p

    from_env = os.environ.get("SIGNER_SERVER", "")
    addr = server or from_env or raw.get("server")
    server_from = "--server" if server else "$SIGNER_SERVER" if from_env else ""
    if not isinstance(addr, str) or ":" not in addr:
        where = server_from or f"profile {path}: server"
        raise ConfigError(f"{where} must be HOST:PORT, not {shown(str(addr))[:80]!r}")
    try:
        timeout = parse_duration(
            str(raw.get("timeout", "30s")), dt.timedelta(seconds=1), dt.timedelta(hours=1)
        )
    except ValueError as e:
        raise ConfigError(f"profile {path}: timeout: {e}") from None
    verifier = None
    if raw.get("audit_verifier") is not None:
        try:
            verifier = Verifier.parse(str(raw["audit_verifier"]))
        except VerificationError as e:
            raise ConfigError(f"profile {path}: audit_verifier: {e}") from None
    ca = file("ca")
    assert ca is not None
    cert, key = file("cert", required=False), file("key", required=False)
    if (cert is None) != (key is None):
        raise ConfigError(f"profile {path}: set both cert and key, or neither (OIDC)")
    audience = raw.get("oidc_audience", "")
    token_env = raw.get("oidc_token_env", DEFAULT_TOKEN_ENV)
    if not isinstance(audience, str) or not isinstance(token_env, str) or not token_env:
        raise ConfigError(f"profile {path}: oidc_audience and oidc_token_env must be strings")
    token_uri = (
        raw.get("approval_key") if str(raw.get("approval_key", "")).startswith("pkcs11:") else None
    )
    if token_uri is not None:
        try:
            TokenKeyUri.parse(token_uri)
        except ValueError as e:
            raise ConfigError(f"profile {path}: approval_key: {e}") from None
    agent_key = None
    if str(raw.get("approval_key", "")).startswith(AGENT_PREFIX):
        agent_key = Path(str(raw["approval_key"]).removeprefix(AGENT_PREFIX)).expanduser()
        agent_key = agent_key if agent_key.is_absolute() else (path.parent / agent_key).resolve()
        if not agent_key.is_file():
            raise ConfigError(f"profile {path}: approval_key: file {agent_key} does not exist")
    token_file = raw.get("oidc_token_file")
    if token_file is not None and not isinstance(token_file, str):
        raise ConfigError(f"profile {path}: oidc_token_file must be a string path")
    return Profile(
        path=path,
        server=addr,
        ca=ca,
        cert=cert,
        key=key,
        approval_key=None if token_uri or agent_key else file("approval_key", required=False),
        approval_agent_key=agent_key,
        approval_passphrase_file=file("approval_key_passphrase_file", required=False),
        approval_passphrase_env=raw.get("approval_key_passphrase_env"),
        approval_token=token_uri,
        approval_pin_file=file("approval_pin_file", required=False),
        approval_pin_env=_optional_str(raw, "approval_pin_env", path),
        timeout=timeout,
        audit_verifier=verifier,
        oidc_audience=audience,
        oidc_token_file=(path.parent / token_file).resolve() if token_file else None,
        oidc_token_env=token_env,
        server_from=server_from,
    )


def _optional_str(raw: dict[str, Any], key: str, path: Path) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"profile {path}: {key} must be a string")
    return value


class RemoteError(SignerError):
    """A failed RPC, with its status code and the server's machine-readable reason."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason  # "" if none was sent

    def __str__(self) -> str:  # the server's text, made safe to print wherever it goes
        tag = f" [{shown(self.reason)}]" if self.reason else ""
        return f"{self.code.name}{tag}: {shown(self.message)}"

    @property
    def overloaded(self) -> bool:
        """gRPC's own refusal of a call the server had no room for: worth a retry."""
        return (
            self.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and not self.reason
            and self.message.startswith("Concurrent RPC limit exceeded")
        )


def remote_error(e: grpc.RpcError, profile: Profile | None = None) -> RemoteError:
    """The failure as a RemoteError; with `profile`, what to check when it is the
    profile's (its address, its port, its credentials), naming where the address came
    from."""
    reason = ""
    try:  # a server's status details that do not parse, or disagree, say nothing
        status = rpc_status.from_call(e)
        for detail in status.details if status is not None else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
    except (ValueError, DecodeError):
        reason = ""
    message = e.details() or ""
    hint = _hint(profile, e.code(), message, reason) if profile is not None else ""
    if not hint and e.code() == grpc.StatusCode.UNAVAILABLE and "handshake" in message.lower():
        hint = "check the profile's CA, client certificate and server address"
    return RemoteError(e.code(), f"{message}; {hint}" if hint else message, reason)


def _hint(profile: Profile, code: grpc.StatusCode, message: str, reason: str) -> str:
    """What to check when a call failed before the server could answer it."""
    given = {"--server": "given by --server", "$SIGNER_SERVER": "from $SIGNER_SERVER"}
    where = f"{profile.server} ({given.get(profile.server_from, f'profile {profile.path}')})"
    text = message.lower()
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        if profile.uses_oidc and any(w in text for w in ("socket closed", "handshake", "reset")):
            return (
                f"{where} closed the connection: an OIDC profile has no client certificate, "
                "and that looks like the server's mutual-TLS port (server.listen); OIDC "
                "requesters use its server.oidc_listen port"
            )
        if "handshake" in text:
            return (
                f"the TLS handshake with {where} failed: check the profile's ca, cert and key, "
                "and that this is the server's address"
            )
        if any(w in text for w in ("failed to connect", "refused", "resolve", "dns")):
            return (
                f"nothing answers at {where}: is `signer serve` running there, and is that "
                "its port?"
            )
    if code == grpc.StatusCode.UNAUTHENTICATED and reason == "NO_CREDENTIALS" and profile.cert:
        return (
            f"{where} did not ask for this profile's client certificate: that looks like "
            "the server's OIDC port (server.oidc_listen); certificate profiles use its "
            "server.listen port"
        )
    return ""


def call(
    profile: Profile, rpc: Callable[..., Any], request: Any, timeout: float | None = None
) -> Any:
    """One RPC with a deadline; RpcError becomes RemoteError."""
    try:
        return rpc(request, timeout=timeout or profile.timeout.total_seconds())
    except grpc.RpcError as e:
        raise remote_error(e, profile) from None


MAX_LISTED = 100_000  # items of one listing a client takes from a server
_MAX_TOKEN = 256  # characters of a page token (the server's are a number)


def paged(
    profile: Profile,
    method: Callable[..., Any],
    request: Any,
    items: Callable[[Any], Sequence[Any]],
    limit: int = MAX_LISTED,
) -> Iterator[Any]:
    """Every item of a paged listing, page by page (`request.page_token` moves on).

    A server's listing must move on: a page that says more follows carries items and a
    short token not seen before, and a listing ends within `limit` items; else it stops
    with VerificationError, so no server keeps a client paging forever or holding its
    tokens.
    """
    seen: set[str] = set()
    count = 0
    while True:
        resp = call(profile, method, request)
        got = items(resp)
        count += len(got)
        yield from got
        token = resp.next_page_token
        if not token:
            return
        if len(token) > _MAX_TOKEN:
            raise VerificationError(
                f"the server sent a page token of {len(token)} characters; the listing stops"
            )
        if not got or token in seen or token == request.page_token:
            raise VerificationError(
                "the server's listing does not move on (an empty page, or a page token "
                "sent before); the listing stops"
            )
        if count >= limit:
            raise VerificationError(f"the server's listing goes past {limit} items; it stops")
        seen.add(token)
        request.page_token = token


def list_requests(
    profile: Profile,
    stub: approval_pb2_grpc.ApprovalServiceStub,
    state: types_pb2.RequestState.ValueType,
) -> Iterator[types_pb2.SigningRequest]:
    """Every request in `state` the caller may decide on, as summaries, page by page."""
    req = approval_pb2.ListRequestsRequest(state=state, page_size=50)
    yield from paged(profile, stub.ListRequests, req, lambda r: r.requests)


def fetch_request(
    profile: Profile, stub: approval_pb2_grpc.ApprovalServiceStub, request_id: str
) -> types_pb2.SigningRequest:
    """One request with all its digests (paged through when it carries only its first)."""
    r: types_pb2.SigningRequest = call(
        profile, stub.GetRequest, approval_pb2.GetRequestRequest(id=request_id)
    ).request
    count = r.digest_count or len(r.digests)  # a server without paging sends them all
    if len(r.digests) > count or count > MAX_DIGESTS:
        raise VerificationError(
            f"request {request_id}: the server sent {len(r.digests)} digests and says it has "
            f"{count}; not shown"
        )
    if len(r.digests) < count:
        digests = _all_digests(profile, stub, request_id, count)
        if digests[: len(r.digests)] != list(r.digests):
            raise VerificationError(
                f"request {request_id}: its digest pages differ from the digests it carried"
            )
        del r.digests[:]
        r.digests.extend(digests)
    return r


def _all_digests(
    profile: Profile, stub: approval_pb2_grpc.ApprovalServiceStub, request_id: str, count: int
) -> list[types_pb2.Digest]:
    digests: list[types_pb2.Digest] = []
    req = approval_pb2.ListRequestDigestsRequest(id=request_id, page_size=MAX_DIGESTS)
    while len(digests) < count:
        resp = call(profile, stub.ListRequestDigests, req)
        if resp.digest_count != count or not resp.digests:
            raise VerificationError(
                f"request {request_id}: the server's digest pages stop at {len(digests)} of "
                f"{count} (or change their count)"
            )
        digests += resp.digests
        if not resp.next_page_token:
            break
        req.page_token = resp.next_page_token
    if len(digests) != count:
        raise VerificationError(
            f"request {request_id}: the server sent {len(digests)} digests of {count}"
        )
    return digests


@contextmanager
def stubs(profile: Profile, *factories: Callable[[grpc.Channel], Any]) -> Iterator[list[Any]]:
    """Stubs of the given services on one channel to the profile's server."""
    with profile.channel() as channel:
        yield [f(channel) for f in factories]
