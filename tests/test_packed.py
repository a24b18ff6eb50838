"""The packed CKKS head (ppazam_core.fhe.packed) and its family, embedding-head-packed: the
packed layout computes W x + b, the answer does not grow with the library inside one shard, the
encrypted scores agree with the simulation's, hostile keys and ciphertexts are refused with a 4xx
while the server keeps serving, and no secret-key material reaches the server."""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import tenseal.sealapi as seal
import zstandard
from rich.console import Console

import ppazam_core.cli as cli
from conftest import recording, write_audio
from ppazam_core.cli import main
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.fhe.deployment import EncryptedChannel, LocalTransport, ServerBundle, client_key_dir, export_server
from ppazam_core.fhe.wire import KEYS, QUERY, RESULT, frame, unframe
from ppazam_core.errors import ConfigError, FheError
from ppazam_core.families import family_features, train_family
from ppazam_core.families.embedding_head_packed import PACKED, PackedConfig
from ppazam_core.fhe.packed import (PackedClient, build_packed, bsgs_split, check_security, diagonals, inflated,
                                    packed_scores, plan, seal_context, to_bytes)
from ppazam_core.models.pipeline import noise_folder
from ppazam_core.results.privacy import ledger
from ppazam_core.recognition import Mode, predict, sample_queries
from ppazam_core.fhe.serving import OCTET_STREAM, HttpTransport, serve_in_background

FAMILY = "embedding-head-packed"
BINARY = {"content-type": OCTET_STREAM}
PARAMS = dict(ring=4096, moduli_bits=(38, 28, 43), query_scale_bits=30)


