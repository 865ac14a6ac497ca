"""A console script whose program does not exist yet: `--help` works, then exit 2."""

from __future__ import annotations

import argparse
import sys


def not_yet(prog: str, description: str, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=f"{description} (not implemented yet)")
    parser.add_argument("--config", help="config file")
    parser.parse_known_args(argv)
    print(f"{prog}: this program does not exist yet", file=sys.stderr)
    sys.exit(2)
