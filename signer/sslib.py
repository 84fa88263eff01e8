"""The public import path of the TUF signer: `import signer.sslib` registers the `signer:` scheme.

The implementation lives in `signer.client.tuf`; see its docstring for the URI and
the checks made before a signature is returned.
"""

from signer.client import tuf as _tuf
from signer.client.tuf import *  # noqa: F403  # the names are tuf's own __all__

__all__ = _tuf.__all__
