"""The output formats there are: `signer sign --format NAME` offers exactly these.

Adding a format is one module in this package (an `OutputFormat`) and one
line in `FORMATS`. The core finds the format of a carried payload by its
payload type (`for_payload_type`) and has it check the payload; a payload
type no format carries is refused, so nothing the clients cannot show
officers is ever pending.
"""

from __future__ import annotations

from signer.errors import InvalidArgumentError
from signer.formats.base import OutputFormat
from signer.formats.bundle import BundleFormat
from signer.formats.cosign import CosignFormat
from signer.formats.dsse import DsseFormat
from signer.formats.openpgp import OpenPgpFormat
from signer.formats.raw import RawFormat
from signer.formats.ssh import SshFormat

__all__ = ["FORMATS", "for_payload_type", "shown_by"]

# name -> format, in the order `--format` lists them; the first is the default.
FORMATS: dict[str, OutputFormat] = {
    "raw": RawFormat(),
    "dsse": DsseFormat(),
    "bundle": BundleFormat(),
    "cosign": CosignFormat(),
    "ssh": SshFormat(),
    "openpgp": OpenPgpFormat(),
}
_SHOWN_OTHERWISE = DsseFormat()


def for_payload_type(payload_type: str) -> OutputFormat:
    """The format whose requests carry payloads of this type; InvalidArgumentError if none."""
    carriers = [f for f in FORMATS.values() if f.payload_type]
    for f in carriers:
        if f.payload_type == payload_type:
            return f
    known = " or ".join(f"{f.payload_type} ({f.payload_description})" for f in carriers)
    raise InvalidArgumentError(
        f"payload_type must be {known or 'empty: no format carries a payload'}",
        reason="BAD_PAYLOAD_TYPE",
    )


def shown_by(payload_type: str) -> OutputFormat:
    """The format that shows officers a payload of this type.

    A type no format carries (the server refuses those) is shown as a DSSE
    payload: its statement and whether the digest is its PAE under the type
    sent, so what an officer may approve is still decided by what is shown.
    """
    try:
        return for_payload_type(payload_type)
    except InvalidArgumentError:
        return _SHOWN_OTHERWISE
