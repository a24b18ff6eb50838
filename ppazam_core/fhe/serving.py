"""The encrypted identifier's server over HTTP, and the client transport that talks to it.

The server holds a :class:`~ppazam_core.fhe.deployment.ServerBundle` (no client artifact, no secret
key) and, per client session, the evaluation keys that client uploaded. Every body is a framed
message of :mod:`ppazam_core.fhe.deployment` (``application/octet-stream``)::

    GET    /circuits                          the bundle's description and each circuit's public costs (JSON)
    POST   /sessions                          a new session: {"session": id} (201)
    DELETE /sessions/{id}                     drop a session and its keys (204)
    PUT    /sessions/{id}/keys/{circuit}      framed evaluation keys of one circuit (204)
    POST   /sessions/{id}/circuits/{circuit}  framed query -> framed result; header X-Server-Seconds

Every refusal is a 4xx (5xx: the server's own fault) with a JSON body ``{"detail": message}``,
and the server goes on serving. A request's headers are judged first (an unknown circuit, then
the body's type and declared size), then its session, then its body as it streams in, and only
then whether the session holds the circuit's keys: so a body over the size limit gets its 413
whatever else is wrong with the request. The refusals: a wrong, truncated or corrupted frame,
keys or a query of another circuit, a payload Concrete cannot read (400); an unknown session or
circuit (404); a session opened before the server restarted (410: the client opens a new one);
a query before its circuit's keys (409); a body larger than the circuit can need (413, refused
from its ``Content-Length`` before it is read, or as soon as the stream passes the cap); a body
that is not ``application/octet-stream`` (415); a body that stalls (no byte for ``body_idle_s``, or slower on average than
``min_body_rate`` bytes/s once ``body_idle_s`` have passed: 408); a key upload while
``max_receiving_keys`` key bodies are already arriving, or a query while ``max_queued`` are
already waiting or running (503, retry later); more than ``max_connections`` open connections
(uvicorn's ``limit_concurrency``: 503), a connection that has not sent a request's headers
:data:`HEADER_TIMEOUT_S` after opening or after its last answer is closed. So a client that stalls its bodies holds a slot for
``body_idle_s`` at most, and only its own. Memory is bounded: at most ``max_sessions``
sessions, each holding at most one key set per circuit, and at most ``max_key_bytes`` of
evaluation keys in all, counted at Concrete's in-memory size (``size_of_bootstrap_keys +
size_of_keyswitch_keys``, 3 to 10 times the upload: keys are expanded once used; measured 0.77
GB of server memory per 1.10 GB counted, so the count is an upper bound); past either the least recently used session is
dropped (its client gets a 404 and must open a new one); sessions idle longer than
``session_ttl_s`` are dropped too; at most ``max_receiving_keys`` key bodies are read at once,
and at most ``max_parallel_uploads`` checked against the circuit's key layout and deserialized
at once (the others wait, read). A query body is read before it takes a place in the queue.
A key body may be exactly as long as the circuit's serialized keys (its
:class:`~ppazam_core.fhe.concrete.KeyLayout`, plus the frame header), a query body
:data:`BODY_SLACK` times Concrete's ciphertext size.

FHE evaluation blocks for seconds: it runs in a worker thread and Concrete releases the GIL
while it runs, so the event loop keeps answering (sessions, uploads, refusals) while queries
wait their turn. Queries wait for their turn without a thread (each circuit's own lock, then one
of ``max_parallel_runs`` run tokens), and key sets are deserialized under their own
``max_parallel_uploads`` tokens, so however many queries are queued, a key upload or a new
session is served at once (with a shared pool, 40 queued queries held every worker thread and
the next upload waited for all of them). Deserializing a key set holds the GIL (about a second
per 100 MB here), during which the loop reads nothing; a body's idle limit allows for that (:data:`STALL_GRACE_S`). Concrete's runtime
already spreads one run over the cores, and two runs side by side are each about 3.5 times
slower than one alone on a 2-core machine (measured on the tiny 256-PBS circuits: 5.7 s alone,
20 s each when two run together), so by default one run at a time (``max_parallel_runs``);
runs of the same circuit are always serialized, by the circuit's own lock
(:attr:`~ppazam_core.fhe.deployment.ClassifierServer.run_lock`, shared by every app serving the
same bundle).

:class:`HttpTransport` is the client side (a :class:`~ppazam_core.fhe.deployment.Transport`; it
opens a new session and uploads its keys again on its own when the server restarted);
:func:`serve_in_background` runs the server on a loopback socket in this process (tests, bench),
:class:`ServerProcess` runs ``ppazam serve`` as a child process that can be killed and restarted
(tests, ``bench/soak.py``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NoReturn, Sequence

import anyio
import httpx
import uvicorn
from concrete import fhe
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from ppazam_core.fhe.deployment import ClassifierServer, ServerBundle
from ppazam_core.fhe.wire import HEADER
from ppazam_core.errors import FheError

OCTET_STREAM = "application/octet-stream"
SERVER_SECONDS = "X-Server-Seconds"
QUEUE_SECONDS = "X-Queue-Seconds"
DEFAULT_MAX_SESSIONS = 16
DEFAULT_PARALLEL_RUNS = 1
DEFAULT_MAX_QUEUED = 64
DEFAULT_MAX_KEY_BYTES = 8 * 1024**3
DEFAULT_PARALLEL_UPLOADS = 2
DEFAULT_RECEIVING_KEYS = 8
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_BODY_IDLE_S = 20.0
DEFAULT_MIN_BODY_RATE = 64 * 1024  # bytes/s: a 100 MB key set in under half an hour
HEADER_TIMEOUT_S = 10.0  # seconds a connection may take to send a request's headers
STALL_GRACE_S = 1.0  # seconds of a free event loop a body gets before it is called stalled
DEFAULT_SESSION_TTL_S = 30 * 60.0
BODY_SLACK = 2  # a body may be this many times the circuit's own size (plus the frame header)
MIN_BODY_CAP = 64 * 1024  # bytes; so that a tiny circuit's cap does not cut off its own serialization overhead
SESSION_ID = re.compile(r"([0-9a-f]{16})\.[A-Za-z0-9_-]{24}")  # this run of the server's id, a random token
SERVING_AT = re.compile(r" at (http://\S+:\d+) ")  # in the line `ppazam serve` prints once it listens


@dataclass
class Session:
    """One client's evaluation keys, by circuit name."""

    keys: dict[str, fhe.EvaluationKeys] = field(default_factory=dict)
    key_bytes: dict[str, int] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)


