"""The PKCS#11 token: the only package that imports `pkcs11`."""

__all__: list[str] = []
