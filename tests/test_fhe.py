"""A tiny identifier compiled with Concrete ML, simulated and run truly encrypted."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_SPEC, recording
from ppazam_core.cli import main
from ppazam_core.config import ExperimentConfig, FheConfig
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.fhe.deployment import (ClassifierClient, ClassifierServer, EncryptedChannel, LocalTransport, ServerBundle,
                                    client_key_dir, export_server)
from ppazam_core.fhe.wire import HEADER, QUERY, frame
from ppazam_core.errors import ArtifactError, ConfigError, FheError
from ppazam_core.fhe import concrete as fhe_module
from ppazam_core.fhe.concrete import CircuitStats, KeyLayout, SimulatedClassifier
from ppazam_core.models.identifier import Identifier
from ppazam_core.recognition import Mode, predict, sample_queries
from ppazam_core.models.pipeline import compile_identifier, noise_folder, train_identifier
from ppazam_core.results.privacy import ledger
from ppazam_core.seeding import derive_seed

# one 8x8-strided block of 2 channels (32 ReLUs, 256 PBS with exact rounding); exact rounding and
# a tiny p_error make the encrypted integers equal to the simulated ones (approximate rounding is
# randomised in FHE); one cluster searched, so an encrypted query costs two circuit runs
FHE_TOML = f"""
[synthetic]
seed = {TINY_SPEC.seed}
n_tracks = {TINY_SPEC.n_tracks}
duration_s = {TINY_SPEC.duration_s}
[data]
train_augmentations = 24
eval_queries = 3
eval_levels = ["clean"]
[embedding]
encoder = "train"  # the per-library recipe, as TINY_TOML's: the expected widths below come from its clusters
epochs = 2
batch_tracks = 6
blocks = [{{ channels = 32, kernel = 3, stride = 2 }}, {{ channels = 64, kernel = 3, stride = 2 }}, {{ channels = 64, kernel = 3, stride = 2 }}]
[clusters]
n_clusters = 2
[identify]
cluster_top_k = 1
[model]
blocks = [{{ channels = 2, kernel = 8, stride = 8 }}]
[training]
epochs = 10
[qat]
epochs = 3
[fhe]
calibration_rows = 64
rounding_bits = 6
rounding_method = "exact"
p_error = 1e-5
"""


@pytest.fixture(scope="session")
def fhe_config(tmp_path_factory) -> tuple[ExperimentConfig, Path]:
    path = tmp_path_factory.mktemp("fhe-config") / "fhe.toml"
    path.write_text(FHE_TOML)
    return ExperimentConfig.from_toml(path), path


@pytest.fixture(scope="session")
def circuits(tiny_library, fhe_config, session_cache) -> Path:
    config, _ = fhe_config
    return compile_identifier(tiny_library, config, session_cache, workers=1)


@pytest.fixture(scope="session")
def identifier(tiny_library, fhe_config, session_cache, circuits) -> Identifier:
    config, _ = fhe_config
    return Identifier(train_identifier(tiny_library, config, session_cache, workers=1), circuits)


@pytest.fixture(scope="session")
def queries(tiny_library, fhe_config, session_cache):
    config, _ = fhe_config
    noise = noise_folder(tiny_library, config.data, session_cache)
    return build_dataset(tiny_library, config.data.eval_spec("clean"), session_cache, noise, workers=1)


def test_compilation_records_costs_and_is_cached(circuits, tiny_library, fhe_config, session_cache, monkeypatch):
    summary = json.loads((circuits / "circuits.json").read_text())
    assert set(summary["circuits"]) == {"cluster", "intra_000", "intra_001"}
    config, _ = fhe_config
    for name, stats in summary["circuits"].items():
        relus = config.model.cnn(stats["n_classes"], config.data.features.shape).activation_count()
        assert relus == 2 * 4 * 4  # 2 channels of a 32 x 32 patch tiled by 8 x 8 strides
        # Concrete's graph: conv -> int13 accumulator (cluster: calibrated range -1824..2295) ->
        # round_bit_pattern(lsbs_to_remove=13 - 6, exactness=EXACT) -> one table lookup (ReLU and
        # requantization); the linear head is a clear-weight matmul, no PBS. Exact rounding costs
        # one PBS per removed bit (circuit.statistics: 224 PBS at polynomial size 256), the lookup
        # one more (32 at 4096): 32 x (7 + 1). Approximate rounding or none: 32.
        assert stats["max_bit_width"] == 13
        assert stats["pbs_count"] == relus * (stats["max_bit_width"] - config.fhe.rounding_bits + 1) == 256
        assert stats["bootstrap_key_bytes"] > 0 and stats["input_ciphertext_bytes"] > 0
        assert CircuitStats.load(circuits / name / "server").circuit_id == stats["circuit_id"]
    import ppazam_core.models.pipeline as pipeline

    monkeypatch.setattr(pipeline, "compile_classifier", lambda *a, **k: pytest.fail("recompiled a stored circuit"))
    assert compile_identifier(tiny_library, config, session_cache) == circuits


def test_cached_simulation_equals_concrete_ml_simulation(identifier, queries, fhe_config, tiny_library,
                                                        session_cache):
    """The simulator loaded from the store computes what Concrete ML's own ``forward(fhe="simulate")``
    computes on a fresh compilation of the same model and calibration set."""
    from concrete.ml.torch.compile import compile_brevitas_qat_model

    config, _ = fhe_config
    dataset = build_dataset(tiny_library, config.data.train_spec(), session_cache,
                            noise_folder(tiny_library, config.data, session_cache), workers=1)
    rows = np.arange(len(dataset))
    calibration = identifier.normalizer(np.asarray(dataset.X[np.sort(
        np.random.default_rng(derive_seed(config.fhe.seed, "calibration", "cluster")).choice(
            rows, size=config.fhe.calibration_rows, replace=False))]))
    module = compile_brevitas_qat_model(identifier._model(Mode.QUANT, "cluster"), calibration,
                                        rounding_threshold_bits=config.fhe.rounding(), p_error=config.fhe.p_error)
    X = identifier.normalizer(np.asarray(queries.X))
    cached = SimulatedClassifier(identifier.circuits / "cluster").logits(X)
    fresh = module.forward(X, fhe="simulate")
    assert cached.shape == fresh.shape == (18, 2)
    # exact rounding and p_error 1e-5: no random table-lookup error, both simulations agree exactly
    np.testing.assert_allclose(cached, fresh, atol=1e-5)


def clean_clip_patches(identifier, library, per_track: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Clean 3-s clips cut straight out of every track and passed through the front-end in memory
    (as ``identify`` does): raw patches and their true track indices."""
    clips, truth = [], []
    for index, track in enumerate(library.tracks):
        for offset in np.linspace(0.5, track.duration_s - 3.5, per_track):
            clips.append(library.load(track, 16_000, offset_s=float(offset), duration_s=3.0))
            truth.append(index)
    return identifier.front_end(np.stack(clips)), np.asarray(truth)


