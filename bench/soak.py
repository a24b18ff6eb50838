"""A bounded soak of the encrypted identifier's HTTP server on loopback: concurrent clients, each
with its own session and keys, hostile requests mixed in, every answer checked against
``fhe-sim``, the server's memory sampled, and optionally the server killed and restarted once.

A measurement and a check, not a test (pytest does not collect it; ``tests/test_server_faults.py``
runs it for well under a minute). On a shared machine, run it niced::

    nice -n 5 .tox/ppazam/bin/python bench/soak.py                       # 20 minutes, 3 clients
    nice -n 5 .tox/ppazam/bin/python bench/soak.py --minutes 20 --clients 3 --restart-at-minute 10 \\
        --config my.toml --cache-dir ~/.cache/ppazam --out reports/soak-1

What it does:

* trains (or finds in the cache) the model of a packed CKKS family (``--family``, default
  ``embedding-head-packed``: tens of ms a query) as ``ppazam train`` would (``--config``,
  ``--library``, ``--cache-dir``, ``--workers``), exports its server bundle, and serves it with
  ``ppazam serve`` in a child process (:class:`~ppazam_core.fhe.serving.ServerProcess`);
* embeds ``--rows`` evaluation patches in the clear, keeping those whose fhe-sim best row leads
  the second by more than twice the tolerance (a legitimate CKKS error cannot change their top-1);
* for ``--minutes``: ``--clients`` threads, each with its own
  :class:`~ppazam_core.fhe.serving.HttpTransport` (its own session) and its own freshly generated
  keys, send one query after the other; one more thread, every ``--hostile-every-s``, sends a
  valid query on its own session and then one hostile request in turn (:class:`HostileRequests`:
  garbage, another circuit's id, a truncated frame, oversize bodies declared and streamed, wrong
  content type, unknown circuit and session, a raw non-HTTP request, and clients vanishing
  mid-body: a socket that sends half a body and closes), each with the answers it may get;
* every answer must have fhe-sim's top-1 row and every score within :data:`TOLERANCE_SIGMAS` times
  the CKKS error's standard deviation measured when the circuit was built;
* the server's RSS and its anonymous part (psutil: RSS less file-backed and shared pages, which
  the kernel drops and reads back at will) are sampled every ``--sample-s``;
* with ``--restart-at-minute M``: at minute M the server is killed (SIGKILL), stays down
  ``--down-s``, and is started again on the same port; the clients re-establish their sessions
  and keys on their own (the transport does).

Exit status 0 when every check passes, 2 when it cannot set up (the model, the server, the
clients' keys: one ``error:`` line), 1 otherwise (the report says why):

* a wrong answer;
* an unexpected error: any failed call but those that overlap the restart window (started before
  the restarted server answered, ended after the kill), a hostile request answered otherwise
  than allowed, a server log line with ``ERROR`` or a traceback, a client that never got an
  answer or (with a restart) never re-established its session;
* memory: for each server process, from ``--warmup-s`` after its start to its end, its RSS or
  the RSS's anonymous part grew by more than :data:`RSS_GROWTH_BOUND` (10 %) of its warm value
  (median of the last 3 samples against the median of the first 3 after warm-up; fewer than 6
  samples: not judged, said so).

It writes into ``--out`` (a new or empty folder): ``soak.json`` (every figure: duration, clients,
queries, throughput, p50/p95/p99 latency, errors by kind, hostile requests by kind, wrong
answers, restarts, re-established sessions, RSS per process, load average), ``rss.csv`` (RSS, its
anonymous part and the 1-min load average over time), ``calls.csv`` (every call: when, who,
what, seconds, outcome) and ``server.log``; and it prints a summary. Latencies are end to end (encrypt, HTTP round trip,
decrypt) and include whatever else the machine runs: report them with the load average.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx
import numpy as np
import psutil

from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.fhe.deployment import EncryptedChannel, export_server
from ppazam_core.errors import ConfigError, FheError, PpazamError
from ppazam_core.families import family_eval_spec, train_family
from ppazam_core.families.packed_head import PACKED, PackedFamilyModel
from ppazam_core.audio.library import open_library
from ppazam_core.models.pipeline import noise_folder
from ppazam_core.recognition import Mode
from ppazam_core.fhe.serving import OCTET_STREAM, HttpTransport, ServerProcess
from ppazam_core.store import default_cache_dir
from ppazam_core.fhe.wire import QUERY, frame, unframe

FAMILIES = ("embedding-head-packed", "embedding-knn-packed")
TOLERANCE_SIGMAS = 12.0  # an encrypted score may differ from fhe-sim's by this many CKKS error std
RSS_GROWTH_BOUND = 0.10  # of the warm RSS, per server process, from warm-up to its end
ERROR_PAUSE_S = 0.5  # a client's pause after a failed call
FOREIGN_CIRCUIT = "0" * 32  # a circuit id no bundle holds


@dataclass(frozen=True)
class Reference:
    """The inputs the clients send (embeddings ``X``, one a row), fhe-sim's scores for them, and
    how far an encrypted score may be from fhe-sim's."""

    X: np.ndarray
    expected: np.ndarray
    tolerance: float

    def wrong(self, row: int, got: np.ndarray) -> str | None:
        """Why the encrypted scores ``got`` of input ``row`` are a wrong answer; ``None`` when right."""
        expected = np.asarray(self.expected[row])
        got = np.asarray(got).reshape(-1)
        if got.shape != expected.shape:
            return f"{got.size} scores, fhe-sim has {expected.size}"
        if int(np.argmax(got)) != int(np.argmax(expected)):
            return f"top-1 row {int(np.argmax(got))}, fhe-sim's is {int(np.argmax(expected))}"
        gap = float(np.abs(got - expected).max())
        if gap > self.tolerance:
            return f"a score {gap:.3g} away from fhe-sim's (tolerance {self.tolerance:.3g})"
        return None


