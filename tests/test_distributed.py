"""Ray (ppazam_core.distributed, `pytest bench --ray`): a real two-node cluster on loopback.

The cluster is ``ray start --head`` plus one worker node (``ray start --address``), dashboard
off, object stores capped, each started with ``--block`` in a process group of its own that the
fixture ends; nothing else on the machine is touched. Work must give the same results with and
without Ray, survive a killed worker and report an item that raises.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import recording
from ppazam_core import distributed
from ppazam_core.distributed import DistributedError, RayConfig
from ppazam_core.errors import ConfigError, FheError
from ppazam_core.families.embedding_head_packed import FAMILY as PACKED_FAMILY
from ppazam_core.families.embedding_head_packed import PACKED
from ppazam_core.fhe.deployment import EncryptedChannel, export_server
from ppazam_core.fhe.ray_server import RayTransport
from ppazam_core.parallel import parallel_map
from ppazam_core.recognition import Mode, predict
from fixtures.stages import Stages
from ppazam_core.results.records import CONDITION_KEYS, PREDICTION_COLUMNS, QUERY_KEYS
from test_packed import bundle_bytes, leaks, packed_model, packed_queries, secret_key_pieces  # noqa: F401 (fixtures)

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'ppazam[ray]')")

ROOT = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).with_name("ray")
CLUSTER_START_S = 120


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    with pytest.raises(DistributedError, match=r"pip install 'ppazam\[ray\]'"):
        distributed.start(RayConfig())


@pytest.mark.parametrize("field, value", [("cpus_per_task", 0), ("memory_per_task_mb", "2G"), ("max_retries", -1),
                                          ("address", ""), ("local_cpus", True), ("in_flight_per_cpu", 0)])
def test_bad_ray_settings_are_refused_with_their_name(field, value):
    with pytest.raises(ConfigError, match=field.split("_per")[0] if field != "address" else "address"):
        RayConfig(**{field: value})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server():
    """The port of an HTTP server on loopback (not Ray)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server():
    """The port of a server on loopback that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def _ray_node(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(RAY_BIN), "start", "--block", "--disable-usage-stats", "--include-log-monitor=false",
                             "--num-cpus=2", "--object-store-memory=100000000", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def _end(process: subprocess.Popen) -> None:
    """End a ``ray start --block``: SIGTERM to it (it stops its node's processes), then SIGKILL
    to whatever of its process group is left."""
    try:
        process.terminate()
        process.wait(30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-node Ray cluster on loopback, ended after the module's tests."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    nodes = [_ray_node("--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false")]
    try:
        deadline = time.monotonic() + CLUSTER_START_S
        while subprocess.run([str(RAY_BIN), "status", f"--address={address}"], capture_output=True).returncode:
            assert time.monotonic() < deadline and nodes[0].poll() is None, f"no Ray head at {address}"
            time.sleep(2)
        nodes.append(_ray_node(f"--address={address}", "--node-ip-address=127.0.0.1"))
        distributed.start(RayConfig(address=address))
        while distributed.describe(RayConfig(address=address))["nodes"] < 2:
            assert time.monotonic() < deadline and nodes[1].poll() is None, f"the worker node never joined {address}"
            time.sleep(2)
        yield address
    finally:
        distributed.stop()
        for process in reversed(nodes):
            _end(process)
        os.environ.pop("RAY_AUTH_MODE", None)


def _node_and_square(item: int) -> tuple[str, int]:
    time.sleep(0.5)
    return ray.get_runtime_context().get_node_id(), item * item


def test_items_run_on_both_nodes_in_order(cluster):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    results = list(parallel_map(_node_and_square, list(range(12)), workers=1, description="squares"))
    assert [square for _, square in results] == [i * i for i in range(12)]
    assert len({node for node, _ in results}) == 2


def _slow_until_killed(job: tuple[int, str]) -> int:
    """Item 3's first attempt writes its pid and waits to be killed; every other run squares."""
    item, folder = job
    with open(Path(folder) / "attempts", "a") as attempts:
        attempts.write(f"{item}\n")
    pid_file = Path(folder) / "pid"
    if item == 3 and not pid_file.exists():
        pid_file.write_text(str(os.getpid()))
        time.sleep(120)
    return item * item


def test_a_worker_killed_mid_task_is_retried_and_gives_the_same_result(cluster, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    pid_file = tmp_path / "pid"

    def kill_when_started() -> None:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_when_started, daemon=True)
    killer.start()
    results = list(parallel_map(_slow_until_killed, [(i, str(tmp_path)) for i in range(6)], 1, "squares"))
    killer.join(5)
    assert results == [i * i for i in range(6)]
    assert (tmp_path / "attempts").read_text().split().count("3") == 2  # killed once, retried once


def _raise_on_two(job: tuple[int, str]) -> int:
    item, folder = job
    with open(Path(folder) / "attempts", "a") as attempts:
        attempts.write(f"{item}\n")
    if item == 2:
        raise ValueError("item 2 is bad")
    return item


def test_an_item_that_raises_raises_its_own_error_once(cluster, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with pytest.raises(ValueError, match="item 2 is bad"):
        list(parallel_map(_raise_on_two, [(i, str(tmp_path)) for i in range(4)], 1, "items"))
    assert (tmp_path / "attempts").read_text().split().count("2") == 1  # an error of the item is not retried


class _Holder:
    """An actor's object for the pool test: an offset it was given once."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def shifted(self, item: int) -> tuple[str, int]:
        if item == 5:
            raise ValueError("item 5 is bad")
        return ray.get_runtime_context().get_node_id(), item + self.offset


def test_an_actor_pool_answers_in_order_on_both_nodes_and_raises_a_method_s_own_error(cluster):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with distributed.ActorPool(_Holder, (100,), distributed.slots(2)) as pool:
        assert len(pool) == 2
        answers = list(pool.map("shifted", [(i,) for i in range(5)], "shifting"))
        assert [value for _, value in answers] == [100, 101, 102, 103, 104]
        assert len({node for node, _ in answers}) == 2
        with pytest.raises(ValueError, match="item 5 is bad"):
            list(pool.map("shifted", [(i,) for i in range(4, 8)], "shifting"))


TINY_SUITE = """
description = "three families on a two-node Ray cluster"
library = "synthetic"
families = ["mfcc-logreg", "embedding-head-packed", "landmark-fp"]
modes = ["fp32", "quant"]  # the deterministic ones: fhe-sim draws Concrete's or CKKS's error, built anew
bit_widths = [4]
rounding_bits = [6]
levels = ["clean", "large"]
queries_per_track = 2
fhe_budget_s = 0
latency_rounds = 2

[experiment.synthetic]
seed = 11
n_tracks = 4
duration_s = 6.0

[experiment.data]
train_augmentations = 6

[experiment.mfcc]
train_augmentations = 6
"""


def _bench(tmp_path: Path, name: str, *extra: str) -> pd.DataFrame:
    suite = tmp_path / "tiny.toml"
    suite.write_text(TINY_SUITE)
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "pytest", "bench", "--suite", str(suite), "--out", str(out),
                           "--cache-dir", str(tmp_path / f"cache-{name}"), "-q", "-p", "no:cacheprovider", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "CI": "true", "RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with gzip.open(out / "predictions.csv.gz", "rt") as f:
        return pd.read_csv(f)


def test_a_suite_on_the_cluster_predicts_what_it_predicts_without_ray(cluster, tmp_path):
    local = _bench(tmp_path, "local")
    on_ray = _bench(tmp_path, "ray", f"--ray={cluster}")
    key = [*CONDITION_KEYS, *QUERY_KEYS]
    compared = [column for column in PREDICTION_COLUMNS if column != "seconds"]
    local, on_ray = (frame[compared].sort_values(key).reset_index(drop=True) for frame in (local, on_ray))
    assert set(local["family"]) == {"mfcc-logreg", "embedding-head-packed", "landmark-fp"}
    assert set(local["mode"]) == {"fp32", "quant"}
    pd.testing.assert_frame_equal(local, on_ray)
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run["ray"]["nodes"] == 2 and run["ray"]["address"] == cluster
    assert any(stage["stage"] == "models on Ray" for stage in run["stages"])


def test_simulated_queries_are_spread_over_actors_that_load_the_model_once(cluster, packed_model, packed_queries,
                                                                            tiny_config, session_cache):
    """fhe-disable and fhe-sim rankings on Ray: shares of the queries go to a pool of actors that
    each hold the model (loaded from the shared store); fhe-disable gives what it gives here."""
    config, _ = tiny_config
    stages = Stages("synthetic", session_cache, workers=1, simulated_rows_per_share=10)
    try:
        model = stages.model(PACKED_FAMILY, config, ("fhe-disable", "fhe-sim"))
        here = predict(model, packed_queries, Mode.FHE_DISABLE)
        spread = stages._simulated_on_ray(model, packed_queries, Mode.FHE_DISABLE, None, True)
        pool = stages._simulators[1]
        assert len(pool) == 2 and len(spread.rows) == packed_queries.queries == 30  # one actor for 2 CPUs a node
        for name in ("rows", "truth", "ranking", "confidence"):
            np.testing.assert_array_equal(getattr(spread, name), getattr(here, name), err_msg=name)
        simulated = stages._simulated_on_ray(model, packed_queries, Mode.FHE_SIM, np.arange(25), True)
        assert stages._simulators[1] is pool  # the same actors: the model is loaded once
        np.testing.assert_array_equal(simulated.ranking[:, 0], here.ranking[:25, 0])
        assert stages._simulated_on_ray(model, packed_queries, Mode.FP32, None, True) is None  # fast: on the driver
        assert stages._simulated_on_ray(model, packed_queries, Mode.FHE_DISABLE, np.arange(15), True) is None
    finally:
        stages.close()


def test_encrypted_queries_served_on_a_worker_get_there_without_any_secret_key(cluster, packed_model, packed_queries,
                                                                               tmp_path):
    received: list[bytes] = []

    Recording = recording(RayTransport, received)  # every byte the server gets
    bundle = export_server(packed_model.channel.circuits, tmp_path / "bundle", {"family": PACKED_FAMILY})
    X = packed_model.embedder.embed_patches(np.asarray(packed_queries.X[:3]))
    with Recording(bundle, from_circuits=False) as transport:
        channel = EncryptedChannel(packed_model.channel.circuits, tmp_path / "client-keys", transport)
        served = channel.logits(PACKED, X)
        with pytest.raises(FheError):  # the server's own refusal, raised on the driver; the worker goes on
            transport.run(PACKED, b"not a ciphertext")
        assert np.array_equal(channel.logits(PACKED, X[:1]).argmax(axis=1), served[:1].argmax(axis=1))
    clear = packed_model.head.logits(X, Mode.FP32)
    np.testing.assert_allclose(served, clear, atol=0.05)
    assert np.array_equal(served.argmax(axis=1), clear.argmax(axis=1))
    assert len(received) == 1 + 3 + 1 + 1  # the Galois keys once, three queries, the refused one, one more
    pieces = secret_key_pieces(channel.client(PACKED))
    assert not leaks(pieces, received) and not leaks(pieces, bundle_bytes(bundle))


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:{free}", "no Ray cluster answers at 127.0.0.1:"),
    ("127.0.0.1:{http}", "accepts connections but is not a Ray head"),
    ("127.0.0.1:{silent}", "accepts connections but is not a Ray head"),
    ("ray://127.0.0.1:{silent}", "completes no gRPC handshake"),
    ("notahost:99999", "port of 1 to 65535"),
    ("auto", "no Ray cluster answers at 127.0.0.1:[0-9]+ \\(auto: the cluster .* names"),
], ids=["nothing-listens", "an-http-server", "a-server-that-never-answers", "a-ray-client-address-that-never-answers",
        "no-such-port", "auto-names-a-dead-cluster"])
def test_an_address_where_no_ray_answers_is_an_error_in_seconds(address, message, tmp_path, monkeypatch,
                                                                 http_server, silent_server):
    """Was: `--ray=127.0.0.1:1` and `--ray=notahost:99999` retried without end, printing Ray's
    warnings; `auto` followed a file a dead cluster left behind; an HTTP server's port, or one
    that accepts and never answers, hung in ``ray.init``."""
    free = _free_port()
    stale = tmp_path / "ray_current_cluster"
    stale.write_text(f"127.0.0.1:{free}")
    monkeypatch.setattr(distributed, "CURRENT_CLUSTER_FILE", stale)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = distributed.active()  # the module's cluster, when its tests ran first
    started = time.monotonic()
    with pytest.raises((DistributedError, ConfigError), match=message):
        distributed.start(RayConfig(address=address.format(free=free, http=http_server, silent=silent_server)))
    assert time.monotonic() - started < distributed.CONNECT_TIMEOUT_S + 5
    assert distributed.active() is before
