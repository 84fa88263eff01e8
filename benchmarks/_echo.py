"""An empty gRPC method over mTLS: the floor of one RPC (`python -m benchmarks._echo`).

Serves `/bench.v1.EchoService/Empty` (bytes in, no bytes out) on 127.0.0.1 with
the given server certificate and key, requiring a client certificate from the
CA, as `signer serve` does. Prints the port, then serves until stdin closes.
"""

from __future__ import annotations

import sys
from concurrent import futures
from pathlib import Path

import grpc

METHOD = "/bench.v1.EchoService/Empty"


def _empty(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b""


def main() -> None:
    cert, key, ca = (Path(p).read_bytes() for p in sys.argv[1:4])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handler = grpc.method_handlers_generic_handler(
        "bench.v1.EchoService",
        {
            "Empty": grpc.unary_unary_rpc_method_handler(
                _empty, request_deserializer=None, response_serializer=None
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(key, cert)], ca, require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