def unit_rows(rng, n, d):
    X = rng.normal(size=(n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Random heads of 64 inputs: 8 and 4,000 tracks (one shard), 4,100 tracks (two)."""
    rng = np.random.default_rng(3)
    built = {}
    for n_tracks in (8, 4000, 4100):
        W, b = rng.normal(size=(n_tracks, 64)), rng.normal(size=n_tracks)
        folder = tmp_path_factory.mktemp("packed") / f"n{n_tracks}" / PACKED
        stats = build_packed(W, b, calibration=unit_rows(rng, 2, 64), folder=folder, **PARAMS)
        built[n_tracks] = (W, b, folder, stats)
    return built


@pytest.mark.parametrize("n_tracks, dim, ring", [(6, 20, 4096), (300, 64, 4096), (9000, 64, 4096), (50, 3, 2048)])
def test_the_packed_layout_computes_every_score(n_tracks, dim, ring):
    rng = np.random.default_rng(n_tracks)
    W, b, x = rng.normal(size=(n_tracks, dim)), rng.normal(size=n_tracks), rng.normal(size=dim)
    params = plan(dim, n_tracks, ring, (20, 14, 20) if ring == 2048 else (38, 28, 43), 16)
    assert params.shards == math.ceil(n_tracks / ring) and params.baby * params.giant == params.padded_dim
    np.testing.assert_allclose(packed_scores(params, *diagonals(params, W, b), x), W @ x + b, atol=1e-9)


def test_bsgs_trades_baby_steps_for_shards():
    assert bsgs_split(64, 1) == (8, 8)  # 14 rotations
    assert bsgs_split(64, 25) == (32, 2)  # 31 query rotations shared by every shard, 1 per shard
    assert bsgs_split(64, 100) == (64, 1)  # 63 query rotations, none per shard
    assert plan(64, 100_000, 4096, (38, 28, 43), 30).rotations_per_query() == 31 + 25


def test_parameters_beyond_the_128_bit_table_are_refused():
    assert check_security(4096, (38, 28, 43)) == 128
    with pytest.raises(ConfigError, match="at most 109 bits"):
        check_security(4096, (40, 30, 40))
    PackedConfig(ring=8192, moduli_bits=(60, 60, 60), query_scale_bits=40)  # 180 of 218 bits: fits
    with pytest.raises(ConfigError, match="at most 109 bits"):
        PackedConfig(ring=4096, moduli_bits=(40, 30, 40))
    with pytest.raises(ConfigError, match="query_scale_bits"):
        PackedConfig(query_scale_bits=37)


def test_scores_too_large_for_q0_are_refused(tmp_path):
    W = np.full((4, 8), 100.0)  # scores up to 800 * 2 need 11 bits above the query's scale
    with pytest.raises(ConfigError, match="query_scale_bits"):
        build_packed(W, np.zeros(4), calibration=unit_rows(np.random.default_rng(0), 2, 8), folder=tmp_path / "p",
                     **PARAMS)


def test_encrypted_scores_are_the_exact_ones_within_the_measured_error(heads, tmp_path):
    rng = np.random.default_rng(11)
    for n_tracks, (W, b, folder, stats) in heads.items():
        channel = EncryptedChannel(folder.parent, tmp_path / "keys")
        X = unit_rows(rng, 2, 64)
        got = channel.logits(PACKED, X)
        assert got.shape == (2, n_tracks)
        np.testing.assert_allclose(got, X @ W.T + b, atol=1e-3)
        assert (got.argmax(axis=1) == (X @ W.T + b).argmax(axis=1)).all()
        assert stats.pbs_count == 0 and stats.security_bits == 128 and stats.n_classes == n_tracks


def test_the_answer_does_not_grow_with_the_library_inside_one_shard(heads):
    small, large, sharded = (heads[n][3] for n in (8, 4000, 4100))
    assert abs(large.output_ciphertext_bytes - small.output_ciphertext_bytes) < 0.05 * small.output_ciphertext_bytes
    assert large.output_ciphertext_bytes <= 64 * 1024 and large.input_ciphertext_bytes <= 64 * 1024
    # past one ciphertext's 4,096 scores: a second shard, twice the answer
    assert 1.9 < sharded.output_ciphertext_bytes / large.output_ciphertext_bytes < 2.1
    assert large.serialized_key_bytes < 20e6


# --- the family on the tiny library ---


@pytest.fixture(scope="module")
def packed_model(tiny_library, tiny_config, session_cache):
    config, _ = tiny_config
    return train_family(FAMILY, tiny_library, config, session_cache, workers=1)


@pytest.fixture(scope="module")
def packed_queries(tiny_library, tiny_config, session_cache):
    config, _ = tiny_config
    spec = replace(config.data.eval_spec("clean"), features=family_features(FAMILY, config))
    return build_dataset(tiny_library, spec, session_cache, noise_folder(tiny_library, config.data, session_cache),
                         workers=1)


def test_the_family_runs_in_every_mode_and_fhe_agrees_with_fhe_sim(packed_model, packed_queries):
    fp32 = predict(packed_model, packed_queries, Mode.FP32)
    assert fp32.hits(1).mean() >= 0.6  # chance is 1/6
    modes = {mode: predict(packed_model, packed_queries, mode) for mode in (Mode.QUANT, Mode.FHE_DISABLE, Mode.FHE_SIM)}
    for result in modes.values():
        assert np.array_equal(result.ranking[:, 0], fp32.ranking[:, 0])  # 30-bit fixed point: the same top-1
    rows = sample_queries(packed_queries, seed=0, count=3)
    encrypted = predict(packed_model, packed_queries, Mode.FHE, rows)
    assert np.array_equal(encrypted.ranking[:, 0], modes[Mode.FHE_SIM].ranking[encrypted.rows, 0])
    X = packed_model.embedder.embed_patches(np.asarray(packed_queries.X[rows[:2]]))
    simulated, real = packed_model.head.logits(X, Mode.FHE_SIM), packed_model.head.logits(X, Mode.FHE)
    sigma = packed_model.head.error["error_std"]
    assert 0 < sigma < 1e-3 and np.abs(simulated - real).max() < 12 * sigma
    costs = packed_model.channel.costs
    assert costs and all(c.pbs_count == 0 and c.request_bytes <= 64 * 1024 and c.response_bytes <= 64 * 1024
                         for c in costs)


def test_fp32_is_the_embedding_head_s_float_model(packed_model, packed_queries, tiny_library, tiny_config,
                                                 session_cache):
    config, _ = tiny_config
    head = train_family("embedding-head", tiny_library, config, session_cache, workers=1)
    X = packed_model.embedder.embed_patches(np.asarray(packed_queries.X[:10]))
    np.testing.assert_allclose(packed_model.head.logits(X, Mode.FP32), head.head.logits(X, Mode.FP32), atol=1e-6)


def test_the_ledger_states_the_packed_design(packed_model, packed_queries):
    predict(packed_model, packed_queries, Mode.FHE, sample_queries(packed_queries, seed=1, count=1))
    row = ledger(packed_model, Mode.FHE, packed_model.channel)
    assert row.server_learns_bits == 0 and row.server_calls == 1 and row.client_scores == len(packed_model.track_ids)
    assert row.security_bits == 128 and row.sizes_measured == 1
    assert 0 < row.bytes_up <= 64 * 1024 and 0 < row.bytes_down <= 64 * 1024 and 0 < row.key_bytes_up < 20e6
    assert 0 <= row.p_error_per_query < 0.01
    clear = ledger(packed_model, Mode.FP32, packed_model.channel)
    assert clear.server_learns_bits == math.log2(len(packed_model.track_ids))


# --- hostile requests over HTTP ---


@pytest.fixture(scope="module")
def packed_bundle(packed_model, tmp_path_factory):
    dest = tmp_path_factory.mktemp("packed-serving") / "bundle"
    return ServerBundle.load(export_server(packed_model.channel.circuits, dest, {"family": FAMILY}))


@pytest.fixture(scope="module")
def packed_url(packed_bundle):
    with serve_in_background(packed_bundle) as url:
        yield url


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Another packed head, under other CKKS parameters (other primes: another modulus chain)."""
    rng = np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("foreign") / PACKED
    build_packed(rng.normal(size=(8, 64)), rng.normal(size=8), ring=4096, moduli_bits=(36, 30, 43), query_scale_bits=28,
                 calibration=unit_rows(rng, 1, 64), folder=folder)
    return folder


def session(url):
    return httpx.post(f"{url}/sessions").json()["session"]


def test_hostile_keys_and_ciphertexts_are_refused_and_the_server_keeps_serving(packed_model, packed_bundle, packed_url,
                                                                             foreign, tmp_path):
    client = PackedClient(packed_model.channel.circuits / PACKED / "client", tmp_path / "keys")
    circuit = client.stats.circuit_id
    keys, query = client.evaluation_keys(), client.encrypt(np.eye(1, client.params.dim))
    stranger = PackedClient(foreign / "client", tmp_path / "keys")
    other_keys = unframe(stranger.evaluation_keys(), KEYS, stranger.stats.circuit_id)
    other_query = unframe(stranger.encrypt(np.eye(1, stranger.params.dim)), QUERY, stranger.stats.circuit_id)
    sid = session(packed_url)
    base = f"{packed_url}/sessions/{sid}"
    put = lambda body: httpx.put(f"{base}/keys/{PACKED}", content=body, headers=BINARY)  # noqa: E731
    post = lambda body: httpx.post(f"{base}/circuits/{PACKED}", content=body, headers=BINARY)  # noqa: E731
    assert post(query).status_code == 409  # a query before its keys
    tampered = bytearray(keys)
    tampered[-100] ^= 0xFF
    key_payload = unframe(keys, KEYS, circuit)
    refused_keys = {
        "tampered frame": bytes(tampered),
        "truncated": keys[: len(keys) // 2],
        "garbage": frame(KEYS, circuit, b"\x00" * 5000),
        "keys of other parameters": frame(KEYS, circuit, other_keys),
        "a query sent as keys": frame(KEYS, circuit, unframe(query, QUERY, circuit)),
        "corrupted key material": frame(KEYS, circuit, key_payload[:200] + bytes(len(key_payload) - 200)),
        "a zstd bomb": frame(KEYS, circuit, zstd_bomb(key_payload, 64 * 1024**2)),
    }
    for what, body in refused_keys.items():
        answer = put(body)
        assert 400 <= answer.status_code < 500, what
        assert "detail" in answer.json(), what
    assert put(keys + b"\x00" * (len(keys) // 2)).status_code == 413  # past the key cap
    generator = seal.KeyGenerator(client.context, client.secret_key)
    partial = to_bytes(generator.create_galois_keys(client.params.galois_elements()[:-1]))
    answer = put(frame(KEYS, circuit, partial))
    assert answer.status_code == 400 and "lack the rotations" in answer.json()["detail"]
    assert put(keys).status_code == 204
    payload = unframe(query, QUERY, circuit)
    refused_queries = {
        "tampered frame": query[:-1] + bytes([query[-1] ^ 1]),
        "garbage": frame(QUERY, circuit, b"\x01" * 3000),
        "ciphertext of other parameters": frame(QUERY, circuit, other_query),
        "truncated ciphertext": frame(QUERY, circuit, payload[: len(payload) // 2]),
        "keys sent as a query": frame(QUERY, circuit, key_payload[:40000]),
        "a result sent as a query": frame(RESULT, circuit, payload),
        "a zstd bomb": frame(QUERY, circuit, zstd_bomb(payload, 16 * 1024**2)),
    }
    wrong = valid_but_wrong(client)
    for what, body in {**refused_queries, **{k: v for k, (v, _) in wrong.items()}}.items():
        answer = post(body)
        assert 400 <= answer.status_code < 500, what
    for what, (body, reason) in wrong.items():  # each refused by its own check (over HTTP a 3-part one is a 413)
        with pytest.raises(FheError, match=reason):
            packed_bundle.server(PACKED).read_query(unframe(body, QUERY, circuit))
    ok = post(query)
    assert ok.status_code == 200
    scores = client.decrypt(ok.content)
    np.testing.assert_allclose(scores[0], packed_model.head.logits(np.eye(1, client.params.dim), Mode.FP32)[0],
                               atol=1e-3)


def zstd_bomb(seal_payload: bytes, size: int) -> bytes:
    """A SEAL header (taken from a real payload) over ``size`` zero bytes compressed with zstd."""
    body = zstandard.ZstdCompressor(level=1).compress(bytes(size))
    return seal_payload[:8] + struct.pack("<Q", 16 + len(body)) + body


def test_seal_payloads_are_inflated_within_a_bound():
    params = plan(64, 100, 4096, (38, 28, 43), 30)
    context = seal_context(params)
    generator = seal.KeyGenerator(context)
    keys = to_bytes(generator.create_galois_keys(params.galois_elements()))
    assert len(inflated(keys, params.key_limit(), "keys")) <= params.key_limit()
    with pytest.raises(FheError, match="holds more than"):
        inflated(zstd_bomb(keys, 64 * 1024**2), params.key_limit(), "keys")
    with pytest.raises(FheError, match="bad header"):
        inflated(b"\x00" * 64, params.key_limit(), "keys")


def valid_but_wrong(client: PackedClient) -> dict[str, tuple[bytes, str]]:
    """Ciphertexts SEAL reads under the circuit's parameters that the circuit must still refuse."""
    circuit, context = client.stats.circuit_id, client.context
    encryptor, evaluator = seal.Encryptor(context, client.secret_key), seal.Evaluator(context)

    def encrypted(scale):
        plaintext = seal.Plaintext()
        client.encoder.encode([0.1] * client.params.slots, scale, plaintext)
        ciphertext = seal.Ciphertext()
        encryptor.encrypt_symmetric(plaintext, ciphertext)
        return ciphertext

    lower = encrypted(client.params.query_scale)
    evaluator.mod_switch_to_next_inplace(lower)
    squared = seal.Ciphertext()
    evaluator.multiply(encrypted(2.0 ** 20), encrypted(2.0 ** 20), squared)
    return {"another scale": (frame(QUERY, circuit, to_bytes(encrypted(2.0 ** 20))), "has scale"),
            "a lower level": (frame(QUERY, circuit, to_bytes(lower)), "first level"),
            "three parts": (frame(QUERY, circuit, to_bytes(squared)), "two-part|more than")}


def test_identify_through_the_http_server(packed_model, packed_url, packed_queries):
    transport = HttpTransport(packed_url)
    channel = EncryptedChannel(packed_model.channel.circuits, packed_model.channel.key_dir, transport)
    try:
        X = packed_model.embedder.embed_patches(np.asarray(packed_queries.X[:2]))
        remote = channel.logits(PACKED, X)
    finally:
        transport.close()
    np.testing.assert_allclose(remote, packed_model.head.logits(X, Mode.FP32), atol=1e-3)
    assert channel.costs[-1].transport_s >= 0 and channel.key_setups[PACKED].evaluation_key_bytes < 20e6


# --- no secret key reaches the server ---


def secret_key_pieces(client: PackedClient) -> list[bytes]:
    """Pieces of the CKKS secret key: its raw coefficients (NTT form) and its file as the client stores it."""
    words = client.secret_key_words()
    stored = (client.key_dir / "secret.key").read_bytes()
    assert len(words) > 1024 and len(stored) > 1024
    return [words[len(words) // 2 - 256 : len(words) // 2 + 256], words[:512],
            stored[len(stored) // 2 - 256 : len(stored) // 2 + 256]]


def bundle_bytes(folder: Path) -> list[bytes]:
    contents = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        contents.append(path.read_bytes())
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                contents += [archive.read(member) for member in archive.namelist()]
    return contents


def leaks(pieces: list[bytes], contents: list[bytes]) -> bool:
    return any(piece in content for piece in pieces for content in contents)


def test_no_secret_key_reaches_the_server(packed_model, packed_queries, tmp_path):
    circuits = packed_model.channel.circuits
    bundle = export_server(circuits, tmp_path / "bundle", {"family": FAMILY})
    assert sorted(p.name for p in (bundle / PACKED).iterdir()) == ["circuit.json", "key-layout.json", "server.zip"]
    received: list[bytes] = []

    Recording = recording(LocalTransport, received)  # every byte the server gets
    channel = EncryptedChannel(circuits, tmp_path / "client-keys", Recording(ServerBundle.load(bundle)))
    channel.logits(PACKED, packed_model.embedder.embed_patches(np.asarray(packed_queries.X[:1])))
    assert len(received) == 2  # the Galois keys, then one query
    client = channel.client(PACKED)
    pieces = secret_key_pieces(client)
    assert not leaks(pieces, bundle_bytes(bundle))
    assert not leaks(pieces, received)
    # the keys the server decodes hold no two adjacent secret-key words either (SEAL compresses
    # what it sends; single words are not compared: two uniform words mod a ~40-bit prime meet
    # by chance often enough among millions of samples to fail one run in a few)
    server = ServerBundle.load(bundle).server(PACKED)
    galois = server.read_keys(received[0])
    sampled = {(array.at(i), array.at(i + 1)) for keys in galois.data() for key in keys
               for array in [key.data().dyn_array()] for i in range(0, array.size() - 1, 97)}
    words = np.frombuffer(client.secret_key_words(), dtype="<u8").tolist()
    assert len(sampled) > 1000 and not sampled & set(zip(words, words[1:]))
    # the check can fail: a bundle carrying the client's key file, or the key's words, are caught
    planted = tmp_path / "planted"
    export_server(circuits, planted, {})
    shutil.copyfile(client.key_dir / "secret.key", planted / PACKED / "extra.bin")
    assert leaks(pieces, bundle_bytes(planted))
    assert leaks(pieces, [b"prefix" + client.secret_key_words()])


def test_secret_key_lives_outside_the_model_in_a_private_file(packed_model):
    packed_model.channel.open()
    key_dir = packed_model.channel.key_dir
    assert key_dir == client_key_dir(packed_model.folder)
    assert not key_dir.resolve().is_relative_to(packed_model.folder.resolve())
    client = packed_model.channel.client(PACKED)
    assert (client.key_dir / "secret.key").stat().st_mode & 0o777 == 0o600
    assert not any("secret" in p.name for p in packed_model.folder.rglob("*"))


def test_a_damaged_secret_key_is_generated_anew(packed_model, tmp_path, caplog):
    client = PackedClient(packed_model.channel.circuits / PACKED / "client", tmp_path / "keys")
    client.ensure_keys()
    path = client.key_dir / "secret.key"
    path.write_bytes(path.read_bytes()[:-10] + b"\x00" * 10)
    again = PackedClient(packed_model.channel.circuits / PACKED / "client", tmp_path / "keys")
    assert again.ensure_keys()[1] is True
    assert "damaged" in caplog.text


def test_cli_export_serve_and_identify_over_http(packed_model, tiny_library, tiny_config, session_cache, tmp_path,
                                                 capsys, monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=220))
    _, toml = tiny_config
    common = ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1", "--family", FAMILY]
    assert main(["export-server", str(tmp_path / "bundle"), *common]) == 0
    assert "no client part, no key" in capsys.readouterr().out
    audio = tiny_library.load(tiny_library.tracks[2], 16_000, offset_s=2.0, duration_s=3.0)
    clip = write_audio(tmp_path / "clip.wav", audio, 16_000)
    log = tmp_path / "serve.log"
    with open(log, "wb") as handle:
        server = subprocess.Popen([sys.executable, "-m", "ppazam_core.cli", "serve", str(tmp_path / "bundle"),
                                   "--port", "0"], stdout=handle, stderr=subprocess.STDOUT)
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            found = re.search(r"at (http://127\.0\.0\.1:\d+)", log.read_text())
            url = found.group(1) if found else time.sleep(0.2)
        while True:  # the URL is printed just before the server starts accepting
            try:
                if httpx.get(f"{url}/circuits", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        listed = httpx.get(f"{url}/circuits").json()["circuits"][PACKED]
        assert listed["pbs_count"] == 0 and listed["output_ciphertext_bytes"] <= 64 * 1024
        assert main(["identify", str(clip), "--mode", "fhe", "--server", url, *common]) == 0
    finally:
        server.terminate()
        server.wait(timeout=60)
    lines = capsys.readouterr().out.splitlines()
    ranked = [line.split() for line in lines if line.strip()[:2] in ("1.", "2.", "3.")]
    assert ranked[0][1] == tiny_library.tracks[2].id
    assert any(PACKED in line and "│" in line for line in lines) and any("uploaded in" in line for line in lines)


def test_the_scaling_figure_draws_every_design_with_pnns_and_marks_estimates():
    import pandas as pd

    from reports.html import EXTRAPOLATE_TO, _answer_bytes, _extrapolated, _png

    rows = [("embedding-head", n, 10e3 * n, 2e-4 * n) for n in (64, 1000)]
    rows += [(FAMILY, n, 49e3 * math.ceil(n / 4096), 0.02 * math.ceil(n / 4096)) for n in (64, 1000, 4096, 10_000)]
    results = pd.DataFrame([{"family": f, "n_tracks": n, "stage": "ledger", "metric": "bytes_down", "mode": "fhe",
                             "value": down} for f, n, down, _ in rows])
    latency = pd.DataFrame([{"family": f, "n_tracks": n, "stage": f"{'head' if f == 'embedding-head' else PACKED}:server",
                             "metric": "per_query_s", "mode": "fhe", "value": s} for f, n, _, s in rows])
    estimate = _extrapolated(results.rename(columns={"n_tracks": "tracks"})[["family", "tracks", "value"]])
    head = estimate[(estimate["family"] == "embedding-head") & (estimate["tracks"] == EXTRAPOLATE_TO)]["value"]
    assert float(head.iloc[0]) == pytest.approx(10e3 * EXTRAPOLATE_TO)  # its per-track cost
    assert _png(_answer_bytes, results, latency) is not None
