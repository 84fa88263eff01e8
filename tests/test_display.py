"""The displayable-text rule (signer.text) and every validator that applies it.

One rule decides what text other people may be shown: no C0/C1 controls (so no
ESC, CSI or OSC), no Unicode format characters (bidi controls, zero-width
characters, U+061C, U+FEFF), no line or paragraph separators, no invisible
characters (variation selectors, fillers, U+2800), nothing private or
unassigned. The server refuses such text wherever a party sends it, and clients
print anything else they receive through `shown`, which makes it visible.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signer.client.profile import load_profile
from signer.errors import ConfigError
from signer.sslib import parse_uri
from signer.text import is_displayable, shown
from signer.v1 import approval_pb2, signing_pb2
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.process import Running
from tests.harness import audit_events, rpc_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT

REFUSED = {
    "NUL": "a\x00b",
    "newline": "a\nb",
    "tab": "a\tb",
    "carriage return": "release.tar\rfake.tar",
    "ESC (CSI)": "a\x1b[2Jb",
    "OSC hyperlink": "\x1b]8;;https://evil\x07click\x1b]8;;\x07",
    "DEL": "a\x7fb",
    "C1 CSI": "a\x9b2Jb",
    "NEL": "a\x85b",
    "right-to-left override": "gnp.\u202eexe",
    "left-to-right isolate": "a\u2066b",
    "zero-width space": "app\u200b.tar",
    "zero-width joiner": "a\u200db",
    "arabic letter mark": "a\u061cb",
    "byte order mark": "\ufeffapp",
    "soft hyphen": "a\u00adb",
    "line separator": "a\u2028b",
    "paragraph separator": "a\u2029b",
    "private use": "a\ue000b",
    "unassigned": "a\U000e0fffb",
    "tag character": "a\U000e0041b",
    "variation selector": "app\ufe0f.tar",
    "variation selector supplement": "a\U000e0100b",
    "combining grapheme joiner": "a\u034fb",
    "hangul filler": "a\u3164b",
    "hangul choseong filler": "a\u115fb",
    "halfwidth hangul filler": "a\uffa0b",
    "khmer inherent vowel": "a\u17b4b",
    "mongolian variation selector": "a\u180bb",
    "braille blank": "a\u2800b",
}
ALLOWED = ["release-1.2.3.tar.gz", "dist/app (final) [x86_64]", "naïve café", "日本語", "a b"]


@pytest.mark.parametrize("text", list(REFUSED.values()), ids=list(REFUSED))
def test_refused_classes(text: str) -> None:
    """Every control, format, separator, private-use and unassigned class is refused."""
    assert not is_displayable(text)
    assert is_displayable(shown(text))


@pytest.mark.parametrize("text", ALLOWED)
def test_ordinary_text_is_displayable_and_shown_as_is(text: str) -> None:
    """Ordinary names, spaces and letters of any script pass, and print unchanged."""
    assert is_displayable(text)
    assert shown(text) == text


def test_shown_makes_each_refused_character_a_visible_escape() -> None:
    """`shown` replaces only the refused characters, with escapes one can read."""
    assert shown("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert shown("gnp.\u202eexe") == "gnp.\\u202eexe"
    assert shown("x\U000e0041") == "x\\U000e0041"
    assert shown("ok\u200b") == "ok\\u200b"


@given(st.text())
def test_shown_output_is_always_displayable(text: str) -> None:
    """Whatever a server sends, what a client prints holds no refused character."""
    out = shown(text)
    assert is_displayable(out)
    assert (out == text) == is_displayable(text)


# -- the server refuses it wherever it comes in ----------------------------------------


def _no_new_request(shared: Running, before: int) -> None:
    assert sum(e["event"] == "request.created" for e in audit_events(shared.env)) == before


def _created(shared: Running) -> int:
    return sum(e["event"] == "request.created" for e in audit_events(shared.env))


@pytest.mark.parametrize("text", list(REFUSED.values()), ids=list(REFUSED))
def test_artifact_names_are_refused(shared: Running, clients: Clients, text: str) -> None:
    """An artifact name breaking the rule is BAD_ARTIFACT_NAME and creates nothing."""
    before = _created(shared)
    digests = [sha256_digest(os.urandom(8), text)]
    err = rpc_error(lambda: clients.create(digests=digests, who="ci3"))
    assert (err.code, err.reason) == (INVALID, "BAD_ARTIFACT_NAME"), err
    _no_new_request(shared, before)


@pytest.mark.parametrize("text", ["a\u200bb", "\ufeffv1", "x\u061c", "a\x1b[8m"])
def test_context_values_are_refused(shared: Running, clients: Clients, text: str) -> None:
    """A CI context value breaking the rule is BAD_CONTEXT and creates nothing."""
    before = _created(shared)
    err = rpc_error(lambda: clients.create(context={"commit": text}, who="ci3"))
    assert (err.code, err.reason) == (INVALID, "BAD_CONTEXT"), err
    _no_new_request(shared, before)


def test_cancel_reasons_are_refused(shared: Running, clients: Clients) -> None:
    """A cancel reason with terminal controls is BAD_REASON; the request stays pending."""
    r = clients.create(who="ci3")
    req = signing_pb2.CancelSigningRequestRequest(id=r.id, reason="done\x1b[2J\u202e")
    err = rpc_error(lambda: clients.signing("ci3").CancelSigningRequest(req, timeout=RPC_TIMEOUT))
    assert (err.code, err.reason) == (INVALID, "BAD_REASON"), err
    assert clients.get(r.id, "ci3").state == r.state


def test_deny_reasons_are_refused(shared: Running, clients: Clients) -> None:
    """A signed denial whose reason has hidden characters is BAD_REASON; nothing is decided."""
    r = clients.create()
    envelope = clients.envelope("alice", r, decision="deny", reason="fine\u200b\x1b[8m")
    req = approval_pb2.DenyRequest(id=r.id, envelope=envelope)
    err = rpc_error(lambda: clients.approval("alice").Deny(req, timeout=RPC_TIMEOUT))
    assert (err.code, err.reason) == (INVALID, "BAD_REASON"), err
    assert not clients.get(r.id).approvals


@pytest.mark.parametrize("text", ["tuf%E2%80%8Bmeta", "a%1B%5B2J", "x%E2%80%AEy"])
def test_signer_uri_artifacts_are_refused(text: str) -> None:
    """A signer: URI whose artifact name hides characters is a ValueError."""
    with pytest.raises(ValueError, match="artifact must be"):
        parse_uri(f"signer:release?artifact={text}")


def test_profiles_with_hidden_characters_are_refused(tmp_path: Path) -> None:
    """A client profile value with control or format characters is a ConfigError."""
    (tmp_path / "ca.pem").write_text("x")
    path = tmp_path / "p.toml"
    path.write_text('server = "127.0.0.1:1\\u202e"\nca = "ca.pem"\n')
    with pytest.raises(ConfigError, match="server must be"):
        load_profile(path)
    path.write_text('server = "127.0.0.1:1"\nca = "ca.pem"\noidc_audience = "a\\u001b[2J"\n')
    with pytest.raises(ConfigError, match="oidc_audience must be"):
        load_profile(path)
    path.write_text('server = "127.0.0.1:1"\nca = "ca.pem"\ntimeout = "30s"\n')
    assert load_profile(path).timeout == dt.timedelta(seconds=30)