class Sessions:
    """At most ``max_sessions`` sessions holding at most ``max_key_bytes`` of keys in all; the
    least recently used session is dropped to make room, and one idle longer than ``ttl_s``
    seconds on any access. A session's id names the run of the server that opened it
    (:data:`SESSION_ID`: :attr:`instance`, a random token), so that a client of an earlier run
    (before a restart) is told so. Thread-safe."""

    def __init__(self, max_sessions: int, ttl_s: float, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES) -> None:
        if max_sessions < 1 or max_key_bytes < 1:
            raise ValueError(f"max_sessions and max_key_bytes must be >= 1, got {max_sessions}, {max_key_bytes}")
        self.max_sessions = max_sessions
        self.max_key_bytes = max_key_bytes
        self.ttl_s = ttl_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        self.instance = secrets.token_hex(8)

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def key_bytes(self) -> int:
        """Bytes of evaluation keys held, counted at Concrete's in-memory size."""
        return sum(sum(s.key_bytes.values()) for s in self._sessions.values())

    def store_keys(self, session_id: str, name: str, keys: fhe.EvaluationKeys, size: int) -> None:
        """Keep ``keys`` (``size`` bytes in memory) of circuit ``name`` in a session, dropping
        the least recently used other sessions while the total passes ``max_key_bytes``; a 404
        for an unknown session, a 413 when this session alone would pass it."""
        session = self.get(session_id)
        with self._lock:
            if self._sessions.get(session_id) is not session:  # dropped while its keys were being read
                raise HTTPException(404, f"unknown session {session_id[:40]!r} (evicted while its keys were sent)")
            if sum(v for k, v in session.key_bytes.items() if k != name) + size > self.max_key_bytes:
                raise HTTPException(413, f"evaluation keys of this session would pass the server's budget of "
                                         f"{self.max_key_bytes} bytes")
            session.keys[name], session.key_bytes[name] = keys, size
            for other in list(self._sessions):
                if self.key_bytes <= self.max_key_bytes:
                    break
                if other != session_id:
                    del self._sessions[other]
                    self.evicted += 1

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest, session = next(iter(self._sessions.items()))
            if now - session.last_used <= self.ttl_s:
                break
            del self._sessions[oldest]

    def create(self) -> str:
        session_id = f"{self.instance}.{secrets.token_urlsafe(18)}"
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
                self.evicted += 1
            self._sessions[session_id] = Session(last_used=now)
        return session_id

    def get(self, session_id: str) -> Session:
        """The session, marked as used now; an :class:`HTTPException` as :meth:`_refuse_unknown`
        raises when it is not held."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(session_id)
            if session is None:
                self._refuse_unknown(session_id)
            session.last_used = now
            self._sessions.move_to_end(session_id)
            return session

    def _refuse_unknown(self, session_id: str) -> NoReturn:
        """Refuse a session this server does not hold.

        Raises:
            HTTPException: 410 for a session opened by an earlier run of the server (it restarted
                since); 404 for any other (never opened, closed, expired or evicted).
        """
        earlier = SESSION_ID.fullmatch(session_id)
        if earlier and earlier.group(1) != self.instance:
            raise HTTPException(410, f"session {session_id!r} was opened before this server restarted; open a "
                                     "new one with POST /sessions and upload its keys again")
        raise HTTPException(404, f"unknown session {session_id[:40]!r} (never opened, closed, expired after "
                                 f"{self.ttl_s:.0f} s idle, or evicted to make room); open a new one "
                                 "with POST /sessions")

    def delete(self, session_id: str) -> None:
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise HTTPException(404, f"unknown session {session_id[:40]!r}")


def body_caps(server: ClassifierServer) -> tuple[int, int]:
    """The largest evaluation-key and query bodies (bytes, frame header included) accepted for
    a circuit: its serialized key size, and :data:`BODY_SLACK` times its input ciphertext size
    (at least :data:`MIN_BODY_CAP`)."""
    stats = server.stats
    keys = server.key_layout.length + HEADER.size
    query = max(BODY_SLACK * stats.input_ciphertext_bytes, MIN_BODY_CAP) + HEADER.size
    return keys, query


@dataclass(frozen=True)
class BodyLimits:
    """How slowly a body may arrive: a 408 when no byte comes for ``idle_s`` seconds, or when,
    ``idle_s`` after the first byte was awaited, fewer than ``min_rate`` bytes/s have come on average."""

    idle_s: float = DEFAULT_BODY_IDLE_S
    min_rate: float = DEFAULT_MIN_BODY_RATE

    def __post_init__(self) -> None:
        if not (self.idle_s > 0 and self.min_rate >= 0):
            raise ValueError(f"body idle_s must be > 0 and min_rate >= 0, got {self.idle_s}, {self.min_rate}")


def refuse_by_headers(request: Request, cap: int, what: str) -> None:
    """Judge a body by the request's headers alone, before anything else about the request.

    Raises:
        HTTPException: 415 unless the body is ``application/octet-stream``; 400 for a
            ``Content-Length`` that is not a number; 413 when it declares more than ``cap`` bytes.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != OCTET_STREAM:
        raise HTTPException(415, f"{what}: send the framed message as {OCTET_STREAM}, not {content_type or 'no type'}")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"{what}: bad Content-Length {declared[:40]!r}")
        if int(declared) > cap:
            raise HTTPException(413, f"{what}: {int(declared)} bytes is more than this circuit accepts ({cap} bytes)")


