"""The public import path of the TUF signer: `import signer.sslib` registers the `signer:` scheme.

The implementation lives in `signer.client.tuf`; see its docstring for the URI and
the checks made before a signature is returned.
"""

from signer.client.tuf import (
    DEFAULT_ARTIFACT,
    DEFAULT_TIMEOUT,
    SCHEME,
    KeyURI,
    ServiceSigner,
    ServiceSignerError,
    SignatureCheckError,
    SigningRefusedError,
    SigningTimeoutError,
    import_key,
    parse_uri,
    register,
    sslib_schemes,
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
