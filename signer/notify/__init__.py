"""Notifications (docs/architecture.md §12): webhooks told of what the audit log records.

The outbox is the audit log itself, read by a cursor per sink: an event is
notified once its entry is committed, with nothing added to the signing path
(`signer.notify.dispatcher`). `messages` turns an entry into a notification
(generic JSON, or a Slack-compatible message) and `webhook` posts it, signed with
HMAC-SHA256 (`webhook.verify` is what a receiver checks).
"""
