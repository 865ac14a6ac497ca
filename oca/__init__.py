"""oca: the appliance of an Open Connect-style edge cache.

Also home to the few pieces that `fill` and `steering` share: configuration
loading (`oca.config`), content ids (`oca.ids`) and URL signing
(`oca.signing`). Nothing runs at import time.
"""

__version__ = "0.1.0"
