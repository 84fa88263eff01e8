"""The signing core: the request state machine, the key policy and its rules, lifecycle events.

`machine` (the `Core`: create, decide, cancel, wait, expire) with its parts:
`intake` (input checks, `Limits`), `quorum` (approval binding and the quorum
count), `signing` (the token step, recovery), `recording` (stand-alone and
rejection audit entries), `audit_reader` (the log's read side), `notifier`
(the waiters' wake-up), `events` (the transitions' hook). `policy` (the key
policy model) and `rules` (one class per policy rule, registered in
`rules.RULES`) load nothing else of the core: the offline audit verifier
applies them too.

Imports no gRPC, SQL driver, PKCS#11 or CLI toolkit (tests/test_imports.py);
this file imports nothing, so loading `signer.core.policy` loads no machine.
"""

__all__: list[str] = []
