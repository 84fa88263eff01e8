"""The public import path of the TUF signer: `import signer.sslib` registers the `signer:` scheme.

The implementation lives in `signer.client.tuf` (see its docstring for the checks
made before a signature is returned) and `signer.client.keyuri` (the URI and the
securesystemslib key types and schemes a service key maps to).
"""

from signer.client.keyuri import (
    DEFAULT_ARTIFACT,
    DEFAULT_TIMEOUT,
    SCHEME,
    KeyURI,
    parse_uri,
    sslib_schemes,
)
from signer.client.tuf import (
    ServiceSigner,
    ServiceSignerError,
    SignatureCheckError,
    SigningRefusedError,
    SigningTimeoutError,
    import_key,
    register,
)

__all__ = [
    "DEFAULT_ARTIFACT",
    "DEFAULT_TIMEOUT",
    "SCHEME",
    "KeyURI",
    "ServiceSigner",
    "ServiceSignerError",
    "SignatureCheckError",
    "SigningRefusedError",
    "SigningTimeoutError",
    "import_key",
    "parse_uri",
    "register",
    "sslib_schemes",
]
