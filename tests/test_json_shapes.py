"""docs/json.md is held to what the commands print.

The page marks each command's output with `<!-- output: COMMAND | KIND | SHAPE[, SHAPE] -->`
(KIND: `object`, `array`, or `lines`, one object per line) and each shape with
`<!-- shape: NAME -->` just above its table (field | type | present | meaning). A type
that names another shape in backticks ("array of `digest`", "object `caller`") is
checked against that shape too; a row "every field of `S`" takes in S's fields; a
field present "always" must be there, any other may be. Each command here is run
(against the shared server, the OIDC one, or a fresh environment for the operator's)
and its JSON must have exactly the documented keys, in every object and every
element of every array, of the documented types, laid out as the page says.

Documented but not produced here (so not checked): the `*_error` fields of a
payload that does not parse and an OpenPGP payload's `problem` (the server refuses
such requests), an OpenPGP `certify` payload's `uid`, a `signer audit head` that is
not consistent, and a token key with weaknesses (SoftHSM makes none).
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import tomli_w

from approver.cli import main as approver_main
from signer.cli.main import main as signer_main
from signer.encoding import canonical_json
from signer.tls import write_private
from signer.token import softhsm
from testbed.clients import Clients, sha256_digest
from testbed.commands import APPROVER, SIGNER, run
from testbed.env import Env
from testbed.process import serving
from tests.bundle_env import Signed
from tests.harness import sign_args
from tests.oidc_env import OidcRunning

pytestmark = pytest.mark.sqlite_only("what is checked is the CLI's output")

DOC = Path(__file__).resolve().parents[1] / "docs" / "json.md"

# The commands that print JSON without --json.
ALWAYS_JSON = {"signer audit show", "signer audit export"}

# The commands the tests below run and check: every one the page documents. A command
# that could not be run would be left out of this list and named in NOT_RUN, with why.
CHECKED = {
    "signer sign",
    "signer status",
    "signer list",
    "signer keys",
    "approver list",
    "approver show",
    "approver watch",
    "approver keygen",
    "approver policy list",
    "approver policy show",
    "signer audit list",
    "signer audit export",
    "signer audit show",
    "signer audit fetch",
    "signer audit verify",
    "signer verify",
    "signer serve",
    "signer keys generate",
    "signer keys rotate",
    "signer keys list",
    "signer audit head",
    "signer policy history",
}
NOT_RUN: dict[str, str] = {}

_OUTPUT = re.compile(
    r"<!-- output: (?P<command>[a-z -]+?) \| (?P<kind>object|array|lines) \| "
    r"(?P<shapes>[a-z, -]+?) -->"
)
_SHAPE = re.compile(r"<!-- shape: (?P<name>[a-z-]+) -->")
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]  # what the value may be
    required: bool  # present "always"
    shape: str | None  # the shape of the object, or of each element of the array
    strings: bool  # an array of strings


@dataclass(frozen=True)
class Output:
    kind: str
    shapes: tuple[str, ...]


@dataclass(frozen=True)
class Doc:
    outputs: dict[str, Output]
    fields: dict[str, dict[str, Field]]  # shape -> its fields (inclusions taken in)
    references: dict[str, set[str]]  # shape -> the shapes it names


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _field(type_cell: str, present: str) -> tuple[Field, set[str]]:
    named = re.findall(r"`([a-z-]+)`", type_cell)
    assert len(named) <= 1, type_cell
    plain = re.sub(r"\([^)]*\)", "", re.sub(r"`[^`]*`", "", type_cell))
    types: tuple[type, ...] = ()
    strings = False
    for alternative in plain.split(" or "):
        word = alternative.split()[0]
        assert word in _TYPES, f"unknown type {word!r} in {type_cell!r}"
        types += _TYPES[word]
        strings = strings or alternative.strip() == "array of strings"
    assert present, f"no presence for {type_cell!r}"
    shape = named[0] if named else None
    return Field(types, present == "always", shape, strings), set(named)


def parse_doc(text: str) -> Doc:
    """The outputs and shapes docs/json.md declares."""
    outputs = {
        m["command"]: Output(m["kind"], tuple(s.strip() for s in m["shapes"].split(",")))
        for m in _OUTPUT.finditer(text)
    }
    own: dict[str, dict[str, Field]] = {}
    includes: dict[str, list[str]] = {}
    references: dict[str, set[str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _SHAPE.fullmatch(line.strip())
        if m is None:
            continue
        name = m["name"]
        assert name not in own, f"shape {name} declared twice"
        rows = []
        for row in lines[i + 1 :]:
            if not row.startswith("|"):
                break
            rows.append(_cells(row))
        assert rows[:1] == [["field", "type", "present", "meaning"]], f"shape {name}'s table"
        own[name], includes[name], references[name] = {}, [], set()
        for cells in rows[2:]:
            field_cell, type_cell, present, _meaning = cells
            if m2 := re.fullmatch(r"every field of `([a-z-]+)`", field_cell):
                includes[name].append(m2[1])
                references[name].add(m2[1])
                continue
            m3 = re.fullmatch(r"`([a-z0-9_]+)`", field_cell)
            assert m3, f"shape {name}: a row names no field: {field_cell!r}"
            assert m3[1] not in own[name], f"shape {name}: {m3[1]} twice"
            own[name][m3[1]], named = _field(type_cell, present)
            references[name] |= named

    def resolved(name: str) -> dict[str, Field]:
        out = dict(own[name])
        for other in includes[name]:
            out.update(resolved(other))
        return out

    known = set(own)
    for name, named in references.items():
        assert named <= known, f"shape {name} names unknown shapes {named - known}"
    for command, output in outputs.items():
        assert set(output.shapes) <= known, f"{command} names unknown shapes"
    return Doc(outputs, {name: resolved(name) for name in own}, references)


@functools.cache
def documented() -> Doc:
    return parse_doc(DOC.read_text())


def conforms(value: Any, shape: str, where: str) -> None:
    """`value` has exactly the keys of `shape`, each of its type, and so on down."""
    fields = documented().fields[shape]
    assert isinstance(value, dict), f"{where}: not an object"
    required = {n for n, f in fields.items() if f.required}
    missing, extra = required - value.keys(), value.keys() - fields.keys()
    assert not missing and not extra, (
        f"{where} ({shape}): missing {sorted(missing)}, undocumented {sorted(extra)}"
    )
    for name, v in value.items():
        f = fields[name]
        at = f"{where}.{name}"
        ok = isinstance(v, f.types) and not (isinstance(v, bool) and bool not in f.types)
        assert ok, f"{at}: {type(v).__name__}, documented {[t.__name__ for t in f.types]}"
        if f.strings:
            assert all(isinstance(x, str) for x in v), f"{at}: not an array of strings"
        if f.shape is None or v is None:
            continue
        for i, x in enumerate(v) if isinstance(v, list) else [(-1, v)]:
            conforms(x, f.shape, at if i < 0 else f"{at}[{i}]")


def holds(command: str, stdout: str, shape: str | None = None) -> Any:
    """The command's output, parsed, held to what the page says it prints."""
    assert command in CHECKED, f"{command} is not in the check list"
    output = documented().outputs[command]
    if shape is None:
        (shape,) = output.shapes
    assert shape in output.shapes, f"{command} is not documented to print {shape}"
    if output.kind == "lines":
        values = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        assert values, f"{command} printed nothing to check"
        for i, v in enumerate(values):
            conforms(v, shape, f"{command} line {i}")
        return values
    value = json.loads(stdout)
    assert stdout == json.dumps(value, indent=2, sort_keys=True) + "\n", "not the layout said"
    if output.kind == "object":
        conforms(value, shape, command)
        return value
    assert isinstance(value, list) and value, f"{command}: an empty array or none"
    for i, v in enumerate(value):
        conforms(v, shape, f"{command}[{i}]")
    return value


