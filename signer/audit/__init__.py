"""The audit log (docs/architecture.md §6): canonical entries, appended with each state change."""

from signer.audit.entry import EVENTS, AuditEntry

__all__ = ["EVENTS", "AuditEntry"]
