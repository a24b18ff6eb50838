"""Field reports round 3: every config value is type-checked when read, a config file's
encoding is named when it is wrong, and the CLI ends every failure it can name in one
``error:`` line and a non-zero exit."""

import errno
import os
import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest

import ppazam_core.cli as cli
from conftest import tone, write_audio
from ppazam_core.queries.augment import load_policies
from ppazam_core.models.clustering import ClusterConfig
from ppazam_core.config import DATA_TABLES, DataConfig, ExperimentConfig, FheConfig, ModelSpec
from ppazam_core.models.embeddings import EmbeddingConfig
from ppazam_core.errors import ConfigError
from ppazam_core.families.registry import family_tables
from ppazam_core.queries.features import FrontEndConfig
from ppazam_core.audio.library import SyntheticSpec
from ppazam_core.models.training import TrainConfig
from suites import SUITE_DIR, load_suite

BOM = b"\xef\xbb\xbf"


def table_fields() -> list[tuple[str, str, object]]:
    """(table, key, type hint) of every key of every table an experiment config reads."""
    tables = {"synthetic": SyntheticSpec, "features": FrontEndConfig, "embedding": EmbeddingConfig,
              "clusters": ClusterConfig, "model": ModelSpec, "training": TrainConfig, "qat": TrainConfig,
              "fhe": FheConfig, **family_tables()}
    keys = [(name, f.name, typing.get_type_hints(cls)[f.name]) for name, cls in tables.items() for f in fields(cls)]
    keys += [("data", f.name, typing.get_type_hints(DataConfig)[f.name]) for f in fields(DataConfig)
             if f.name not in DATA_TABLES]
    hints = typing.get_type_hints(ExperimentConfig)
    return keys + [("identify", key, hints[key]) for key in ("cluster_top_k", "combine")]


