"""Damaged cache artifacts (a truncated zip, garbage keys, a garbled manifest): loading one is an
error naming the file and the folder to delete, never a traceback; what is cheap to rebuild
(client keys, datasets, noise and room banks) is rebuilt with a warning instead."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import write_audio
from test_fhe import FHE_TOML
from ppazam_core.queries.augment import builtin_policy
from ppazam_core.cli import main
from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.dataset import DatasetSpec, build_dataset
from ppazam_core.fhe.deployment import KEYS_FILE, ClassifierClient, ClassifierServer
from ppazam_core.errors import DamagedArtifactError
from ppazam_core.families import train_family
from ppazam_core.families.embedding_knn import EmbeddingKnn
from ppazam_core.families.landmark import LandmarkIndex
from ppazam_core.families.mfcc_logreg import MfccLogReg
from ppazam_core.fhe.concrete import CircuitStats
from ppazam_core.models.identifier import Identifier
from ppazam_core.audio.noise import prepared_noise_folder, synthetic_noise_bank
from ppazam_core.models.pipeline import compile_identifier
from ppazam_core.audio.rooms import RoomBankSpec, room_bank

FAMILIES = ("mfcc-logreg", "landmark-fp", "embedding-knn")
LOADERS = {"mfcc-logreg": MfccLogReg, "landmark-fp": LandmarkIndex, "embedding-knn": EmbeddingKnn}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path) -> None:
    path.write_text('{"bad')


def garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 64)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_names(error: pytest.ExceptionInfo, damaged: Path, folder: Path) -> None:
    message = str(error.value)
    assert str(damaged) in message and f"delete {folder} " in message, message


@pytest.fixture(scope="session")
def fhe_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("damaged-config") / "fhe.toml"
    path.write_text(FHE_TOML)
    return path


@pytest.fixture(scope="session")
def compiled(tiny_library, fhe_toml, session_cache) -> Path:
    """The circuits of test_fhe's tiny identifier (found in the store when test_fhe ran first)."""
    return compile_identifier(tiny_library, ExperimentConfig.from_toml(fhe_toml), session_cache, workers=1)


@pytest.fixture(scope="session")
def families(tiny_library, tiny_config, session_cache) -> dict[str, Path]:
    config, _ = tiny_config
    return {f: train_family(f, tiny_library, config, session_cache, workers=1).folder for f in FAMILIES}


