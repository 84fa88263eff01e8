"""What several `signer` commands share: `--config`, output to a file or stdout, digests.

The digest sent or checked is the one the user named: a `--file` is hashed here,
from its own bytes, with the hash asked for; a `--digest ALG:HEX[:ARTIFACT]`
whose ALG the service does not sign, or whose HEX is not hex, is refused before
anything is sent or checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

from signer.algorithms import HASH_SIZES
from signer.convert import HASH_TO_PB
from signer.v1 import types_pb2

__all__ = ["config_opt", "digests_of", "emit", "file_digest"]

config_opt = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Server config (TOML).",
)


def emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)


def digests_of(
    files: tuple[Path, ...], raw: tuple[str, ...], hash_name: str
) -> list[types_pb2.Digest]:
    out = [
        types_pb2.Digest(
            algorithm=HASH_TO_PB[hash_name],
            value=file_digest(f, hash_name),
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
        if len(value) != HASH_SIZES[name]:
            raise click.BadParameter(
                f"{spec[:80]!r}: a {name} digest is {HASH_SIZES[name]} bytes "
                f"({2 * HASH_SIZES[name]} hex digits), not {len(value)}",
                param_hint="--digest",
            )
        out.append(
            types_pb2.Digest(
                algorithm=HASH_TO_PB[name], value=value, artifact_name=artifact or f"digest-{i}"
            )
        )
    return out


def file_digest(path: Path, hash_name: str) -> bytes:
    h = hashlib.new(hash_name)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()
