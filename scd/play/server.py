"""The web server of `scd play`: one page, one WebSocket, downloads of saved sessions.

Protocol (WebSocket at /ws; the page sends JSON text of at most MAX_MESSAGE_BYTES):
    page -> server  {"type": "action", "action": NAME}        the key held now, or "noop" when none is
                    {"type": "model", "model": "scd" | "dit"}  switch model (the world continues)
                    {"type": "reset"} / {"type": "reset", "episode": I}   restart from real context frames
                    {"type": "pause", "paused": BOOL}
                    {"type": "save"}                           write the session as an mp4
    server -> page  text {"type": "hello", actions, models, ...}  once, on connecting
                    text {"type": "status", session, model, episode, paused, ...} after every command
                    text {"type": "saved", url, name, frames}      the video is at url (GET /videos/NAME)
                    text {"type": "error", message}                a rejected message or a failure
                    binary frames: uint32 big-endian n, n bytes of JSON header (session, index, model, episode,
                    action, latency_ms, fps, width, height), then height*width*3 bytes of RGB pixels

Sessions: each page plays its own world (an engine session, opened when the page connects and closed when it
goes; the worlds of one model render in one batched step), or with shared_world every page shows and drives one.

Threads: the asyncio loop (HTTP, WebSockets) runs in the thread that calls `serve`; generation runs in the
engine's worker thread, which hands frames to the loop with call_soon_threadsafe. Every queue is bounded:
per page FRAME_QUEUE frames (the oldest frame is dropped for a page that falls behind) and MESSAGE_QUEUE
messages (a page that stops reading is disconnected); the engine's action and command queues (engine.py).
The server never opens a path the page names: videos are looked up among the files it wrote itself, and it
keeps at most MAX_VIDEOS of them (MAX_VIDEO_BYTES in all). Requests must name the server by its address (the Host
header), so another site cannot reach it through DNS rebinding. A page whose socket takes no data for
STALL_SECONDS is disconnected, and a visitor who finds every slot taken replaces a page that has stopped reading.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import queue
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from .engine import MODEL_LABELS, Engine, Frame

STATIC = Path(__file__).resolve().parent / "static"
MAX_MESSAGE_BYTES = 1024  # larger messages are answered with an error
HARD_MESSAGE_BYTES = 64 * 1024  # larger still: aiohttp closes the connection (1009, message too big)
FRAME_QUEUE = 3  # frames waiting to be sent to one page
MESSAGE_QUEUE = 64  # other messages waiting to be sent to one page
MAX_PAGES = 8  # WebSocket connections at once
STALL_SECONDS = 5.0  # a page whose socket has taken no data for this long stopped reading: it is disconnected
SEND_BUFFER = 64 * 1024  # kernel send buffer per page: bounded, so a page that stops reading blocks within frames
MAX_VIDEOS = 16  # saved session videos kept on disk (the oldest are deleted first) ...
MAX_VIDEO_BYTES = 512 * 1024**2  # ... and at most this many bytes of them
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}

# KeyboardEvent.code values per action name (matched case-insensitively). Crafter's letters follow Crafter's
# own human interface; movement is also on the arrow keys. Atari's basic actions are here too; any other
# action gets a key from SPARE_KEYS, so every game is playable.
ACTION_KEYS = {
    "move_left": ["KeyA", "ArrowLeft"], "move_right": ["KeyD", "ArrowRight"],
    "move_up": ["KeyW", "ArrowUp"], "move_down": ["KeyS", "ArrowDown"],
    "do": ["Space"], "sleep": ["Tab"],
    "place_stone": ["KeyR"], "place_table": ["KeyT"], "place_furnace": ["KeyF"], "place_plant": ["KeyP"],
    "make_wood_pickaxe": ["Digit1"], "make_stone_pickaxe": ["Digit2"], "make_iron_pickaxe": ["Digit3"],
    "make_wood_sword": ["Digit4"], "make_stone_sword": ["Digit5"], "make_iron_sword": ["Digit6"],
    "fire": ["Space"], "up": ["KeyW", "ArrowUp"], "down": ["KeyS", "ArrowDown"],
    "left": ["KeyA", "ArrowLeft"], "right": ["KeyD", "ArrowRight"],
}
SPARE_KEYS = [f"Digit{d}" for d in "1234567890"] + [f"Key{c}" for c in "QEZXCVBNMGHJKLUIOY"]
KEY_LABELS = {"ArrowLeft": "\u2190", "ArrowRight": "\u2192", "ArrowUp": "\u2191", "ArrowDown": "\u2193"}


def key_bindings(action_names) -> list[dict]:
    """[{id, name, keys (KeyboardEvent.code), label}] for every action; noop (id 0) is what no key means."""
    taken = {k for name in action_names for k in ACTION_KEYS.get(name.lower(), [])}
    spare = [k for k in SPARE_KEYS if k not in taken]
    bindings = []
    for i, name in enumerate(action_names):
        keys = [] if i == 0 else ACTION_KEYS.get(name.lower()) or spare[:1]
        spare = [k for k in spare if k not in keys]
        label = " / ".join(KEY_LABELS.get(k, k.removeprefix("Key").removeprefix("Digit")) for k in keys)
        bindings.append({"id": i, "name": name, "keys": keys, "label": label or "(no key)"})
    return bindings


class ProtocolError(ValueError):
    """A message from the page that the server rejects; the text goes back to the page."""


class Protocol:
    """Validates the page's messages: parse(text) -> (kind, value) or ProtocolError."""

    FIELDS = {"action": {"action"}, "model": {"model"}, "reset": {"episode"}, "pause": {"paused"}, "save": set()}

    def __init__(self, action_names, models, num_episodes: int):
        self.action_ids = {name: i for i, name in enumerate(action_names)}
        self.models, self.num_episodes = set(models), num_episodes

    def parse(self, text: str) -> tuple[str, object]:
        size = len(text.encode("utf-8", "replace"))
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProtocolError(f"malformed JSON: {err}") from None
        if not isinstance(msg, dict):
            raise ProtocolError(f"a message must be a JSON object, got {type(msg).__name__}")
        kind = msg.get("type")
        if not isinstance(kind, str) or kind not in self.FIELDS:
            raise ProtocolError(f"unknown message type {kind!r}; expected one of {sorted(self.FIELDS)}")
        extra = set(msg) - self.FIELDS[kind] - {"type"}
        if extra:
            raise ProtocolError(f"unexpected fields {sorted(extra)} in a {kind!r} message")
        if kind == "action":
            action = msg.get("action")
            if not isinstance(action, str):
                raise ProtocolError(f"'action' must be an action name (string), got {type(action).__name__}")
            if action not in self.action_ids:
                raise ProtocolError(f"unknown action {action!r}")
            return kind, self.action_ids[action]
        if kind == "model":
            model = msg.get("model")
            if not isinstance(model, str) or model not in self.models:
                raise ProtocolError(f"unknown model {model!r}; loaded: {sorted(self.models)}")
            return kind, model
        if kind == "reset":
            episode = msg.get("episode")
            if episode is None:
                return kind, None
            if isinstance(episode, bool) or not isinstance(episode, int):
                raise ProtocolError(f"'episode' must be an integer, got {type(episode).__name__}")
            if not 0 <= episode < self.num_episodes:
                raise ProtocolError(f"episode {episode} out of range 0..{self.num_episodes - 1}")
            return kind, episode
        if kind == "pause":
            paused = msg.get("paused")
            if not isinstance(paused, bool):
                raise ProtocolError(f"'paused' must be true or false, got {type(paused).__name__}")
            return kind, paused
        return kind, None  # save


