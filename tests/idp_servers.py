"""HTTP servers for the throwaway OIDC identity provider (tests/idp.py), on 127.0.0.1.

* `JwksServer`: serves ``IdP.jwks()`` live over HTTPS.
* `GitHubTokenEndpoint`: a stand-in for the Actions runner's ID-token endpoint
  (``ACTIONS_ID_TOKEN_REQUEST_URL`` / ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``).
* `make_tls`: a throwaway CA and a server certificate for localhost/127.0.0.1.

Keys and certificates live in memory or under a test's ``tmp_path``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.idp import IdP


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshake failures (a client rejecting our cert) are expected in tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    timeout = 5

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def send_status(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _BackgroundServer:
    """Runs an HTTP server on 127.0.0.1:0 in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        """The thread serving requests, while the server runs."""
        return self._thread

    @property
    def closed(self) -> bool:
        """Whether the listening socket is released."""
        return self._server.socket.fileno() == -1

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()  # returns once serve_forever has stopped
            self._thread.join(timeout=30)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class JwksServer(_BackgroundServer):
    """Serves ``idp.jwks()`` live over HTTPS at ``url``; counts GETs in ``hits``.

    Set ``fail_status`` to an HTTP status to make the JWKS path return it
    (with an empty body) instead, e.g. to exercise fail-closed behaviour.
    """

    def __init__(
        self,
        idp: IdP,
        cert_file: Path | str,
        key_file: Path | str,
        path: str = "/.well-known/jwks",
    ) -> None:
        self.idp = idp
        self.path = path
        self.hits = 0
        self.fail_status: int | None = None
        lock = threading.Lock()
        outer = self

        class Handler(_Handler):
            def setup(self) -> None:
                super().setup()
                # Handshake here, in the request thread, so a stalled or
                # rejecting client never blocks the accept loop.
                assert isinstance(self.request, ssl.SSLSocket)
                self.request.do_handshake()

            def do_GET(self) -> None:
                if urlsplit(self.path).path != outer.path:
                    self.send_status(404)
                    return
                with lock:
                    outer.hits += 1
                if outer.fail_status is not None:
                    self.send_status(outer.fail_status)
                    return
                self.send_json(200, outer.idp.jwks())

        super().__init__(Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
        self._server.socket = ctx.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )

    def url_for(self, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{self.path}"

    @property
    def url(self) -> str:
        return self.url_for("127.0.0.1")


class GitHubTokenEndpoint(_BackgroundServer):
    """The runner's ID-token endpoint over plain HTTP.

    ``GET url + "&audience=AUD"`` with ``Authorization: Bearer <request_token>``
    returns ``{"count": 1, "value": <token with aud=AUD>}``; a wrong or missing
    bearer gets 401. Without ``audience`` the token's aud is
    ``https://github.com/org``, GitHub's default (the repository owner's URL).
    Every request to the token path is recorded in ``requests``.
    """

    DEFAULT_AUDIENCE = "https://github.com/org"

    def __init__(self, idp: IdP, request_token: str = "runner-secret") -> None:  # noqa: S107
        self.idp = idp
        self.request_token = request_token
        self.requests: list[dict[str, str | None]] = []
        lock = threading.Lock()
        outer = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/token":
                    self.send_status(404)
                    return
                audiences = parse_qs(parts.query).get("audience")
                audience = audiences[-1] if audiences else None
                authorization = self.headers.get("Authorization")
                with lock:
                    outer.requests.append({"audience": audience, "authorization": authorization})
                scheme, _, credential = (authorization or "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(
                    credential.strip().encode(), outer.request_token.encode()
                ):
                    self.send_json(401, {"message": "Bad credentials"})
                    return
                aud = audience if audience is not None else outer.DEFAULT_AUDIENCE
                token = outer.idp.mint(outer.idp.claims(aud=aud))
                self.send_json(200, {"count": 1, "value": token})

        super().__init__(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token?api-version=2.0"


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a server signs its TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throwaway EC P-256 CA and a server cert for localhost and 127.0.0.1.

    Writes ``ca.pem``, ``server.pem`` and ``server.key`` (mode 0600) into
    `tmp_path` and returns their paths as ``(ca, cert, key)``.
    """
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-idp throwaway CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path = tmp_path / "ca.pem"
    cert_path = tmp_path / "server.pem"
    key_path = tmp_path / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    return ca_path, cert_path, key_path
