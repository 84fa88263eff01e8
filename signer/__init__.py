"""Threshold signing service: HSM-held keys released only on m-of-n approval."""

__version__ = "0.1.0"
__all__ = ["__version__"]
