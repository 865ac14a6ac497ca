"""The settings framework: TOML tables into frozen dataclasses, with errors that name the key path.

Rules kept here:
- A field is declared with `setting` (default or REQUIRED, a doc, a
  validator). `load_section` walks a dataclass's fields: unknown keys, wrong
  types and bad values raise `ConfigError` whose message starts with the full
  key path, for example ``stores[1].path: directory does not exist``.
- Integers are accepted where a float is declared; booleans are never taken
  for numbers.
- Validators are pure: value in, (normalised) value out, or ValueError with a
  message the loader prefixes with the key path. The one exception,
  `check_existing_dir`, stats a path (in `oca.config`).
- Nothing here knows any program's sections: `oca.config`, `fill.config` and
  `steering.config` declare theirs and call `load_section`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import ipaddress
import tomllib
import types
import typing
from dataclasses import field
from typing import Any, Callable, Mapping

from oca.errors import ConfigError
from oca.ids import is_valid_id

__all__ = ["ConfigError"]

REQUIRED: Any = dataclasses.MISSING


def setting(default: Any = REQUIRED, *, doc: str, check: Callable[[Any], Any] | None = None) -> Any:
    """Declare a config field: its default (or REQUIRED), its doc and a validator.

    `check(value)` returns the (possibly normalised) value or raises
    ValueError with a message that the loader prefixes with the key path.
    """
    metadata = {"doc": doc, "check": check}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a mapping factory for mutable defaults")
    return field(default=default, metadata=metadata)


def mapping_setting(*, doc: str, check: Callable[[Any], Any] | None = None) -> Any:
    """A table-valued field (key → value) that defaults to empty."""
    return field(default_factory=lambda: types.MappingProxyType({}), metadata={"doc": doc, "check": check})


def check_positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be greater than 0, not {value}")
    return value


def check_non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"must not be negative, not {value}")
    return value


def check_percent(value: float) -> float:
    if not 0 <= value < 100:
        raise ValueError(f"must be a percentage from 0 to below 100, not {value}")
    return value


def check_name(value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(f"{value!r} is not a valid name: use [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
    return value


def parse_host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port). Raises ValueError."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be 'host:port'")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{value!r} must be '[v6 address]:port'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} must be 'host:port'")
        if ":" in host:
            raise ValueError(f"{value!r}: write IPv6 addresses as '[addr]:port'")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def check_abs_path(value: str) -> str:
    if not value or not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    return value


def check_listen(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("must list at least one 'host:port'")
    seen = set()
    for item in value:
        parsed = parse_host_port(item)
        if parsed in seen:
            raise ValueError(f"{item!r} is listed twice")
        seen.add(parsed)
    return value


def check_cidrs(value: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IPv4 or IPv6 network") from None
    return tuple(out)


def check_timezone(value: str) -> str:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone name") from None
    return value


def check_http_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} must be an http:// or https:// URL")
    return value


def check_fraction(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"must be a fraction from 0 to 1, not {value}")
    return value


def in_range(value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ValueError(f"must be from {low} to {high}, not {value}")
    return value


def one_of(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
    return value


def check_keys(keys: Mapping[str, str]) -> Mapping[str, str]:
    for key_id, secret in keys.items():
        if not is_valid_id(key_id):
            raise ValueError(f"key id {key_id!r} is not a valid name")
        if len(secret) < 16:
            raise ValueError(f"secret of key {key_id!r} must be at least 16 characters")
    return types.MappingProxyType(dict(keys))


def load_section(cls: type, data: Any, path: str) -> Any:
    """Build dataclass `cls` from a TOML table, naming `path` in every error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else key
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key (known keys: {known})")
    values = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is REQUIRED and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise ConfigError(f"{where}: required key is missing")
            continue
        value = _convert(hints[name], data[name], where)
        check = f.metadata.get("check")
        if check is not None:
            try:
                value = check(value)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        values[name] = value
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) != 1:
            raise TypeError(f"unsupported config type {hint}")
        return _convert(non_none[0], value, where)
    if dataclasses.is_dataclass(hint):
        return load_section(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, not {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, not {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, not {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, not {_show(value)}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, not {_show(value)}")
        return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a table, not {_show(value)}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {hint}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def parse_toml(raw: bytes, path: str) -> dict:
    """Parse a TOML document read from `path`, turning every failure into `ConfigError`."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def documented_keys(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every key path with its default (REQUIRED if none) and doc: for docs and tests."""
    out: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        hint = hints[f.name]
        inner = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
        if typing.get_origin(inner) in (typing.Union, types.UnionType):
            non_none = [a for a in typing.get_args(inner) if a is not type(None)]
            inner = non_none[0] if len(non_none) == 1 else inner
        if dataclasses.is_dataclass(inner):
            out.extend(documented_keys(inner, name + "."))
            continue
        default = f.default
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        out.append((name, default, f.metadata.get("doc", "")))
    return out