@dataclass(frozen=True)
class Call:
    """One request of the soak: who sent it, what (``query`` or a hostile kind), when (seconds
    since the soak began), and its outcome (``ok``, ``wrong``, ``error: KIND``, or the answer a
    hostile request got)."""

    worker: str
    what: str
    started: float
    ended: float
    outcome: str
    detail: str = ""
    allowed: bool = True  # for hostile requests: the answer is one it may get
    server_s: float | None = None


@dataclass
class Record:
    """Every call of the soak, appended from many threads."""

    began: float = field(default_factory=time.monotonic)
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        """Seconds since the soak began."""
        return time.monotonic() - self.began

    def add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)


def error_kind(error: FheError) -> str:
    """A failed call's kind, from the transport's message."""
    text = str(error)
    for marker, kind in (("broke off before its answer", "connection lost"), ("cannot reach", "connection refused"),
                         ("did not answer in time", "timeout")):
        if marker in text:
            return kind
    answered = text.split("answered ", 1)
    return f"http {answered[1][:3]}" if len(answered) == 2 else "other"


def prepare(args: argparse.Namespace) -> tuple[PackedFamilyModel, Reference, int]:
    """The trained model, the reference its clients are checked against, and how many candidate
    rows were left out as near ties.

    Raises:
        PpazamError: as the config, the library, training or the dataset raise; a
            :class:`ConfigError` when every row is a near tie.
    """
    config = ExperimentConfig.from_toml(args.config) if args.config else ExperimentConfig()
    cache_dir = args.cache_dir or default_cache_dir()
    library = open_library(args.library, cache_dir, config.data.synthetic, config.data.segment_s, args.workers)
    model = train_family(args.family, library, config, cache_dir, args.workers, compiled=True)
    dataset = build_dataset(library, family_eval_spec(args.family, config, "clean"), cache_dir,
                            noise_folder(library, config.data, cache_dir), args.workers)
    rows = np.sort(np.random.default_rng(0).choice(len(dataset), size=min(args.rows, len(dataset)), replace=False))
    X = model.embedder.embed_patches(np.asarray(dataset.X[rows]))
    expected = model.head.logits(X, Mode.FHE_SIM)
    tolerance = TOLERANCE_SIGMAS * float(model.head.error["error_std"])
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = (top2[:, -1] - top2[:, 0]) > 2 * tolerance
    if not clear.any():
        raise ConfigError.bad_value("--rows", args.rows, f"more: all {len(X)} rows are near ties under fhe-sim")
    return model, Reference(X[clear], expected[clear], tolerance), int((~clear).sum())


