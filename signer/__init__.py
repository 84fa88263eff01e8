"""Threshold signing service: HSM-held keys released only on m-of-n approval."""

import os

# gRPC core writes a line per failed TLS handshake (INFO): a flood of bad connections
# would fill the server's log. Errors still show; GRPC_VERBOSITY set by the operator
# wins. gRPC reads it when first imported, hence here, before any module imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__version__ = "0.1.0"
__all__ = ["__version__"]
