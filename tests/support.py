"""Shared test helpers: config files and real subprocess runs. No mocks here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def write_config(
    base: Path,
    *,
    store_paths: list[Path] | None = None,
    stores: int = 2,
    appliance_id: str = "oca-test-1",
    site: str = "site-a",
    listen: list[str] | None = None,
    extra: str = "",
    reserve_percent: float | None = None,
    server_extra: str = "",
) -> Path:
    """Write an appliance config under `base` (creating store dirs) and return its path."""
    base.mkdir(parents=True, exist_ok=True)
    if store_paths is None:
        store_paths = [base / f"store{i}" for i in range(stores)]
    for p in store_paths:
        p.mkdir(parents=True, exist_ok=True)
    listen = listen or ["127.0.0.1:18080"]
    lines = [
        "[appliance]",
        f'id = "{appliance_id}"',
        f'site = "{site}"',
        "[server]",
        "listen = [" + ", ".join(f'"{x}"' for x in listen) + "]",
        *([server_extra.strip()] if server_extra.strip() else []),
        "[index]",
        f'path = "{base / "index"}"',
        "map_size_gb = 1",
    ]
    for p in store_paths:
        lines += ["[[stores]]", f'path = "{p}"']
        if reserve_percent is not None:
            lines.append(f"reserve_percent = {reserve_percent}")
    cfg = base / "oca.toml"
    cfg.write_text("\n".join(lines) + "\n" + extra)
    return cfg


def admin(cfg: Path, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `oca-admin --config cfg ARGS` as a real subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "oca.admin", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"oca-admin {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def is_root() -> bool:
    return os.geteuid() == 0


def needs_root(reason: str):
    """Mark a test `root` and skip it, with `reason`, when not run as root."""
    import pytest

    def deco(fn):
        return pytest.mark.root(pytest.mark.skipif(not is_root(), reason=reason)(fn))

    return deco
