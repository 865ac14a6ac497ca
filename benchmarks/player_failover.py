#!/usr/bin/env python3
"""Player failover benchmark: dash.js and hls.js in Chromium, our failover settings against the players' own defaults.

Run: ``.venv/bin/python benchmarks/player_failover.py [--rounds N] [--cap S]``.

Rules kept here:
- The system of the browser tests (`tests.browser.fleet`): three real
  appliances over HTTPS in two sites, real steering with Content Steering,
  one headless Chromium (Debian's). One /watch page per trial.
- A trial: play until 3 s of media from one appliance, then fault it
  (`kill` = kill -9 of every process, `stop` = SIGSTOP of every process),
  and watch for `--cap` seconds (25) or until 14 s of media played past the
  fault: longer than the 8 s buffer target, which both tunings share, so
  a failover slower than the buffer shows as a stall. Measured: the longest stall (video `waiting` → `playing`, or a
  stall still open at the end), whether a fatal player error was raised,
  and the wall time from the fault to the first completed request on
  another appliance. The appliance is restarted (or continued) and steering
  sees the fleet whole before the next trial.
- The compared systems run in the same run, alternating: for each round,
  player × fault × (fast, defaults). Ratios are defaults / fast.
- The figures are measured in this run, on a shared machine: compare runs
  made one after the other.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser.fleet import SPECS, Player, launch_browser, start_system  # noqa: E402


def trial(system, ctx, player: str, tuning: str, fault: str, cap_s: float) -> dict:
    p = Player(ctx, system, player, tuning)
    victim = None
    try:
        st = p.wait(lambda s: s["time"] >= 3 and s["appliance"] in SPECS, 30, "playback from an appliance")
        victim = system.fleet[st["appliance"]]
        if fault == "kill":
            victim.kill9()
        else:
            victim.signal_all(signal.SIGSTOP)
        at = p.state()
        deadline = time.monotonic() + cap_s
        while True:
            st = p.state()
            if st["fatal"] or st["time"] >= at["time"] + 14 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        moved = [r["t"] - at["now"] for r in st["requests"] if r["t"] > at["now"] and r["appliance"] != victim.aid]
        return {"stall_s": st["stall"], "fatal": bool(st["fatal"]), "moved_s": moved[0] if moved else None,
                "played_s": st["time"] - at["time"]}
    finally:
        p.close()
        if victim is not None:
            if fault == "kill":
                victim.start()
            else:
                victim.signal_all(signal.SIGCONT)
            system.wait_whole()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cap", type=float, default=25.0, help="seconds watched after the fault at most")
    args = ap.parse_args()
    results: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="oca-bench-players-") as tmp, start_system(Path(tmp)) as system, sync_playwright() as pw:
        ctx = launch_browser(pw)
        try:
            for rnd in range(args.rounds):
                for player in ("dash", "hls"):
                    for fault in ("kill", "stop"):
                        for tuning in ("fast", "defaults"):
                            r = trial(system, ctx, player, tuning, fault, args.cap)
                            results.setdefault((player, fault, tuning), []).append(r)
                            moved = "never" if r["moved_s"] is None else f"{r['moved_s']:.2f} s"
                            print(f"round {rnd + 1}: {player:4} {fault:4} {tuning:8} longest stall {r['stall_s']:6.2f} s  "
                                  f"fatal {'yes' if r['fatal'] else 'no'}  requests moved after {moved}", flush=True)
        finally:
            ctx.close()
    print("\nplayer fault  longest stall fast / defaults (median s)   ratio   fatal errors fast / defaults")
    for player in ("dash", "hls"):
        for fault in ("kill", "stop"):
            fast = [r["stall_s"] for r in results[(player, fault, "fast")]]
            dflt = [r["stall_s"] for r in results[(player, fault, "defaults")]]
            f, d = statistics.median(fast), statistics.median(dflt)
            ratio = f"{d / f:.1f}x" if f > 0.05 else ("-" if d <= 0.05 else "inf")
            ff = sum(r["fatal"] for r in results[(player, fault, "fast")])
            fd = sum(r["fatal"] for r in results[(player, fault, "defaults")])
            print(f"{player:6} {fault:5}  {f:8.2f} / {d:8.2f}                       {ratio:>7}   {ff} / {fd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
