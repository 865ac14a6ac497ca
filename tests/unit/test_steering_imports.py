"""Steering's imports go one way (issue 15 section 2), checked by parsing the source.

- `steering` imports neither `oca.server` nor `oca.store`, nor `fill`
  beyond its pure manifest schema (`fill.manifest`, `fill.errors`): steering
  reads the same manifest the appliances fill from, with the same checks.
- The pure modules (decisions and validators) import no I/O module: no
  sockets servers or clients, no files, no clock, no subprocesses; only the
  standard library's pure parts, the shared pure pieces of `oca`, and each
  other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STEERING = Path(__file__).resolve().parents[2] / "steering"
PURE = ("lpm", "ranking", "health", "messages", "access", "catalog", "dash", "hls", "content_steering", "watch_page", "holdings", "snapshot",
        "hrwvec")
# What a pure module may import (a module or any submodule of it).
PURE_ALLOWED = (
    "__future__", "array", "bisect", "dataclasses", "typing", "ipaddress", "json", "math", "hmac", "collections",
    "re", "zlib",  # whole-list checks and the packed inventory form (in memory)
    "numpy",  # the hashed inventory form checked as one array (in memory)
    "xxhash",  # rendezvous hashes (hrwvec), as oca.rendezvous computes them
    "socket",  # only inet_pton/inet_ntop (lpm): text <-> bytes, no sockets are opened
    "base64", "hashlib", "xml.etree.ElementTree", "urllib.parse",
    "oca.ids", "oca.rendezvous", "oca.errors", "fill.manifest", "oca.inventory_wire",
    "steering.lpm", "steering.ranking", "steering.health", "steering.messages", "steering.access",
    "steering.catalog", "steering.dash", "steering.hls", "steering.content_steering", "steering.watch_page", "html",
    "steering.holdings", "steering.snapshot", "steering.hrwvec",
)
FORBIDDEN_EVERYWHERE = ("oca.server", "oca.store", "fill")
# The pure manifest schema is shared: steering verifies the origin's manifest as the fill agent does.
FILL_SHARED = ("fill.manifest", "fill.errors")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", sorted(STEERING.glob("*.py")), ids=lambda p: p.name)
def test_steering_reaches_into_neither_the_server_nor_the_store(path):
    bad = sorted(n for n in imports(path) if _under(n, FORBIDDEN_EVERYWHERE) and not _under(n, FILL_SHARED))
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io(name):
    bad = sorted(n for n in imports(STEERING / f"{name}.py") if not _under(n, PURE_ALLOWED))
    assert not bad, f"steering/{name}.py imports {bad}"
