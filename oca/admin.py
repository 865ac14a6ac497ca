"""`oca-admin`: the operator's command line for one appliance.

Rules kept here:
- Every user mistake or refused operation is one line on stderr and a
  non-zero exit; tracebacks are for bugs only.
- Exit codes: 0 success; 1 the operation failed or (for `verify`) found
  corruption; 2 a usage error.
- Commands that write take the same paths as the fill agent: the content
  store's publish and remove, never their own file or index handling.
"""

from __future__ import annotations

import argparse
import os
import time

from oca import __version__
from oca.config import DEFAULT_CONFIG_PATH, load_config
from oca.cli import run_cli
from oca.errors import OcaError
from oca.store.flags import Drain

# Kept only for oca/server/app.py on main, which still imports it; the server
# branch reads `ContentStore.drain()` instead. Delete after that merge.
DRAIN_FLAG = "drain"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oca-admin", description="Operate an oca appliance's stores and index.")
    p.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"appliance config file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--version", action="version", version=f"oca {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    s = sub.add_parser("ingest", help="copy a file into a store, hash it and publish it")
    s.add_argument("path")
    s.add_argument("--id", required=True, dest="content_id", help="content id to publish it as")
    s.add_argument("--mtime", type=int, help="origin modification time, unix seconds (default: the file's)")
    s.add_argument("--popularity", type=float, default=0.0, help="predicted bytes served per day")
    sub.add_parser("ls", help="one line per servable object: id, size, store, checksum")
    s = sub.add_parser("rm", help="remove an object (index entry first, then the file)")
    s.add_argument("content_id")
    sub.add_parser("verify", help="re-hash every servable object; exit 1 if corruption was found")
    sub.add_parser("check", help="reconcile the index with the disks and report each repair")
    sub.add_parser("rebuild-index", help="rebuild the index from the stores alone")
    sub.add_parser("stores", help="one line per store: path, state, capacity")
    s = sub.add_parser("enable-store", help="put a failed store back in service")
    s.add_argument("path")
    s.add_argument("--new-disk", action="store_true", help="the old disk was replaced by this empty one")
    sub.add_parser("drain", help="make /health say draining (survives restarts)")
    sub.add_parser("undrain", help="end draining")
    s = sub.add_parser("sign", help="print a signed path for an id")
    s.add_argument("content_id")
    s.add_argument("--ttl", type=int, required=True, help="lifetime in seconds")
    s.add_argument("--key-id", help="key to sign with (default [signing] key_id)")
    return p


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = load_config(args.config)
    from oca.store.content import ContentStore
    from oca.store import maintenance

    if args.command == "sign":
        from oca.signing import signed_path
        from oca.ids import check_id

        check_id(args.content_id)
        key_id = args.key_id or cfg.signing.key_id
        if key_id is None:
            raise OcaError("signing.key_id is not set and --key-id was not given")
        secrets_ = cfg.signing.secrets()
        if key_id not in secrets_:
            raise OcaError(f"key id {key_id!r} is not in signing.keys")
        if args.ttl <= 0:
            raise OcaError("--ttl must be positive")
        print(signed_path(args.content_id, int(time.time()) + args.ttl, key_id, secrets_[key_id]))
        return 0

    if args.command == "rebuild-index":
        from oca.store.disks import Disk

        disks = [Disk(s.path, s.reserve_percent) for s in cfg.stores]
        report = maintenance.rebuild_index(
            cfg.index.path, disks, map_size_bytes=int(cfg.index.map_size_gb * (1 << 30)), max_readers=cfg.index.max_readers
        )
        if report.moved_aside:
            print(f"old index moved to {report.moved_aside}")
        for line in report.stores:
            print(line)
        for q in report.quarantined:
            print(f"quarantined {q}")
        print(f"index rebuilt: {report.entries} entries")
        return 0

    cs = ContentStore.open(cfg)
    try:
        if args.command == "ingest":
            if not os.path.isfile(args.path):
                raise OcaError(f"{args.path}: not a file")
            entry = cs.publish_file(args.path, args.content_id, mtime_s=args.mtime, popularity=args.popularity)
            disk = cs.disk(entry.store_uuid)
            print(f"{entry.content_id} {entry.size} {disk.path if disk else entry.store_uuid} {entry.checksum}")
        elif args.command == "ls":
            _generation, ids = cs.inventory()
            for content_id in ids:
                loc = cs.lookup(content_id)
                if loc is None:
                    continue
                disk = cs.disk(loc.store_uuid)
                print(f"{content_id} {loc.size} {disk.path if disk else loc.store_uuid} {loc.checksum}")
        elif args.command == "rm":
            if cs.remove(args.content_id) is None:
                raise OcaError(f"{args.content_id}: no such object")
        elif args.command == "check":
            report = maintenance.check(cs)
            for line in report.lines():
                print(line)
            print("consistent" if report.consistent else "repaired")
        elif args.command == "verify":
            vr = maintenance.verify(cs)
            for line in vr.corrupt:
                print(f"corrupt: {line}")
            for line in vr.unreadable:
                print(f"unreadable: {line}")
            for disk in cs.disks:
                if not disk.working:  # its files were not verified: say so rather than look complete
                    print(f"store not verified: {disk.path}: {disk.reason}")
            print(f"verified {vr.checked} objects, {_human(vr.bytes_hashed)}; {len(vr.corrupt)} corrupt, {len(vr.unreadable)} unreadable")
            return 1 if vr.corrupt else 0
        elif args.command == "stores":
            for disk, cap in cs.capacities():
                print(
                    f"{disk.path} {disk.state} total={cap.total_bytes} used={cap.used_bytes} "
                    f"free={cap.free_bytes} reserve={cap.reserve_bytes}"
                    + (f" reason={disk.reason!r}" if disk.reason else "")
                )
        elif args.command == "enable-store":
            print(cs.enable_store(args.path, new_disk=args.new_disk))
        elif args.command == "drain":
            cs.set_drain(Drain(since_s=time.time()))
            print("draining")
        elif args.command == "undrain":
            cs.set_drain(None)
            print("not draining")
        return 0
    finally:
        cs.close()


def main(argv: list[str] | None = None) -> None:
    run_cli("oca-admin", run, argv)


if __name__ == "__main__":
    main()
