"""A gRPC client that is not ours (Node grpc-js, strict server-name checks) drives the API."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from signer.v1 import types_pb2
from testbed.commands import run
from testbed.process import Running

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "tools" / "node_modules"


@pytest.fixture
def node() -> str:
    path = shutil.which("node")
    if path is None or not (NODE_MODULES / "@grpc" / "grpc-js").exists():
        if os.environ.get("CI"):
            pytest.fail(
                "node and tools/node_modules/@grpc/grpc-js are required in CI "
                "(scripts/setup --dev installs them)"
            )
        pytest.skip("node or @grpc/grpc-js missing: run scripts/setup --dev")
    return path


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_grpc_js_client_lists_keys_and_creates_a_request(
    shared: Running, node: str, host: str
) -> None:
    """grpc-js verifies the server certificate for localhost and 127.0.0.1 and can sign in."""
    tls = shared.env.root / "tls"
    digest = hashlib.sha256(host.encode() + os.urandom(8)).hexdigest()
    out = run(
        [
            node,
            str(ROOT / "tests" / "node" / "client.js"),
            str(ROOT / "proto"),
            f"{host}:{shared.env.port}",
            str(tls / "ca.pem"),
            str(tls / "ci.pem"),
            str(tls / "ci.key"),
            "release",
            digest,
        ],
        env={"NODE_PATH": str(NODE_MODULES)},
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert "release" in result["keys"]
    request = result["request"]
    assert request["state"] == "REQUEST_STATE_PENDING"
    assert request["requester"] == "ci"
    assert request["context"] == {"client": "grpc-js"}
    got = shared.clients.get(request["id"])
    assert got.digests[0].value.hex() == digest
    assert got.digests[0].algorithm == types_pb2.HASH_ALGORITHM_SHA256
