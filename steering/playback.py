"""Playback routes of the steering service: DASH/HLS manifests, Content Steering answers, /watch.

Rules kept here:
- A title's pathways come from the pure `steering.ranking.decide` with the
  title as the content: an appliance is a candidate when it serves new
  clients and holds every file of the title (`steering.catalog`), so the
  same ranking, content-awareness, second-site and fallback rules as
  /steer apply, and rendezvous hashing keeps one title on one appliance.
- Who the client is: `steering.access.client_address` (the `client=`
  trust rules of /steer). A steering request also believes the client its
  URL carries when the URL's session is valid (`steering.content_steering`),
  since the manifest that made it was made for that client.
- Signed URLs in a manifest expire `title duration + [play] url_margin_s`
  after it is made; a steering answer carries no URL, so re-ranking never
  invalidates one handed out.
- Every manifest and steering answer is a decision: counted, kept in the
  recent list, and logged (sampled) as one JSON line with `kind` (`mpd`,
  `m3u8`, `steering`), the player's pathway and throughput when it sent them.
- Player libraries are served only from `steering/static/node_modules`,
  two fixed files; nothing from the request becomes a path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from oca.signing import sign_query
from steering.access import client_address
from steering.catalog import Title, titles_held
from steering.content_steering import parse_player_query, session_valid, steering_answer, steering_url
from steering.dash import render_mpd
from steering.hls import render_media, render_multivariant
from steering.messages import MessageError
from steering.ranking import NO_CANDIDATES, Live, decide
from steering.watch_page import TUNINGS, render_index, render_player

if TYPE_CHECKING:
    from steering.service import Steering

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "node_modules")
LIB_FILES = {
    "dash.all.min.js": os.path.join(STATIC, "dashjs", "dist", "modern", "umd", "dash.all.min.js"),
    "hls.min.js": os.path.join(STATIC, "hls.js", "dist", "hls.min.js"),
}
NO_STORE = {"Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"}


class Playback:
    def __init__(self, steering: "Steering"):
        self.s = steering
        self._mixed_warned: set[str] = set()

    # ------------------------------------------------------------ decisions

    def _pathways(self, client: str, title: Title) -> tuple[str, str | None, list]:
        """(result, prefix, picks) for `title` and this client."""
        s = self.s
        addr = ipaddress.ip_address(client)
        matches = s.matches_int(addr.version, int(addr))  # a worker's routes are in the fleet store, not its table
        s.fresh_states()
        live = {}
        for a in s.registry:
            st = s.poller.states.get(a.appliance_id)
            k = s.poller.known.get(a.appliance_id)
            if st is not None and k is not None:
                held = titles_held({title.name: title}, k.inventory)
                live[a.appliance_id] = Live(st.serves_new_clients, st.overloaded, held)
        d = decide(title.name, matches, s.registry, live, max_urls=s.cfg.max_urls, fallback_sites=s.cfg.fallback_sites)
        return d.result, d.prefix, list(d.picks)

    def _record(self, kind: str, client: str, title: str, result: str, prefix: str | None, appliances: list[str], **extra) -> None:
        s = self.s
        s.results[result] += 1
        s.m_decisions.labels(result).inc()
        s.recent.append((time.time(), client, f"{title} ({kind})", result, appliances))
        if s._log_fd >= 0 and (s.cfg.server.decision_log_sample >= 1 or s._rng.random() < s.cfg.server.decision_log_sample):
            doc = {"t": round(time.time(), 3), "kind": kind, "client": client, "title": title, "result": result,
                   "prefix": prefix, "appliances": appliances, **{k: v for k, v in extra.items() if v is not None}}
            try:
                os.write(s._log_fd, (json.dumps(doc, separators=(",", ":")) + "\n").encode())
            except OSError:
                pass

    def _secret(self) -> bytes | None:
        key_id = self.s.cfg.signing.key_id
        return self.s.secrets[key_id] if key_id is not None else None

    def _signed(self, aid: str, content_id: str, expiry_s: int) -> str:
        s = self.s
        base = next(a.url for a in s.registry if a.appliance_id == aid)
        key_id = s.cfg.signing.key_id
        query = "?" + sign_query(content_id, expiry_s, key_id, s.secrets[key_id]) if key_id is not None else ""
        return f"{base}/content/{content_id}{query}"

    def _expiry(self, title: Title) -> int:
        return int(time.time() + title.duration_s + self.s.cfg.play.url_margin_s) + 1

    @staticmethod
    def _base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _client(self, request: web.Request, q_client: str | None) -> tuple[str, str]:
        s = self.s
        return client_address(request.remote or "", q_client, request.headers.getall("X-Forwarded-For", ()), s.proxies, s.callers)

    def _title(self, name: str) -> Title:
        title = self.s.content.titles.get(name)
        if title is None:
            raise web.HTTPNotFound(text=json.dumps({"error": f"title: {name[:80]!r} is not in the manifest"}),
                                   content_type="application/json", headers=NO_STORE)
        return title

    def _mixed(self, request: web.Request) -> list[str]:
        """Appliances a browser would refuse under this page (https page, http appliance); logged once each."""
        if request.scheme != "https":
            return []
        out = [a.appliance_id for a in self.s.registry if a.url.startswith("http://")]
        for aid in out:
            if aid not in self._mixed_warned:
                self._mixed_warned.add(aid)
                self.s.log(f"mixed content: /watch is served over https but appliance {aid} is plain http; browsers block its media")
        return out

    # ------------------------------------------------------------ handlers

    async def manifest(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        for suffix, kind in ((".mpd", "mpd"), (".m3u8", "m3u8")):
            if name.endswith(suffix):
                title = self._title(name[: -len(suffix)])
                break
        else:
            raise web.HTTPNotFound(text="/play/<title>.mpd or /play/<title>.m3u8", headers=NO_STORE)
        try:
            q = parse_player_query(request.query.items())
            client, source = self._client(request, q.client)
        except MessageError as exc:
            return web.json_response({"error": str(exc)}, status=400, headers=NO_STORE)
        result, prefix, picks = self._pathways(client, title)
        pathways = [p.appliance.appliance_id for p in picks]
        self._record(kind, client, title.name, result, prefix, pathways, client_from=source)
        if result == NO_CANDIDATES:
            return web.json_response({"error": "no appliance holds this title now", "result": result}, status=503, headers=NO_STORE)
        steer = steering_url(self._base(request), title.name, client, self._secret())
        if kind == "mpd":
            expiry = self._expiry(title)
            urls = {aid: {f.content_id: self._signed(aid, f.content_id, expiry) for f in title.files} for aid in pathways}
            body = render_mpd(title, pathways, urls, steer)
            return web.Response(text=body, content_type="application/dash+xml", headers=NO_STORE)
        media_uri = {aid: {f.content_id: f"/play/{title.name}/{aid}/{f.content_id}.m3u8" for f in title.files} for aid in pathways}
        body = render_multivariant(title, pathways, media_uri, steer)
        return web.Response(text=body, content_type="application/vnd.apple.mpegurl", headers=NO_STORE)

    async def media_playlist(self, request: web.Request) -> web.Response:
        title = self._title(request.match_info["title"])
        aid = request.match_info["appliance"]
        file = request.match_info["file"]
        cid = file[: -len(".m3u8")] if file.endswith(".m3u8") else None
        if cid is None or title.encode(cid) is None or all(a.appliance_id != aid for a in self.s.registry):
            raise web.HTTPNotFound(text="no such encode or appliance", headers=NO_STORE)
        body = render_media(title, cid, self._signed(aid, cid, self._expiry(title)))
        return web.Response(text=body, content_type="application/vnd.apple.mpegurl", headers=NO_STORE)

    async def steering(self, request: web.Request) -> web.Response:
        title = self._title(request.match_info["title"])
        try:
            q = parse_player_query(request.query.items())
            secret = self._secret()
            if q.client is not None and q.session is not None and secret is not None and session_valid(title.name, q.client, q.session, secret):
                client, source = str(ipaddress.ip_address(q.client)), "session"
            else:
                client, source = self._client(request, q.client)
        except (MessageError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400, headers=NO_STORE)
        result, prefix, picks = self._pathways(client, title)
        pathways = [p.appliance.appliance_id for p in picks]
        self._record("steering", client, title.name, result, prefix, pathways, client_from=source, standard=q.standard,
                     pathways=list(q.pathways) or None, throughput_bps=list(q.throughput_bps) or None)
        if result == NO_CANDIDATES:
            return web.json_response({"error": "no appliance holds this title now", "result": result}, status=503, headers=NO_STORE)
        reload_uri = steering_url(self._base(request), title.name, client, secret)
        return web.json_response(steering_answer(pathways, self.s.cfg.play.steering_ttl_s, reload_uri), headers=NO_STORE)

    async def watch_index(self, request: web.Request) -> web.Response:
        return web.Response(text=render_index(self.s.content.titles), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def watch(self, request: web.Request) -> web.Response:
        title = self._title(request.match_info["title"])
        player = request.query.get("player", "dash")
        if player not in ("dash", "hls"):
            return web.json_response({"error": "player: must be 'dash' or 'hls'"}, status=400, headers=NO_STORE)
        tuning = request.query.get("tuning", "fast")
        if tuning not in TUNINGS:
            return web.json_response({"error": f"tuning: must be one of {', '.join(TUNINGS)}"}, status=400, headers=NO_STORE)
        client = request.query.get("client")
        if client is not None:
            try:
                client = str(ipaddress.ip_address(client))
            except ValueError:
                return web.json_response({"error": "client: not an IP address"}, status=400, headers=NO_STORE)
        origins = {}
        for a in self.s.registry:
            parts = urlsplit(a.url)
            origins[f"{parts.scheme}://{parts.netloc}"] = a.appliance_id
        page = render_player(title, player, libs_present=all(os.path.isfile(p) for p in LIB_FILES.values()),
                             appliance_origins=origins, mixed_content=self._mixed(request), client=client, tuning=tuning)
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"})

    async def lib(self, request: web.Request) -> web.StreamResponse:
        path = LIB_FILES.get(request.match_info["name"])
        if path is None or not os.path.isfile(path):
            raise web.HTTPNotFound(text="player library not installed: run npm ci --prefix steering/static", headers=NO_STORE)
        return web.FileResponse(path, headers={"Cache-Control": "max-age=3600", "Content-Type": "text/javascript"})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/play/{name}", self.manifest)
        app.router.add_get("/play/{title}/steering.json", self.steering)
        app.router.add_get("/play/{title}/{appliance}/{file}", self.media_playlist)
        app.router.add_get("/watch", self.watch_index)
        app.router.add_get("/watch/", self.watch_index)
        app.router.add_get("/watch/lib/{name}", self.lib)
        app.router.add_get("/watch/{title}", self.watch)
