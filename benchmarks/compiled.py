"""The compiled hot path of an oca source tree, for the benchmarks that compare trees.

Rules kept here:
- `prepare(tree)` builds `oca/http/_head.c` in place with the C compiler
  and this Python's headers when the tree has the source but no built
  module (a tree made by `git archive` has none; the editable install
  builds the working tree's own), so that a tree is measured as it serves.
  Trees from before the compiled module have nothing to build.
- `tree_env(tree, pure)` is the environment a tree's processes run with:
  its directory first on PYTHONPATH, and OCA_PURE=1 when `pure`.
- `describe(tree, pure)` says which hot path that is, for the printed
  figures ("compiled", "pure (OCA_PURE=1)", "pure (no compiled module)").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

SOURCE = Path("oca/http/_head.c")


def built(tree: Path) -> Path:
    return tree / SOURCE.with_name("_head" + sysconfig.get_config_var("EXT_SUFFIX"))


def prepare(tree: Path) -> None:
    src = tree / SOURCE
    if not src.is_file() or built(tree).is_file():
        return
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or "cc"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", f"-I{sysconfig.get_path('include')}", str(src), "-o", str(built(tree))],
                   check=True, timeout=300)


def tree_env(tree: Path, pure: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("OCA_PURE", None)
    if pure:
        env["OCA_PURE"] = "1"
    return env


def describe(tree: Path, pure: bool = False) -> str:
    if not (tree / SOURCE).is_file():
        return "pure (no compiled module)"
    if pure:
        return "pure (OCA_PURE=1)"
    return "compiled" if built(tree).is_file() else "pure (not built)"