@pytest.fixture
def cache(session_cache, tmp_path) -> Path:
    """A cache whose ``models`` are a copy of the session's, the rest links (client keys left out)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for entry in session_cache.iterdir():
        if entry.name == "models":
            shutil.copytree(entry, cache / entry.name)
        elif entry.name != "client-keys":
            (cache / entry.name).symlink_to(entry)
    return cache


def copied(folder: Path, session_cache: Path, cache: Path) -> Path:
    return cache / folder.relative_to(session_cache)


@pytest.mark.parametrize("name, damage", [("model.json", garble), ("clusters.npz", truncate),
                                          ("normalizer.npz", truncate)])
def test_a_damaged_identifier_file_is_an_error_naming_it(compiled, session_cache, cache, name, damage):
    model = copied(compiled.parent.parent, session_cache, cache)
    damage(model / name)
    with pytest.raises(DamagedArtifactError) as error:
        Identifier(model)
    assert_names(error, model / name, model)


@pytest.mark.parametrize("mode, damage", [("fp32", garbage), ("quant", truncate)])
def test_damaged_weights_are_an_error_naming_them(compiled, session_cache, cache, mode, damage):
    model = copied(compiled.parent.parent, session_cache, cache)
    identifier = Identifier(model)
    weights = model / ("fp32" if mode == "fp32" else identifier.manifest["quant"]) / "cluster.pt"
    damage(weights)
    with pytest.raises(DamagedArtifactError) as error:
        identifier.scores(np.zeros((1, 1, *identifier.features.shape[1:]), np.float32), mode)
    assert_names(error, weights, model)


@pytest.mark.parametrize("name, damage, mode", [("simulator.zip", truncate, "fhe-sim"),
                                                ("client/client.zip", truncate, "fhe-sim"),
                                                ("circuit.json", garble, "fhe-sim"),
                                                ("clear.json", garble, "fhe-disable")])
def test_a_damaged_circuit_file_is_an_error_naming_it(compiled, session_cache, cache, name, damage, mode):
    circuits = copied(compiled, session_cache, cache)
    damage(circuits / "cluster" / name)
    identifier = Identifier(circuits.parent.parent, circuits)
    with pytest.raises(DamagedArtifactError) as error:
        identifier.scores(np.zeros((1, 1, *identifier.features.shape[1:]), np.float32), mode)
    assert_names(error, circuits / "cluster" / name, circuits)


def test_a_damaged_server_zip_is_an_error_naming_it(compiled, session_cache, cache):
    server = copied(compiled, session_cache, cache) / "cluster" / "server"
    truncate(server / "server.zip")
    with pytest.raises(DamagedArtifactError) as error:
        ClassifierServer(server)
    assert_names(error, server / "server.zip", server.parent.parent)


def test_cli_identify_with_a_damaged_simulator_says_what_to_do(compiled, tiny_library, fhe_toml, session_cache,
                                                               cache, tmp_path, capsys):
    clip = write_audio(tmp_path / "clip.wav", tiny_library.load(tiny_library.tracks[1], 16_000, 2.0, 3.0), 16_000)
    command = ["identify", str(clip), "--mode", "fhe-sim", "--config", str(fhe_toml), "--cache-dir", str(cache),
               "--workers", "1"]
    circuits = copied(compiled, session_cache, cache)
    truncate(circuits / "intra_000" / "simulator.zip")
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "simulator.zip is damaged" in err and f"delete {circuits}" in err.replace("\n", "")
    assert "Traceback" not in err
    shutil.rmtree(circuits)  # as the error says: the next run compiles again
    assert main(command) == 0
    assert "1." in capsys.readouterr().out


@pytest.mark.parametrize("command, damaged", [("identify", "model.json"), ("compile", "intra_000/circuit.json")])
def test_cli_with_a_garbled_manifest_says_what_to_do(compiled, tiny_library, fhe_toml, session_cache, cache, tmp_path,
                                                     capsys, command, damaged):
    circuits = copied(compiled, session_cache, cache)
    garble(circuits / damaged if command == "compile" else circuits.parent.parent / damaged)
    clip = write_audio(tmp_path / "clip.wav", tiny_library.load(tiny_library.tracks[0], 16_000, 1.0, 3.0), 16_000)
    arguments = [str(clip)] if command == "identify" else []
    assert main([command, *arguments, "--config", str(fhe_toml), "--cache-dir", str(cache), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{damaged} is damaged" in err and "delete" in err and "Traceback" not in err


@pytest.mark.parametrize("family, name, damage", [
    ("mfcc-logreg", "model.json", garble),
    ("mfcc-logreg", "scaler.npz", truncate),
    ("mfcc-logreg", "head.json", garble),
    ("mfcc-logreg", "circuits/fhe/head/circuit.json", garble),
    ("landmark-fp", "landmarks.npz", truncate),
    ("embedding-knn", "references.npz", truncate),
    ("embedding-knn", "embedding/embedding.json", garble),
    ("embedding-knn", "embedding/encoder.pt", garbage),
])
def test_a_damaged_family_file_is_an_error_naming_it(families, session_cache, cache, family, name, damage):
    folder = copied(families[family], session_cache, cache)
    damage(folder / name)
    with pytest.raises(DamagedArtifactError) as error:
        LOADERS[family](folder)
    assert_names(error, folder / name, folder)


def test_a_damaged_linear_head_simulator_is_an_error_naming_it(families, session_cache, cache):
    folder = copied(families["mfcc-logreg"], session_cache, cache)
    simulator = folder / "circuits" / "fhe" / "head" / "simulator.zip"
    truncate(simulator)
    head = MfccLogReg(folder).head
    with pytest.raises(DamagedArtifactError) as error:
        head.logits(np.zeros((1, *head.stats.input_shape), np.float32), "fhe-sim")
    assert_names(error, simulator, folder)


def test_cli_evaluate_with_a_damaged_family_says_what_to_do(families, tiny_config, session_cache, cache, tmp_path,
                                                            capsys):
    _, toml = tiny_config
    folder = copied(families["mfcc-logreg"], session_cache, cache)
    truncate(folder / "scaler.npz")
    assert main(["evaluate", "--family", "mfcc-logreg", "--mode", "fp32", "--config", str(toml), "--cache-dir",
                 str(cache), "--workers", "1", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "scaler.npz is damaged" in err and "delete" in err and "Traceback" not in err


@pytest.mark.parametrize("damage", [truncate, garbage, flip_a_byte])
def test_damaged_client_keys_are_generated_again(families, session_cache, cache, tmp_path, caplog, capfd, damage):
    client_dir = copied(families["mfcc-logreg"], session_cache, cache) / "circuits" / "fhe" / "head" / "client"
    keys = tmp_path / "keys"
    assert ClassifierClient(client_dir, keys).ensure_keys()[1]
    keys_file = keys / CircuitStats.load(client_dir).circuit_id / KEYS_FILE
    damage(keys_file)
    client = ClassifierClient(client_dir, keys)
    assert client.ensure_keys()[1]
    assert f"{keys_file} are damaged" in caplog.text
    assert not ClassifierClient(client_dir, keys).ensure_keys()[1]  # the new keys are stored whole
    assert "Premature EOF" not in capfd.readouterr().err  # Concrete never read the damaged file
    server = ClassifierServer(client_dir.parent / "server")
    uploaded = server.read_keys(client.evaluation_keys())
    row = np.zeros((1, *client.stats.input_shape), np.float32)
    assert client.decrypt(server.run(client.encrypt(row), uploaded)).shape[0] == 1


@pytest.mark.parametrize("name, damage", [("X.npy", truncate), ("y.npy", garbage), ("meta.csv", truncate),
                                          ("dataset.json", garble), ("normalizer.npz", truncate)])
def test_a_damaged_dataset_is_built_again(tiny_library, tmp_path, caplog, name, damage):
    spec = DatasetSpec(builtin_policy("clean"), 2)
    dataset = build_dataset(tiny_library, spec, tmp_path, workers=1)
    X = np.array(dataset.X)
    damage(dataset.folder / name)
    rebuilt = build_dataset(tiny_library, spec, tmp_path, workers=1)
    assert f"{dataset.folder / name} is damaged" in caplog.text
    np.testing.assert_array_equal(rebuilt.X, X)
    assert rebuilt.folder == dataset.folder and len(rebuilt.meta) == len(X)


@pytest.mark.parametrize("name, damage", [("room_01.wav", truncate), ("rooms.json", garble)])
def test_a_damaged_room_bank_is_simulated_again(tmp_path, caplog, name, damage):
    spec = RoomBankSpec(rooms=2, max_order=2)
    folder = room_bank(tmp_path, spec)
    original = (folder / name).read_bytes()
    damage(folder / name)
    assert room_bank(tmp_path, spec) == folder
    assert f"{folder / name} is damaged" in caplog.text and (folder / name).read_bytes() == original


def test_a_damaged_noise_bank_is_rendered_again(tmp_path, caplog):
    folder = synthetic_noise_bank(tmp_path, variants=1, duration_s=0.5)
    original = (folder / "pink_0.wav").read_bytes()
    truncate(folder / "pink_0.wav")
    assert synthetic_noise_bank(tmp_path, variants=1, duration_s=0.5) == folder
    assert f"{folder / 'pink_0.wav'} is damaged" in caplog.text
    assert (folder / "pink_0.wav").read_bytes() == original


def test_a_damaged_prepared_noise_folder_is_prepared_again(tmp_path, caplog):
    rng = np.random.default_rng(0)
    write_audio(tmp_path / "source" / "rain.wav", 0.1 * rng.standard_normal((8_000, 1)).astype(np.float32), 16_000)
    folder = prepared_noise_folder(tmp_path / "source", tmp_path / "cache")
    garbage(folder / "rain.wav")
    assert prepared_noise_folder(tmp_path / "source", tmp_path / "cache") == folder
    assert f"{folder / 'rain.wav'} is damaged" in caplog.text
    assert (folder / "rain.wav").stat().st_size > 1_000
