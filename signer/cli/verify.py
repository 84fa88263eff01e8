"""`signer verify`: what whoever downloads an artifact runs, offline.

It talks to no server and trusts only what it is given out of band: a
signature is checked against the public key named on the command line; a
bundle against pinned trust (`--trust`: the signing key, the officers' keys,
the threshold, the audit verifier), its quorum and its place in the audit log
included, by `signer.formats.bundle.verify_bundle`. Exit 0 valid, 1 invalid.
"""

from __future__ import annotations

from pathlib import Path

import click
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from signer.algorithms import HASH_SIZES
from signer.cli._common import digests_of
from signer.cli.kit import EXIT_FAILED, echo, fail, handle_errors, json_opt, print_json
from signer.convert import HASH_TO_PB
from signer.errors import ConfigError, VerificationError
from signer.formats.bundle import Bundle, Trust, verify_bundle
from signer.verify import verify_digest

__all__ = ["verify"]


@click.command()
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
    digest = digests_of((file,) if file else (), (raw_digest,) if raw_digest else (), hash_name)[0]
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
