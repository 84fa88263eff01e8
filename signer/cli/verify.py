"""`signer verify`: what whoever downloads an artifact runs, offline.

It talks to no server and trusts only what it is given out of band: a
signature is checked against the public key named on the command line (the
raw format's check); a bundle, written by `--format bundle` or beside a DSSE
envelope, against pinned trust (`--trust`: the signing key, the officers' keys,
the threshold, the audit verifier), its quorum and its place in the audit log
included, by `signer.formats.bundle.verify_bundle`. Each check is its format's
`verify`, found in `signer.formats.registry`. Exit 0 valid, 1 invalid: a
failed check raises VerificationError, which ends the command with exit 1.
"""

from __future__ import annotations

from pathlib import Path

import click

from signer.algorithms import HASH_SIZES
from signer.cli._common import digests_of
from signer.cli.kit import echo, handle_errors, json_opt, print_json
from signer.convert import HASH_FROM_PB
from signer.formats import registry
from signer.formats.base import Evidence
from signer.model import Digest

__all__ = ["verify"]

# The formats whose output `--signature` checks with the public key alone.
_SIGNATURE_FORMATS = ("raw", "cosign", "ssh")


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
    "--format",
    "fmt",
    default="raw",
    show_default=True,
    type=click.Choice(list(_SIGNATURE_FORMATS)),
    help="What --signature is: a raw signature, a cosign .sig or Sigstore bundle, or an "
    "SSH signature (with --file).",
)
@click.option(
    "--namespace", default="", help="--format ssh: the namespace the signature must be for."
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
    help="Pinned trust for --bundle (TOML: audit_verifier and either policy, the SHA-256 of "
    "a policy version, or public_key, threshold and [approvers]).",
)
@click.option(
    "--chain",
    "chain_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A newer bundle whose policy chain tells of revocations since --bundle was signed "
    "(with a trust file that pins a policy version).",
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
    fmt: str,
    namespace: str,
    bundle_path: Path | None,
    trust_path: Path | None,
    chain_path: Path | None,
    as_json: bool,
) -> None:
    """Verify a signature offline (exit 0 valid, 1 invalid).

    With --bundle and --trust: the signature, its quorum (m distinct pinned
    officers approved exactly this request) and its inclusion in a checkpoint
    signed by the pinned audit key, all offline. A trust file that pins a policy
    version takes the key, the officers and the threshold from the version the
    bundle's chain reaches from it, link by link.
    """
    if bundle_path is not None:
        if file is None or trust_path is None:
            raise click.UsageError("--bundle needs --file and --trust")
        if signature is not None or raw_digest is not None:
            raise click.UsageError("--bundle replaces --signature and --digest")
    elif chain_path is not None:
        raise click.UsageError("--chain goes with --bundle")
    if bundle_path is not None:
        evidence = Evidence(bundle_path, file=file, trust=trust_path, chain=chain_path)
        verdict = registry.FORMATS["bundle"].verify(evidence)
    else:
        if public_key_path is None or signature is None:
            raise click.UsageError("give --public-key and --signature (or --bundle and --trust)")
        if (file is None) == (raw_digest is None):
            raise click.UsageError("give exactly one of --file or --digest")
        if fmt == "ssh" and (file is None or not namespace):
            raise click.UsageError(
                "an SSH signature is checked over --file, for a --namespace (git, file...)"
            )
        if namespace and fmt != "ssh":
            raise click.UsageError("--namespace is for --format ssh")
        pb = digests_of((file,) if file else (), (raw_digest,) if raw_digest else (), hash_name)[0]
        digest = Digest(HASH_FROM_PB[pb.algorithm], pb.value, pb.artifact_name)
        evidence = Evidence(
            signature,
            file=file,
            digest=digest,
            public_key=public_key_path,
            scheme=scheme,
            namespace=namespace,
        )
        verdict = registry.FORMATS[fmt].verify(evidence)
    if as_json:
        # A format without fields of its own says which format and the line people read.
        fields = verdict.fields if verdict.fields is not None else {"verdict": verdict.text}
        print_json({"format": "bundle" if bundle_path is not None else fmt, **fields})
    else:
        echo(verdict.text)
