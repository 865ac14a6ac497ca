"""The root of the appliance's exceptions, split by whose fault a failure is.

- `ConfigError`: the operator's file is wrong; the message names the key path.
- `ContentIdError`: a caller passed an id outside the allowed alphabet.
- `StoreError` and its children: a disk or the index misbehaved, or a store
  operation was refused (`oca.store.disks`: full, failed, unreadable;
  `oca.store.index`: busy, corrupt, newer schema, write not committed).

User mistakes are reported by the command-line shells as one line on stderr,
never as a traceback.
"""


class OcaError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(OcaError):
    """A configuration file is missing, unparsable or has a bad key/value."""


class ContentIdError(OcaError, ValueError):
    """A content id does not match the allowed pattern."""


class StoreError(OcaError):
    """A store or the index could not do what was asked."""
