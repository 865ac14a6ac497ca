"""Packages import only downward: every module's imports, parsed with `ast`, against the design's rules.

Rules checked (issue 15 §2):
1. A pure module (`PURE_MODULES`) performs no I/O: it imports no I/O module
   (`IO_MODULES`, nor any project module outside `PURE_MODULES` and
   `PURE_HELPERS`), so nothing it pulls in does I/O either; it never calls
   `open()`; it uses `os` only through `PURE_OS_NAMES` (path strings, not
   the file system); and it never reads the clock (`CLOCK_NAMES`: the time
   is an argument).
2. `steering` reaches neither `oca.server` nor `oca.store`, directly or
   through anything it imports.
3. `oca` imports neither `fill` nor `steering`; only `oca.demo`, which sits
   above all three packages, may.
4. No import cycles between modules. Imports inside functions count (they
   run, only later); imports under `if TYPE_CHECKING:` do not.
5. Cross-process flags are the store's business (issue 15 §1): no module
   outside `oca.store` calls `get_flag`/`set_flag`; they use the typed
   records that `ContentStore` exposes (`oca.store.flags`).

Violations that other branches are removing are listed in
`KNOWN_VIOLATIONS`, each with the branch that removes it. An entry that no
longer occurs fails the test, so the list only shrinks: delete the entry
when the branch that fixes it is merged.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("oca", "fill", "steering")

# Modules with no I/O at all: values in, values out. Add new pure modules here.
PURE_MODULES = frozenset({
    "oca.http.ranges",
    "oca.http.dates",
    "oca.store.layout",
    "oca.store.flags",
    "oca.store.identity",
    "oca.store.demand",
    "oca.signing",
    "oca.rendezvous",
    "oca.ids",
    "oca.settings",
    "fill.plan",
    "fill.manifest",
    "fill.mp4",
    "fill.resume",
    "fill.inventory",
    "fill.window",
    "fill.ratelimit",
    "steering.lpm",
    "steering.ranking",
    "steering.health",
    "steering.messages",
    "steering.access",
    "steering.holdings",
    "steering.snapshot",
    "steering.hrwvec",
    "oca.inventory_wire",
    "steering.catalog",
    "steering.dash",
    "steering.hls",
    "steering.content_steering",
    "steering.watch_page",
})
# Project modules a pure module may import besides the pure ones: no I/O, no state.
PURE_HELPERS = frozenset({"oca", "oca.errors", "oca.http", "oca.store", "fill", "fill.errors", "steering"})

# Modules whose import means I/O: sockets, event loops, processes, files and locks, the index.
IO_MODULES = frozenset({
    "asyncio", "aiohttp", "aiofiles", "uvloop", "httptools", "lmdb", "ssl", "select", "selectors",
    "subprocess", "multiprocessing", "threading", "signal", "fcntl", "mmap", "shutil", "tempfile", "glob",
    "pyroute2", "psutil", "prometheus_client", "urllib.request", "http.client", "http.server",
    "socketserver", "logging.handlers", "sqlite3", "io",
})
# Modules a pure module may import for a few names that make no system call:
# `os` for path strings, `socket` for address conversion (no socket is made).
PURE_NAMES = {
    "os": frozenset({"path.join", "path.basename", "path.dirname", "path.normpath", "path.splitext", "path.split",
                     "path.isabs", "sep", "fspath", "strerror"}),
    "socket": frozenset({"inet_pton", "inet_ntop", "inet_aton", "inet_ntoa", "AF_INET", "AF_INET6"}),
}
CLOCK_NAMES = frozenset({"time.time", "time.monotonic", "time.perf_counter", "time.sleep", "time.time_ns",
                         "time.monotonic_ns", "datetime.now", "datetime.utcnow", "date.today"})

# (rule, module, what) -> why it is still here. Delete an entry when its branch is merged.
KNOWN_VIOLATIONS: dict[tuple[str, str, str], str] = {
}


# ---------------------------------------------------------------- reading the tree


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=1)
def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom that runs (at import time or in a function), skipping TYPE_CHECKING blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


@lru_cache(maxsize=None)
def imports_of(name: str) -> frozenset[str]:
    """Absolute names of every module `name` imports (project submodules resolved: `from a import b` -> `a.b`)."""
    path = modules()[name]
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = name.split(".")
            anchor = anchor if is_pkg else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.add(sub if sub in modules() else base)
    return frozenset(out)


def _project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def project_imports(name: str) -> set[str]:
    """Project modules `name` causes to be imported, parent packages included."""
    out = set()
    for imp in imports_of(name):
        if _project(imp):
            out |= {m for m in _with_parents(imp) if m in modules()}
    out.discard(name)
    return out


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        for dep in project_imports(m):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _io_import(imp: str) -> str | None:
    for cut in _with_parents(imp):
        if cut in IO_MODULES:
            return cut
    return None


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def impure_uses(name: str) -> set[str]:
    """open(), `os`/`socket` beyond `PURE_NAMES`, clock reads, as written in `name`'s source."""
    path = modules()[name]
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    aliases = {m: m for m in PURE_NAMES}  # local name -> restricted module
    for node in _import_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.module in PURE_NAMES:
            found |= {f"{node.module}.{a.name}" for a in node.names if a.name not in PURE_NAMES[node.module]}
        if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime"):
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in CLOCK_NAMES}
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.name in PURE_NAMES and a.asname})
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            found.add("open()")
        if not isinstance(node, ast.Attribute) or id(node) in inner:  # judged as part of the whole dotted name
            continue
        dotted = _dotted(node)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        allowed = PURE_NAMES.get(aliases.get(head, ""))
        if allowed is not None and not any(rest == ok or rest.startswith(ok + ".") for ok in allowed):
            found.add(f"{aliases[head]}.{rest}")
        if any(dotted == c or dotted.endswith("." + c) for c in CLOCK_NAMES):
            found.add(dotted)
    return found