def test_clean_clips_simulate_what_the_circuit_computes(identifier, tiny_library):
    """Regression: a spectrogram straight from torchaudio is transposed in memory, and Concrete
    read such arrays in C order, so fhe-sim (and fhe) answered at chance on clean clips while
    the circuit's clear execution was right. With exact rounding and p_error 1e-5 the
    simulated integers are the circuit's own: every top-1 agrees."""
    patches, _ = clean_clip_patches(identifier, tiny_library)
    simulated = identifier.scores(patches, Mode.FHE_SIM).track_scores.argmax(axis=1)
    clear = identifier.scores(patches, Mode.FHE_DISABLE).track_scores.argmax(axis=1)
    assert patches.flags["C_CONTIGUOUS"] and len(simulated) == 12
    np.testing.assert_array_equal(simulated, clear)


def test_simulation_reads_any_memory_layout(identifier, queries):
    X = identifier.normalizer(np.asarray(queries.X[:4]))
    transposed = np.ascontiguousarray(X.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, strided
    assert not transposed.flags["C_CONTIGUOUS"] and np.array_equal(transposed, X)
    simulator = SimulatedClassifier(identifier.circuits / "cluster")
    np.testing.assert_array_equal(simulator.logits(transposed), simulator.logits(X))
    np.testing.assert_array_equal(identifier.channel.logits("cluster", transposed[:1]),
                                  identifier.channel.logits("cluster", X[:1]))


def test_fhe_sim_agrees_with_the_circuits_clear_execution(identifier, queries):
    # exact rounding and p_error 1e-5: the simulation computes the circuit's clear integers, so
    # every one of the 18 queries (6 tracks x 3) has the same top-1 in both
    simulated = predict(identifier, queries, "fhe-sim")
    clear = predict(identifier, queries, "fhe-disable")
    assert len(simulated.rows) == 18 and np.array_equal(simulated.ranking[:, 0], clear.ranking[:, 0])
    sample = sample_queries(queries, seed=3, count=2)
    assert len(set(queries.y[sample])) == 2  # spread over tracks
    encrypted = predict(identifier, queries, "fhe", sample)
    assert np.array_equal(encrypted.rows, sample)
    assert np.array_equal(encrypted.ranking[:, 0], simulated.take(sample).ranking[:, 0])


def test_encrypted_run_equals_simulation(identifier, queries):
    X = identifier.normalizer(np.asarray(queries.X[:2]))
    simulated = SimulatedClassifier(identifier.circuits / "cluster").logits(X)
    encrypted = identifier.channel.logits("cluster", X)
    # at p_error 1e-5 no table lookup of these 256-PBS circuits goes wrong: the integers agree exactly
    np.testing.assert_array_equal(simulated, encrypted)
    costs = identifier.channel.costs[-2:]
    assert all(c.classifier == "cluster" and c.request_bytes > 0 and c.response_bytes > 0 and c.server_s > 0
               for c in costs)
    setup = identifier.channel.key_setups["cluster"]  # what was uploaded is what compile recorded
    stats = CircuitStats.load(identifier.circuits / "cluster")
    assert setup.evaluation_key_bytes == stats.serialized_key_bytes + HEADER.size
    assert stats.serialized_key_bytes < stats.evaluation_key_bytes  # Concrete's in-memory size


def secret_key_pieces(client: ClassifierClient) -> list[bytes]:
    """Pieces of every LWE secret key of ``client``, read with Concrete's own key API (the
    middle 512 bytes of each serialized key: its binary coefficients, past any header)."""
    keys = client.client.keys._keyset.get_client_keys().get_secret_keys()
    serialized = [key.serialize() for key in keys]
    assert serialized and all(len(s) > 1024 for s in serialized)
    return [s[len(s) // 2 - 256 : len(s) // 2 + 256] for s in serialized]


def bundle_bytes(folder: Path) -> list[bytes]:
    """Every byte a server bundle holds: each file, and each zip member decompressed."""
    contents = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        contents.append(path.read_bytes())
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                contents += [archive.read(member) for member in archive.namelist()]
    return contents


def leaks(pieces: list[bytes], contents: list[bytes]) -> bool:
    return any(piece in content for piece in pieces for content in contents)


def test_no_secret_key_reaches_the_server(identifier, circuits, queries, tmp_path):
    bundle = export_server(circuits, tmp_path / "bundle", {"family": "two-stage-cnn"})
    assert sorted(p.name for p in bundle.iterdir()) == sorted(["bundle.json", *identifier.circuit_names()])
    assert all(sorted(p.name for p in (bundle / name).iterdir()) == ["circuit.json", "key-layout.json", "server.zip"]
               for name in identifier.circuit_names())
    received: list[bytes] = []

    Recording = recording(LocalTransport, received)  # every byte the server gets
    channel = EncryptedChannel(circuits, tmp_path / "client-keys", Recording(ServerBundle.load(bundle)))
    channel.logits("cluster", identifier.normalizer(np.asarray(queries.X[:1])))
    assert len(received) == len(identifier.circuit_names()) + 1  # every key set before the first query
    pieces = [piece for name in identifier.circuit_names() for piece in secret_key_pieces(channel.client(name))]
    assert not leaks(pieces, bundle_bytes(bundle))
    assert not leaks(pieces, received)
    # the check can fail: a bundle carrying the client's key file, or keys sent in full, are caught
    planted = tmp_path / "planted"
    export_server(circuits, planted, {})
    shutil.copyfile(channel.client("cluster").key_dir / "keys.bin", planted / "cluster" / "extra.bin")
    assert leaks(pieces, bundle_bytes(planted))
    assert leaks(pieces, [channel.client("cluster").client.keys.serialize()])


def test_secret_keys_live_outside_the_model_in_private_files(identifier, circuits):
    identifier.channel.open()
    key_dir = identifier.channel.key_dir
    assert key_dir == client_key_dir(identifier.folder)
    assert not key_dir.resolve().is_relative_to(identifier.folder.resolve())
    files = [p for p in key_dir.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o600 for p in files if p.name != ".done")
    assert (key_dir.stat().st_mode & 0o777) == 0o700
    assert all(p.stat().st_mode & 0o077 == 0 for p in key_dir.rglob("*") if p.is_dir())
    assert not any("keys" in p.name for p in identifier.folder.rglob("*"))


def test_a_key_folder_the_user_names_keeps_its_mode(circuits, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    client = ClassifierClient(circuits / "cluster" / "client", shared)
    client.ensure_keys()
    assert shared.stat().st_mode & 0o777 == 0o755
    assert client.key_dir.stat().st_mode & 0o777 == 0o700
    assert (client.key_dir / "keys.bin").stat().st_mode & 0o777 == 0o600


def test_oblivious_search_calls_every_circuit_in_one_order_and_the_ledger_says_so(identifier, circuits, queries):
    oblivious = Identifier(identifier.folder, circuits, oblivious=True)
    assert oblivious.family == "two-stage-cnn-oblivious" and oblivious.cluster_top_k == oblivious.n_clusters == 2
    X = np.asarray(queries.X[:2])
    # every cluster searched: the ranking of the leaky model searching all clusters
    np.testing.assert_array_equal(oblivious.scores(X, "fhe-disable").track_scores,
                                  identifier.scores(X, "fhe-disable", cluster_top_k=2).track_scores)
    for x in X:
        oblivious.scores(x[None], "fhe")
    assert [c.classifier for c in oblivious.channel.costs] == ["cluster", "intra_000", "intra_001"] * 2
    leaky, hidden = ledger(identifier, "fhe", identifier.channel), ledger(oblivious, "fhe", oblivious.channel)
    sizes = np.asarray([m.size for m in identifier.members]) / len(identifier.track_ids)
    assert leaky.server_learns_bits == pytest.approx(-(sizes * np.log2(sizes)).sum()) and leaky.server_learns_bits > 0
    assert hidden.server_learns_bits == 0
    assert leaky.server_calls == pytest.approx(2) and hidden.server_calls == 3
    assert hidden.client_scores == 2 + len(identifier.track_ids) > leaky.client_scores
    stats = CircuitStats.load(circuits / "cluster")
    assert hidden.bytes_down > leaky.bytes_down > stats.output_ciphertext_bytes
    assert hidden.sizes_measured == 1 and hidden.key_bytes_up == sum(
        setup.evaluation_key_bytes for setup in oblivious.channel.key_setups.values())
    assert hidden.bytes_down == sum(c.response_bytes for c in oblivious.channel.costs) / 2  # per query, measured
    assert leaky.security_bits == 128 and 0 < leaky.p_error_per_query < 1
    clear = ledger(identifier, "fp32", identifier.channel)
    assert clear.server_learns_bits == pytest.approx(np.log2(len(identifier.track_ids))) and clear.bytes_up == 0


def test_tampered_messages_are_refused(identifier, circuits, queries):
    key_dir = client_key_dir(identifier.folder)
    client = ClassifierClient(circuits / "cluster" / "client", key_dir)
    server = ClassifierServer(circuits / "cluster" / "server")
    with pytest.raises(FheError, match="no evaluation keys"):
        server.run(client.encrypt(identifier.normalizer(np.asarray(queries.X[:1]))), None)
    keys = server.read_keys(client.evaluation_keys())
    query = client.encrypt(identifier.normalizer(np.asarray(queries.X[:1])))
    with pytest.raises(FheError, match="truncated"):
        server.run(query[: len(query) // 2], keys)
    flipped = bytearray(query)
    flipped[-100] ^= 0xFF
    with pytest.raises(FheError, match="corrupted"):
        server.run(bytes(flipped), keys)
    with pytest.raises(FheError, match="too short"):
        server.run(b"", keys)
    with pytest.raises(FheError, match="evaluation keys"):
        server.run(client.evaluation_keys(), keys)
    other = ClassifierClient(circuits / "intra_000" / "client", key_dir)
    with pytest.raises(FheError, match="another model"):
        server.read_keys(other.evaluation_keys())
    with pytest.raises(FheError, match="another model"):
        server.run(frame(QUERY, other.stats.circuit_id, b"x"), keys)
    garbage = frame(QUERY, server.stats.circuit_id, b"not a ciphertext")
    with pytest.raises(FheError, match="cannot be evaluated"):
        server.run(garbage, keys)
    with pytest.raises(FheError, match="does not fit the circuit"):
        client.encrypt(np.zeros((1, 1, 16, 16), dtype=np.float32))
    assert client.decrypt(server.run(query, keys)).shape == (1, 2)


def test_missing_artifacts_are_clear_errors(circuits, tmp_path, identifier):
    with pytest.raises(ArtifactError, match="server.zip"):
        ClassifierServer(tmp_path)
    with pytest.raises(ArtifactError, match="client.zip"):
        ClassifierClient(tmp_path, tmp_path / "keys")
    with pytest.raises(ArtifactError, match="incomplete"):
        Identifier(identifier.folder, tmp_path)
    with pytest.raises(ArtifactError, match="compile"):
        Identifier(identifier.folder).scores(np.zeros((1, 1, 32, 32), dtype=np.float32), "fhe-sim")


def test_key_layout_keeps_whole_words_so_chance_equal_bytes_refuse_no_client(monkeypatch):
    # two key generations whose random material starts with the same byte by chance (1 in 256):
    # the layout must not take that byte for a parameter, or a third key set is refused
    rng = np.random.default_rng(0)
    header, trailer = bytes(range(24)), b"\x01\x00\x00\x00\x82\x00\x0a\x00"
    def key_set(first_byte: int) -> bytes:
        material = bytearray(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
        material[0] = first_byte
        return header + bytes(material) + trailer
    generated = iter([key_set(0xB8), key_set(0xB8)])
    monkeypatch.setattr(fhe_module, "_fresh_evaluation_keys", lambda specs: next(generated))
    layout = KeyLayout.of(None)
    assert layout.length == 96 and [offset for offset, _ in layout.fixed] == [0, 88]
    layout.check(key_set(0x3C), "cluster")
    parameters_changed = bytearray(key_set(0x3C))
    parameters_changed[3] ^= 0x01
    with pytest.raises(FheError, match="bytes 0-23"):
        layout.check(bytes(parameters_changed), "cluster")


def test_fhe_config_is_validated():
    with pytest.raises(ConfigError, match="fhe.rounding_method"):
        FheConfig(rounding_method="nearest")
    with pytest.raises(ConfigError, match="fhe.p_error"):
        FheConfig(p_error=0.0)
    with pytest.raises(ConfigError, match="fhe"):
        ExperimentConfig.from_dict({"fhe": {"n_bits": 6}})


def test_cli_identify_in_fhe_mode_prints_costs(identifier, tiny_library, fhe_config, session_cache, tmp_path, capsys,
                                              monkeypatch):
    from rich.console import Console

    import ppazam_core.cli as cli
    from conftest import write_audio

    monkeypatch.setattr(cli, "console", Console(width=200))  # no column header wrapped or cut
    _, toml = fhe_config
    audio = tiny_library.load(tiny_library.tracks[1], 16_000, offset_s=2.0, duration_s=3.0)
    clip = write_audio(tmp_path / "clip.wav", audio, 16_000)
    common = ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1"]
    assert main(["identify", str(clip), "--mode", "fhe", *common]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "stored for two-stage-cnn in fhe-sim, whose rule fhe answers by" in out  # no fhe rule of its own
    ranked = [line.split() for line in lines if line.strip()[:2] in ("1.", "2.", "3.")]
    # a clean clip of track 1; one cluster searched (cluster_top_k 1), so only its two tracks are
    # ranked: the other cluster's tracks were never scored
    cluster = int(identifier.assignment[1])
    assert ranked[0][1] == "syn00001"
    assert {r[1] for r in ranked} == {identifier.track_ids[i] for i in identifier.members[cluster]}
    assert len(ranked) == 2
    table = [[cell.strip() for cell in line.split(line.strip()[0])[1:-1]] for line in lines
             if line.strip()[:1] in ("┃", "│")]
    assert table[0] == ["classifier", "PBS", "encrypt s", "sent KB", "server s", "ms/PBS", "received KB", "decrypt s"]
    assert [row[:2] for row in table[1:]] == [["cluster", "256"], [f"intra_{cluster:03d}", "256"]]


def test_a_process_that_ran_a_circuit_keeps_its_exit_status(tmp_path):
    """concrete-python's exit hook used to end every process that had run a circuit with status
    0, so a failed bench or a REGRESSED gate left CI green (ppazam_core.fhe.concrete takes it off)."""
    script = tmp_path / "exits.py"
    script.write_text("import sys\nimport numpy as np\nimport ppazam_core.fhe.concrete\nfrom concrete import fhe\n"
                      "c = fhe.Compiler(lambda x: x + 1, {'x': 'encrypted'}).compile([np.int64(i) for i in range(4)])\n"
                      "c.keygen()\nassert c.decrypt(c.run(c.encrypt(2))) == 3\nsys.exit(3)\n")
    assert subprocess.run([sys.executable, str(script)], capture_output=True, timeout=300).returncode == 3
