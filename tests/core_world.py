"""The world the core tests run in, and what they compare before and after a call.

`world` is a `tests.fakes.World` on a real store of the test's backend (a
SQLite file in tmp_path, or a PostgreSQL database), a fake in-memory token and
a fake clock, with small limits (3 digests, 4 context entries); no gRPC, no
PKCS#11. `snapshot` is everything the store holds, so a test can check that a
refusal changed nothing (invariant 8); `add_audit_trigger` makes audit inserts
fail as a full disk would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from signer.core.intake import Limits
from signer.model import Request
from testbed.env import Db
from tests.fakes import World, make_world

__all__ = ["MIN", "add_audit_trigger", "drop_audit_trigger", "snapshot", "world"]

MIN = dt.timedelta(minutes=1)


@pytest.fixture
def world(tmp_path: Path, new_db: Callable[[], Db]) -> Iterator[World]:
    w = make_world(tmp_path, db=new_db(), limits=Limits(max_digests=3, max_context_entries=4))
    yield w
    w.close()


def snapshot(w: World) -> tuple[list[Request], list[bytes]]:
    """Everything the store holds, to compare before and after a refused call."""
    return w.requests(), [e.to_bytes() for e in w.audit()]


def add_audit_trigger(w: World, when: str = "true") -> None:
    """Make every audit insert matching `when` fail, as a full disk would."""
    if w.db.backend == "sqlite":
        w.db.rows(
            "CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log "
            f"WHEN {when} BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        return
    w.db.rows(
        "CREATE FUNCTION audit_fails() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'disk full'; END $$"
    )
    w.db.rows(
        "CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log FOR EACH ROW "
        f"WHEN ({when}) EXECUTE FUNCTION audit_fails()"
    )


def drop_audit_trigger(w: World) -> None:
    w.db.rows("DROP TRIGGER audit_fails" + ("" if w.db.backend == "sqlite" else " ON audit_log"))