# ---------------------------------------------------------------- the rules


def violations() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    mods = modules()
    for name in sorted(mods):
        if name in PURE_MODULES:
            for imp in imports_of(name):
                io = _io_import(imp)
                if io is not None:
                    found.add(("pure-imports-io", name, io))
                elif _project(imp) and not (_with_parents(imp) & set(mods)) <= (PURE_MODULES | PURE_HELPERS):
                    found.add(("pure-imports-io", name, imp))
            for use in impure_uses(name):
                found.add(("pure-does-io", name, use))
        if name.split(".")[0] == "steering":
            for dep in project_imports(name):
                reached = {dep} | closure(dep)
                if any(m.startswith(("oca.server", "oca.store")) for m in reached):
                    found.add(("steering-reaches", name, dep))
        if name.split(".")[0] == "oca" and name != "oca.demo":
            for imp in imports_of(name):
                if imp.split(".")[0] in ("fill", "steering"):
                    found.add(("oca-imports-fill" if imp.startswith("fill") else "oca-imports-steering", name, imp))
        if not name.startswith("oca.store"):
            for call in flag_calls(name):
                found.add(("flags-outside-store", name, call))
    for cycle in cycles():
        found.add(("cycle", cycle[0], " -> ".join(cycle + [cycle[0]])))
    return found


def flag_calls(name: str) -> set[str]:
    """`get_flag`/`set_flag` called anywhere in `name`."""
    path = modules()[name]
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get_flag", "set_flag")
    }