class HostileRequests:
    """Requests the server must refuse or survive, sent in turn (:meth:`send`) on a session that
    holds the circuit's keys; each with the answers it may get (a status, ``closed`` or
    ``vanished``)."""

    def __init__(self, url: str, channel: EncryptedChannel, circuits: dict, x: np.ndarray) -> None:
        self.url = url
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        client = channel.client(PACKED)
        self.query = client.encrypt(x[None])
        self.keys = client.evaluation_keys()
        caps = circuits[PACKED]
        circuit = client.stats.circuit_id
        payload = unframe(self.query, QUERY, circuit)
        run, keys = "/sessions/{session}/circuits/" + PACKED, "/sessions/{session}/keys/" + PACKED
        oversize = caps["max_query_body_bytes"] + 1
        self.kinds: dict[str, tuple[Callable[[str], str], set[str]]] = {
            "garbage query": (lambda s: self._http("POST", run, s, os.urandom(1000)), {"400"}),
            "another circuit's query": (lambda s: self._http("POST", run, s, frame(QUERY, FOREIGN_CIRCUIT, payload)),
                                        {"400"}),
            "truncated query": (lambda s: self._http("POST", run, s, self.query[:-10]), {"400"}),
            "oversize query": (lambda s: self._http("POST", run, s, bytes(oversize)), {"413"}),
            "oversize streamed query": (lambda s: self._http("POST", run, s, chunks(oversize)), {"413"}),
            "wrong content type": (lambda s: self._http("POST", run, s, self.query, "application/json"), {"415"}),
            "garbage keys": (lambda s: self._http("PUT", keys, s, os.urandom(5000)), {"400"}),
            "oversize keys": (lambda s: self._http("PUT", keys, s, bytes(caps["max_keys_body_bytes"] + 1)), {"413"}),
            "unknown circuit": (lambda s: self._http("POST", "/sessions/{session}/circuits/nope", s, self.query),
                                {"404"}),
            "unknown session": (lambda s: self._http("POST", run, "no-such-session", self.query), {"404"}),
            "not HTTP": (lambda s: self._raw(b"NOT HTTP AT ALL\r\n\r\n", answer=True), {"400", "closed"}),
            "query vanishing mid-body": (lambda s: self._vanish(run.format(session=s), self.query), {"vanished"}),
            "keys vanishing mid-body": (lambda s: self._vanish(keys.format(session=s), self.keys), {"vanished"}),
        }
        self._turn = 0

    def send(self, session: str) -> tuple[str, str, bool]:
        """Send the next kind in turn on ``session``: the kind, its outcome, and whether that
        outcome is one it may get (a connection failure is not)."""
        kind = list(self.kinds)[self._turn % len(self.kinds)]
        self._turn += 1
        request, allowed = self.kinds[kind]
        try:
            outcome = request(session)
        except (httpx.HTTPError, OSError) as e:
            outcome = f"error: {type(e).__name__}"
        return kind, outcome, outcome in allowed

    def _http(self, method: str, path: str, session: str, body: bytes | Iterator[bytes],
              content_type: str = OCTET_STREAM) -> str:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            response = http.request(method, path.format(session=session), content=body,
                                    headers={"content-type": content_type})
        return str(response.status_code)

    def _raw(self, data: bytes, answer: bool) -> str:
        """Send ``data`` on a new connection; with ``answer``, the status it gets (``closed``
        when the server closes without one), else ``vanished`` (closed at once)."""
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.sendall(data)
            if not answer:
                return "vanished"
            received = sock.recv(64)
        return received.split(b" ")[1].decode(errors="replace") if received.startswith(b"HTTP/") else "closed"

    def _vanish(self, path: str, body: bytes) -> str:
        """Declare ``body``, send half of it, and close the connection."""
        head = (f"{'PUT' if '/keys/' in path else 'POST'} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: {OCTET_STREAM}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        return self._raw(head + body[: len(body) // 2], answer=False)


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """``total`` zero bytes streamed in chunks (no ``Content-Length``: chunked encoding)."""
    for start in range(0, total, size):
        yield bytes(min(size, total - start))


@dataclass
class Worker:
    """One client thread: its own transport (session), channel and keys."""

    name: str
    transport: HttpTransport
    channel: EncryptedChannel
    first_row: int = 0

    def query(self, reference: Reference, row: int, record: Record) -> bool:
        """One checked query of input ``row``; whether it was answered (right or wrong)."""
        started = record.now()
        try:
            got = self.channel.logits(PACKED, reference.X[row : row + 1])[0]
        except FheError as e:
            record.add(Call(self.name, "query", started, record.now(), f"error: {error_kind(e)}", str(e)))
            return False
        reason = reference.wrong(row, got)
        record.add(Call(self.name, "query", started, record.now(), "wrong" if reason else "ok", reason or "",
                        server_s=self.channel.costs[-1].server_s))
        return True

    def run_queries(self, reference: Reference, record: Record, stop: threading.Event) -> None:
        """Query after query, cycling through the inputs, until ``stop``."""
        row = self.first_row
        while not stop.is_set():
            if not self.query(reference, row % len(reference.X), record):
                stop.wait(ERROR_PAUSE_S)
            row += 1

    def run_hostile(self, reference: Reference, record: Record, stop: threading.Event, hostile: HostileRequests,
                    every_s: float) -> None:
        """Every ``every_s``: a checked query on this worker's session, then one hostile request on it."""
        row = self.first_row
        while not stop.wait(every_s):
            answered = self.query(reference, row % len(reference.X), record)
            row += 1
            if answered:
                started = record.now()
                kind, outcome, allowed = hostile.send(self.transport.open())
                record.add(Call(self.name, kind, started, record.now(), outcome, allowed=allowed))


def new_worker(name: str, url: str, model: PackedFamilyModel, key_dir: Path, timeout_s: float,
               first_row: int) -> Worker:
    """A client of the server at ``url`` with its own session and its own keys (generated into
    ``key_dir`` and uploaded now, before the timed part)."""
    transport = HttpTransport(url, timeout=timeout_s)
    channel = EncryptedChannel(model.channel.circuits, key_dir, transport)
    channel.open()
    return Worker(name, transport, channel, first_row)


def guarded(target: Callable[..., None], name: str, record: Record, *args) -> threading.Thread:
    """A daemon thread running ``target(*args)``; anything it raises is recorded as an
    unexpected ``crash`` of ``name`` rather than lost with the thread."""
    def body() -> None:
        try:
            target(*args)
        except Exception as e:  # noqa: BLE001 -- a harness bug or an unforeseen failure: recorded, then reported
            record.add(Call(name, "crash", record.now(), record.now(), f"error: crash {type(e).__name__}", repr(e)))

    return threading.Thread(target=body, name=name, daemon=True)


@dataclass(frozen=True)
class Sample:
    """The server's memory at one moment (seconds since the soak began): its RSS and the RSS's
    anonymous part (less file-backed and shared pages, which the kernel drops and reads back at
    will: the part a leak grows), bytes, and the machine's 1-min load average."""

    t: float
    pid: int
    rss: int
    anon: int
    load: float


def sample_rss(server: ServerProcess, record: Record, samples: list[Sample], stop: threading.Event,
               every_s: float) -> None:
    """Append a :class:`Sample` every ``every_s`` until ``stop`` (none while the server is down)."""
    while True:
        pid = server.pid
        if pid is not None:
            try:
                memory = psutil.Process(pid).memory_info()
                samples.append(Sample(record.now(), pid, memory.rss, memory.rss - memory.shared, os.getloadavg()[0]))
            except psutil.NoSuchProcess:  # killed between the two looks
                pass
        if stop.wait(every_s):
            return


def growth(values: list[int]) -> dict:
    """How ``values`` (bytes, after warm-up) moved: the medians of the first 3 (warm) and of the
    last 3 (end), MB, and the growth in percent of the warm value."""
    warm, end = float(np.median(values[:3])), float(np.median(values[-3:]))
    return {"warm_mb": round(warm / 1e6, 1), "end_mb": round(end / 1e6, 1),
            "growth_pct": round(100 * (end - warm) / warm, 2)}


def rss_check(samples: list[Sample], starts: list[tuple[int, float]], warmup_s: float) -> list[dict]:
    """Per server process: its RSS at its start and at its peak (MB) and, after warm-up, the
    :func:`growth` of its RSS and of the RSS's anonymous part; passed when neither grew by more
    than :data:`RSS_GROWTH_BOUND`."""
    checks = []
    for pid, started in starts:
        mine = [s for s in samples if s.pid == pid]
        warm = [s for s in mine if s.t >= started + warmup_s]
        row: dict = {"pid": pid, "started_at_s": round(started, 1), "samples": len(mine),
                     "start_mb": round(mine[0].rss / 1e6, 1) if mine else None,
                     "max_mb": round(max(s.rss for s in mine) / 1e6, 1) if mine else None}
        if len(warm) < 6:
            checks.append({**row, "judged": False, "passed": True,
                           "why": f"{len(warm)} samples after warm-up, fewer than 6"})
            continue
        rss, anon = growth([s.rss for s in warm]), growth([s.anon for s in warm])
        checks.append({**row, "judged": True, "rss": rss, "anon": anon,
                       "passed": max(rss["growth_pct"], anon["growth_pct"]) <= 100 * RSS_GROWTH_BOUND})
    return checks


def percentiles(values: list[float]) -> dict:
    """p50, p95, p99 and the maximum of ``values`` (seconds, rounded to 0.1 ms)."""
    if not values:
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4),
            "max": round(max(values), 4)}


