"""Throwaway certificates for the TLS tests: `oca.certs`, which the demo uses too.

ECDSA P-256 or RSA-2048 leaves for "localhost" and 127.0.0.1 by default,
signed by a CA that exists only in a temp dir.
"""

from oca.certs import CA, make_ca, make_leaf

__all__ = ["CA", "make_ca", "make_leaf"]