def cycles() -> list[list[str]]:
    """One shortest cycle per strongly connected component of the import graph, starting at its least module."""
    graph = {m: sorted(d for d in project_imports(m) if not m.startswith(d + ".")) for m in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[set[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    out = []
    for comp in comps:
        start = min(comp)
        # breadth-first back to `start` inside the component
        prev = {start: None}
        queue = [start]
        end = None
        while queue and end is None:
            v = queue.pop(0)
            for w in graph[v]:
                if w == start:
                    end = v
                    break
                if w in comp and w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = []
        while end is not None:
            path.append(end)
            end = prev[end]
        out.append(list(reversed(path)))
    return out


# ---------------------------------------------------------------- tests


def test_the_tree_is_read():
    mods = modules()
    assert {"oca.store.content", "fill.agent", "steering.service", "oca.demo"} <= set(mods)
    missing = PURE_MODULES - set(mods)
    assert not missing, f"PURE_MODULES names modules that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("rule", ["pure-imports-io", "pure-does-io", "steering-reaches", "oca-imports-fill",
                                  "oca-imports-steering", "cycle", "flags-outside-store"])
def test_imports_follow_the_design(rule):
    found = {v for v in violations() if v[0] == rule}
    known = {k for k in KNOWN_VIOLATIONS if k[0] == rule}
    new = sorted(found - known)
    assert not new, f"{rule}: " + "; ".join(f"{m}: {what}" for _r, m, what in new)
    gone = sorted(known - found)
    assert not gone, "fixed, so delete from KNOWN_VIOLATIONS: " + "; ".join(f"{k}" for k in gone)


# The checker itself, on small sources: it must see what it claims to.
CHECKER_CASES = [
    ("import os\nos.path.join('a', 'b')\n", set()),
    ("import os\nos.listdir('.')\n", {"os.listdir"}),
    ("from os import stat\n", {"os.stat"}),
    ("import os\nos.path.exists('x')\n", {"os.path.exists"}),
    ("import socket\nsocket.inet_pton(socket.AF_INET, '1.2.3.4')\n", set()),
    ("import socket\nsocket.create_connection(('h', 1))\n", {"socket.create_connection"}),
    ("import socket as s\ns.socket()\n", {"socket.socket"}),
    ("import datetime as dt\ndt.datetime.now()\n", {"dt.datetime.now"}),
    ("import time\ntime.monotonic()\n", {"time.monotonic"}),
    ("import time\ntime.strftime('%Y', time.gmtime(0))\n", set()),
    ("def f():\n    return open('x')\n", {"open()"}),
]


@pytest.mark.parametrize("source,expected", CHECKER_CASES)
def test_impure_uses_checker(tmp_path, monkeypatch, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(modules(), "probe", path)
    assert impure_uses("probe") == expected


def test_imports_checker_resolves_relative_and_function_level_imports(tmp_path, monkeypatch):
    pkg = ROOT / "oca" / "store"
    src = "from . import layout\nfrom .index import Index\nfrom typing import TYPE_CHECKING\n" \
          "if TYPE_CHECKING:\n    from oca.server import app\n" \
          "def later():\n    import fill.plan\n"
    path = tmp_path / "probe.py"
    path.write_text(src)
    monkeypatch.setitem(modules(), "oca.store.probe", path)
    imports_of.cache_clear()
    try:
        # `path` is not under oca/store, but resolution uses the module name only
        assert pkg.is_dir()
        got = imports_of("oca.store.probe")
        assert {"oca.store.layout", "oca.store.index", "fill.plan"} <= got
        assert not any(m.startswith("oca.server") for m in got)
    finally:
        imports_of.cache_clear()


def test_cycle_and_direction_checkers(tmp_path, monkeypatch):
    sources = {
        "oca.p1": "import oca.p2\n",
        "oca.p2": "def later():\n    from oca import p1\n",  # a function-level import closes the cycle
        "steering.p3": "from oca import p4\n",
        "oca.p4": "from oca.store import content\n",  # steering reaches the store through p4
    }
    for name, src in sources.items():
        path = tmp_path / f"{name}.py"
        path.write_text(src)
        monkeypatch.setitem(modules(), name, path)
    imports_of.cache_clear()
    try:
        assert ["oca.p1", "oca.p2"] in cycles()
        found = violations()
        assert ("cycle", "oca.p1", "oca.p1 -> oca.p2 -> oca.p1") in found
        assert ("steering-reaches", "steering.p3", "oca.p4") in found
    finally:
        imports_of.cache_clear()