def in_restart(call: Call, restarts: list[dict]) -> bool:
    """Whether ``call`` overlaps a restart window: started before the restarted server answered,
    ended after the kill."""
    return any(call.started <= r["ready_at_s"] and call.ended >= r["killed_at_s"] for r in restarts)


def server_log_errors(log: Path) -> list[str]:
    """The server log's lines that report an error or a traceback."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line for line in lines if line.startswith("ERROR") or "Traceback" in line]


def summarize(args: argparse.Namespace, record: Record, duration_s: float, restarts: list[dict],
              workers: list[Worker], samples: list[Sample], rss: list[dict],
              log_errors: list[str], skipped: int) -> dict:
    """The soak's report (see the module's doc), with ``passed`` and the ``failures`` that decide it."""
    queries = [c for c in record.calls if c.what == "query"]
    ok = [c for c in queries if c.outcome == "ok"]
    wrong = [c for c in queries if c.outcome == "wrong"]
    failed = [c for c in record.calls if c.outcome.startswith("error:") or not c.allowed]
    expected = [c for c in failed if c.what != "crash" and in_restart(c, restarts)]
    unexpected = [c for c in failed if c.what == "crash" or not in_restart(c, restarts)]
    hostile: dict[str, Counter] = defaultdict(Counter)
    for c in record.calls:
        if c.what not in ("query", "crash"):
            hostile[c.what][c.outcome] += 1
    reopened = {w.name: w.transport.reopened for w in workers}
    answered = Counter(c.worker for c in ok + wrong)
    failures = [f"{len(wrong)} wrong answers"] if wrong else []
    failures += [f"{len(unexpected)} unexpected errors"] if unexpected else []
    failures += [f"{len(log_errors)} error lines in the server log"] if log_errors else []
    failures += [f"{w.name} got no answer" for w in workers if not answered[w.name]]
    failures += [f"{name} never re-established its session after the restart" for name, n in reopened.items()
                 if restarts and not n]
    failures += [f"server pid {c['pid']}: after warm-up its RSS grew {c['rss']['growth_pct']} %, its anonymous "
                 f"memory {c['anon']['growth_pct']} % (bound {100 * RSS_GROWTH_BOUND:g} %)" for c in rss
                 if not c["passed"]]
    return {
        "command": shlex.join([sys.executable, *sys.argv]), "family": args.family, "clients": args.clients,
        "minutes": args.minutes, "duration_s": round(duration_s, 1),
        "load_average": {"mean": round(float(np.mean([s.load for s in samples])), 2) if samples else None,
                         "max": round(max(s.load for s in samples), 2) if samples else None},
        "cpu_count": os.cpu_count(), "inputs_left_out_as_near_ties": skipped,
        "queries": {"answered": len(ok) + len(wrong), "ok": len(ok), "wrong": len(wrong), "failed": len(queries) -
                    len(ok) - len(wrong), "by_worker": dict(answered)},
        "throughput_qps": round(len(ok) / duration_s, 3) if duration_s else 0.0,
        "latency_s": percentiles([c.ended - c.started for c in ok]),
        "server_s": percentiles([c.server_s for c in ok if c.server_s is not None]),
        "errors": {"in_restart_window": dict(Counter(c.outcome if c.what == "query" else f"{c.what}: {c.outcome}"
                                                     for c in expected)),
                   "unexpected": dict(Counter(c.outcome if c.what == "query" else f"{c.what}: {c.outcome}"
                                              for c in unexpected))},
        "unexpected_examples": [asdict(c) for c in unexpected[:20]],
        "wrong_answers": [asdict(c) for c in wrong[:20]],
        "hostile": {kind: dict(outcomes) for kind, outcomes in sorted(hostile.items())},
        "restarts": restarts, "reopened": reopened,
        "rss": {"bound_pct": 100 * RSS_GROWTH_BOUND, "warmup_s": args.warmup_s, "processes": rss},
        "server_log_errors": log_errors[:20],
        "passed": not failures, "failures": failures,
    }


def write_report(out: Path, report: dict, record: Record, samples: list[Sample]) -> None:
    """``soak.json``, ``rss.csv`` and ``calls.csv`` in ``out``."""
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    with open(out / "rss.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "pid", "rss_mb", "anon_mb", "load_1min"])
        writer.writerows((round(s.t, 1), s.pid, round(s.rss / 1e6, 2), round(s.anon / 1e6, 2), s.load)
                         for s in samples)
    with open(out / "calls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["started_s", "seconds", "worker", "what", "outcome", "server_s"])
        writer.writerows((round(c.started, 3), round(c.ended - c.started, 4), c.worker, c.what, c.outcome,
                          c.server_s) for c in sorted(record.calls, key=lambda c: c.started))


def print_summary(report: dict, out: Path) -> None:
    q, lat = report["queries"], report["latency_s"]
    print(f"soak: {report['duration_s']} s, {report['clients']} clients (+1 hostile), {q['answered']} queries "
          f"answered ({q['ok']} ok, {q['wrong']} wrong, {q['failed']} failed), {report['throughput_qps']} queries/s")
    print(f"latency end to end p50 {lat.get('p50')} s, p95 {lat.get('p95')} s, p99 {lat.get('p99')} s; server "
          f"p50 {report['server_s'].get('p50')} s (1-min load average {report['load_average']['mean']} on "
          f"{report['cpu_count']} cores on average, other jobs included)")
    print(f"errors in the restart window {report['errors']['in_restart_window']}, unexpected "
          f"{report['errors']['unexpected']}; re-established {report['reopened']}")
    for p in report["rss"]["processes"]:
        judged = (f"after warm-up {p['rss']['warm_mb']} MB, end {p['rss']['end_mb']} MB; anonymous "
                  f"{p['anon']['warm_mb']} -> {p['anon']['end_mb']} MB") if p["judged"] else p["why"]
        print(f"server pid {p['pid']}: RSS start {p['start_mb']} MB, max {p['max_mb']} MB, {judged}")
    print(f"{'PASSED' if report['passed'] else 'FAILED: ' + '; '.join(report['failures'])} (report: {out})")


def soak(args: argparse.Namespace, model: PackedFamilyModel, reference: Reference, server: ServerProcess,
         keys_root: Path, record: Record) -> tuple[float, list[dict], list[Worker], list[Sample],
                                                   list[tuple[int, float]]]:
    """Run the clients, the hostile worker and the sampler for ``--minutes`` against the started
    ``server`` (restarting it once when asked); the soak's duration, restarts, workers, RSS
    samples and each server process's ``(pid, started_at)``."""
    url = server.url
    names = [f"client-{i}" for i in range(args.clients)] + ["hostile"]
    workers = [new_worker(name, url, model, keys_root / name, args.timeout_s, 7 * i) for i, name in enumerate(names)]
    hostile_worker = workers[-1]
    circuits = hostile_worker.transport.circuits()["circuits"]
    hostile = HostileRequests(url, hostile_worker.channel, circuits, reference.X[0])
    stop = threading.Event()
    samples: list[Sample] = []
    restarts: list[dict] = []
    record.began = time.monotonic()
    starts = [(server.pid, 0.0)]
    threads = [guarded(w.run_queries, w.name, record, reference, record, stop) for w in workers[:-1]]
    threads.append(guarded(hostile_worker.run_hostile, "hostile", record, reference, record, stop, hostile,
                           args.hostile_every_s))
    threads.append(guarded(sample_rss, "sampler", record, server, record, samples, stop, args.sample_s))
    for thread in threads:
        thread.start()
    try:
        restart_at = None if args.restart_at_minute is None else 60 * args.restart_at_minute
        while record.now() < 60 * args.minutes:
            if restart_at is not None and record.now() >= restart_at:
                restart_at = None
                try:
                    restarts.append(restart(server, record, args.down_s))
                except FheError as e:  # reported as an unexpected failure; the soak ends here
                    record.add(Call("server", "crash", record.now(), record.now(), "error: restart failed", str(e)))
                    break
                starts.append((server.pid, restarts[-1]["ready_at_s"]))
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=args.timeout_s + 30)
    duration = record.now()
    for worker in workers:
        worker.transport.close()
    return duration, restarts, workers, samples, starts


