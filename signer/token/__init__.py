"""The PKCS#11 token: the only package that imports `pkcs11`."""