@pytest.mark.parametrize("table, key, hint", table_fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_key_of_every_table_is_type_checked(table, key, hint):
    wrong = 3 if str in (hint, *typing.get_args(hint)) else "3"  # a string for a number, flag, list or table
    with pytest.raises(ConfigError, match=rf"{table}\.{key}(\[\d+\])? = {wrong!r} is not allowed; allowed: \w"):
        ExperimentConfig.from_dict({table: {key: wrong}})


@pytest.mark.parametrize("toml, message", [
    ('[identify]\ncluster_top_k = "2"\n', "identify.cluster_top_k = '2' is not allowed; allowed: an integer"),
    ('[fhe]\np_error = "0.05"\n', "fhe.p_error = '0.05' is not allowed; allowed: a number"),
    ('[clusters]\nn_clusters = "2"\n', "clusters.n_clusters = '2' is not allowed; allowed: an integer (or leave"),
    ('[synthetic]\nseed = "7"\n', "synthetic.seed = '7' is not allowed; allowed: an integer"),
    ("[identify]\ncluster_top_k = true\n", "identify.cluster_top_k = True is not allowed; allowed: an integer"),
    ("[embedding]\nepochs = 3.0\n", "embedding.epochs = 3.0 is not allowed; allowed: an integer"),
    ("[model]\nrounding_aware = 1\n", "model.rounding_aware = 1 is not allowed; allowed: true or false"),
    ('[model]\nblocks = [{ channels = 8 }, { channels = "16" }]\n', "model.blocks[1].channels = '16'"),
    ("[model]\nblocks = [8]\n", "model.blocks[0] = 8 is not allowed; allowed: a table"),
    ("[embedding]\nblocks = [{ channels = 8, width = 3 }]\n", "embedding.blocks[0] = 'width'"),
    ('[data]\neval_levels = ["clean", 3]\n', "data.eval_levels[1] = 3 is not allowed; allowed: a string"),
    ("[data]\ntrain_gain_db = [-20.0]\n", "data.train_gain_db = [-20.0] is not allowed; allowed: a list of 2"),
    ("[packed]\nmoduli_bits = [38, 28.0, 43]\n", "packed.moduli_bits[1] = 28.0"),
    ('[knn]\nsegment_s = "1"\n', "knn.segment_s = '1' is not allowed; allowed: a number (or leave"),
    ("[policies]\np1 = 3\n", "policies.p1 = 3 is not allowed; allowed: a table"),
    ("[policies.p1]\ntransforms = 3\n", "policies.p1.transforms = 3 is not allowed; allowed: a list of tables"),
    ("[policies.p1]\ntransforms = [3]\n", "policies.p1.transforms[0] = 3 is not allowed; allowed: a table"),
    ('[policies.p1]\none_of = "clean"\n', "policies.p1.one_of = 'clean' is not allowed; allowed: a list of policy"),
    ('[policies.p1]\ntransforms = [{ name = "Gain" }]\nsome_of = "1"\n', "policies.p1.some_of = '1' is not allowed"),
    ('[policies.p]\ntransforms = [{ name = "AddBackgroundNoise", sounds_path = 3 }]\n',
     "policies.p.transforms.AddBackgroundNoise.sounds_path = 3 is not allowed; allowed: the path of a folder"),
    ('[policies.p]\ntransforms = [{ name = "Gain", min_gain_db = nan, max_gain_db = 3.0 }]\n',
     "policies.p.transforms.Gain.min_gain_db = nan is not allowed; allowed: a finite number"),
    ('[policies.p]\ntransforms = [{ name = "Gain", min_gain_db = -3.0, max_gain_db = inf }]\n',
     "policies.p.transforms.Gain.max_gain_db = inf is not allowed; allowed: a finite number"),
], ids=lambda v: v.split("\n")[1].split(" =")[0] if "\n" in v else None)
def test_a_wrong_type_names_the_key_the_value_and_the_type(tmp_path, toml, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as raised:
        ExperimentConfig.from_toml(path)
    assert message in str(raised.value)


@pytest.mark.parametrize("table, key, value", [
    ("data", "segment_s", 0.0), ("data", "segment_s", -1.0), ("data", "segment_s", 1e9),
    ("data", "train_augmentations", 10**9), ("data", "train_clips_per_minute", 1e9), ("data", "eval_queries", 10**9),
    ("synthetic", "sample_rate", 10**9), ("features", "sample_rate", 10**9), ("features", "n_fft", 10**9),
    ("features", "hop_length", 10**9), ("features", "n_mels", 10**9), ("features", "patch_height", 10**9),
    ("features", "patch_width", 10**9), ("embedding", "dimension", 10**9), ("embedding", "epochs", 10**9),
    ("embedding", "batch_tracks", 10**9), ("embedding", "learning_rate", 0.0), ("embedding", "learning_rate", -1.0),
    ("embedding", "learning_rate", 1e9), ("embedding", "temperature", 1e9), ("embedding", "background_tracks", 10**9),
    ("clusters", "iterations", 0), ("clusters", "iterations", 10**9), ("training", "epochs", 10**9),
    ("training", "batch_size", 10**9), ("training", "learning_rate", 1e9), ("training", "weight_decay", -1.0),
    ("qat", "patience", 10**9), ("fhe", "calibration_rows", 10**9), ("prototypes", "shots", 10**9),
    ("knn", "segment_s", 1e9), ("knnpacked", "segment_s", 1e9),
])
def test_a_value_out_of_bounds_is_refused_by_name_before_anything_runs(table, key, value):
    """Was (third fault hunt): these were accepted and asked for unbounded memory (a 1e9-Hz
    rate, 1e9 mel bands or dimensions), ran for days (1e9 epochs) or trained nothing (a
    learning rate of 0 or below); the error names the key, the value and the range."""
    with pytest.raises(ConfigError, match=rf"{table}\.{key}.* = {value!r} is not allowed; allowed: (an? (integer|number)|seconds) "
                                          rf"(from|above) "):
        ExperimentConfig.from_dict({table: {key: value}})


def test_more_clusters_searched_than_built_is_refused():
    """Was (sixth fault hunt): ``cluster_top_k = 5`` with 2 clusters was accepted without comment."""
    with pytest.raises(ConfigError, match=r"identify.cluster_top_k = 5 is not allowed; allowed: at most clusters.n_clusters \(2\)"):
        ExperimentConfig.from_dict({"clusters": {"n_clusters": 2}, "identify": {"cluster_top_k": 5}})


@pytest.mark.parametrize("blocks, message", [
    ("[{ channels = 0, kernel = 4, stride = 4 }]", "model.blocks[0].channels = 0 is not allowed; allowed: an integer from 1"),
    ("[{ channels = 8 }, { channels = 1000000000 }]", "model.blocks[1].channels = 1000000000 is not allowed"),
    ("[{ channels = 8, kernel = 0 }]", "model.blocks[0].kernel = 0 is not allowed"),
])
def test_a_convolution_block_out_of_bounds_is_refused_by_name(tmp_path, blocks, message):
    """Was (fourth fault hunt): 0 channels ended in a torch traceback after the datasets were
    built, 1e9 channels in an allocation of 64 GB."""
    path = tmp_path / "c.toml"
    path.write_text(f"[model]\nblocks = {blocks}\n")
    with pytest.raises(ConfigError) as raised:
        ExperimentConfig.from_toml(path)
    assert message in str(raised.value)


@pytest.mark.parametrize("toml, message", [
    ('seeds = { train = "0", eval = 1 }\n', "suite s.seeds.train = '0' is not allowed; allowed: an integer"),
    ('query_s = "3"\n', "suite s.query_s = '3' is not allowed; allowed: a number"),
    ("fhe_sweeps = 1\n", "suite s.fhe_sweeps = 1 is not allowed; allowed: true or false"),
    ('[experiment.synthetic]\nseed = "7"\n', "synthetic.seed = '7'"),
], ids=["seeds", "query_s", "fhe_sweeps", "experiment"])
def test_suite_keys_are_type_checked(tmp_path, toml, message):
    path = tmp_path / "s.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load_suite(path)
    assert message in str(raised.value)


def test_an_integer_is_a_number_and_lists_become_tuples():
    config = ExperimentConfig.from_dict({"synthetic": {"duration_s": 6}, "fhe": {"rounding_bits": 6},
                                         "data": {"train_gain_db": [-10, 0]}, "packed": {"moduli_bits": [38, 28, 40]}})
    assert config.data.synthetic.duration_s == 6 and config.data.train_gain_db == (-10, 0)
    assert config.table("packed").moduli_bits == (38, 28, 40)


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(BOM + b"[identify]\ncluster_top_k = 2\n")
    assert ExperimentConfig.from_toml(path).cluster_top_k == 2
    suite = tmp_path / "quick.toml"
    suite.write_bytes(BOM + (SUITE_DIR / "quick.toml").read_bytes())
    assert load_suite(suite) == load_suite("quick")


def test_bytes_that_are_not_utf8_name_the_file_line_and_encoding(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes("[identify]\n# r\u00e9glage\ncluster_top_k = 2\n".encode("latin-1"))
    for read in (ExperimentConfig.from_toml, load_suite, load_policies):
        with pytest.raises(ConfigError) as raised:
            read(path)
        assert f"{path} is not UTF-8 (byte 0xe9 at offset 14, line 2)" in str(raised.value)
        assert "TOML files must be UTF-8" in str(raised.value)


def one_error_line(status: int, err: str) -> str:
    """The one line of ``err``, checked to be an ``error:`` line of a failed command."""
    assert status != 0 and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def train(config: Path, tmp_path: Path) -> list[str]:
    return ["train", "--config", str(config), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]


@pytest.mark.parametrize("content, message", [
    (b'[fhe]\np_error = "0.05"\n', "fhe.p_error = '0.05'"),
    (BOM + b'[identify]\ncluster_top_k = "2"\n', "identify.cluster_top_k = '2'"),  # the BOM read, the type named
    ("# \u00e9\n".encode("latin-1"), "is not UTF-8 (byte 0xe9 at offset 2, line 1)"),
], ids=["wrong-type", "bom", "latin-1"])
def test_cli_names_a_bad_config_in_one_line(tmp_path, capsys, content, message):
    config = tmp_path / "c.toml"
    config.write_bytes(content)
    assert message in one_error_line(cli.main(train(config, tmp_path)), capsys.readouterr().err)


@pytest.mark.parametrize("content, message", [
    ('[embedding]\nencoder = "{tmp}/no-encoder"\n', "/no-encoder holds no fingerprint encoder"),
    ('[data]\nnoise_dir = "{tmp}/no-noise"\n', "no-noise does not exist or is not a folder"),
    ('[data]\nnoise_dir = "{tmp}"\n', "no audio file under"),
    ('[clusters]\nn_clusters = 65\n', "clusters.n_clusters = 65 is not allowed; allowed: at most the 64 tracks"),
    ('[embedding]\nembedder = "no_such_module_xyz"\n', "embedding.embedder 'no_such_module_xyz' cannot be imported"),
    ('[model]\nblocks = [{{ channels = 8, kernel = 64, stride = 64 }}]\n', "shrink the input (1, 32, 32) to nothing"),
    ('[policies.noisy]\ntransforms = [{{ name = "AddBackgroundNoise", sounds_path = "{tmp}/nowhere" }}]\n',
     "policies.noisy.transforms.AddBackgroundNoise.sounds_path = '{tmp}/nowhere': {tmp}/nowhere does not exist"),
    ('[policies.room]\ntransforms = [{{ name = "ApplyImpulseResponse", ir_path = "{tmp}/c.toml" }}]\n',
     "policies.room.transforms.ApplyImpulseResponse.ir_path = '{tmp}/c.toml': 1 of 1 file(s) are not readable audio"),
    ('[identify]\ncluster_top_k = 6\n',
     "identify.cluster_top_k = 6 is not allowed; allowed: at most the 5 cluster(s) the 64 tracks"),
], ids=["missing-encoder", "missing-noise-folder", "noise-folder-without-audio", "more-clusters-than-tracks",
        "missing-embedder", "blocks-shrink-the-patch", "transform-folder-missing", "transform-file-not-audio",
        "more-clusters-searched-than-made"])
def test_what_a_config_names_outside_itself_is_checked_before_the_library_is_rendered(tmp_path, capsys, content,
                                                                                      message):
    """Was: each was found only after the synthetic library had been rendered (minutes at scale)."""
    config = tmp_path / "c.toml"
    config.write_text(content.format(tmp=tmp_path))
    assert message.format(tmp=tmp_path) in one_error_line(cli.main(train(config, tmp_path)), capsys.readouterr().err)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.flac"))


def test_a_folder_of_sounds_holding_a_file_that_is_not_audio_is_refused_before_any_work(tmp_path, capsys):
    """Was (seventh fault hunt): a text file named ``fake.wav`` as ``sounds_path`` passed, then
    ``evaluate`` crashed in audiomentations with a traceback."""
    noise = tmp_path / "noise"
    write_audio(noise / "good.wav", tone(300.0, 2.0, 16_000), 16_000)
    (noise / "fake.wav").write_text("not audio")
    config = tmp_path / "c.toml"
    config.write_text(f'[policies.p1]\ntransforms = [{{ name = "AddBackgroundNoise", sounds_path = "{noise}" }}]\n')
    line = one_error_line(cli.main(train(config, tmp_path)), capsys.readouterr().err)
    assert f"sounds_path = '{noise}': 1 of 2 file(s) are not readable audio (fake.wav: not a readable audio" in line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.flac"))


def test_more_clusters_than_a_folder_s_audio_files_is_refused_before_any_is_decoded(tmp_path, capsys):
    music = tmp_path / "music"
    music.mkdir()
    for name in ("a.wav", "b.flac"):
        (music / name).write_bytes(b"not decoded before the check")
    config = tmp_path / "c.toml"
    config.write_text("[clusters]\nn_clusters = 3\n")
    line = one_error_line(cli.main([*train(config, tmp_path), "--library", str(music)]), capsys.readouterr().err)
    assert "at most the 2 tracks the library" in line


@pytest.mark.parametrize("content, message", [
    ('[policies.clean]\ntransforms = [{ name = "Gain", min_gain_db = -1.0, max_gain_db = 1.0, p = 1.0 }]\n',
     "policy name 'clean' is a built-in level; choose another name"),
    ('[data]\neval_levels = []\n', "data.eval_levels = [] is not allowed"),
    ('[data]\neval_levels = ["clean", "nonsense@@"]\n', "data.eval_levels: query condition = 'nonsense@@'"),
    ('[data]\ntrain_policy = "nope"\n', "data.train_policy: policy = 'nope'"),
    ('[policies.a]\none_of = ["b"]\n[policies.b]\none_of = ["a"]\n', "policies.a.one_of"),
    ('[policies.bad]\ntransforms = [{ name = "Gain", min_gain_db = "loud" }]\n',
     "policies.bad.transforms.Gain.min_gain_db = 'loud' is not allowed; allowed: a number"),
    ('[landmark]\nfan_out = 0\n', "landmark.fan_out = 0 is not allowed"),
    ('[mfcc]\nwindow_s = 0\n', "mfcc.window_s = 0.0 is not allowed"),
    ('[policies."clean@+3dB"]\ntransforms = [{ name = "PolarityInversion" }]\n',
     "policies table name = 'clean@+3dB' is not allowed"),
    ('[policies.x]\ntransforms = [{ name = "Gain" }]\none_of = ["clean"]\n',
     "policies.x: give either transforms (and some_of) or one_of, not both"),
    ('[policies.x]\none_of = []\n', "policies.x.one_of = [] is not allowed"),
    ('[policies.x]\ntransforms = [{ name = "Gain", p = 2.0 }]\n',
     "policies.x.transforms.Gain with {'p': 2.0}: AssertionError (a value out of the range"),
], ids=["custom-clean-level", "no-eval-level", "bad-eval-level", "bad-train-policy", "mixture-cycle",
        "transform-value-type", "landmark-fan-out", "mfcc-window", "policy-named-like-a-condition",
        "transforms-beside-one-of", "empty-mixture", "reason-without-words"])
def test_each_bad_setting_is_named_by_its_key_when_the_config_is_read(tmp_path, capsys, content, message):
    """Fifth fault hunt: a [policies.clean] table silently replaced the built-in clean level, an
    empty eval_levels measured nothing, a transform's bad value failed once clips were augmented,
    and five errors named no key or two."""
    config = tmp_path / "c.toml"
    config.write_text(content)
    assert message in one_error_line(cli.main(train(config, tmp_path)), capsys.readouterr().err)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.flac"))


def test_prepare_refuses_an_out_that_is_a_file_before_building(tmp_path, capsys):
    """Sixth fault hunt: ``prepare --out FILE`` failed only after ~20 s of building."""
    (tmp_path / "afile").write_text("x")
    command = ["prepare", "--out", str(tmp_path / "afile"), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    assert "is a file, not a folder" in one_error_line(cli.main(command), capsys.readouterr().err)
    assert not (tmp_path / "cache").exists()


def test_cli_names_a_config_path_that_is_a_folder(tmp_path, capsys):
    line = one_error_line(cli.main(train(tmp_path, tmp_path)), capsys.readouterr().err)
    assert str(tmp_path) in line and "Is a directory" in line


def test_cli_names_an_unreadable_config(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("[identify]\ncluster_top_k = 2\n")
    config.chmod(0)
    if os.access(config, os.R_OK):
        pytest.skip("this user reads a chmod 000 file (root)")
    line = one_error_line(cli.main(train(config, tmp_path)), capsys.readouterr().err)
    assert str(config) in line and "Permission denied" in line and "permissions" in line


def info(cache_dir: Path) -> list[str]:
    return ["library", "info", "synthetic", "--n-tracks", "1", "--duration", "1", "--cache-dir", str(cache_dir),
            "--workers", "1"]


def test_cli_names_a_read_only_cache_folder(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    if os.access(cache, os.W_OK):
        pytest.skip("this user writes into a chmod 555 folder (root)")
    line = one_error_line(cli.main(info(cache)), capsys.readouterr().err)
    assert str(cache) in line and "Permission denied" in line


def test_cli_names_a_cache_folder_that_is_a_file(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    line = one_error_line(cli.main(info(cache)), capsys.readouterr().err)
    assert str(cache) in line and "--cache-dir" in line


@pytest.mark.parametrize("code, advice", [
    (errno.ENOSPC, "free space on that disk"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only"),
    (errno.EFBIG, "ulimit -f"), (errno.EACCES, "permissions"), (errno.ENOENT, "exists"), (errno.EMFILE, "ulimit -n"),
])
def test_cli_names_each_filesystem_fault_and_what_to_do(tmp_path, capsys, monkeypatch, code, advice):
    where = tmp_path / "cache" / "libraries" / "x.wav"

    def fault(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(where))

    monkeypatch.setattr(cli, "open_library", fault)
    line = one_error_line(cli.main(info(tmp_path / "cache")), capsys.readouterr().err)
    assert str(where) in line and advice in line


@pytest.mark.parametrize("raised, status, message", [
    (MemoryError(), 1, "out of memory"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), 1, "byte 0xff at offset 2"),
    (KeyboardInterrupt(), 130, "interrupted"),
], ids=["memory", "decode", "interrupt"])
def test_cli_ends_other_nameable_failures_in_one_line(tmp_path, capsys, monkeypatch, raised, status, message):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(cli, "open_library", fail)
    code = cli.main(info(tmp_path))
    assert code == status and message in one_error_line(code, capsys.readouterr().err)


def test_cli_keeps_the_traceback_of_a_programming_error(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "open_library", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(info(tmp_path))


def test_console_script_prints_one_error_line(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[synthetic]\nseed = "7"\n')
    ppazam = Path(sys.executable).with_name("ppazam")
    done = subprocess.run([str(ppazam), *train(config, tmp_path)], capture_output=True, text=True, timeout=120)
    assert "synthetic.seed = '7'" in one_error_line(done.returncode, done.stderr)


@pytest.mark.parametrize("toml", ["[embedding]\nseed = 99999999999999999999\n", "[synthetic]\nseed = -1\n",
                                  "[training]\nseed = -5\n", "[synthetic]\nduration_s = inf\n"])
def test_seeds_out_of_range_and_an_infinite_duration_are_refused(tmp_path, toml):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match="seed|duration_s"):
        ExperimentConfig.from_toml(path)


@pytest.mark.parametrize("option, message", [
    (["--n-tracks", "99999999999"], "n_tracks = 99999999999 is not allowed; allowed: an integer from 1 to 1,000,000"),
    (["--duration", "1e-9"], "duration_s = 1e-09 is not allowed; allowed: seconds from 0.1 to 3600"),
    (["--duration", "1e308"], "duration_s = 1e+308 is not allowed; allowed: seconds from 0.1 to 3600"),
    (["--seed", "-1"], "seed = -1 is not allowed; allowed: an integer from 0 to 4294967295"),
], ids=["huge-track-count", "no-sample", "endless-song", "negative-seed"])
def test_synthetic_options_out_of_range_are_one_error_line_before_anything_is_built(tmp_path, capsys, option,
                                                                                   message):
    """Was: a huge track count (or song length) grew memory at 150 MB/s until killed; 1e-9 s,
    1e308 s and seed -1 were tracebacks from the renderer and numpy."""
    command = ["library", "info", "synthetic", *option, "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    assert message in one_error_line(cli.main(command), capsys.readouterr().err)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.flac"))


def test_a_bad_workers_count_is_refused_from_the_environment_and_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPAZAM_WORKERS", "abc")
    line = one_error_line(cli.main(["library", "info", "synthetic", "--n-tracks", "1", "--duration", "1",
                                    "--cache-dir", str(tmp_path)]), capsys.readouterr().err)
    assert "$PPAZAM_WORKERS = 'abc'" in line
    monkeypatch.delenv("PPAZAM_WORKERS")
    with pytest.raises(SystemExit):
        cli.main(["library", "info", "synthetic", "--workers", "0"])
    assert "--workers: 0 is not a whole number >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("table, hop", [("knn", 1e-12), ("knnpacked", 1e-12), ("knn", 1e9)])
def test_a_reference_hop_out_of_range_is_refused(table, hop):
    """Was: [knn] hop_s = 1e-12 grew memory past 5 GB in 19 s."""
    with pytest.raises(ConfigError, match=f"{table}.hop_s"):
        ExperimentConfig.from_dict({table: {"hop_s": hop}}).table(table)