def restart(server: ServerProcess, record: Record, down_s: float) -> dict:
    """Kill the server (SIGKILL), keep it down ``down_s``, start it again on its port."""
    killed = record.now()
    server.kill()
    time.sleep(down_s)
    server.start()
    return {"killed_at_s": round(killed, 3), "ready_at_s": round(record.now(), 3)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the soak (default 20)")
    parser.add_argument("--clients", type=int, default=3, help="concurrent clients, each with its own session and "
                                                               "keys (default 3; one hostile client more)")
    parser.add_argument("--restart-at-minute", type=float, metavar="M",
                        help="kill the server (SIGKILL) at minute M and start it again")
    parser.add_argument("--down-s", type=float, default=2.0, help="seconds the killed server stays down (default 2)")
    parser.add_argument("--hostile-every-s", type=float, default=1.0,
                        help="seconds between the hostile client's rounds (default 1)")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument("--warmup-s", type=float, default=120.0,
                        help="seconds after each server start before its RSS is held flat (default 120)")
    parser.add_argument("--rows", type=int, default=64, help="evaluation patches the clients cycle through")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="seconds a client waits for one answer")
    parser.add_argument("--family", choices=FAMILIES, default=FAMILIES[0], help="a packed CKKS family")
    parser.add_argument("--library", default="synthetic", help="'synthetic' (default) or a folder")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML experiment configuration")
    parser.add_argument("--cache-dir", type=Path, metavar="DIR", help="the cache (default as ppazam's)")
    parser.add_argument("--workers", type=int, metavar="N", help="processes that build the library and datasets")
    parser.add_argument("--out", type=Path, default=Path("reports") / time.strftime("soak-%Y%m%d-%H%M%S"),
                        help="new or empty folder for the report (default reports/soak-DATE-TIME)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.minutes <= 0 or args.sample_s <= 0 or args.rows < 1:
        parser.error("--clients and --rows must be >= 1, --minutes and --sample-s > 0")
    if args.restart_at_minute is not None and not 0 < args.restart_at_minute < args.minutes:
        parser.error("--restart-at-minute must fall inside the soak")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"{args.out} is not a new or empty folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    record = Record()
    try:
        model, reference, skipped = prepare(args)
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ppazam-soak-") as tmp:
            bundle = export_server(model.channel.circuits, Path(tmp) / "bundle",
                                   {"family": args.family, "model": model.folder.name})
            with ServerProcess(bundle, args.out / "server.log") as server:
                server.start()
                duration, restarts, workers, samples, starts = soak(args, model, reference, server,
                                                                    Path(tmp) / "keys", record)
    except PpazamError as e:  # setting up: the model, the server, the clients' first keys
        print(f"error: {e}", file=sys.stderr)
        return 2
    rss = rss_check(samples, starts, args.warmup_s)
    report = summarize(args, record, duration, restarts, workers, samples, rss,
                       server_log_errors(args.out / "server.log"), skipped)
    write_report(args.out, report, record, samples)
    print_summary(report, args.out)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
