"""Reading a config file from disk: the I/O beside the pure `oca.settings`.

Rule kept here: every failure (missing, unreadable, not UTF-8, not TOML) is a
`ConfigError` naming the file.
"""

from __future__ import annotations

from oca.errors import ConfigError
from oca.settings import parse_toml


def read_toml(path: str) -> dict:
    """Read and parse a TOML file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    return parse_toml(raw, path)