async def read_body(request: Request, cap: int, what: str, limits: BodyLimits = BodyLimits()) -> bytes:
    """The request's body as it streams in (its headers judged first by :func:`refuse_by_headers`).

    Raises:
        HTTPException: 413 as soon as the stream passes ``cap`` bytes; 408 when it stalls (see
            :class:`BodyLimits`); 400 when the client disconnects before its end.
    """
    chunks, size = [], 0
    stream = request.stream()
    started = time.monotonic()
    while True:
        arriving = asyncio.ensure_future(anext(stream))
        done, _ = await asyncio.wait({arriving}, timeout=limits.idle_s)
        if not done:  # the loop may have been kept from reading (Concrete holds the GIL): one more look
            done, _ = await asyncio.wait({arriving}, timeout=STALL_GRACE_S)
        if not done:
            arriving.cancel()
            raise HTTPException(408, f"{what}: no byte for {limits.idle_s:g} s after {size} bytes; "
                                     "the body stalled")
        try:
            chunk = arriving.result()
        except StopAsyncIteration:
            return b"".join(chunks)
        except ClientDisconnect:
            raise HTTPException(400, f"{what}: the client disconnected after {size} bytes") from None
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"{what}: body passes {cap} bytes, more than this circuit accepts")
        elapsed = time.monotonic() - started
        if elapsed > limits.idle_s and size < limits.min_rate * elapsed:
            raise HTTPException(408, f"{what}: {size} bytes in {elapsed:.0f} s, slower than "
                                     f"{limits.min_rate:g} bytes/s; the body stalled")
        chunks.append(chunk)


