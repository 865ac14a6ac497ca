"""Fake appliances for steering tests: real sockets on 127.0.0.x, answers chosen by the test.

A real `oca-server` cannot be made to answer with a wrong type, a 50 MB
body or a trickle, so steering's hostile-peer tests poll these instead.
Each `Fake` answers `/health`, `/inventory?since=` and `/routes?since=`
like an appliance (full, delta-free "unchanged" when the generation is the
one asked about), unless the test puts a hostile answer in `fake.hostile`
for that path. All fakes are served by one aiohttp server running its own
event loop in a thread; a fake is picked by the local address the
connection arrived on. Tests may change a fake's fields while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import json
import threading
import warnings
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEALTHY_HEALTH = {"status": "ok", "conditions": [], "load": {"nic_utilisation": 0.1, "bytes_per_s": 1000.0, "cpu_percent": 3.0}}


@dataclass
class Fake:
    aid: str
    host: str
    site: str
    routes: list = field(default_factory=list)
    holds: list = field(default_factory=list)
    routes_generation: int = 1
    inventory_generation: int = 1
    hostile: dict[str, Answer] = field(default_factory=dict)  # path -> answer
    requests: int = 0
    authorization: str | None = None  # the last request's Authorization header

    def set_routes(self, routes: list) -> None:
        self.routes = routes
        self.routes_generation += 1


# ---------------------------------------------------------------- hostile answers


def json_answer(doc) -> Answer:
    body = json.dumps(doc).encode()

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    return answer


def raw_answer(body: bytes, status: int = 200, headers: dict | None = None) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, headers=headers, content_type="application/json")

    return answer


def chunked_answer(total_bytes: int, chunk: bytes = b" " * (1 << 20)) -> Answer:
    """`total_bytes` of JSON-looking bytes with no Content-Length (chunked)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write(b"[")
            while sent < total_bytes:
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
        return resp

    return answer


def trickle_answer(interval_s: float = 0.1, limit: int = 600) -> Answer:
    """A valid-looking start, then one byte every `interval_s`."""

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write(b'{"status": "ok"')
            for _ in range(limit):
                await asyncio.sleep(interval_s)
                await resp.write(b" ")
        return resp

    return answer


def gzip_answer(doc) -> Answer:
    body = gzip.compress(json.dumps(doc).encode())
    return raw_answer(body, headers={"Content-Encoding": "gzip"})


# ---------------------------------------------------------------- the server


class FakeFleet:
    """Serves every fake on its own 127.0.0.x address and one shared port."""

    def __init__(self, fakes: list[Fake], port: int):
        self.fakes = {f.host: f for f in fakes}
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-appliances", daemon=True)
        self._runner: web.AppRunner | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._handlers: list = []  # every connection's protocol, to close what shutdown leaves open

    def url(self, fake: Fake) -> str:
        return f"http://{fake.host}:{self.port}"

    def _fake(self, request: web.Request) -> Fake:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        fake = self.fakes[sockname[0]]
        fake.requests += 1
        fake.authorization = request.headers.get("Authorization")
        return fake

    async def _health(self, request: web.Request) -> web.StreamResponse:
        fake = self._fake(request)
        if "/health" in fake.hostile:
            return await fake.hostile["/health"](request)
        return web.json_response({**HEALTHY_HEALTH, "appliance": fake.aid, "site": fake.site})

    async def _inventory(self, request: web.Request) -> web.StreamResponse:
        fake = self._fake(request)
        if "/inventory" in fake.hostile:
            return await fake.hostile["/inventory"](request)
        since = request.query.get("since")
        gen = fake.inventory_generation
        if since == str(gen):
            return web.json_response({"appliance": fake.aid, "generation": gen, "since": gen, "kind": "unchanged"})
        return web.json_response({"appliance": fake.aid, "generation": gen, "kind": "full", "count": len(fake.holds), "ids": fake.holds})

    async def _routes(self, request: web.Request) -> web.StreamResponse:
        fake = self._fake(request)
        if "/routes" in fake.hostile:
            return await fake.hostile["/routes"](request)
        gen = fake.routes_generation
        doc = {"appliance": fake.aid, "site": fake.site, "generation": gen}
        if request.query.get("since") == str(gen):
            return web.json_response({**doc, "kind": "unchanged"})
        return web.json_response({**doc, "kind": "full", "prefixes": fake.routes})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/inventory", self._inventory)
        app.router.add_get("/routes", self._routes)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None

        def protocol():
            handler = server()
            self._handlers.append(handler)
            return handler

        for host in self.fakes:
            self._servers.append(await self._loop.create_server(protocol, host, self.port, reuse_address=True))

    async def _stop(self) -> None:
        # Every connection's transport is aborted here (a no-op on one already
        # closed), so none outlives the loop: one accepted while the servers
        # closed (steering polls until it is stopped) never reaches aiohttp's
        # shutdown, and aiohttp's shutdown forgets a transport while it closes
        # (a big body still queued), whose close then never ends once the loop
        # stops. So the transports are taken before that shutdown, and after
        # it; an accepted socket reaches connection_made a loop pass or two
        # after the accept, so those passes run first.
        for srv in self._servers:
            srv.close()
        for _ in range(10):
            await asyncio.sleep(0)
        transports = [h.transport for h in self._handlers if h.transport is not None]
        if self._runner is not None:
            await self._runner.cleanup()
        transports += [h.transport for h in self._handlers if h.transport is not None]
        # A handler forgets its transport when it closes it itself (a reply
        # with Connection: close, a keep-alive timeout) even if a body is still
        # queued for a client that stopped reading, and such a close never
        # ends. The selector loop keeps every socket transport it made, by fd
        # (a private table of asyncio's, read only here, in a test helper):
        # aborting those catches them all.
        transports += list(getattr(self._loop, "_transports", {}).values())
        for transport in transports:
            transport.abort()
        self._handlers.clear()
        for _ in range(10):
            await asyncio.sleep(0)

    def start(self) -> "FakeFleet":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(15)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)
        self._loop.close()
        # The fakes stand in for other machines; what they leave behind is not
        # the product's. A transport that still escaped the aborts above (now
        # garbage, its loop closed) is collected here, with its
        # ResourceWarning, rather than in whichever later test the collector
        # happens to run, where filterwarnings=error would fail that test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
