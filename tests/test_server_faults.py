"""The HTTP server under time and faults (issue 34): an oversize body is refused by its size
before anything else, queued queries do not starve key uploads or new sessions, a server killed
and restarted mid-run costs its clients one clear error and no wrong answer (they re-establish
their sessions and keys on their own), and a short soak (bench/soak.py) with a restart passes its
checks. The packed CKKS head serves: a query costs tens of ms."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ppazam_core.fhe.deployment import EncryptedChannel
from ppazam_core.errors import FheError
from ppazam_core.families.packed_head import PACKED
from ppazam_core.fhe.packed import PackedClient
from ppazam_core.recognition import Mode
from ppazam_core.fhe.serving import OCTET_STREAM, QUEUE_SECONDS, HttpTransport, ServerProcess, serve_in_background
from test_packed import packed_bundle, packed_model, packed_queries  # noqa: F401  (module fixtures, reused)

BINARY = {"content-type": OCTET_STREAM}
ROOT = Path(__file__).resolve().parents[1]
WORKER_THREADS = 40  # anyio's default thread pool, which starlette's run_in_threadpool shares
TOLERANCE_SIGMAS = 12  # an encrypted score may differ from fhe-sim's by this many CKKS error std


@pytest.fixture(scope="module")
def embedded(packed_model, packed_queries):  # noqa: F811
    """Three query embeddings and fhe-sim's scores for them."""
    X = packed_model.embedder.embed_patches(np.asarray(packed_queries.X[:3]))
    return X, packed_model.head.logits(X, Mode.FHE_SIM)


