"""The output-format seam: the registry is what the CLI offers and what the core looks up.

`signer sign --format` and `signer status --format` offer exactly the formats
in `signer.formats.registry.FORMATS`, and every `OutputFormat` in the package
is registered there. A toy format defined here and registered by monkeypatching
the registry, and nothing else, is offered by the CLI, carried, assembled and
written by `sign`/`status` in-process against the real server, and its file
verifies with openssl. A payload type no format carries is refused by the
lookup the core makes, and a payload-carrying toy's own check is the one the
core applies.
"""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import pkgutil
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

import signer.formats
from signer.cli.main import main
from signer.errors import ConfigError, InvalidArgumentError, VerificationError
from signer.formats import registry
from signer.formats.base import Evidence, OutputFormat, PayloadKey, Row, SignedRequest, Verdict
from signer.model import Digest
from signer.verify import verify_digest
from testbed.commands import SIGNER, run
from testbed.process import Running
from tests.core_world import world as world  # a fixture
from tests.fakes import World, sha256_digest

_OFFERED = re.compile(r"--format \[([a-z|]+)\]")


class _HexSignature(OutputFormat):
    """A format of this test only: each signature, hex-encoded, beside its artifact."""

    name: ClassVar[str] = "hexsig"
    summary: ClassVar[str] = "hex signatures"
    suffix: ClassVar[str] = ".sig.hex"
    per_artifact: ClassVar[bool] = True

    def write(self, signed: SignedRequest, targets: Sequence[Path]) -> list[str]:
        for path, sig in zip(targets, signed.signatures, strict=True):
            path.write_text(sig.hex() + "\n")
        return [f"hex signature written to {path}" for path in targets]

    def verify(self, evidence: Evidence) -> Verdict:
        if evidence.public_key is None or evidence.digest is None:
            raise ConfigError("needs a public key and a digest")
        pub = serialization.load_pem_public_key(evidence.public_key.read_bytes())
        d = evidence.digest
        try:
            verify_digest(pub, d.algorithm, d.value, bytes.fromhex(evidence.path.read_text()))
        except InvalidSignature:
            raise VerificationError("hex signature INVALID") from None
        return Verdict("hex signature OK")


_TOY_TYPE = "application/vnd.example.toy+json"


class _ToyPayload(_HexSignature):
    """A payload-carrying format of this test only: the payload must be b"toy"."""

    name: ClassVar[str] = "toy"
    payload_type: ClassVar[str] = _TOY_TYPE
    payload_description: ClassVar[str] = "a toy"

    def check_payload(
        self, payload: bytes, digests: Sequence[Digest], max_subjects: int, key: PayloadKey
    ) -> None:
        if payload != b"toy":
            raise InvalidArgumentError("not a toy", reason="NOT_A_TOY")

    def rows(self, described: Mapping[str, Any]) -> list[Row]:
        return [("toy", "yes")]


def _offered(command: str) -> list[str]:
    found = _OFFERED.search(run([*SIGNER, command, "--help"]).stdout)
    assert found, f"signer {command} --help lists no --format choices"
    return found.group(1).split("|")


def test_registry_lists_exactly_the_formats_the_cli_offers() -> None:
    """`sign` and `status` offer exactly the registry's formats, raw first (the default)."""
    assert _offered("sign") == _offered("status") == list(registry.FORMATS)
    assert list(registry.FORMATS) == ["raw", "dsse", "bundle", "cosign", "ssh", "openpgp"]
    assert all(name == f.name for name, f in registry.FORMATS.items())


def test_every_format_in_the_package_is_registered() -> None:
    """Each concrete OutputFormat in signer/formats/ is in the registry, under its name."""
    found = set()
    for info in pkgutil.iter_modules(signer.formats.__path__):
        module = importlib.import_module(f"signer.formats.{info.name}")
        found |= {
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, OutputFormat) and not inspect.isabstract(cls)
        }
    assert found == {type(f) for f in registry.FORMATS.values()}


def test_toy_format_is_offered_written_and_verifies_with_openssl(
    shared: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A format registered only in the registry is offered by `sign --format`, and `status`
    assembles and writes its file after verifying the signature; openssl verifies it."""
    monkeypatch.setitem(registry.FORMATS, _HexSignature.name, _HexSignature())
    ci = ["--profile", str(shared.env.profile_path("ci"))]
    cli = CliRunner()
    assert "hexsig" in cli.invoke(main, ["sign", "--help"]).stdout
    artifact = tmp_path / "app.tar"
    artifact.write_bytes(b"signed through a format of the test's own" * 100)
    args = ["sign", "--key-name", "release", "--file", str(artifact), "--no-wait"]
    made = cli.invoke(main, [*args, "--format", "hexsig", *ci])
    assert made.exit_code == 0, made.output
    request = shared.clients.get(made.stdout.strip())
    shared.clients.approve("alice", request)
    shared.clients.approve("bob", request)
    status = ["status", request.id, "--format", "hexsig", "--file", str(artifact), *ci]
    fetched = cli.invoke(main, status)
    assert fetched.exit_code == 0, fetched.output
    written = tmp_path / "app.tar.sig.hex"
    assert "hex signature written to" in fetched.stderr
    signature = bytes.fromhex(written.read_text())
    assert signature == shared.clients.get(request.id).signatures[0]
    pem, der = tmp_path / "release.pem", tmp_path / "app.tar.der"
    assert (
        cli.invoke(main, ["public-key", "--key-name", "release", "--out", str(pem), *ci]).exit_code
        == 0
    )
    der.write_bytes(signature)
    ok = run(
        ["openssl", "dgst", "-sha256", "-verify", str(pem), "-signature", str(der), str(artifact)]
    )
    assert "Verified OK" in ok.stdout


def test_unknown_payload_type_is_refused_by_the_lookup(world: World) -> None:
    """A payload type no format carries is refused, naming the ones there are; nothing is
    created."""
    with pytest.raises(InvalidArgumentError) as e:
        registry.for_payload_type(_TOY_TYPE)
    assert e.value.reason == "BAD_PAYLOAD_TYPE"
    assert str(e.value) == (
        "payload_type must be application/vnd.in-toto+json (an in-toto Statement v1) or "
        "application/vnd.signer.sshsig.v1+json (an SSH signature request) or "
        "application/vnd.signer.openpgp.v1+json (an OpenPGP signature request)"
    )
    before = world.requests()
    with pytest.raises(InvalidArgumentError, match="payload_type must be") as e:
        world.core.create(
            "ci", "release", [sha256_digest(b"x")], {}, None, payload_type=_TOY_TYPE, payload=b"toy"
        )
    assert e.value.reason == "BAD_PAYLOAD_TYPE" and world.requests() == before


def test_core_applies_the_registered_formats_own_check(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a payload-carrying toy registered, the core takes its payload type, applies its
    check (and only its), and officers are shown what it shows."""
    monkeypatch.setitem(registry.FORMATS, _ToyPayload.name, _ToyPayload())
    digests = [sha256_digest(b"x")]
    with pytest.raises(InvalidArgumentError) as e:
        world.core.create(
            "ci", "release", digests, {}, None, payload_type=_TOY_TYPE, payload=b"not a toy"
        )
    assert e.value.reason == "NOT_A_TOY"
    r = world.core.create(
        "ci",
        "release",
        digests,
        {},
        dt.timedelta(minutes=5),
        payload_type=_TOY_TYPE,
        payload=b"toy",
    )
    assert (r.payload_type, r.payload) == (_TOY_TYPE, b"toy")
    assert registry.shown_by(_TOY_TYPE).rows({}) == [("toy", "yes")]
