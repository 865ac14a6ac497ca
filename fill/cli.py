"""`oca-fill`: the nightly fill agent's command line.

    oca-fill --config FILE plan                 print the plan; change nothing
    oca-fill --config FILE run [--ignore-window] [--force] [--daemon]
    oca-fill --config FILE pass [--ignore-window]  one intra-day pass now
    oca-fill --config FILE status               the last and current run
    oca-fill --config FILE --check-config       validate the config ([fill] included) and exit
    oca-fill manifest build DIR --base-url URL [--popularity FILE] [--titles FILE] [--config FILE --sign]

Exit codes: 0 success; 1 the run failed or refused the manifest, or some
files failed; 2 usage error; 75 (EX_TEMPFAIL) another run holds this
appliance's lock. Errors are one line on stderr.

Rules kept here: the daemon's loop runs under `oca.supervise.Supervisor`:
a failure is logged with its traceback, counted, restarted with back-off,
and written to `<index>/oca-fill-daemon.json`, which `status` shows. In
each window the daemon runs the night's run at the window's start, then
one pass at each `fill.passes` time still ahead in that window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from fill.config import load_fill_config
from fill.errors import RunLocked
from fill.runlock import EX_TEMPFAIL
from oca.cli import run_cli
from oca.config import DEFAULT_CONFIG_PATH, load_config
from oca.errors import OcaError

DAEMON_STATE = "oca-fill-daemon.json"
LOCKED_RETRY_S = 60.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oca-fill", description="Nightly fill agent: pull the most popular titles into this appliance's stores.")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"appliance config file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--check-config", action="store_true", help="validate the config, [fill] and its cross-checks included, and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("plan", help="print the plan (adds, deletes, bytes) without touching anything")
    r = sub.add_parser("run", help="one fill run (what the nightly timer starts)")
    r.add_argument("--ignore-window", action="store_true", help="run now even outside the fill window (hand runs)")
    r.add_argument("--force", action="store_true", help="accept a manifest that deletes more than fill.max_delete_share")
    r.add_argument("--daemon", action="store_true", help="keep running: wait for each window and fill in it")
    ps = sub.add_parser("pass", help="one intra-day pass now: add what was requested since the night's run and is missing from the site")
    ps.add_argument("--ignore-window", action="store_true", help="run now even outside the fill window (hand runs)")
    sub.add_parser("status", help="print the status record of the last and current run, with the passes after the night's")
    m = sub.add_parser("manifest", help="manifest tools")
    msub = m.add_subparsers(dest="manifest_command", metavar="SUBCOMMAND")
    msub.required = True
    b = msub.add_parser("build", help="print a manifest for the files directly in DIR")
    b.add_argument("dir")
    b.add_argument("--base-url", required=True, help="URL the files are published under")
    b.add_argument("--popularity", help="JSON {id: popularity} or lines 'id popularity'")
    b.add_argument("--titles", help="JSON {id: title}; default: the file name up to its first dot, for files that parse as fMP4 encodes")
    b.add_argument("--sign", action="store_true", help="sign with [signing] key_id of --config")
    return p


def run(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.check_config:
        _cfg, fc = load_fill_config(args.config)
        print(f"{args.config}: ok")
        if fc.unsigned_http_warning:
            print(f"warning: {fc.unsigned_http_warning}", file=sys.stderr)
        return 0
    if args.command is None:
        parser.error("a command is required")
    if args.command == "manifest":
        from fill.manifest import sign
        from fill.manifest_build import build_manifest, read_popularity, read_titles

        def skipped(name: str, reason: str) -> None:
            print(f"oca-fill manifest build: {name}: no media fields: {reason}", file=sys.stderr)

        pop = read_popularity(args.popularity) if args.popularity else None
        titles = read_titles(args.titles) if args.titles else None
        doc = build_manifest(args.dir, args.base_url, pop, now_s=int(time.time()), titles=titles, on_skip=skipped)
        if args.sign:
            cfg = load_config(args.config)
            kid = cfg.signing.key_id
            if kid is None:
                raise OcaError("--sign needs [signing] key_id in the config")
            doc = sign(doc, kid, cfg.signing.secrets()[kid])
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if args.command == "status":
        return _status(args.config)
    if args.command == "run" and args.daemon:
        # The daemon loads the config on every turn of its supervised loop: a
        # bad [fill] is a failure it reports and retries, not an exit.
        return asyncio.run(_daemon(args.config, args.force))
    cfg, fc = load_fill_config(args.config)
    if args.command == "plan":
        return _plan(cfg, fc)
    if args.command in ("run", "pass"):
        from fill.agent import NIGHT, PASS, run_fill

        kind = NIGHT if args.command == "run" else PASS
        try:
            return asyncio.run(run_fill(cfg, fc, ignore_window=args.ignore_window, force=getattr(args, "force", False), kind=kind))
        except RunLocked as exc:
            print(f"oca-fill: {exc}", file=sys.stderr)
            return EX_TEMPFAIL
    return 2


def _status(config_path: str) -> int:
    """The status record, the config's warnings and the daemon's supervision; works with a broken [fill] too."""
    from oca.errors import ConfigError
    from oca.store.content import ContentStore

    cfg = load_config(config_path)
    warnings: list[str] = []
    try:
        _cfg, fc = load_fill_config(config_path)
        if fc.unsigned_http_warning:
            warnings.append(fc.unsigned_http_warning)
    except ConfigError as exc:
        warnings.append(f"config: {exc}")
    cs = ContentStore.open(cfg, writable=False)
    try:
        st = cs.fill_status()
    finally:
        cs.close()
    doc = {
        "last": None if st.last is None else dict(st.last),
        "current": None if st.current is None else dict(st.current),
        "warnings": warnings,
        "daemon": _read_daemon_state(cfg.index.path),
    }
    print(json.dumps(doc, indent=1))
    return 0


def _plan(cfg, fc) -> int:
    from fill.agent import load_manifest_sync, make_plan, newest_accepted, would_initialise
    from fill.manifest import check_fresh
    from oca.store.content import ContentStore

    manifest = load_manifest_sync(cfg, fc)
    cs = ContentStore.open(cfg, writable=False)
    try:
        check_fresh(manifest.generated_s, newest_accepted(cs), time.time(), fc.max_manifest_age_h * 3600)
        # A plan forecasts what `run` would do, and a run (a writer) initialises
        # new, empty stores: their space counts as if they were.
        plan = make_plan(cfg, fc, cs, manifest, time.time(), count_new_stores=True)
        new = [d.path for d in cs.disks if would_initialise(d)]
        idle = [f"{d.path} ({d.reason})" for d in cs.disks if not d.working and not would_initialise(d)]
    finally:
        cs.close()
    if fc.unsigned_http_warning:
        print(f"warning: {fc.unsigned_http_warning}")
    for path in new:
        print(f"note: new store {path} is not initialised yet; a run initialises it, so its space is counted")
    for line in idle:
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
    if plan.delete_share > fc.max_delete_share:
        print(f"warning: this manifest deletes {plan.delete_share:.0%} of what is held; a run needs --force")
    return 0


# ---------------------------------------------------------------- daemon


def _read_daemon_state(index_dir: str) -> dict | None:
    try:
        with open(os.path.join(index_dir, DAEMON_STATE), encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_daemon_state(index_dir: str, doc: dict) -> None:
    path = os.path.join(index_dir, DAEMON_STATE)
    tmp = path + ".new"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"oca-fill: cannot write {path}: {exc}", file=sys.stderr)


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} oca-fill: {msg}", file=sys.stderr, flush=True)


async def _daemon(config_path: str, force: bool) -> int:
    from oca.supervise import Supervisor

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    index_dir = load_config(config_path).index.path

    def publish_state() -> None:
        _write_daemon_state(index_dir, {
            "pid": os.getpid(), "updated_s": time.time(), "failures": sup.failures(), "down": sup.down(),
        })

    sup = Supervisor(_log, on_failure=lambda _name: publish_state())
    task = sup.start("fill-loop", lambda: _daemon_loop(config_path, force, stop, publish_state))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        await sup.stop()
    return 0


async def _wait(stop: asyncio.Event, timeout_s: float) -> bool:
    """True when `stop` was set within `timeout_s`."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, timeout_s))
        return True
    except asyncio.TimeoutError:
        return False


