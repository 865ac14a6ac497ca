"""The shell shared by the command-line programs: errors as one line, exit codes.

User mistakes and refused operations (`OcaError`) and operating-system
errors are one line on stderr and exit 1; Ctrl-C exits 130; a closed pipe
(`oca-admin ls | head`) is not an error. Tracebacks are left for bugs.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from oca.errors import OcaError


def run_cli(prog: str, run: Callable[[list[str] | None], int], argv: list[str] | None = None) -> NoReturn:
    try:
        code = run(argv)
    except BrokenPipeError:
        code = 0
    except (OcaError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