def test_an_oversize_body_gets_413_before_a_missing_keys_409(packed_bundle):  # noqa: F811
    with serve_in_background(packed_bundle) as url, httpx.Client(base_url=url, timeout=60) as http:
        caps = http.get("/circuits").json()["circuits"][PACKED]
        session = http.post("/sessions").json()["session"]  # no keys uploaded
        run = f"/sessions/{session}/circuits/{PACKED}"
        cap = caps["max_query_body_bytes"]
        declared = http.post(run, content=bytes(cap + 1), headers=BINARY)
        assert declared.status_code == 413 and "more than this circuit accepts" in declared.json()["detail"]
        streamed = http.post(run, content=(bytes(64 * 1024) for _ in range(cap // 65536 + 2)), headers=BINARY)
        assert streamed.status_code == 413 and "passes" in streamed.json()["detail"]
        assert http.post(run, content=bytes(100), headers=BINARY).status_code == 409  # within the cap: no keys
        # the size comes before the session too
        oversize_keys = bytes(caps["max_keys_body_bytes"] + 1)
        assert http.put(f"/sessions/nope/keys/{PACKED}", content=oversize_keys, headers=BINARY).status_code == 413
        assert http.post(f"/sessions/nope/circuits/{PACKED}", content=bytes(cap + 1), headers=BINARY).status_code == 413


def test_queued_queries_do_not_starve_key_uploads(packed_model, packed_bundle, embedded, tmp_path):  # noqa: F811
    """More queries queued than the server has worker threads (the test holds the circuit's run
    lock, so none can run): another client's new session and key upload are still served, before
    any queued query is answered; every queued query had arrived before the upload finished."""
    X, _ = embedded
    circuit = packed_model.channel.circuits / PACKED / "client"
    waiting, newcomer = PackedClient(circuit, tmp_path / "waiting"), PackedClient(circuit, tmp_path / "newcomer")
    query, newcomer_keys = waiting.encrypt(X[:1]), newcomer.evaluation_keys()
    n_queries = WORKER_THREADS + 8
    with serve_in_background(packed_bundle, max_queued=n_queries + 4) as url, \
            httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=n_queries + 8)) as http:
        session = http.post("/sessions").json()["session"]
        assert http.put(f"/sessions/{session}/keys/{PACKED}", content=waiting.evaluation_keys(),
                        headers=BINARY).status_code == 204
        answers: list[tuple[float, httpx.Response]] = []

        def send_query() -> None:
            response = http.post(f"/sessions/{session}/circuits/{PACKED}", content=query, headers=BINARY)
            answers.append((time.perf_counter(), response))

        def upload() -> None:
            other = http.post("/sessions").json()["session"]
            response = http.put(f"/sessions/{other}/keys/{PACKED}", content=newcomer_keys, headers=BINARY)
            uploaded.append((time.perf_counter(), other, response))

        queries = [threading.Thread(target=send_query) for _ in range(n_queries)]
        uploaded: list[tuple[float, str, httpx.Response]] = []
        uploader = threading.Thread(target=upload)
        with packed_bundle.server(PACKED).run_lock:
            for thread in queries:
                thread.start()
            time.sleep(2.0)  # the queries arrive (checked below from their queueing seconds)
            uploader.start()
            uploader.join(timeout=60)
            assert uploaded, "the key upload (or the new session) waited behind the queued queries"
            assert not answers, "a query was answered while the circuit's run lock was held"
            released = time.perf_counter()
        for thread in queries:
            thread.join(timeout=300)
        done, other, response = uploaded[0]
        assert response.status_code == 204
        assert len(answers) == n_queries and all(r.status_code == 200 for _, r in answers)
        # each query waited from its arrival to the release: all had arrived before the upload finished
        assert min(float(r.headers[QUEUE_SECONDS]) for _, r in answers) > released - done
        np.testing.assert_allclose(waiting.decrypt(answers[0][1].content), waiting.decrypt(answers[-1][1].content),
                                   atol=1e-3)
        answer = http.post(f"/sessions/{other}/circuits/{PACKED}", content=newcomer.encrypt(X[:1]), headers=BINARY)
        assert answer.status_code == 200
        np.testing.assert_allclose(newcomer.decrypt(answer.content), waiting.decrypt(answers[0][1].content),
                                   atol=1e-3)


def failure_of(call) -> BaseException | None:
    try:
        call()
    except Exception as e:  # noqa: BLE001 -- the test checks which
        return e
    return None


def test_a_killed_and_restarted_server_costs_one_call_and_no_wrong_answer(packed_model, packed_bundle,  # noqa: F811
                                                                          embedded, tmp_path):
    """A query in flight when the server is killed, and one while it is down, fail with one clear
    error naming the server; once it is back on the same port, the client re-creates its session
    and re-uploads its keys on its own, and its answers rank the tracks as fhe-sim does."""
    X, simulated = embedded
    tolerance = TOLERANCE_SIGMAS * float(packed_model.head.error["error_std"])
    bundle = packed_bundle.folders[PACKED].parent
    with ServerProcess(bundle, tmp_path / "serve.log") as server:
        url = server.start()
        with HttpTransport(url, timeout=60, connect_timeout=5) as transport:
            channel = EncryptedChannel(packed_model.channel.circuits, tmp_path / "keys", transport)

            def agrees(row: int) -> None:
                got = channel.logits(PACKED, X[row : row + 1])[0]
                assert list(np.argsort(-got)) == list(np.argsort(-simulated[row]))
                np.testing.assert_allclose(got, simulated[row], atol=tolerance)

            agrees(0)
            first = transport.session
            os.kill(server.pid, signal.SIGSTOP)  # frozen: the next query is surely in flight when it dies
            failures: list[BaseException | None] = []
            in_flight = threading.Thread(target=lambda: failures.append(failure_of(lambda: agrees(1))))
            in_flight.start()
            time.sleep(1.0)
            server.kill()
            in_flight.join(timeout=60)
            down = failure_of(lambda: agrees(1))
            for error in (failures[0], down):
                assert isinstance(error, FheError), repr(error)
                assert f"the ppazam server at {url}" in str(error) and "\n" not in str(error)
            assert re.search("broke off before its answer", str(failures[0])), failures[0]
            assert "cannot reach" in str(down)
            assert server.start() == url  # the same port
            agrees(1)
            agrees(2)
            assert transport.reopened == 1 and transport.session != first


def test_a_short_soak_with_a_restart_passes_its_checks(tiny_config, session_cache, tmp_path):
    _, toml = tiny_config
    out = tmp_path / "soak"
    command = [sys.executable, str(ROOT / "bench" / "soak.py"), "--config", str(toml), "--cache-dir",
               str(session_cache), "--workers", "1", "--minutes", "0.75", "--clients", "2",
               "--restart-at-minute", "0.25", "--warmup-s", "5", "--sample-s", "1", "--hostile-every-s", "0.5",
               "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "soak.json").read_text())
    assert report["passed"] and not report["failures"]
    assert report["queries"]["wrong"] == 0 and report["queries"]["ok"] >= 20
    assert set(report["queries"]["by_worker"]) == {"client-0", "client-1", "hostile"}
    assert report["errors"]["unexpected"] == {} and report["server_log_errors"] == []
    assert len(report["restarts"]) == 1 and all(n == 1 for n in report["reopened"].values())
    assert len(report["hostile"]) == 13  # every hostile kind was sent
    assert all(p["samples"] >= 5 for p in report["rss"]["processes"]) and len(report["rss"]["processes"]) == 2
    assert {"p50", "p95", "p99"} <= set(report["latency_s"]) and report["throughput_qps"] > 0
    assert (out / "rss.csv").read_text().startswith("t_s,pid,rss_mb") and (out / "calls.csv").exists()
    assert "PASSED" in done.stdout
