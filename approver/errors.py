"""Errors of the approver CLI.

SignerError (signer.errors, the project's one root)
└── ApproverError          the CLI prints it on one line and exits 1
    └── NotConfirmedError  the officer answered no at the confirmation prompt
"""

from __future__ import annotations

from signer.errors import SignerError

__all__ = ["ApproverError", "NotConfirmedError"]


class ApproverError(SignerError):
    """Root of the approver CLI's own errors."""


class NotConfirmedError(ApproverError):
    """The officer did not confirm."""
