"""`oca-fill`: the nightly fill agent's command line.

    oca-fill --config FILE plan                 print the plan; change nothing
    oca-fill --config FILE run [--ignore-window] [--force] [--daemon]
    oca-fill --config FILE status               the last and current run
    oca-fill manifest build DIR --base-url URL [--popularity FILE] [--config FILE --sign]

Exit codes: 0 success; 1 the run failed or refused the manifest, or some
files failed; 2 usage error. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from oca.config import DEFAULT_CONFIG_PATH, load_config
from oca.cli import run_cli
from oca.errors import OcaError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oca-fill", description="Nightly fill agent: pull the most popular titles into this appliance's stores.")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"appliance config file (default {DEFAULT_CONFIG_PATH})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("plan", help="print the plan (adds, deletes, bytes) without touching anything")
    r = sub.add_parser("run", help="one fill run (what the nightly timer starts)")
    r.add_argument("--ignore-window", action="store_true", help="run now even outside the fill window (hand runs)")
    r.add_argument("--force", action="store_true", help="accept a manifest that deletes more than fill.max_delete_share")
    r.add_argument("--daemon", action="store_true", help="keep running: wait for each window and fill in it")
    sub.add_parser("status", help="print the status record of the last and current run")
    m = sub.add_parser("manifest", help="manifest tools")
    msub = m.add_subparsers(dest="manifest_command", metavar="SUBCOMMAND")
    msub.required = True
    b = msub.add_parser("build", help="print a manifest for the files directly in DIR")
    b.add_argument("dir")
    b.add_argument("--base-url", required=True, help="URL the files are published under")
    b.add_argument("--popularity", help="JSON {id: popularity} or lines 'id popularity'")
    b.add_argument("--sign", action="store_true", help="sign with [signing] key_id of --config")
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "manifest":
        from fill.manifest import build_manifest, read_popularity, sign

        pop = read_popularity(args.popularity) if args.popularity else None
        doc = build_manifest(args.dir, args.base_url, pop, now_s=int(time.time()))
        if args.sign:
            cfg = load_config(args.config)
            kid = cfg.signing.key_id
            if kid is None:
                raise OcaError("--sign needs [signing] key_id in the config")
            doc = sign(doc, kid, cfg.signing.secrets()[kid])
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    cfg = load_config(args.config)
    if cfg.fill is None:
        raise OcaError(f"{args.config}: no [fill] table; oca-fill needs at least fill.manifest_url")
    if args.command == "status":
        from fill.agent import STATUS_FLAG
        from oca.store.content import ContentStore

        cs = ContentStore.open(cfg, writable=False)
        try:
            raw = cs.index.get_flag(STATUS_FLAG)
        finally:
            cs.close()
        print(json.dumps(json.loads(raw) if raw else {"last": None, "current": None}, indent=1))
        return 0
    if args.command == "plan":
        from fill.agent import load_manifest_sync, make_plan
        from oca.store.content import ContentStore

        manifest = load_manifest_sync(cfg)
        cs = ContentStore.open(cfg, writable=False)
        try:
            plan = make_plan(cfg, cs, manifest, time.time())
            idle = [f"{d.path} ({d.reason})" for d in cs.disks if not d.working]
        finally:
            cs.close()
        for line in idle:
            # plan changes nothing, so a new store is not initialised here (oca-admin check or a run does it)
            print(f"note: store not in service, its space is not counted: {line}")
        by_id = manifest.by_id()
        print(f"site: {plan.site_size} appliance(s); {plan.placed_here} of {len(manifest.files)} files placed here")
        print(f"capacity {plan.capacity_bytes} bytes; chosen {plan.chosen_bytes} bytes; held {plan.held_bytes} bytes")
        for f in plan.adds:
            print(f"add {f.content_id} {f.size} popularity={f.popularity:g}")
        for cid in plan.delete_now:
            print(f"delete {cid}" + ("" if cid not in by_id else " (unchosen past the grace period)"))
        for cid in plan.delete_if_needed:
            print(f"delete-if-needed {cid}")
        print(f"adds: {len(plan.adds)} files, {plan.add_bytes} bytes; deletes now: {len(plan.delete_now)} files, {plan.delete_now_bytes} bytes; "
              f"deletes if needed: {len(plan.delete_if_needed)}; kept: {len(plan.keep)}")
        if plan.delete_share > cfg.fill.max_delete_share:
            print(f"warning: this manifest deletes {plan.delete_share:.0%} of what is held; a run needs --force")
        return 0
    if args.command == "run":
        from fill.agent import run_fill

        if not args.daemon:
            return asyncio.run(run_fill(cfg, ignore_window=args.ignore_window, force=args.force))
        return asyncio.run(_daemon(args.config, args.force))
    return 2


async def _daemon(config_path: str, force: bool) -> int:
    from fill.agent import run_fill
    from fill.window import parse_window, seconds_left, seconds_until_open, zone

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        cfg = load_config(config_path)
        assert cfg.fill is not None
        window = parse_window(cfg.fill.window) if cfg.fill.window else None
        wait = seconds_until_open(window, time.time(), zone(cfg.fill.timezone))
        if wait > 0:
            print(f"oca-fill: next window opens in {wait / 3600:.2f} h", file=sys.stderr)
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
                break
            except asyncio.TimeoutError:
                pass
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await run_fill(cfg, force=force)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if window is None:
            try:
                await asyncio.wait_for(stop.wait(), timeout=3600)
            except asyncio.TimeoutError:
                pass
        else:
            # One run per window: the nightly budget is per night. Wait for this window to end.
            left = seconds_left(window, time.time(), zone(cfg.fill.timezone))
            try:
                await asyncio.wait_for(stop.wait(), timeout=left + 1)
            except asyncio.TimeoutError:
                pass
    return 0


def main(argv: list[str] | None = None) -> None:
    run_cli("oca-fill", run, argv)


if __name__ == "__main__":
    main()
