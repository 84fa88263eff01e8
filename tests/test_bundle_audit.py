"""Evidence bundles: the audit proof leads from this request's entry to a trusted checkpoint.

Checkpoints re-signed or forged, a trust pinning another audit key, inclusion
proofs flipped, shortened or for another index or tree, and another request's
entry or proof: each copy of the real bundle (tests/bundle_env.py) is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit.note import Verifier, sign_note
from tests.bundle_env import Signed, cli_refused, edited, flip_bit, rejects, trust_file, verify_cli


def _checkpoint_text(note: str) -> str:
    return note[: note.rfind("\n\n") + 1]


def test_checkpoint_resigned_by_another_key(signed: Signed) -> None:
    """The same checkpoint text signed by a fresh key under the log's name is not trusted."""
    fresh = ed25519.Ed25519PrivateKey.generate()
    name = signed.trust.audit_verifier.name

    def edit(d: dict[str, Any]) -> None:
        note = d["audit"]["checkpoint"]
        d["audit"]["checkpoint"] = sign_note(
            _checkpoint_text(note), name, fresh.public_key(), fresh.sign
        )

    rejects(signed, edited(signed, edit), "checkpoint: note has no signature by a known key")


def test_checkpoint_forged_signature_under_real_key_id(signed: Signed) -> None:
    """A signature line naming the real audit key but made by another key is invalid."""
    fresh = ed25519.Ed25519PrivateKey.generate()
    verifier = signed.trust.audit_verifier

    def edit(d: dict[str, Any]) -> None:
        text = _checkpoint_text(d["audit"]["checkpoint"])
        sig = base64.b64encode(verifier.key_id + fresh.sign(text.encode())).decode()
        d["audit"]["checkpoint"] = f"{text}\n\u2014 {verifier.name} {sig}\n"

    rejects(signed, edited(signed, edit), "checkpoint: invalid signature for key")


def test_checkpoint_for_another_tree(signed: Signed) -> None:
    """A checkpoint with another root, signed by a fresh key: refused before the proof."""
    fresh = ed25519.Ed25519PrivateKey.generate()
    name = signed.trust.audit_verifier.name

    def edit(d: dict[str, Any]) -> None:
        size = d["audit"]["tree_size"]
        root = base64.b64encode(os.urandom(32)).decode()
        d["audit"]["checkpoint"] = sign_note(
            f"{name}\n{size}\n{root}\n", name, fresh.public_key(), fresh.sign
        )

    rejects(signed, edited(signed, edit), "no signature by a known key")


def test_trust_pins_another_audit_key(signed: Signed) -> None:
    """The real checkpoint does not verify under a trust whose audit verifier is another key."""
    name = signed.trust.audit_verifier.name
    other = Verifier.for_key(name, ed25519.Ed25519PrivateKey.generate().public_key())
    trust = dataclasses.replace(signed.trust, audit_verifier=other)
    rejects(signed, signed.doc, "checkpoint: note has no signature by a known key", trust=trust)


def test_trust_file_pins_another_audit_key_cli(signed: Signed) -> None:
    """A trust file pinning another audit key refuses the real checkpoint (exit 1)."""
    name = signed.trust.audit_verifier.name
    other = Verifier.for_key(name, ed25519.Ed25519PrivateKey.generate().public_key())
    trust = trust_file(signed, "other-audit.toml", audit_verifier=str(other))
    cli_refused(
        verify_cli(signed.bundle_path, signed.artifact, trust),
        "bundle INVALID",
        "no signature by a known key",
    )


def test_inclusion_proof_hash_flipped(signed: Signed) -> None:
    """One bit of a proof hash flipped: the inclusion proof misses the root."""
    assert signed.doc["audit"]["inclusion_proof"], "a one-entry log has no proof to tamper"

    def edit(d: dict[str, Any]) -> None:
        proof = d["audit"]["inclusion_proof"]
        proof[len(proof) // 2] = flip_bit(proof[len(proof) // 2], at=0)

    rejects(signed, edited(signed, edit), "inclusion proof for leaf .* does not lead to the root")


def test_inclusion_proof_wrong_index(signed: Signed) -> None:
    """The entry's index lowered by one: the inclusion proof fails."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["index"] -= 1

    rejects(signed, edited(signed, edit), "inclusion proof")


def test_inclusion_proof_index_out_of_tree(signed: Signed) -> None:
    """An index equal to the tree size is refused: it is not in the tree."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["index"] = d["audit"]["tree_size"]

    rejects(signed, edited(signed, edit), "is not in a tree of size")


def test_inclusion_proof_hash_removed(signed: Signed) -> None:
    """An inclusion proof missing its last hash fails."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["inclusion_proof"].pop()

    rejects(signed, edited(signed, edit), "inclusion proof")


def test_proof_tree_size_differs_from_checkpoint(signed: Signed) -> None:
    """A proof for one more entry than the checkpoint's tree is refused."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["tree_size"] += 1

    rejects(signed, edited(signed, edit), r"the checkpoint is for \d+ entries, the proof for")


def test_audit_proof_of_another_request(signed: Signed) -> None:
    """The other request's complete, valid audit proof: its entry names another request."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"] = signed.other_doc["audit"]

    rejects(
        signed,
        edited(signed, edit),
        "the audit entry does not match the signed request: request id, signatures differ",
    )


def test_audit_entry_swapped_alone(signed: Signed) -> None:
    """Another request's entry under this proof: not the leaf the proof leads from."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["entry"] = signed.other_doc["audit"]["entry"]

    rejects(signed, edited(signed, edit), "inclusion proof")


def test_audit_entry_edited(signed: Signed) -> None:
    """The entry edited to name the other request's signature breaks the inclusion proof."""

    def edit(d: dict[str, Any]) -> None:
        entry = json.loads(base64.b64decode(d["audit"]["entry"]))
        entry["request_id"] = signed.other_request.id
        d["audit"]["entry"] = base64.b64encode(json.dumps(entry).encode()).decode()

    rejects(signed, edited(signed, edit), "inclusion proof")
