"""The /watch pages: a title list, and a player page driving dash.js or hls.js.

Nothing here performs I/O. Rules kept here:
- Every value put into the page is escaped: HTML text with `html.escape`,
  the page's config as JSON inside a `<script type="application/json">`
  with `<` written as `\\u003c`, so no value can close the element.
- The players are configured for fast failover (their defaults were
  measured here to cost seconds to forever per failure): one retry 200 ms
  apart; hls.js: a time-to-first-byte timeout of `TTFB_MS` and a
  whole-download timeout of `LOAD_PER_SEGMENT` times the longest
  fragment's duration (a top-bitrate fragment still fits at a quarter of
  its bitrate); dash.js: its no-progress timeout arms only after the first
  bytes, so a hung server is caught by the whole-download timeout alone,
  set to `DASH_LOAD_PER_SEGMENT` times the longest fragment (a fragment
  that cannot load in its own duration cannot keep playback going
  anyway; ABR must go down); a hung server then costs two timeouts and a
  retry delay, inside a buffer target of `BUFFER_S`.
- The page records what tests and people need, on `window.oca`: requests
  with the appliance each went to, stalls (video `waiting` to `playing`
  after start, seeks excluded), errors (fatal or not), buffers per
  SourceBuffer, the current video encode.
- When the page is HTTPS and an appliance URL is plain HTTP, the browser
  blocks the media (mixed content): the page says so at the top.
"""

from __future__ import annotations

import html
import json
from typing import Mapping, Sequence

from steering.catalog import Title

TTFB_MS = 1000
LOAD_PER_SEGMENT = 4
MIN_LOAD_MS = 4000
DASH_LOAD_PER_SEGMENT = 1
DASH_MIN_LOAD_MS = 1500
BUFFER_S = 8
RETRIES = 1
RETRY_DELAY_MS = 200
LIBS = {"dash": "/watch/lib/dash.all.min.js", "hls": "/watch/lib/hls.min.js"}
# "fast": the failover settings above; "defaults": the player's own retries and timeouts (the same buffer
# target), for comparison (benchmarks/player_failover.py).
TUNINGS = ("fast", "defaults")
INSTALL_HINT = "npm ci --prefix steering/static"


