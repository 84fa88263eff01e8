"""Errors of the approver CLI.

ApproverError          root; the CLI prints it on one line and exits 1
└── NotConfirmedError  the officer answered no at the confirmation prompt
"""

from __future__ import annotations

__all__ = ["ApproverError", "NotConfirmedError"]


class ApproverError(Exception):
    """Root of the approver CLI's own errors."""


class NotConfirmedError(ApproverError):
    """The officer did not confirm."""
