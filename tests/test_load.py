"""A bounded load run: 3 replicas on PostgreSQL, 32 concurrent pipelines, about 10 s.

The same driver and checks as `python -m benchmarks.load` (which runs 60 s and
reports speed); here only correctness counts: no flow fails, none is lost or
duplicated, the database holds exactly the pipelines' requests, each with one
created and one signed audit entry, and the log verifies through a replica.
The checker itself is shown to catch a stray request and a duplicated one.
No timing is asserted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks import load
from testbed.env import Db, make_env
from testbed.pg import PgServer

PIPELINES = 32
SECONDS = 10.0


def test_three_replicas_32_pipelines_lose_and_duplicate_nothing(
    pg: PgServer, tmp_path: Path
) -> None:
    """Three replicas under 32 pipelines for 10 s lose and duplicate nothing; the
    checker catches a duplicated, a lost and a stray request."""
    env = make_env(tmp_path / "env", Db(pg.database("load"), pg.password_file))
    load.add_pipelines(env, PIPELINES)
    with load.serving("postgresql", env, 3) as setup:
        flows, elapsed = load.drive(setup, PIPELINES, SECONDS)
        assert len(flows) >= PIPELINES  # every pipeline finished at least one flow
        assert {f.started for f in flows}  # the flows ran
        checked = load.check(setup, flows, tmp_path)
        # create, 2 approvals, quorum, signed: at least five entries per flow.
        assert checked["audit_entries"] >= 5 * len(flows)
        assert checked["checkpoints"] > 0

        # The checker is not blind: a duplicated, a lost or a stray request fails it.
        twice = dataclasses.replace(flows[0], ids={*flows[0].ids, "another-id"})
        with pytest.raises(load.LoadError, match="idempotency keys gave several requests"):
            load.check(setup, [twice, *flows[1:]], tmp_path)
        lost = dataclasses.replace(flows[0], ids={"00000000-0000-4000-8000-000000000000"})
        with pytest.raises(load.LoadError, match="lost: 1 requests pipelines made"):
            load.check(setup, [lost, *flows[1:]], tmp_path)
        setup.clients[0].create()  # a request outside the run, left PENDING
        with pytest.raises(load.LoadError, match="holds 1 requests no pipeline made"):
            load.check(setup, flows, tmp_path)
    summary = load.summarize("postgresql", 3, PIPELINES, flows, elapsed)
    assert summary["flows"] == len(flows)