def _as(env: Env, who: str) -> list[str]:
    return ["--profile", str(env.profile_path(who))]


def _signer(env: Env, who: str, *args: str) -> str:
    return run([*SIGNER, *args, *_as(env, who)]).stdout


def _approver(env: Env, who: str, *args: str, **kw: Any) -> str:
    return run([*APPROVER, *args, *_as(env, who)], **kw).stdout


def _json_commands(group: click.Group, ctx: click.Context, prefix: str) -> set[str]:
    found = set()
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        path = f"{prefix} {name}"
        if any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params):
            found.add(path)
        if isinstance(command, click.Group):
            found |= _json_commands(command, click.Context(command, ctx, name), path)
    return found


def test_the_page_documents_every_command_that_prints_json() -> None:
    """The page declares an output for exactly the commands that take --json (and the two
    that always print JSON), each in the check list or said not to be; every shape it
    declares is one some output reaches."""
    commands = ALWAYS_JSON | _json_commands(
        signer_main, click.Context(signer_main, info_name="signer"), "signer"
    )
    commands |= _json_commands(
        approver_main, click.Context(approver_main, info_name="approver"), "approver"
    )
    assert set(documented().outputs) == commands
    assert CHECKED | set(NOT_RUN) == commands and not CHECKED & set(NOT_RUN)
    reached: set[str] = set()
    todo = [s for o in documented().outputs.values() for s in o.shapes]
    while todo:
        shape = todo.pop()
        if shape not in reached:
            reached.add(shape)
            todo += documented().references[shape]
    assert reached == set(documented().fields), set(documented().fields) - reached


