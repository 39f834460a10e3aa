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
naming another site is refused), so another web page cannot drive a viewer on loopback. No request
names a file: snapshots and recordings go to the pipeline's save folder under names it chooses.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import signal
import weakref
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web

from vosrt.sdk.errors import UserError
from vosrt.sdk.live.pipeline import LivePipeline

PAGE = Path(__file__).with_name("index.html")
COOKIE = "vosrt_token"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def make_app(pipeline: LivePipeline, token: str | None = None) -> web.Application:
    """The aiohttp application for ``pipeline`` (see the module docstring)."""

    @web.middleware
    async def guard(request: web.Request, handler):
        if token is not None:
            given = _token_of(request) or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
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
    sockets: weakref.WeakSet = weakref.WeakSet()

    async def on_shutdown(app):   # an open page must not hold the server's exit up
        for ws in set(sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"vosrt live stopped")

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
        await ws.prepare(request)
        sockets.add(ws)
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
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            reader.cancel()
        return ws

    async def command(request):
        name = request.match_info["name"]
        try:
            body = await request.json() if request.can_read_body else {}
        except json.JSONDecodeError:
            raise web.HTTPBadRequest(text="expected a JSON body\n") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object\n")
        try:
            reply = _command(pipeline, name, body)
        except UserError as err:
            pipeline.message = str(err)
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


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the page sends, so close frames are seen."""
    async for message in ws:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{what}: expected a number, got {value!r}")
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
        if body.get("on", True):
            return {"file": pipeline.start_recording()}
        return {"file": pipeline.stop_recording()}
    raise web.HTTPNotFound(text=f"no command {name}\n")


async def serve(pipeline: LivePipeline, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                on_ready=None) -> None:
    """Serve the viewer and run the pipeline until SIGINT, SIGTERM or SIGHUP; then stop the pipeline
    (finishing its outputs) and the server. ``on_ready(url)`` is called once the port is open."""
    if token is None and not is_loopback(host):
        raise UserError(f"--host {host}: binding beyond loopback needs an access token; give --token or "
                        f"let vosrt generate one (omit --no-token)")
    app = make_app(pipeline, token)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise UserError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror or err}); "
                        f"pick another port with --port") from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass   # not the main thread, or a platform without these signals
    thread = pipeline.start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    if on_ready is not None:
        on_ready(url)
    try:
        await stop.wait()
    finally:
        pipeline.stop()
        await loop.run_in_executor(None, thread.join, 30)
        await runner.cleanup()
