"""`oca-steering --config FILE`: the steering service.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT); 1 on a config or start-up
error, reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import sys

from oca import __version__
from oca.errors import OcaError
from steering.config import DEFAULT_STEERING_CONFIG, load_steering_config


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="oca-steering", description="Steering service: rank appliances for a client and a content id.")
    p.add_argument("--config", default=DEFAULT_STEERING_CONFIG, help=f"steering config file (default {DEFAULT_STEERING_CONFIG})")
    p.add_argument("--check-config", action="store_true", help="validate the config (and coverage file) and exit")
    p.add_argument("--version", action="version", version=f"oca {__version__}")
    p.add_argument("--role", choices=("all", "worker"), default="all", help=argparse.SUPPRESS)  # workers are started by the poller
    args = p.parse_args(argv)
    try:
        if args.check_config:
            from steering.config import coverage_path, load_coverage

            cfg = load_steering_config(args.config)
            path = coverage_path(cfg, args.config)
            if path:
                load_coverage(path)
            import ssl
            import time

            from oca.errors import ConfigError
            from oca.tls import TlsError, make_context
            from steering.poller import client_context

            if cfg.tls is not None:
                try:
                    make_context(cfg.tls, time.time())
                except TlsError as exc:
                    raise TlsError(f"{args.config}: tls: {exc}") from None
            try:
                client_context(cfg.health.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"{args.config}: health.ca_file: {cfg.health.ca_file}: {exc}") from None
            print(f"{args.config}: ok")
            sys.exit(0)
        import uvloop

        from steering.service import serve

        sys.exit(uvloop.run(serve(args.config, args.role)))
    except OcaError as exc:
        print(f"oca-steering: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(f"oca-steering: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