async def _daemon_loop(config_path: str, force: bool, stop: asyncio.Event, publish_state) -> None:
    from fill.agent import run_fill
    from fill.localzone import zone
    from fill.window import parse_window, seconds_left, seconds_until_open

    loop = asyncio.get_running_loop()
    while not stop.is_set():
        cfg, fc = load_fill_config(config_path)
        publish_state()
        window = parse_window(fc.window) if fc.window else None
        wait = seconds_until_open(window, time.time(), zone(fc.timezone))
        if wait > 0:
            _log(f"next window opens in {wait / 3600:.2f} h")
            if await _wait(stop, wait):
                return
        # The run installs its own SIGTERM/SIGINT handlers (a clean stop); ours come back after it.
        try:
            await run_fill(cfg, fc, force=force, on_signal=stop.set)
        except RunLocked as exc:
            _log(f"{exc}; trying again in {LOCKED_RETRY_S:g} s")
            if await _wait(stop, LOCKED_RETRY_S):
                return
            continue
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        if stop.is_set():
            return
        if await _passes(config_path, fc, window, stop):
            return
        if window is None:
            if await _wait(stop, 3600):
                return
        else:
            # One run per window: the nightly budget is per night. Wait for this window to end.
            if await _wait(stop, seconds_left(window, time.time(), zone(fc.timezone)) + 1):
                return


async def _passes(config_path: str, fc, window, stop: asyncio.Event) -> bool:
    """The window's intra-day passes still ahead, each at its time; True when `stop` was set."""
    from fill.agent import PASS, run_fill
    from fill.localzone import zone
    from fill.window import parse_time, pass_instants

    loop = asyncio.get_running_loop()
    tz = zone(fc.timezone)
    for at in pass_instants(window, [parse_time(t) for t in fc.passes], time.time(), tz):
        if at <= time.time():
            continue
        _log(f"next pass in {(at - time.time()) / 3600:.2f} h")
        if await _wait(stop, at - time.time()):
            return True
        cfg, fc_now = load_fill_config(config_path)
        try:
            await run_fill(cfg, fc_now, on_signal=stop.set, kind=PASS)
        except RunLocked as exc:
            _log(f"pass skipped: {exc}")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        if stop.is_set():
            return True
    return False


def main(argv: list[str] | None = None) -> None:
    run_cli("oca-fill", run, argv)


if __name__ == "__main__":
    main()
