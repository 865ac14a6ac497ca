"""The fleet store (`steering.fleetstore`): what the poller writes is what another process reads, and it survives a restart.

Real files and a real LMDB in a temporary directory; the reader runs in its
own process, as a decision worker does (LMDB allows one environment per
path in a process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from oca.inventory_wire import id_hash
from steering.fleetstore import H_MAGIC, FleetStoreWriter, state_byte

ROOT = Path(__file__).resolve().parents[2]
IDS = ["a0", "a1", "a2", "a3"]
READ = r"""
import ipaddress, json, sys
from steering.fleetstore import FleetStoreReader
r = FleetStoreReader(sys.argv[1])
out = {"ids": r.ids, "states": list(bytes(r.states[:len(r.ids)]))}
for cid in ("c1", "c2", "c3", "new"):
    f = r.file_index(cid)
    out[cid] = None if f is None else r.holders(f).tolist()
for addr in ("10.1.2.3", "10.9.9.9", "2001:db8::1", "192.0.2.1"):
    a = ipaddress.ip_address(addr)
    out[addr] = r.route_matches(a.version, int(a))
print(json.dumps(out))
"""


def read(root: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", READ, str(root)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def hashes(*ids: str) -> np.ndarray:
    return np.array(sorted(id_hash(c) for c in ids), dtype=np.uint64)


SITE = ("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32")


def test_what_the_poller_writes_a_worker_reads(tmp_path):
    root = tmp_path / "steering.snapshot.store"
    w = FleetStoreWriter(str(root), IDS)
    assert not w.restored
    w.replace_row(0, w.indexes_of_hashes(hashes("c1", "c2")), 5)
    w.replace_row(1, w.indexes_of_hashes(hashes("c2", "c3")), 2)
    w.change_row(1, w.indexes_of_ids(["new"]), w.indexes_of_ids(["c2"], intern=False), 3)
    for a in (0, 1, 2):  # one site: one route group
        w.queue_routes(a, (), SITE, 1)
    w.queue_routes(3, (), ("10.9.0.0/16",), 1)
    w.flush_routes()
    w.queue_routes(2, SITE, ("10.0.0.0/8",), 2)  # one appliance of the site changes its list: a group of its own
    w.flush_routes()
    w.write_states([state_byte(True, False, False, True), state_byte(True, True, False, False), 0, 0], 1, 100.0)
    got = read(root)
    assert got["ids"] == IDS and got["states"] == [5, 12, 0, 0]
    assert got["c1"] == [0] and got["c2"] == [0] and got["c3"] == [1] and got["new"] == [1]
    assert got["10.1.2.3"] == [["10.1.0.0/16", 16, [0, 1]], ["10.0.0.0/8", 8, [0, 1, 2]]]
    assert got["10.9.9.9"] == [["10.9.0.0/16", 16, [3]], ["10.0.0.0/8", 8, [0, 1, 2]]]
    assert got["2001:db8::1"] == [["2001:db8::/32", 32, [0, 1]]]
    assert got["192.0.2.1"] == []
    w.queue_routes(0, SITE, (), 3)
    w.queue_routes(1, SITE, (), 3)
    w.flush_routes()  # nobody announces the site's list any more: its prefixes go
    got = read(root)
    assert got["2001:db8::1"] == [] and got["10.1.2.3"] == [["10.0.0.0/8", 8, [2]]]
    w.close()


def test_a_restarted_poller_reopens_the_store_and_a_damaged_one_is_replaced(tmp_path):
    root = tmp_path / "s.store"
    w = FleetStoreWriter(str(root), IDS)
    w.replace_row(2, w.indexes_of_hashes(hashes("c1", "c3")), 9)
    w.queue_routes(2, (), SITE, 4)
    w.flush_routes()
    w.write_states([0, 0, state_byte(True, True, False, False), 0], 3, 100.0)
    first = w.dir
    w.close()
    again = FleetStoreWriter(str(root), IDS)
    assert again.dir == first and again.restored[2].inventory_generation == 9 and again.restored[2].count == 2
    assert again.restored[2].routes == SITE and again.restored[2].routes_generation == 4 and again.restored[2].state == 12
    again.queue_routes(3, (), SITE, 1)  # joins the reopened group: no prefix written twice
    again.flush_routes()
    assert read(root)["2001:db8::1"] == [["2001:db8::/32", 32, [2, 3]]]
    again.head[H_MAGIC] = 0  # damaged (or another version): not used
    again.close()
    fresh = FleetStoreWriter(str(root), IDS)
    assert fresh.dir != first and not fresh.restored and "not a fleet store" in fresh.why_new
    assert read(root)["c1"] is None
    fresh.close()
    other = FleetStoreWriter(str(root), IDS[:3])  # another registry: another store
    assert other.dir != fresh.dir and "not the registry's" in other.why_new
    other.close()


VIEW = r"""
import json, sys
from steering.fleetstore import FleetStoreReader
from steering.fleetview import FleetView
from steering.ranking import Appliance, holder_order
n = int(sys.argv[2])
registry = [Appliance(f"a{i}", "", f"s{i % 7}", "ixp" if i % 5 == 0 else "embedded", 2.0 if i % 11 == 0 else 1.0) for i in range(n)]
view = FleetView(FleetStoreReader(sys.argv[1]), registry)
out = {}
for cid in ("popular", "tail"):
    f = view.reader.file_index(cid)
    want = [a.appliance_id for a in holder_order(cid, [registry[i] for i in view.reader.holders(f).tolist()])]
    first = [a.appliance_id for a in view.holders_of(cid)]
    again = [a.appliance_id for a in view.holders_of(cid)]  # a popular file: its registry order, walked
    out[cid] = [first == want, again == want, len(want)]
print(json.dumps(out))
"""


def test_a_worker_orders_holders_as_the_ranking_does(tmp_path):
    """Few holders are ordered one score each; a popular file's through its whole-registry order, read as walked."""
    n = 600
    ids = [f"a{i}" for i in range(n)]
    root = tmp_path / "v.store"
    w = FleetStoreWriter(str(root), ids)
    for a in range(n):
        held = ["popular"] if a % 6 else ["popular", "tail"] if a % 60 == 0 else []
        w.replace_row(a, w.indexes_of_ids(held), 1)
    w.close()
    done = subprocess.run([sys.executable, "-c", VIEW, str(root), str(n)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["popular"] == [True, True, 510] and got["tail"] == [True, True, 10]