def encode_frame(frame: Frame) -> bytes:
    """The binary message of one frame (see the module docstring)."""
    h, w = frame.pixels.shape[:2]
    header = json.dumps({"session": frame.session, "index": frame.index, "model": frame.model, "episode": frame.episode,
                         "action": frame.action, "latency_ms": round(frame.latency * 1000, 2),
                         "fps": round(frame.fps, 2), "width": w, "height": h}).encode()
    return struct.pack(">I", len(header)) + header + frame.pixels.tobytes()


class Page:
    """One connected page: its WebSocket and its bounded outbox, drained by its own sender task."""

    def __init__(self, ws: web.WebSocketResponse, session: int, transport: asyncio.Transport | None = None):
        self.ws, self.session, self.transport = ws, session, transport
        self.outbox: deque[tuple[bool, object]] = deque()  # (is_frame, bytes or message dict), in order
        self.frames = 0  # frames in the outbox
        self.wake = asyncio.Event()
        self.closing = False
        self.sending_since: float | None = None  # monotonic time the pending send began (None: none pending)

    def stalled_for(self) -> float:
        """Seconds the current send has waited for the page's socket to take data (0 when nothing waits)."""
        return 0.0 if self.sending_since is None else time.monotonic() - self.sending_since

    def evict(self) -> None:
        """Drop the connection at once: a page that does not read would never take a close frame either."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def push_frame(self, payload: bytes) -> None:
        if self.frames >= FRAME_QUEUE:  # behind: drop the oldest waiting frame, keep the newest
            for i, (is_frame, _) in enumerate(self.outbox):
                if is_frame:
                    del self.outbox[i]
                    self.frames -= 1
                    break
        self.outbox.append((True, payload))
        self.frames += 1
        self.wake.set()

    def push(self, message: dict) -> None:
        # A status is a snapshot and an error repeats: a newer status replaces a waiting one, and an error that is
        # already waiting is not queued twice, so a burst of commands cannot flood a page that reads.
        for i, (is_frame, waiting) in enumerate(self.outbox):
            if not is_frame and waiting.get("type") == message.get("type") and (
                    message.get("type") == "status" or waiting == message):
                del self.outbox[i]
                break
        if len(self.outbox) - self.frames >= MESSAGE_QUEUE:  # the page stopped reading
            if not self.closing:
                self.closing = True
                asyncio.ensure_future(self.ws.close(code=1008, message=b"too many unread messages"))
            return
        self.outbox.append((False, message))
        self.wake.set()

    def error(self, message: str) -> None:
        self.push({"type": "error", "message": message})

    async def send_loop(self) -> None:
        try:
            while not self.ws.closed:
                await self.wake.wait()
                self.wake.clear()
                while self.outbox and not self.ws.closed:
                    is_frame, item = self.outbox.popleft()
                    self.sending_since = time.monotonic()
                    if is_frame:
                        self.frames -= 1
                        await self.ws.send_bytes(item)
                    else:
                        await self.ws.send_str(json.dumps(item))
                    self.sending_since = None
        except ConnectionError:  # the page went away mid-send; the receive loop ends too
            pass


class PlayServer:
    """Serves the page for `engine` and runs the engine's worker while serving.

    serve() blocks until Ctrl-C / SIGTERM (in the main thread) or shutdown() (from any thread). Saved videos
    go to out_dir. Each page plays its own session, or with shared_world all pages play one. port 0 picks a free
    port; `url` and the `ready` event tell when and where it listens, and on_ready(url) is called once it does."""

    def __init__(self, engine: Engine, out_dir: str | Path, host: str = "127.0.0.1", port: int = 8765,
                 on_ready: Callable[[str], None] | None = None, stall_seconds: float = STALL_SECONDS,
                 shared_world: bool = False):
        self.engine, self.out_dir, self.host, self.port = engine, Path(out_dir), host, port
        self.shared_session = engine.open_session(watched=False) if shared_world else None
        self.stall_seconds = stall_seconds
        self.on_ready = on_ready
        self.protocol = Protocol(engine.action_names, engine.models, engine.context.num_episodes)
        self.pages: set[Page] = set()
        self.videos: dict[str, Path] = {}  # name -> file this server wrote
        self.saving = False
        self.ready = threading.Event()
        self.url: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- HTTP ----------------------------------------------------------------------------------------------
    def host_names(self) -> set[str]:
        """The names a request may give in its Host header: the bound address, and for loopback or all
        interfaces the names of this machine. A page served through another name (DNS rebinding) is refused."""
        names = {self.host.lower().strip("[]")}
        if names & LOOPBACK_NAMES or self.host in ("0.0.0.0", "::", ""):
            names |= LOOPBACK_NAMES
        if self.host in ("0.0.0.0", "::", ""):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return names

    def _host_allowed(self, host: str) -> bool:
        try:
            url = urlsplit(f"//{host}")
            name, port = (url.hostname or "").lower(), url.port
        except ValueError:  # a malformed port
            return False
        if port != self.port:
            return False
        if name in self.host_names():
            return True
        try:  # bound to all interfaces: any of this machine's addresses, given as a literal IP, is fine
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return self.host in ("0.0.0.0", "::", "")

    @web.middleware
    async def _check_host(self, request: web.Request, handler):
        if not self._host_allowed(request.host):
            raise web.HTTPMisdirectedRequest(text=f"this server answers to {sorted(self.host_names())} on port "
                                                  f"{self.port}, not to Host {request.host!r}")
        return await handler(request)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=HARD_MESSAGE_BYTES, middlewares=[self._check_host])
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/videos/{name}", self._video)
        app.router.add_static("/static/", STATIC)
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def _video(self, request: web.Request) -> web.StreamResponse:
        path = self.videos.get(request.match_info["name"])  # only files this server wrote
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text="no such video")
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})

    # -- WebSocket -----------------------------------------------------------------------------------------
    def hello(self, page: Page) -> dict:
        engine = self.engine
        models = [{"id": name, "label": MODEL_LABELS[name], "arch": m.config.arch,
                   "params": sum(p.numel() for p in m.parameters())} for name, m in engine.models.items()]
        return {**engine.status(page.session), "type": "hello", "actions": key_bindings(engine.action_names),
                "models": models, "steps": {name: engine.steps_for(name) for name in engine.models},
                "windows": engine.windows, "context": engine.context_frames, "max_message_bytes": MAX_MESSAGE_BYTES,
                "shared_world": self.shared_session is not None}

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != request.host:  # another site's page may not drive the model
            raise web.HTTPForbidden(text="cross-origin WebSocket refused")
        self._evict_stalled()
        if len(self.pages) >= MAX_PAGES:  # full: a new visitor replaces a page that has not read for a while
            stalled = max(self.pages, key=Page.stalled_for)
            if stalled.stalled_for() < self.stall_seconds / 5:  # every page reads: they keep their slots
                raise web.HTTPServiceUnavailable(text=f"at most {MAX_PAGES} pages at once")
            self._evict(stalled)
        ws = web.WebSocketResponse(max_msg_size=HARD_MESSAGE_BYTES)
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:  # without a bound the kernel would buffer megabytes for a page that never reads
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        if self.shared_session is None:
            session = self.engine.open_session()
        else:
            session = self.shared_session
            self.engine.set_watched(session, True)
        page = Page(ws, session, request.transport)
        self.pages.add(page)
        sender = asyncio.create_task(page.send_loop())
        page.push(self.hello(page))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._handle(page, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    page.error("binary messages are not accepted: send JSON text")
        finally:
            self._detach(page)
            sender.cancel()
        return ws

    def _detach(self, page: Page) -> None:
        """The page is gone: its own session closes; the shared one stops when nobody watches it."""
        if page not in self.pages:
            return
        self.pages.discard(page)
        if self.shared_session is None:
            self.engine.close_session(page.session)
        elif not any(p.session == page.session for p in self.pages):
            self.engine.set_watched(page.session, False)

    def _evict(self, page: Page) -> None:
        page.evict()
        self._detach(page)

    def _evict_stalled(self) -> None:
        for page in [p for p in self.pages if p.stalled_for() > self.stall_seconds]:
            self._evict(page)

    async def _watch_pages(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.stall_seconds / 2))
            self._evict_stalled()

    def _handle(self, page: Page, text: str) -> None:
        try:
            kind, value = self.protocol.parse(text)
        except ProtocolError as err:
            page.error(str(err))
            return
        if kind == "action":
            self.engine.set_action(page.session, value)
        elif kind == "save":
            self._spawn(self._save(page))
        else:
            try:
                self.engine.request(page.session, kind, value)
            except queue.Full:
                page.error("the server is busy with earlier commands; try again")

    async def _save(self, page: Page) -> None:
        if self.saving:
            page.error("a video is being saved already")
            return
        self.saving = True
        try:
            path, frames = await asyncio.get_running_loop().run_in_executor(None, self.engine.save_video,
                                                                            page.session, self.out_dir)
        except (ValueError, OSError) as err:
            page.error(f"saving failed: {err}")
        else:
            self.videos[path.name] = path
            self._prune_videos()
            page.push({"type": "saved", "url": f"/videos/{path.name}", "name": path.name, "frames": frames})
        finally:
            self.saving = False

    def _prune_videos(self) -> None:
        """Keep the newest MAX_VIDEOS videos this server wrote, and MAX_VIDEO_BYTES of them at most."""
        def size(path: Path) -> int:
            return path.stat().st_size if path.is_file() else 0

        while len(self.videos) > 1 and (len(self.videos) > MAX_VIDEOS or
                                        sum(map(size, self.videos.values())) > MAX_VIDEO_BYTES):
            oldest = next(iter(self.videos))  # dicts keep insertion order
            self.videos.pop(oldest).unlink(missing_ok=True)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- engine events (called in the worker thread) -------------------------------------------------------
    def _on_event(self, event) -> None:
        if isinstance(event, Frame):
            payload = encode_frame(event)  # encoded here, off the event loop
            self._loop.call_soon_threadsafe(self._send_frame, event.session, payload)
        else:
            self._loop.call_soon_threadsafe(self._send, event)

    def _send_frame(self, session: int, payload: bytes) -> None:
        for page in self.pages:
            if page.session == session:
                page.push_frame(payload)

    def _send(self, message: dict) -> None:
        """A session's status to its pages; anything else (a failure of the generation) to every page."""
        for page in self.pages:
            if message.get("session", page.session) == page.session:
                page.push(message)

    # -- lifetime ------------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Run until Ctrl-C / SIGTERM (main thread) or shutdown(); the worker stops and the port closes."""
        asyncio.run(self._serve())

    def shutdown(self) -> None:
        """Stop serve() from another thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stop.set)
        runner = web.AppRunner(self._app(), handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            try:
                await site.start()
            except OSError as err:
                raise ValueError(f"cannot listen on {self.host}:{self.port}: {err.strerror or err}") from None
            self.port = site._server.sockets[0].getsockname()[1]  # the real one when port 0 was asked
            host = f"[{self.host}]" if ":" in self.host else self.host
            self.url = f"http://{host}:{self.port}/"
            self.engine.on_event = self._on_event
            self.engine.start()
            watcher = asyncio.create_task(self._watch_pages())
            self.ready.set()
            if self.on_ready is not None:
                self.on_ready(self.url)
            await self._stop.wait()
            watcher.cancel()
        finally:
            for page in list(self.pages):
                try:  # a page that stopped reading would never take the close frame
                    await asyncio.wait_for(page.ws.close(code=1001, message=b"server shutting down"), 2.0)
                except asyncio.TimeoutError:
                    page.evict()
            self.engine.close()
            await runner.cleanup()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