def create_app(bundle: ServerBundle, max_sessions: int = DEFAULT_MAX_SESSIONS,
               session_ttl_s: float = DEFAULT_SESSION_TTL_S, max_parallel_runs: int = DEFAULT_PARALLEL_RUNS,
               max_queued: int = DEFAULT_MAX_QUEUED, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
               max_parallel_uploads: int = DEFAULT_PARALLEL_UPLOADS,
               max_receiving_keys: int = DEFAULT_RECEIVING_KEYS, body_limits: BodyLimits = BodyLimits()) -> FastAPI:
    """The ASGI app serving ``bundle`` (see the module's doc for the routes and refusals). Every
    circuit's server side is loaded now: an :class:`~ppazam_core.errors.ArtifactError` (or
    :class:`~ppazam_core.errors.DamagedArtifactError`) for a broken bundle, before any client
    connects. ``max_sessions``: how many client sessions (each up to one evaluation key set per
    circuit) are kept; ``session_ttl_s``: seconds after which an idle session is dropped;
    ``max_parallel_runs``: FHE evaluations at once (of different circuits), the others queue;
    ``max_queued``: queries waiting or running at once, past which a query gets a 503;
    ``max_key_bytes``: evaluation keys kept in all sessions together (bytes in memory, as
    Concrete sizes them: ``size_of_bootstrap_keys + size_of_keyswitch_keys``);
    ``max_parallel_uploads``: key sets checked and deserialized at once (on their own worker
    threads, never waiting behind queued queries); ``max_receiving_keys``:
    key bodies arriving at once, past which an upload gets a 503; ``body_limits``: how slowly a
    body may arrive. A :class:`ValueError` for a bound below 1."""
    if min(max_parallel_runs, max_queued, max_parallel_uploads, max_receiving_keys) < 1:
        raise ValueError(f"max_parallel_runs, max_queued, max_parallel_uploads and max_receiving_keys must "
                         f"be >= 1, got {max_parallel_runs}, {max_queued}, {max_parallel_uploads}, "
                         f"{max_receiving_keys}")
    servers = {name: bundle.server(name) for name in bundle.names()}
    caps = {name: body_caps(server) for name, server in servers.items()}
    turns = {name: anyio.Lock() for name in servers}  # a circuit's queries wait here, holding no thread
    runs = anyio.CapacityLimiter(max_parallel_runs)  # worker threads of FHE runs
    readers = anyio.CapacityLimiter(max_parallel_uploads)  # worker threads of key checks: never behind a query
    queued = threading.BoundedSemaphore(max_queued)  # taken without waiting: full -> 503
    sessions = Sessions(max_sessions, session_ttl_s, max_key_bytes)
    receiving = threading.BoundedSemaphore(max_receiving_keys)  # taken without waiting: full -> 503
    app = FastAPI(title="ppazam encrypted identifier", version="1", openapi_url=None, docs_url=None, redoc_url=None,
                  redirect_slashes=False)
    app.state.sessions = sessions
    app.state.bundle = bundle

    @app.exception_handler(FheError)
    async def refused(request: Request, error: FheError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    def server_of(name: str) -> ClassifierServer:
        if name not in servers:
            raise HTTPException(404, f"no circuit named {name[:60]!r} here; this server holds {', '.join(servers)}")
        return servers[name]

    def keys_of(session_id: str, name: str) -> fhe.EvaluationKeys:
        """The session's keys of circuit ``name``; a 404 for an unknown session, a 409 without them."""
        keys = sessions.get(session_id).keys.get(name)
        if keys is None:
            raise HTTPException(409, f"no evaluation keys for circuit {name} in this session; "
                                     f"PUT them to /sessions/{{id}}/keys/{name} first")
        return keys

    @app.get("/circuits")
    async def circuits() -> dict:
        """What a client needs to know about each circuit; nothing secret."""
        return {"description": {k: v for k, v in bundle.description.items() if k != "circuits"},
                "max_sessions": sessions.max_sessions, "session_ttl_s": sessions.ttl_s,
                "max_parallel_runs": max_parallel_runs, "max_queued": max_queued,
                "max_key_bytes": sessions.max_key_bytes,
                "circuits": {name: {"circuit_id": s.stats.circuit_id, "pbs_count": s.stats.pbs_count,
                                    "input_ciphertext_bytes": s.stats.input_ciphertext_bytes,
                                    "output_ciphertext_bytes": s.stats.output_ciphertext_bytes,
                                    "evaluation_key_bytes": s.stats.evaluation_key_bytes,
                                    "serialized_key_bytes": s.stats.serialized_key_bytes,
                                    "max_keys_body_bytes": caps[name][0], "max_query_body_bytes": caps[name][1]}
                             for name, s in servers.items()}}

    @app.post("/sessions", status_code=201)
    async def open_session() -> dict:
        return {"session": sessions.create()}

    @app.delete("/sessions/{session_id}", status_code=204)
    async def close_session(session_id: str) -> Response:
        sessions.delete(session_id)
        return Response(status_code=204)

    @app.put("/sessions/{session_id}/keys/{name}", status_code=204)
    async def upload_keys(session_id: str, name: str, request: Request) -> Response:
        server, what = server_of(name), f"evaluation keys for {name}"
        refuse_by_headers(request, caps[name][0], what)
        sessions.get(session_id)
        if not receiving.acquire(blocking=False):
            raise HTTPException(503, f"{max_receiving_keys} key uploads are already arriving; retry later")
        try:
            message = await read_body(request, caps[name][0], what, body_limits)
        finally:
            receiving.release()
        keys = await anyio.to_thread.run_sync(server.read_keys, message, limiter=readers)
        # counted at Concrete's in-memory size (3-10x the upload: keys expand once used), or as
        # uploaded where Concrete counts less (a linear head without PBS: 0 bytes)
        size = max(server.stats.evaluation_key_bytes, len(message))
        sessions.store_keys(session_id, name, keys, size)  # 404 if it was dropped meanwhile
        return Response(status_code=204)

    @app.post("/sessions/{session_id}/circuits/{name}")
    async def run(session_id: str, name: str, request: Request) -> Response:
        server, what = server_of(name), f"query for {name}"
        refuse_by_headers(request, caps[name][1], what)
        sessions.get(session_id)
        message = await read_body(request, caps[name][1], what, body_limits)
        keys = keys_of(session_id, name)
        if not queued.acquire(blocking=False):
            raise HTTPException(503, f"{max_queued} queries are already waiting or running; retry later")
        try:
            arrived = time.perf_counter()
            async with turns[name]:
                result, server_s, started = await anyio.to_thread.run_sync(evaluate, server, message, keys,
                                                                           limiter=runs)
        finally:
            queued.release()
        queue_s = started - arrived
        return Response(result, media_type=OCTET_STREAM,
                        headers={SERVER_SECONDS: f"{server_s:.6f}", QUEUE_SECONDS: f"{queue_s:.6f}"})

    return app


def evaluate(server: ClassifierServer, message: bytes, keys: fhe.EvaluationKeys) -> tuple[bytes, float, float]:
    """Run one framed query once the circuit's :attr:`~ppazam_core.fhe.deployment.ClassifierServer.run_lock`
    is free (it is shared by every app serving the bundle): the framed result, the run's seconds
    and when it started (``time.perf_counter``). An :class:`FheError` as the circuit's ``run`` raises."""
    with server.run_lock:
        started = time.perf_counter()
        result = server.run(message, keys)
        return result, time.perf_counter() - started, started


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: one the OS picks); an :class:`OSError`
    when the address is taken or not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class H11WithHeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not completed a request's headers
    within :data:`HEADER_TIMEOUT_S` of opening or of its last response. uvicorn has no such
    limit, and its ``limit_concurrency`` counts open connections: 256 idle ones locked every
    client out for as long as they were held."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._close_if_no_request)

    def _close_if_no_request(self) -> None:
        self._header_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def uvicorn_server(app: FastAPI, log_level: str = "warning",
                   max_connections: int = DEFAULT_MAX_CONNECTIONS) -> uvicorn.Server:
    """uvicorn serving ``app`` (h11, with :class:`H11WithHeaderTimeout`: bodies of tens of MB
    are fine; no websockets, no lifespan events); past ``max_connections`` open connections a
    request gets a 503."""
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off", ws="none",
                                         http=H11WithHeaderTimeout, timeout_keep_alive=30,
                                         limit_concurrency=max_connections))