def test_requester_commands(shared_env: Env, clients: Clients, tmp_path: Path) -> None:
    """signer sign, status, list and keys --json; and verify --json of a raw signature,
    its line in a JSON object."""
    pending = clients.create()
    clients.approve("alice", pending)
    shown = holds("signer status", _signer(shared_env, "ci", "status", pending.id, "--json"))
    assert shown["approvals"] and "caller" not in shown and "payload" not in shown
    listed = holds("signer list", _signer(shared_env, "ci", "list", "--json"))
    assert pending.id in {r["id"] for r in listed}
    holds("signer keys", _signer(shared_env, "ci", "keys", "--json"))

    artifact = tmp_path / "app.tar"
    artifact.write_bytes(os.urandom(256))
    profile = str(shared_env.profile_path("ci"))
    with subprocess.Popen(
        [*SIGNER, *sign_args(Path(profile), artifact, "--json", "--timeout", "60s")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # with --json, the id goes to stderr
        request_id = first.removeprefix("request ").strip()
        made = clients.get(request_id)
        clients.approve("alice", made)
        clients.approve("bob", made)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(request_id) == 36
    signed = holds("signer sign", out)  # stdout is the one JSON document
    assert signed["state"] == "SIGNED" and signed["signatures"]

    pem = shared_env.root / "trust" / "release.pem"
    checked = ["--public-key", str(pem), "--signature", f"{artifact}.sig", "--file", str(artifact)]
    raw = holds(
        "signer verify", run([*SIGNER, "verify", *checked, "--json"]).stdout, "plain-verdict"
    )
    assert raw["format"] == "raw" and raw["verdict"].startswith("signature OK")


def test_requests_with_payloads(shared_env: Env, clients: Clients, tmp_path: Path) -> None:
    """A DSSE and an SSH request show their payload fields in signer status --json; the
    SSH signature's signer verify --json is its verdict."""
    for fmt, extra, own in (("dsse", [], "statement"), ("ssh", ["--namespace", "file"], "ssh")):
        artifact = tmp_path / f"{fmt}.tar"
        artifact.write_bytes(os.urandom(256))
        args = ["sign", "--key-name", "release", "--file", str(artifact), "--format", fmt]
        request_id = _signer(shared_env, "ci", *args, *extra, "--no-wait").strip()
        shown = holds("signer status", _signer(shared_env, "ci", "status", request_id, "--json"))
        assert {"payload_type", "payload", own} <= shown.keys() and shown["payload_matches_digest"]
    made = clients.get(request_id)  # the SSH request, signed and verified
    clients.approve("alice", made)
    clients.approve("bob", made)
    _signer(shared_env, "ci", "status", request_id, "--format", "ssh", "--file", str(artifact))
    pem = shared_env.root / "trust" / "release.pem"
    checked = ["--public-key", str(pem), "--signature", f"{artifact}.sig", "--file", str(artifact)]
    ssh = ["--format", "ssh", "--namespace", "file"]
    verified = run([*SIGNER, "verify", *ssh, *checked, "--json"])
    holds("signer verify", verified.stdout, "ssh-verdict")


def test_an_openpgp_request(
    shared_env: Env, openpgp_certs: dict[str, bytes], tmp_path: Path
) -> None:
    """An OpenPGP request's payload fields in signer status --json (a detached signature:
    its claimed artifacts)."""
    artifact = tmp_path / "pgp.tar"
    artifact.write_bytes(os.urandom(256))
    args = ["sign", "--key-name", "k-ecdsa-p256", "--file", str(artifact), "--format", "openpgp"]
    request_id = _signer(shared_env, "ci", *args, "--no-wait").strip()
    shown = holds("signer status", _signer(shared_env, "ci", "status", request_id, "--json"))
    assert shown["openpgp"]["claimed_artifacts"]


def test_a_request_from_an_oidc_token(oidc: OidcRunning) -> None:
    """A request made with an OIDC ID token carries `caller` (approver show --json)."""
    o = oidc.oidc
    made = o.create(o.mint())
    shown = holds("approver show", _approver(o.env, "bob", "show", made.id, "--json"))
    assert shown["caller"]["claims"] and shown["your_files"] == []


def test_a_bundle_verdict(signed: Signed) -> None:
    """signer verify --bundle --json, with a trust file pinning keys and one pinning a
    policy version (which adds policy_version)."""
    args = [*SIGNER, "verify", "--bundle", str(signed.bundle_path), "--file", str(signed.artifact)]
    pinned = holds(
        "signer verify",
        run([*args, "--trust", str(signed.trust_path), "--json"]).stdout,
        "bundle-verdict",
    )
    assert "policy_version" not in pinned
    policy = signed.r.env.root / "trust" / "policy.toml"
    chained = holds(
        "signer verify", run([*args, "--trust", str(policy), "--json"]).stdout, "bundle-verdict"
    )
    assert chained["policy_version"] >= 1


def test_officer_commands(shared_env: Env, clients: Clients, tmp_path: Path) -> None:
    """approver list, show (with a file of the officer's) and watch --json, and keygen
    --json of a key in a file."""
    artifact = tmp_path / "app.tar"
    artifact.write_bytes(os.urandom(256))
    request = clients.create(digests=[sha256_digest(artifact.read_bytes(), "app.tar")])
    clients.approve("alice", request)
    listed = holds("approver list", _approver(shared_env, "alice", "list", "--json"))
    assert request.id in {r["id"] for r in listed}
    shown = holds(
        "approver show",
        _approver(shared_env, "alice", "show", request.id, "--file", str(artifact), "--json"),
    )
    assert shown["your_files"] == [{"file": str(artifact), "artifact": "app.tar"}]

    watch = subprocess.Popen(
        [*APPROVER, "watch", "--json", *_as(shared_env, "bob")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        ready, _, _ = select.select([watch.stdout], [], [], 60)
        assert ready, "approver watch printed nothing"
        line = watch.stdout.readline()
    finally:
        watch.terminate()  # ends it cleanly, as Ctrl-C does
        try:
            watch.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.communicate()
    (change,) = holds("approver watch", line)
    assert change["change"] == "waiting"

    key = tmp_path / "officer.key"
    made = run(
        [*APPROVER, "keygen", "--out", str(key), "--passphrase-env", "PASS", "--json"],
        env={"PASS": "correct horse"},
    )
    generated = holds("approver keygen", made.stdout)
    assert generated["encrypted"] is True and "token" not in generated


def test_approver_keygen_in_a_token(tmp_path: Path) -> None:
    """approver keygen --pkcs11 --json names the token and the profile's URI."""
    conf = softhsm.write_config(tmp_path / "officer.conf", tmp_path / "tokens")
    pin_file = tmp_path / "officer.pin"
    pin = softhsm.random_pin()
    write_private(pin_file, pin.encode())
    softhsm.init_token(conf, "officer-token", softhsm.random_pin(), pin)
    uri = f"pkcs11:token=officer-token;object=approval?module-path={softhsm.DEFAULT_MODULE}"
    out = tmp_path / "officer.pub"
    keygen = [*APPROVER, "keygen", "--pkcs11", uri, "--pin-file", str(pin_file)]
    made = run([*keygen, "--out", str(out), "--json"], env={"SOFTHSM2_CONF": str(conf)})
    generated = holds("approver keygen", made.stdout)
    assert generated["approval_key"] == uri and "encrypted" not in generated


def test_auditor_commands(shared_env: Env, clients: Clients, tmp_path: Path) -> None:
    """signer audit list --json, export, show, fetch --json and verify --json."""
    request = clients.create()
    clients.approve("alice", request)
    auditor = ("--request", request.id)
    entries = holds(
        "signer audit list", _signer(shared_env, "auditor", "audit", "list", *auditor, "--json")
    )
    exported = _signer(shared_env, "auditor", "audit", "export", *auditor)
    assert holds("signer audit export", exported) == entries
    assert exported.splitlines() == [canonical_json(e).decode() for e in entries]
    index = str(entries[-1]["index"])
    shown = holds("signer audit show", _signer(shared_env, "auditor", "audit", "show", index))
    assert shown == entries[-1]
    out = tmp_path / "audit-copy"
    fetched = _signer(shared_env, "auditor", "audit", "fetch", "--out", str(out), "--json")
    assert holds("signer audit fetch", fetched)["directory"] == str(out)
    verifier = str(shared_env.profile("auditor").audit_verifier)
    verified = run([*SIGNER, "audit", "verify", str(out), "--verifier", verifier, "--json"])
    holds("signer audit verify", verified.stdout)


def test_operator_commands(fresh_env: Env) -> None:
    """signer serve --check, keys generate, rotate and list, audit head and policy history
    --json where the token is; then a proposed policy version in approver policy show
    (the file, then --index from the server) and approver policy list --json."""
    config = ["--config", str(fresh_env.config)]
    checked = holds("signer serve", run([*SIGNER, "serve", *config, "--check", "--json"]).stdout)
    assert checked["ok"] is True
    head = holds("signer audit head", run([*SIGNER, "audit", "head", *config, "--json"]).stdout)
    assert head["consistent"] and head["reason"] is None
    history = run([*SIGNER, "policy", "history", *config, "--json"]).stdout
    assert holds("signer policy history", history)[0]["previous_sha256"] == ""
    generate = [*SIGNER, "keys", "generate", *config, "--name", "extra"]
    holds("signer keys generate", run([*generate, "--algorithm", "ecdsa-p256", "--json"]).stdout)
    rotated = run([*SIGNER, "keys", "rotate", *config, "--name", "release", "--json"]).stdout
    assert holds("signer keys rotate", rotated)["name"] == "release@2"
    found = holds("signer keys list", run([*SIGNER, "keys", "list", *config, "--json"]).stdout)
    assert {"audit", "extra", "release", "release@2"} <= {k["name"] for k in found}

    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["max_ttl"] = "2h"
    new = fresh_env.root / "new.toml"
    new.write_text(tomli_w.dumps(cfg))
    run([*SIGNER, "policy", "propose", *config, str(new)])
    proposal_file = fresh_env.root / "new.toml.proposal.json"
    offline = run([*APPROVER, "policy", "show", str(proposal_file), "--json"]).stdout
    proposal = holds("approver policy show", offline)
    assert proposal["previous_document"] is not None
    with serving(fresh_env):
        listed = holds(
            "approver policy list", _approver(fresh_env, "alice", "policy", "list", "--json")
        )
        (open_one,) = listed
        assert open_one["sha256"] == proposal["sha256"]
        online = _approver(
            fresh_env, "alice", "policy", "show", "--index", str(open_one["index"]), "--json"
        )
        assert holds("approver policy show", online) == proposal
