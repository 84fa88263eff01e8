"""The public import path of the TUF signer: `import signer.sslib` registers the `signer:` scheme.

The implementation lives in `signer.client.tuf` (see its docstring for the checks
made before a signature is returned) and `signer.client.keyuri` (the URI and the
securesystemslib key types and schemes a service key maps to).
"""

from signer.client import keyuri as _keyuri
from signer.client import tuf as _tuf
from signer.client.keyuri import *  # noqa: F403  # the names are the modules' own __all__
from signer.client.tuf import *  # noqa: F403

__all__ = [*_keyuri.__all__, *_tuf.__all__]