def _config_json(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _longest_fragment_s(title: Title) -> float:
    return max((s.duration_s for f in title.files for s in f.media.segments), default=2.0)


def load_timeout_ms(title: Title) -> int:
    return max(MIN_LOAD_MS, int(LOAD_PER_SEGMENT * _longest_fragment_s(title) * 1000))


def dash_load_timeout_ms(title: Title) -> int:
    return max(DASH_MIN_LOAD_MS, int(DASH_LOAD_PER_SEGMENT * _longest_fragment_s(title) * 1000))


def render_index(titles: Mapping[str, Title]) -> str:
    rows = "".join(
        f'<li><a href="/watch/{html.escape(n)}">{html.escape(n)}</a> ({t.duration_s:.0f} s, {len(t.video)} video, '
        f'{len(t.audio)} audio) · <a href="/watch/{html.escape(n)}?player=hls">hls.js</a> · '
        f'<a href="/play/{html.escape(n)}.mpd">MPD</a> · <a href="/play/{html.escape(n)}.m3u8">m3u8</a></li>'
        for n, t in titles.items())
    body = f"<ul>{rows}</ul>" if rows else "<p>No titles: steering has no manifest with media fields yet ([content] manifest_url).</p>"
    return f"<!doctype html><html><head><meta charset=utf-8><title>oca: titles</title></head><body><h1>Titles</h1>{body}</body></html>"


def render_player(title: Title, player: str, *, libs_present: bool, appliance_origins: Mapping[str, str],
                  mixed_content: Sequence[str], client: str | None, tuning: str = "fast") -> str:
    """The player page. `appliance_origins`: URL origin → appliance id; `mixed_content`: http appliances under an https page."""
    if player not in LIBS:
        raise ValueError(f"player: {player!r} is not one of {sorted(LIBS)}")
    if tuning not in TUNINGS:
        raise ValueError(f"tuning: {tuning!r} is not one of {TUNINGS}")
    name = html.escape(title.name)
    q = f"?client={client}" if client else ""
    cfg = {
        "title": title.name, "player": player, "lib": LIBS[player],
        "manifest": f"/play/{title.name}.{'mpd' if player == 'dash' else 'm3u8'}{q}",
        "appliances": dict(appliance_origins), "ttfb_ms": TTFB_MS, "load_ms": load_timeout_ms(title),
        "dash_load_ms": dash_load_timeout_ms(title),
        "buffer_s": BUFFER_S, "retries": RETRIES, "retry_ms": RETRY_DELAY_MS, "tuning": tuning,
        "encodes": [{"id": f.content_id, "bandwidth": f.media.bandwidth, "height": f.media.height} for f in title.video],
    }
    warnings = []
    if not libs_present:
        warnings.append(f"The player libraries are not installed on the steering host: run <code>{html.escape(INSTALL_HINT)}</code> "
                        "in the project directory (no CDN is used), then reload.")
    if mixed_content:
        warnings.append("This page is HTTPS but these appliances are plain HTTP, so the browser blocks their media (mixed content): "
                        + ", ".join(html.escape(a) for a in mixed_content) + ". Serve the appliances over HTTPS ([tls]).")
    warn = "".join(f'<p class=warn>{w}</p>' for w in warnings)
    other = "hls" if player == "dash" else "dash"
    return f"""<!doctype html>
<html><head><meta charset=utf-8><title>oca: {name} ({player})</title>
<style>
body{{font:14px system-ui,sans-serif;margin:1em;max-width:60em}} video{{width:100%;max-width:48em;background:#000}}
.warn{{background:#fee;border:1px solid #c00;padding:.5em}} table{{border-collapse:collapse}} td{{padding:.1em .8em .1em 0}}
#log{{font:12px monospace;white-space:pre-wrap;max-height:14em;overflow:auto;background:#f6f6f6;padding:.5em}}
</style></head>
<body>
<h1>{name} <small>({player}.js · <a href="/watch/{name}?player={other}">{other}.js</a> · <a href="/watch/">titles</a>)</small></h1>
{warn}
<video id=v controls muted autoplay playsinline></video>
<table>
<tr><td>appliance</td><td id=s-appliance>-</td></tr>
<tr><td>video encode</td><td id=s-encode>-</td></tr>
<tr><td>buffer ahead</td><td id=s-buffer>-</td></tr>
<tr><td>position</td><td id=s-time>-</td></tr>
<tr><td>longest stall</td><td id=s-stall>-</td></tr>
</table>
<div id=log></div>
<script id=cfg type="application/json">{_config_json(cfg)}</script>
<script>{_PAGE_JS}</script>
<script src="{LIBS[player]}" onload="ocaStart()" onerror="ocaNoLib()"></script>
</body></html>
"""


_PAGE_JS = r"""
const C = JSON.parse(document.getElementById('cfg').textContent);
const v = document.getElementById('v');
const oca = window.oca = {player: C.player, started: false, events: [], errors: [], fatal: [], stalls: [], requests: [],
  appliance: null, waitingSince: null, sourceBuffers: []};
const t0 = performance.now();
function now() { return (performance.now() - t0) / 1000; }
function logLine(kind, text) {
  oca.events.push({t: now(), kind: kind, text: String(text)});
  const el = document.getElementById('log');
  el.textContent = oca.events.slice(-40).map(e => e.t.toFixed(2).padStart(7) + ' ' + e.kind + ' ' + e.text).join('\n');
  el.scrollTop = el.scrollHeight;
}
function applianceOf(url) {
  try { const u = new URL(url, location.href); return C.appliances[u.origin] || u.host; } catch (e) { return '?'; }
}
function request(url, type, location) {
  const a = location || applianceOf(url);
  oca.requests.push({t: now(), appliance: a, type: type, url: String(url).split('?')[0]});
  if (a !== oca.appliance) { logLine('appliance', (oca.appliance || '-') + ' -> ' + a); oca.appliance = a; }
}
function error(text, fatal) {
  const e = {t: now(), text: String(text), fatal: !!fatal};
  oca.errors.push(e);
  if (fatal) oca.fatal.push(e);
  logLine(fatal ? 'FATAL' : 'error', text);
}
// Every SourceBuffer either player makes, to read each one's buffer ahead.
const addSB = MediaSource.prototype.addSourceBuffer;
MediaSource.prototype.addSourceBuffer = function (mime) {
  const sb = addSB.call(this, mime);
  oca.sourceBuffers.push({mime: mime, sb: sb});
  return sb;
};
function aheadOf(ranges) {
  const t = v.currentTime;
  for (let i = 0; i < ranges.length; i++) if (ranges.start(i) <= t + 0.1 && t < ranges.end(i)) return ranges.end(i) - t;
  return 0;
}
oca.buffers = function () {
  const out = {};
  for (const s of oca.sourceBuffers) {
    let ahead = 0, end = 0;
    try { ahead = aheadOf(s.sb.buffered); end = s.sb.buffered.length ? s.sb.buffered.end(s.sb.buffered.length - 1) : 0; } catch (e) {}
    out[s.mime.split('/')[0]] = {ahead: ahead, end: end};
  }
  return out;
};
oca.longestStall = function () {
  const open = oca.waitingSince === null ? 0 : now() - oca.waitingSince;
  return Math.max(open, ...oca.stalls.map(s => s.seconds), 0);
};
v.addEventListener('waiting', () => { if (oca.started && !v.seeking && oca.waitingSince === null) oca.waitingSince = now(); });
v.addEventListener('seeking', () => { oca.waitingSince = null; });
v.addEventListener('playing', () => {
  if (!oca.started) { oca.started = true; logLine('playing', 'started'); }
  if (oca.waitingSince !== null) {
    const d = now() - oca.waitingSince;
    oca.stalls.push({t: oca.waitingSince, seconds: d});
    logLine('stall', d.toFixed(2) + ' s');
    oca.waitingSince = null;
  }
});
v.addEventListener('error', () => error('video element: ' + (v.error ? v.error.code + ' ' + v.error.message : '?'), true));
function show() {
  const e = oca.videoEncode ? oca.videoEncode() : null;
  document.getElementById('s-appliance').textContent = oca.appliance || '-';
  document.getElementById('s-encode').textContent = e ? e.id + ' (' + Math.round(e.bandwidth / 1000) + ' kb/s)' : '-';
  const b = oca.buffers();
  document.getElementById('s-buffer').textContent = Object.keys(b).map(k => k + ' ' + b[k].ahead.toFixed(1) + ' s').join(', ') || '-';
  document.getElementById('s-time').textContent = v.currentTime.toFixed(1) + ' / ' + (v.duration || 0).toFixed(1) + ' s';
  document.getElementById('s-stall').textContent = oca.longestStall().toFixed(2) + ' s';
}
setInterval(show, 250);
function ocaNoLib() { error('player library ' + C.lib + ' did not load: run npm ci --prefix steering/static on the steering host', true); }
function retryPolicy(ttfb) {
  const retry = {maxNumRetry: C.retries, retryDelayMs: C.retry_ms, maxRetryDelayMs: C.retry_ms};
  return {default: {maxTimeToFirstByteMs: ttfb, maxLoadTimeMs: C.load_ms, timeoutRetry: retry, errorRetry: retry}};
}
function startHls() {
  if (!Hls.isSupported()) { error('hls.js: MediaSource is not supported here', true); return; }
  const buffer = {maxBufferLength: C.buffer_s, maxMaxBufferLength: C.buffer_s, backBufferLength: 30};
  const hls = oca.hls = new Hls(C.tuning === 'defaults' ? buffer : Object.assign(buffer, {
    fragLoadPolicy: retryPolicy(C.ttfb_ms), playlistLoadPolicy: retryPolicy(C.ttfb_ms),
    manifestLoadPolicy: retryPolicy(C.ttfb_ms), steeringManifestLoadPolicy: retryPolicy(C.ttfb_ms),
  }));
  hls.on(Hls.Events.FRAG_LOADED, (_, d) => request(d.frag.url, d.frag.type, null));
  hls.on(Hls.Events.ERROR, (_, d) => error('hls.js ' + d.type + ' ' + d.details + (d.frag ? ' ' + applianceOf(d.frag.url) : ''), d.fatal));
  hls.on(Hls.Events.LEVEL_SWITCHED, (_, d) => { const l = hls.levels[d.level]; logLine('encode', l ? l.height + 'p ' + l.bitrate : d.level); });
  hls.on(Hls.Events.STEERING_MANIFEST_LOADED, (_, d) => logLine('steering', JSON.stringify(d.steeringManifest['PATHWAY-PRIORITY'])));
  oca.videoEncode = function () {
    const l = hls.levels[hls.currentLevel];
    if (!l) return null;
    const e = C.encodes.find(x => x.height === l.height);
    return {id: e ? e.id : String(l.height), bandwidth: e ? e.bandwidth : l.bitrate, height: l.height};
  };
  hls.loadSource(C.manifest);
  hls.attachMedia(v);
}
function startDash() {
  const r = C.retries, d = C.retry_ms;
  const kinds = ['MPD', 'XLinkExpansion', 'MediaSegment', 'InitializationSegment', 'BitstreamSwitchingSegment', 'IndexSegment', 'FragmentInfoSegment', 'other'];
  const attempts = {}, intervals = {};
  for (const k of kinds) { attempts[k] = r; intervals[k] = d; }
  const p = oca.dash = dashjs.MediaPlayer().create();
  const buffer = {bufferTimeDefault: C.buffer_s, bufferTimeAtTopQuality: C.buffer_s, bufferTimeAtTopQualityLongForm: C.buffer_s};
  p.updateSettings({streaming: C.tuning === 'defaults' ? {buffer: buffer} : {
    buffer: buffer, fragmentRequestTimeout: C.dash_load_ms, fragmentRequestProgressTimeout: C.ttfb_ms, manifestRequestTimeout: C.load_ms,
    retryAttempts: attempts, retryIntervals: intervals, applyContentSteering: true,
  }});
  const E = dashjs.MediaPlayer.events;
  // Download errors are retried and failed over by dash.js itself: not fatal.
  const retried = new Set([17, 18, 25, 26, 27, 28]);
  // Failed loads complete too (with e.error): only loads that brought data count as requests served.
  p.on(E.FRAGMENT_LOADING_COMPLETED, e => { if (e.request && !e.error) request(e.request.url, e.request.mediaType, e.request.serviceLocation); });
  p.on(E.ERROR, e => { const x = e.error || {}; error('dash.js ' + x.code + ' ' + (x.message || ''), !retried.has(x.code)); });
  p.on(E.QUALITY_CHANGE_RENDERED, e => { if (e.mediaType === 'video' && e.newRepresentation) logLine('encode', e.newRepresentation.id); });
  p.on(E.CONTENT_STEERING_REQUEST_COMPLETED, e => logLine('steering', JSON.stringify((e.currentSteeringResponseData || {}).pathwayPriority || '')));
  oca.videoEncode = function () {
    const rep = p.getCurrentRepresentationForType('video');
    return rep ? {id: rep.id, bandwidth: rep.bandwidth, height: rep.height} : null;
  };
  p.initialize(v, C.manifest, true);
}
function ocaStart() {
  logLine('start', C.player + ' ' + C.manifest);
  try { if (C.player === 'hls') startHls(); else startDash(); } catch (e) { error('start: ' + e, true); }
}
"""
