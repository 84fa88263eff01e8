"""Output that fits where it is read: an 80- or 200-column terminal, a CI log, a pipe.

On a terminal (a pseudo-terminal of a set size), an id, a digest or a path is
never broken over lines: a table that does not fit becomes one block per row.
Elsewhere, no box drawing and no wrapping. `NO_COLOR` is honoured. An empty
listing is a sentence, and counts are in words that agree with them.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from rich.cells import cell_len

from signer.cli.kit import print_table
from signer.text import counted
from testbed.clients import Clients, sha256_digest
from testbed.commands import APPROVER, SIGNER, run
from testbed.env import Env
from testbed.terminal import in_terminal

pytestmark = [
    pytest.mark.sqlite_only("what is checked is the client's output"),
    pytest.mark.usefixtures("shared"),
]
BOX = re.compile("[\u2500-\u257f]")  # box drawing
COLOR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|38;|9[0-7])")


def _pending(clients: Clients) -> tuple[str, str]:
    """A new pending request on `release` for a long artifact path; its id and digest."""
    blob = os.urandom(16)
    name = "dist/some/deeply/nested/directory/of/artifacts/app-1.2.3-linux-amd64.tar.gz"
    r = clients.create(digests=[sha256_digest(blob, name)])
    return r.id, hashlib.sha256(blob).hexdigest()


def _approver(env: Env, *args: str) -> list[str]:
    return [*APPROVER, *args, "--profile", str(env.profile_path("alice"))]


@pytest.mark.parametrize("columns", [80, 200])
def test_approver_list_keeps_every_id_whole(
    shared_env: Env, clients: Clients, columns: int
) -> None:
    """`approver list` at 80 and 200 columns: the request id is on one line, whole, and
    no line holding it is wider than the terminal."""
    request_id, _ = _pending(clients)
    screen = in_terminal(_approver(shared_env, "list"), columns)
    assert screen.returncode == 0, screen.text
    holding = [line for line in screen.lines if request_id in line]
    assert holding, screen.text
    assert all(cell_len(line) <= columns for line in holding), holding
    if columns == 200:  # wide enough for the table itself
        assert BOX.search(screen.text)


@pytest.mark.parametrize("columns", [80, 200])
def test_approver_show_keeps_the_digest_and_path_whole(
    shared_env: Env, clients: Clients, columns: int
) -> None:
    """`approver show` never splits a sha256 or an artifact path, at any width."""
    request_id, digest = _pending(clients)
    screen = in_terminal(_approver(shared_env, "show", request_id), columns)
    assert screen.returncode == 0, screen.text
    assert any(digest in line for line in screen.lines), screen.text
    assert any("app-1.2.3-linux-amd64.tar.gz" in line for line in screen.lines)
    assert any("dist/some/deeply/nested/directory/of/artifacts/" in line for line in screen.lines)


def test_audit_list_keeps_request_ids_whole_at_80_columns(
    shared_env: Env, clients: Clients
) -> None:
    """`signer audit list` in 80 columns shows each request id whole."""
    request_id, _ = _pending(clients)
    args = [*SIGNER, "audit", "list", "--request", request_id]
    screen = in_terminal([*args, "--profile", str(shared_env.profile_path("auditor"))], 80)
    assert screen.returncode == 0, screen.text
    assert any(request_id in line for line in screen.lines), screen.text


def test_no_color_is_honoured_on_a_terminal(shared_env: Env, clients: Clients) -> None:
    """With NO_COLOR set, a terminal gets no colour codes, even for an error."""
    _pending(clients)
    env = {**os.environ, "NO_COLOR": "1"}
    listed = in_terminal(_approver(shared_env, "list"), 200, env=env)
    failed = in_terminal(_approver(shared_env, "show", "not-an-id"), 200, env=env)
    assert listed.returncode == 0 and failed.returncode != 0
    assert not COLOR.search(listed.text) and not COLOR.search(failed.text)
    coloured = in_terminal(_approver(shared_env, "show", "not-an-id"), 200)
    assert COLOR.search(coloured.text)  # the check above can see colour


def test_a_pipe_gets_plain_columns_without_wrapping(shared_env: Env, clients: Clients) -> None:
    """Not a terminal: no box drawing, and the id and the long path each on one line."""
    request_id, digest = _pending(clients)
    listed = run(_approver(shared_env, "list"))
    shown = run(_approver(shared_env, "show", request_id))
    assert not BOX.search(listed.stdout + shown.stdout)
    assert any(line.startswith(request_id) for line in listed.stdout.splitlines())
    name = "dist/some/deeply/nested/directory/of/artifacts/app-1.2.3-linux-amd64.tar.gz"
    assert any(f"sha256:{digest}" in line for line in shown.stdout.splitlines())
    assert any(name in line for line in shown.stdout.splitlines())


def test_an_empty_listing_is_a_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    """No rows: one sentence, not an empty table."""
    print_table("pending requests", ["id", "key"], [])
    print_table("policy version 2", ["path", "was", "is"], [], empty="no changes")
    assert capsys.readouterr().out == "no pending requests\nno changes\n"


def test_plain_columns_line_up_and_keep_multi_line_cells(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Off a terminal, columns are padded to line up, a cell of several lines runs down
    its column, and no line ends in spaces."""
    print_table("t", ["a", "bb"], [["x" * 5, ("one", "two")], ["y", "z"]])
    assert capsys.readouterr().out.splitlines() == [
        "t",
        "",
        "a      bb",
        "xxxxx  one",
        "       two",
        "y      z",
    ]


def test_counts_agree_with_their_words() -> None:
    """ "1 checkpoint", not "1 checkpoints"."""
    assert counted(1, "checkpoint") == "1 checkpoint"
    assert counted(2, "checkpoint") == "2 checkpoints"
    assert counted(1, "policy", "policies") == "1 policy"
    assert counted(0, "policy", "policies") == "0 policies"


def test_status_of_a_denied_request_says_so_in_words(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """`signer status ID --out F` of a denied request: "denied by carol" in the record,
    and the refusal names the state; nothing is written."""
    request_id, _ = _pending(clients)
    clients.deny("carol", clients.get(request_id), reason="wrong branch")
    out = tmp_path / "x.sig"
    profile = str(shared_env.profile_path("ci"))
    p = run([*SIGNER, "status", request_id, "--out", str(out), "--profile", profile], check=False)
    assert p.returncode == 1
    assert "denied by" in p.stdout and "carol" in p.stdout and "denyd" not in p.stdout
    assert f"request {request_id} is DENIED, not SIGNED: there is no signature" in p.stderr
    assert not out.exists()


def test_one_long_cell_does_not_pad_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    """Off a terminal, a cell far wider than the others (a hostile server's key name)
    is not padded to: the other rows stay short, the long cell whole on its line."""
    long = "k" * 100_000
    print_table("keys", ["name", "id"], [[long, "1"], *(["short", str(i)] for i in range(2000))])
    out = capsys.readouterr().out
    assert len(out) < 100_000 + 2000 * 100
    assert f"{long}  1" in out.splitlines()
