"""The steering status page (`/`): appliances by site, decisions, recent clients.

Rules kept here:
- Everything shown that came from elsewhere (ids, reasons, client
  addresses, content ids) is HTML-escaped; the page loads nothing from
  other origins and runs no script.
- It is a control endpoint (it lists client addresses): `steering.access`
  decides who may see it.
"""

from __future__ import annotations

import html
import time
from typing import Iterable, Mapping, Sequence

from oca import __version__
from steering.poller import Poller
from steering.ranking import Appliance


def render_status(registry: Sequence[Appliance], poller: Poller, prefixes: int,
                  recent: Iterable[tuple[float, str, str, str, Sequence[str]]], results: Mapping[str, int], now_s: float) -> str:
    """The page, from what steering knows now; `recent` is oldest first."""
    e = html.escape

    def _ago(ts: float | None) -> str:
        return "never" if ts is None else f"{now_s - ts:.1f} s ago"

    rows = []
    by_site: dict[str, list[Appliance]] = {}
    for a in registry:
        by_site.setdefault(a.site, []).append(a)
    for site in sorted(by_site):
        rows.append(f"<tr class='site'><th colspan='9'>site {e(site)}</th></tr>")
        for a in by_site[site]:
            st = poller.states.get(a.appliance_id)
            k = poller.known.get(a.appliance_id)
            state = st.state if st else "unknown"
            util = "unknown" if st is None or st.nic_utilisation is None else f"{st.nic_utilisation * 100:.1f}%"
            bps = "" if st is None or st.bytes_per_s is None else f"{st.bytes_per_s * 8 / 1e6:.1f} Mb/s"
            rows.append(
                f"<tr class='{e(state)}'><td>{e(a.appliance_id)}</td><td>{e(a.tier)}</td><td>{e(state)}</td>"
                f"<td>{e(st.reason if st else '')}</td><td>{_ago(st.last_poll_s if st else None)}</td>"
                f"<td>{bps}</td><td>{util}</td><td>{len(k.inventory) if k else 0}</td><td>{len(k.routes) if k else 0}</td></tr>"
            )
    recent = "".join(
        f"<tr><td>{time.strftime('%H:%M:%S', time.localtime(t))}</td><td>{e(c)}</td><td>{e(cid)}</td><td>{e(r)}</td><td>{e(', '.join(aps))}</td></tr>"
        for t, c, cid, r, aps in reversed(list(recent))
    )
    counts = "".join(f"<li>{e(k)}: {v}</li>" for k, v in sorted(results.items())) or "<li>none yet</li>"
    blip = (f"<p class='blip'>Blip guard active since {_ago(poller.blip_since)}: {e(poller.blip_reason)}</p>"
            if poller.blip else "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>oca steering</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; margin-bottom: 2em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }} tr.site th {{ background: #eee; }}
tr.up td:nth-child(3) {{ color: #070; }} tr.down td:nth-child(3) {{ color: #b00; font-weight: bold; }}
tr.draining td:nth-child(3), tr.overloaded td:nth-child(3) {{ color: #a60; }} .blip {{ background: #fdd; padding: 0.5em; }}
</style></head><body>
<h1>oca steering</h1>
<p>version {e(__version__)} &middot; {len(registry)} appliances &middot; {prefixes} prefixes &middot; polling round {poller.rounds}, last {_ago(poller.last_round_s)}</p>
{blip}
<h2>Appliances</h2>
<table><tr><th>appliance</th><th>tier</th><th>state</th><th>reason</th><th>last poll</th><th>sending</th><th>NIC</th><th>content</th><th>routes</th></tr>
{''.join(rows)}</table>
<h2>Decisions by result</h2><ul>{counts}</ul>
<h2>Recent decisions</h2>
<table><tr><th>time</th><th>client</th><th>content</th><th>result</th><th>appliances</th></tr>{recent}</table>
</body></html>
"""