def _server_url(url: str) -> str:
    """``url`` without its trailing slash; a :class:`FheError` unless it is ``http(s)://HOST[:PORT]...``."""
    try:
        parsed = httpx.URL(url)
        valid = parsed.scheme in ("http", "https") and parsed.host and not any(c.isspace() for c in url) \
            and "%" not in parsed.host and (parsed.port is None or 0 < parsed.port < 65536) \
            and not parsed.query and not parsed.fragment
    except httpx.InvalidURL:
        valid = False
    if not valid:
        raise FheError(f"{url!r} is not the URL of a ppazam server: give http://HOST:PORT or https://HOST:PORT, "
                       "as `ppazam serve` prints it")
    return url.rstrip("/")


def ignore_broken_pipes() -> None:
    """Start Concrete's runtime now, then ignore ``SIGPIPE`` again (Python ignores it from the
    start; call from the main thread, before serving). The runtime (HPX) starts with a process's
    first encrypted evaluation and installs a ``SIGPIPE`` handler that aborts the whole process
    when a write meets a closed socket: a client that hung up before reading its 400 killed the
    server for every client. Started here, it installs it once, and the reset stands."""
    from concrete.compiler import init_dfr

    init_dfr()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


@contextmanager
def serve_in_background(bundle: ServerBundle, host: str = "127.0.0.1", port: int = 0,
                        **app_options) -> Iterator[str]:
    """Serve ``bundle`` from a thread of this process on a real socket (port 0: one the OS
    picks) for the block; yields the base URL (``http://127.0.0.1:PORT``). ``app_options`` go
    to :func:`create_app`. The server is stopped and its thread joined on leaving."""
    if threading.current_thread() is threading.main_thread():
        ignore_broken_pipes()
    sock = bind(host, port)
    server = uvicorn_server(create_app(bundle, **app_options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ppazam-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise FheError(f"the server on {url_of(sock)} did not start")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


class HttpTransport:
    """A :class:`~ppazam_core.fhe.deployment.Transport` to a ppazam server at ``url``
    (``http://host:port``): opens a session on first use, uploads framed evaluation keys
    (PUT) and sends framed queries (POST). ``timeout``: seconds to wait for one answer (an FHE
    run of a large circuit takes minutes); connecting gives up after ``connect_timeout``.

    When the server has restarted since it opened the session (it answers 410), the transport
    re-establishes the session on its own, at most once per call: it opens a new session, uploads
    again every key set it uploaded before (it keeps each framed key message for that: public,
    and as large as the upload), then sends the call again; :attr:`reopened` counts these. A call
    in flight when the server goes away, or made while it is down, is not retried: it fails with
    an :class:`FheError` naming the server, and the first call once the server is back
    re-establishes the session as above. A session the server expired or dropped to make room
    (404) is an :class:`FheError` as before: the caller opens a new transport. Every
    failure is an :class:`FheError`: a refusal carries the server's status and message, a
    connection failure names the URL. One transport may serve several threads. Use as a context
    manager, or :meth:`close` it."""

    def __init__(self, url: str, timeout: float = 900.0, connect_timeout: float = 10.0) -> None:
        """Raises :class:`FheError` when ``url`` is not an http(s) URL with a host and a port
        that can be (nothing is sent yet)."""
        self.url = _server_url(url)
        self._client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=connect_timeout))
        self.session: str | None = None
        self.reopened = 0
        self._uploaded: dict[str, bytes] = {}
        self._lock = threading.RLock()

    def _send(self, method: str, path: str, what: str, content: bytes | None = None) -> httpx.Response:
        """The server's answer to one request, whatever its status.

        Raises:
            FheError: the server cannot be reached, did not answer in time, or the exchange
                broke off before its answer (the server stopped or restarted meanwhile).
        """
        headers = {"content-type": OCTET_STREAM} if content is not None else None
        try:
            return self._client.request(method, path, content=content, headers=headers)
        except httpx.TimeoutException as e:
            raise FheError(f"{what}: the ppazam server at {self.url} did not answer in time ({e!r})") from e
        except httpx.ConnectError as e:
            raise FheError(f"{what}: cannot reach the ppazam server at {self.url} ({type(e).__name__}: {e}); "
                           "is `ppazam serve` running there?") from e
        except httpx.HTTPError as e:
            raise FheError(f"{what}: the connection to the ppazam server at {self.url} broke off before its answer "
                           f"({type(e).__name__}: {e}); if the server restarted, the next call opens a new session "
                           "and uploads the keys again") from e

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        """``response`` unless it is a refusal.

        Raises:
            FheError: a 4xx or 5xx answer, with the server's status and message.
        """
        if response.is_error:
            try:
                detail = response.json()["detail"]
            except (ValueError, KeyError, TypeError):
                detail = response.text[:500] or response.reason_phrase
            raise FheError(f"{what}: the server at {self.url} answered {response.status_code}: {detail}")
        return response

    def _request(self, method: str, path: str, what: str, content: bytes | None = None) -> httpx.Response:
        """One request outside the session's retry (see :meth:`_send` and :meth:`_check` for the errors)."""
        return self._check(self._send(method, path, what, content), what)

    def _in_session(self, method: str, route: str, what: str, content: bytes | None = None) -> httpx.Response:
        """A request to ``/sessions/{id}{route}`` on this transport's session, sent once more on a
        re-established session when the server has restarted since it opened it (see the class's
        doc). An
        :class:`FheError` as :meth:`_send` and :meth:`_check` raise."""
        session = self.open()
        response = self._send(method, f"/sessions/{session}{route}", what, content)
        if response.status_code == 410:
            session = self._reopen(session)
            response = self._send(method, f"/sessions/{session}{route}", what, content)
        return self._check(response, what)

    def _reopen(self, lost: str) -> str:
        """A session in place of ``lost`` (opened by :meth:`open`, unless another thread has
        replaced it already)."""
        with self._lock:
            if self.session == lost:
                self.session = None
                self.reopened += 1
            return self.open()

    def circuits(self) -> dict:
        """The server's ``GET /circuits`` answer: description and each circuit's public costs."""
        return self._request("GET", "/circuits", "listing circuits").json()

    def open(self) -> str:
        """This transport's session id: opened on first use, and after a lost session with every
        key set uploaded before sent again (the session is kept only once all have arrived). An
        :class:`FheError` when the server cannot be reached or refuses."""
        with self._lock:
            if self.session is None:
                session = str(self._request("POST", "/sessions", "opening a session").json()["session"])
                for name, message in self._uploaded.items():
                    self._request("PUT", f"/sessions/{session}/keys/{name}", f"uploading keys of {name} again",
                                  message)
                self.session = session
            return self.session

    def upload_keys(self, name: str, message: bytes) -> None:
        """Send framed evaluation keys of circuit ``name`` for this session (and keep them, to
        send them again on a new session)."""
        message = bytes(message)
        self._in_session("PUT", f"/keys/{name}", f"uploading keys of {name}", message)
        with self._lock:
            self._uploaded[name] = message

    def run(self, name: str, message: bytes) -> tuple[bytes, float]:
        """Run circuit ``name`` on a framed query; returns the framed result and the server's own
        evaluation seconds (from ``X-Server-Seconds``)."""
        response = self._in_session("POST", f"/circuits/{name}", f"query of {name}", bytes(message))
        try:
            server_s = float(response.headers[SERVER_SECONDS])
        except (KeyError, ValueError) as e:
            raise FheError(f"query of {name}: the server at {self.url} sent no valid {SERVER_SECONDS} header") from e
        return response.content, server_s

    def close(self) -> None:
        """Drop the session on the server (if it can still be reached), forget the kept keys and
        close the connection."""
        try:
            if self.session is not None:
                try:
                    self._request("DELETE", f"/sessions/{self.session}", "closing the session")
                except FheError:
                    pass  # expired, evicted or unreachable: nothing left to free
                self.session = None
        finally:
            self._uploaded.clear()
            self._client.close()

    def __enter__(self) -> "HttpTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ServerProcess:
    """``ppazam serve BUNDLE`` in a child process, for tests and ``bench/soak.py``: :meth:`start`
    it (on ``port``; 0: one the OS picks, which every later start reuses), :meth:`kill` it as a
    crash would (SIGKILL), :meth:`start` it again on the same port, :meth:`stop` it. ``options``
    go to ``ppazam serve``; its output is appended to ``log``. As a context manager it is stopped
    on leaving."""

    def __init__(self, bundle: Path, log: Path, port: int = 0, options: Sequence[str] = ()) -> None:
        self.bundle, self.log, self.port, self.options = Path(bundle), Path(log), port, list(options)
        self.process: subprocess.Popen | None = None
        self.url: str | None = None

    @property
    def pid(self) -> int | None:
        """The running server's process id; ``None`` when it is not running."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the server and wait until it answers ``GET /circuits``; its base URL.

        Raises:
            FheError: it is already running, it exited, or it did not answer within
                ``timeout_s`` (then it is killed); the error names its log.
        """
        if self.pid is not None:
            raise FheError(f"the ppazam server at {self.url} is already running (pid {self.pid})")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as handle:
            self.process = subprocess.Popen([sys.executable, "-m", "ppazam_core.cli", "serve", str(self.bundle),
                                             "--port", str(self.port), *self.options],
                                            stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        self.url = self._announced_url(offset, deadline)
        self.port = int(self.url.rsplit(":", 1)[1])
        while not self._answers():
            self._wait(deadline)
        return self.url

    def _announced_url(self, offset: int, deadline: float) -> str:
        """The URL the server prints (past ``offset`` bytes of the log) just before it accepts."""
        while True:
            found = SERVING_AT.search(self.log.read_bytes()[offset:].decode(errors="replace"))
            if found:
                return found.group(1)
            self._wait(deadline)

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/circuits", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def _wait(self, deadline: float) -> None:
        """A moment's pause while the server starts; an :class:`FheError` when it has exited or
        the deadline has passed (then it is killed)."""
        if self.process.poll() is not None:
            raise FheError(f"`ppazam serve {self.bundle}` exited with status {self.process.returncode}; "
                           f"see {self.log}")
        if time.monotonic() > deadline:
            self.kill()
            raise FheError(f"`ppazam serve {self.bundle}` did not start answering in time; see {self.log}")
        time.sleep(0.1)

    def kill(self) -> None:
        """End the server at once with SIGKILL, as a crash would: no request in flight is
        finished, nothing is cleaned up."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """End the server with SIGTERM (it finishes the requests in flight), with SIGKILL past
        ``timeout_s``; its exit status (``None`` when it was never started)."""
        if self.process is None:
            return None
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
