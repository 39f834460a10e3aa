"""The browser viewer of ``vosrt live``: an aiohttp server around a :class:`LivePipeline`.

Routes (all refused with 401 without the token when one is set):

    GET  /                 the page (index.html beside this module; plain HTML and JS)
    GET  /ws               WebSocket: binary messages are JPEGs of the newest overlay, text messages
                           the pipeline's state as JSON (FPS, latency, dropped frames, objects …)
    GET  /api/state        the same state as JSON
    GET  /api/latest.jpg   the newest overlay as a JPEG
    POST /api/select       {"box": [x, y, w, h]} or {"point": [x, y]} in frame pixels, optional "id"
    POST /api/remove       {"id": n}
    POST /api/pause | /api/resume | /api/reset | /api/snapshot
    POST /api/record       {"on": true | false}

Security: the server binds to loopback unless told otherwise, and any other address needs a token
(``serve`` refuses to start without one). The token is accepted as ``?token=`` (the printed URL
carries it), the ``X-Vosrt-Token`` header, or the cookie the page gets on first load, and compared in
constant time. Requests that change state must come from the page's own origin (an ``Origin`` header
naming another site is refused), so another web page cannot drive a viewer on loopback; and a viewer
on loopback answers only requests whose ``Host`` is a loopback name or address, so a page whose own name
an attacker points at 127.0.0.1 (DNS rebinding) gets nothing. An empty token counts as none. No request
names a file: snapshots and recordings go to the pipeline's save folder under names it chooses.
Stopping never waits on a page that stopped reading: sockets are closed at once, and aborted after
:data:`CLOSE_TIMEOUT` seconds; a second signal ends the process at once.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import json
import math
import os
import signal
import sys
import weakref
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from vosrt.sdk.errors import UserError
from vosrt.sdk.live.pipeline import LivePipeline

PAGE = Path(__file__).with_name("index.html")
COOKIE = "vosrt_token"
LOOPBACK_NAMES = ("localhost",)
CLOSE_TIMEOUT = 2.0        # seconds a page gets to take the close frame when the server stops


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


WILDCARD_HOSTS = ("0.0.0.0", "::", "")   # listen on every interface


def _url(host: str, port: int, token: str | None) -> str:
    if ":" in host:   # an IPv6 address goes in brackets in a URL
        host = f"[{host}]"
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


def machine_addresses(versions: tuple = (4, 6)) -> list[str]:
    """This machine's addresses that other machines can reach it at (no loopback, link-local or unspecified
    ones), from the standard library only: the addresses its hostname resolves to, and the source address of
    the default route of each IP version (a UDP socket's connect sends nothing). Of the IP ``versions``, IPv4
    first."""
    import socket

    found = []
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:
        pass
    probes = [(family, probe) for family, probe, version in ((socket.AF_INET, "192.0.2.1", 4),
                                                              (socket.AF_INET6, "2001:db8::1", 6)) if version in versions]
    for family, probe in probes:   # documentation-only addresses: never reached, only routed
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                udp.connect((probe, 9))
                found.append(udp.getsockname()[0])
        except OSError:
            pass
    addresses = []
    for text in found:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if address.is_loopback or address.is_link_local or address.is_unspecified or address.version not in versions:
            continue
        if str(address) not in addresses:
            addresses.append(str(address))
    return sorted(addresses, key=lambda a: ipaddress.ip_address(a).version)


def page_urls(host: str, port: int, token: str | None = None) -> list[str]:
    """The viewer's URLs: first the one to open on this machine; then, for a server listening on every
    interface (``--host 0.0.0.0`` or ``::``), the ones to open from other machines: this machine's hostname
    and its non-loopback addresses of the IP version listened on (``::`` listens on IPv6 only: asyncio sets
    IPV6_V6ONLY, so 127.0.0.1 does not answer there)."""
    import socket

    if host not in WILDCARD_HOSTS:
        return [_url(host, port, token)]
    urls = [_url("127.0.0.1" if host != "::" else "::1", port, token)]
    name = socket.gethostname()
    if name and not is_loopback(name):
        urls.append(_url(name, port, token))
    versions = {"0.0.0.0": (4,), "::": (6,)}.get(host, (4, 6))
    urls += [_url(address, port, token) for address in machine_addresses(versions)]
    return urls


class FrameHub:
    """Wakes every WebSocket sender when the pipeline finished a frame (called from its thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.event = asyncio.Event()

    def notify_threadsafe(self) -> None:
        self.loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        event, self.event = self.event, asyncio.Event()
        event.set()

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Until ``event`` (taken from :attr:`event` *before* sending, so no frame is missed) or timeout."""
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


def _token_of(request: web.Request) -> str | None:
    return (request.query.get("token") or request.headers.get("X-Vosrt-Token")
            or request.cookies.get(COOKIE))


def make_app(pipeline: LivePipeline, token: str | None = None, loopback: bool = True) -> web.Application:
    """The aiohttp application for ``pipeline`` (see the module docstring). ``loopback``: the server listens
    on loopback only, so requests must name a loopback host."""
    token = token or None

    @web.middleware
    async def guard(request: web.Request, handler):
        if loopback and "Host" in request.headers:
            name = urlsplit("//" + request.headers["Host"]).hostname or ""
            if not is_loopback(name):
                raise web.HTTPMisdirectedRequest(text=f"vosrt live: this viewer answers on localhost only, not as "
                                                      f"{request.headers['Host']}\n")
        if token is not None:
            given = _token_of(request) or ""
            # the header's bytes as they came (aiohttp decodes them as UTF-8 with surrogateescape): a token that is
            # no UTF-8 failed .encode() with a 500 and a traceback, for any client
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
                raise web.HTTPUnauthorized(text="vosrt live: this viewer needs its access token; open the URL "
                                                "printed at start (it ends in ?token=...)\n")
        origin = request.headers.get("Origin")
        if request.method != "GET" or request.path == "/ws":
            if origin and urlsplit(origin).netloc != request.host:
                raise web.HTTPForbidden(text=f"vosrt live: requests from {origin} are refused\n")
        response = await handler(request)
        if token is not None and request.path == "/" and isinstance(response, web.Response):
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    hub: FrameHub | None = None
    sockets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # WebSocket -> its request

    async def close(ws: web.WebSocketResponse, request: web.Request) -> None:
        try:
            await asyncio.wait_for(ws.close(code=WSCloseCode.GOING_AWAY, message=b"vosrt live stopped",
                                            drain=False), CLOSE_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        if request.transport is not None and not request.transport.is_closing():
            request.transport.abort()     # a page that stopped reading: its sends would block forever

    async def on_shutdown(app):   # an open page must not hold the server's exit up
        await asyncio.gather(*(close(ws, request) for ws, request in list(sockets.items())))

    async def on_startup(app):
        nonlocal hub
        hub = FrameHub(asyncio.get_running_loop())
        pipeline.listeners.append(hub.notify_threadsafe)

    async def page(request):
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def state(request):
        return web.json_response(pipeline.state())

    async def latest(request):
        jpeg = pipeline.latest_jpeg
        if jpeg is None:
            raise web.HTTPServiceUnavailable(text="no frame yet\n")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def websocket(request):
        ws = web.WebSocketResponse(heartbeat=20)
        try:
            await ws.prepare(request)
        except ConnectionError:   # the page went away during the handshake (a reload, a closed tab)
            return _gone()
        sockets[ws] = request
        reader = asyncio.create_task(_drain(ws))
        sent = None
        try:
            while not ws.closed and not reader.done():
                newer = hub.event
                jpeg = pipeline.latest_jpeg
                if jpeg is not None and jpeg is not sent:
                    await ws.send_bytes(jpeg)
                    sent = jpeg
                await ws.send_str(json.dumps(pipeline.state()))
                await hub.wait(newer, 0.5)
        except (ConnectionError, RuntimeError):   # the page went away (aiohttp: "Connection lost" and the like)
            pass
        finally:
            reader.cancel()
        return ws

    async def command(request):
        name = request.match_info["name"]
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:   # not JSON, not UTF-8, or an integer too long to convert
            raise web.HTTPBadRequest(text="expected a JSON body\n") from None
        except ConnectionError:   # the client went away before its body arrived
            return _gone()
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object\n")
        try:
            reply = _command(pipeline, name, body)
        except UserError as err:   # answered to the page that asked only: the others did not ask
            return web.json_response({"ok": False, "error": str(err)}, status=400)
        return web.json_response({"ok": True, **reply})

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", page)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/latest.jpg", latest)
    app.router.add_post("/api/{name}", command)
    return app


def _gone() -> web.Response:
    """The answer of a handler whose client went away: a ConnectionError raised out of a handler is logged by
    aiohttp as "Error handling request" with its traceback, while writing this response to the lost connection
    fails quietly (aiohttp drops it). The WebSocketResponse itself is not returned: half prepared, its closing
    raises a RuntimeError that aiohttp logs too. (499: nginx's "client closed request"; it reaches no one.)"""
    return web.Response(status=499)


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the page sends, so close frames are seen."""
    async for message in ws:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


def _number(value, what: str) -> float:
    # JSON as Python reads it also has NaN and Infinity (and 1e309 overflows to inf)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{what}: expected a finite number, got {value!r}")
    if abs(value) > 1e9:
        raise UserError(f"{what}: {value!r} is far outside any frame")
    return float(value)


def _command(pipeline: LivePipeline, name: str, body: dict) -> dict:
    object_id = body.get("id")
    if object_id is not None and (isinstance(object_id, bool) or not isinstance(object_id, int)):
        raise UserError(f"id: expected a whole number, got {object_id!r}")
    if name == "select":
        if isinstance(body.get("box"), list) and len(body["box"]) == 4:
            box = [_number(v, "box") for v in body["box"]]
            return {"id": pipeline.select_box(box, object_id)}
        if isinstance(body.get("point"), list) and len(body["point"]) == 2:
            x, y = (_number(v, "point") for v in body["point"])
            return {"id": pipeline.select_point(x, y, object_id)}
        raise UserError('select: expected {"box": [x, y, w, h]} or {"point": [x, y]}')
    if name == "remove":
        if object_id is None:
            raise UserError('remove: expected {"id": n}')
        pipeline.remove(object_id)
        return {"id": object_id}
    if name == "pause":
        pipeline.pause()
        return {}
    if name == "resume":
        pipeline.resume()
        return {}
    if name == "reset":
        pipeline.reset()
        return {}
    if name == "snapshot":
        return {"files": pipeline.snapshot()}
    if name == "record":
        on = body.get("on", True)
        if not isinstance(on, bool):   # "false" is a string, and was taken as true: a recording started
            raise web.HTTPBadRequest(text=f"record: 'on' takes true or false, got {json.dumps(on)}\n")
        if on:
            return {"file": pipeline.start_recording()}
        return {"file": pipeline.stop_recording()}
    raise web.HTTPNotFound(text=f"no command {name}\n")


async def serve(pipeline: LivePipeline, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                on_ready=None) -> None:
    """Serve the viewer and run the pipeline until SIGINT, SIGTERM or SIGHUP; then stop the pipeline
    (finishing its outputs) and the server. ``on_ready(url)`` is called once the port is open, with the URL to
    open on this machine (:func:`page_urls` gives those for other machines too)."""
    token = token or None
    if token is None and not is_loopback(host):
        raise UserError(f"--host {host}: binding beyond loopback needs an access token: pass token= (on the "
                        f"command line --token, or leave it out and vosrt live generates one)")
    app = make_app(pipeline, token, loopback=is_loopback(host))
    # shutdown_timeout on the runner (aiohttp >= 3.9): on the site it is deprecated and goes in aiohttp 4
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=CLOSE_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        if err.errno in (errno.EADDRINUSE, errno.EACCES):   # taken, or below 1024 without the privilege
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror or err}); "
                            f"pick another port with --port") from None
        # a name that does not resolve, an address of another machine: another port would not help
        raise UserError(f"--host {host}: cannot listen on {host}:{port} ({err.strerror or err}); give an address "
                        f"of this machine (127.0.0.1, the default; 0.0.0.0 for all its interfaces)") from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():   # the second one: do not wait for anything any more
            print(f"\nvosrt live: {sig.name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + sig.value)
        stop.set()

    handled = False
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            handled = True
        except (NotImplementedError, RuntimeError, ValueError):
            pass   # not the main thread, or a platform without these signals
    thread = pipeline.start()
    if on_ready is not None:
        on_ready(page_urls(host, port, token)[0])

    async def report_end() -> None:
        """Say so in the terminal when the stream ends by itself (a file's end, a failed source, an error, --frames):
        the server stays up for the page, and said nothing until Ctrl-C."""
        await loop.run_in_executor(None, thread.join)
        if stop.is_set():
            return
        if pipeline.error or pipeline.source.ended:
            why = pipeline.error or pipeline.source.status
        else:
            why = f"stopped after {pipeline.frames} frames"
        print(f"vosrt live: {why}; the page stays up with the last frame (Ctrl-C to stop)", file=sys.stderr, flush=True)

    watcher = asyncio.create_task(report_end())
    try:
        await stop.wait()
    finally:
        pipeline.stop()
        # The thread ends after the step in progress (a slow model's, or a clip family's flush, can take
        # long): the session is closed after this, and closing it under a running step is undefined. A
        # second signal exits at once (on_signal).
        await loop.run_in_executor(None, thread.join, 5)
        if thread.is_alive():
            print("vosrt live: waiting for the frame in progress to finish"
                  + (" (signal again to exit now)" if handled else ""), file=sys.stderr, flush=True)
            await loop.run_in_executor(None, thread.join)
        await watcher
        await runner.cleanup()
