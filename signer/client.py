"""Client side: profiles (small TOML files) and channels with mutual TLS.

A profile names the server address, CA, client certificate and key, and for
officers the approval key; flags override it and `SIGNER_PROFILE` names a
default (DESIGN §9). The caller's identity is read from its own certificate,
the same way the server reads it. Every call gets a deadline.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from signer.audit.note import Verifier
from signer.auth import identity_from_cert
from signer.config import parse_duration
from signer.errors import ConfigError, VerificationError

__all__ = ["Profile", "RemoteError", "load_profile", "remote_error"]


@dataclass(frozen=True)
class Profile:
    path: Path
    server: str
    ca: Path
    cert: Path
    key: Path
    approval_key: Path | None = None
    approval_passphrase_file: Path | None = None
    approval_passphrase_env: str | None = None
    timeout: dt.timedelta = dt.timedelta(seconds=30)
    audit_verifier: Verifier | None = None

    @property
    def identity(self) -> str:
        return identity_from_cert(self.cert.read_bytes())

    def channel(self) -> grpc.Channel:
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

    addr = server or raw.get("server")
    if not isinstance(addr, str) or ":" not in addr:
        raise ConfigError(f"profile {path}: server must be HOST:PORT")
    try:
        timeout = parse_duration(str(raw.get("timeout", "30s")))
    except ValueError as e:
        raise ConfigError(f"profile {path}: timeout: {e}") from None
    verifier = None
    if raw.get("audit_verifier") is not None:
        try:
            verifier = Verifier.parse(str(raw["audit_verifier"]))
        except VerificationError as e:
            raise ConfigError(f"profile {path}: audit_verifier: {e}") from None
    ca, cert, key = file("ca"), file("cert"), file("key")
    assert ca is not None and cert is not None and key is not None
    return Profile(
        path=path,
        server=addr,
        ca=ca,
        cert=cert,
        key=key,
        approval_key=file("approval_key", required=False),
        approval_passphrase_file=file("approval_key_passphrase_file", required=False),
        approval_passphrase_env=raw.get("approval_key_passphrase_env"),
        timeout=timeout,
        audit_verifier=verifier,
    )


class RemoteError(Exception):
    """A failed RPC, with its status code and machine-readable reason."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str) -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason

    def __str__(self) -> str:
        tag = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{tag}: {self.message}"


def remote_error(e: grpc.RpcError) -> RemoteError:
    reason = ""
    status = rpc_status.from_call(e)
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
    message = e.details() or ""
    if e.code() == grpc.StatusCode.UNAVAILABLE and "handshake" in message.lower():
        message += " (check the profile's CA, client certificate and server address)"
    return RemoteError(e.code(), message, reason)
