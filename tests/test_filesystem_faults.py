"""File-system faults and concurrent writers: a full disk, a read-only folder or the file-size
limit is one error naming the path and leaving nothing half-written; leftovers of writers that
died are cleaned by the next one; two `enroll` runs into one folder both count; an `enroll`
killed (SIGKILL) or stopped (SIGTERM) while it swaps the model in loses nothing.

Full disks are made without root: ``os.statvfs`` reporting little room, or ``RLIMIT_FSIZE`` in a
child process (SIGXFSZ ignored, so that a write past it fails with EFBIG)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import ppazam_core
from ppazam_core.queries.augment import builtin_policy
from ppazam_core.cli import main
from ppazam_core.queries.dataset import DatasetSpec, build_dataset
from ppazam_core.errors import StorageError
from ppazam_core.families import train_family
from ppazam_core.families.embedding_prototypes import FAMILY
from ppazam_core.audio.library import synthetic_distractors
from ppazam_core.store import atomic_folder, host_name, is_complete, recover_leftovers

REPO = Path(ppazam_core.__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}

# `ppazam` in a child process: argv = kill (none, SIGKILL or SIGTERM: sent to itself right after
# the model was moved aside, in the middle of the swap), file-size limit in bytes (0: none), args
ENROLL_CHILD = """
import os, resource, signal, sys
from ppazam_core.cli import main
kill, limit = sys.argv[1], int(sys.argv[2])
if kill != "none":
    replace = os.replace
    def dying_replace(src, dst, **kwargs):
        replace(src, dst, **kwargs)
        if ".old-" in os.fspath(dst):
            os.kill(os.getpid(), getattr(signal, kill))
    os.replace = dying_replace
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[3:]))
"""

# build a dataset of the tiny library (argv: session cache, new cache) under a 128 KiB file-size limit
DATASET_CHILD = """
import resource, signal, sys
from pathlib import Path
from conftest import TINY_SPEC
from ppazam_core.queries.augment import builtin_policy
from ppazam_core.queries.dataset import DatasetSpec, build_dataset
from ppazam_core.errors import PpazamError
from ppazam_core.audio.library import synthetic_library
library = synthetic_library(TINY_SPEC, Path(sys.argv[1]), workers=1)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2**17, 2**17))
try:
    build_dataset(library, DatasetSpec(builtin_policy("clean"), augmentations_per_track=20), Path(sys.argv[2]),
                  workers=1)
except PpazamError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def prototypes(tiny_library, tiny_config, session_cache):
    config, _ = tiny_config
    return train_family(FAMILY, tiny_library, config, session_cache, workers=1)


@pytest.fixture(scope="module")
def songs(tiny_config, session_cache, tmp_path_factory) -> list[Path]:
    """Three songs the model never saw: song_a, song_b, song_c."""
    config, _ = tiny_config
    folder = tmp_path_factory.mktemp("songs")
    tracks = synthetic_distractors(config.data.synthetic, 3, session_cache)
    return [Path(shutil.copy(track.source, folder / f"song_{name}.flac")) for track, name in zip(tracks, "abc")]


@pytest.fixture(scope="module")
def common(tiny_config, session_cache) -> list[str]:
    _, toml = tiny_config
    return ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1"]


@pytest.fixture(scope="module")
def model_with_a(prototypes, songs, common, tmp_path_factory) -> Path:
    """An enrolled model: the trained tracks and song_a."""
    into = tmp_path_factory.mktemp("enrolled") / "model"
    assert main(["enroll", str(songs[0]), "--into", str(into), *common]) == 0
    return into


def _copy_of(model: Path, folder: Path) -> Path:
    into = folder / "model"
    shutil.copytree(model, into)
    return into


def _enrolled(into: Path) -> list[str]:
    return [e["id"] for e in json.loads((into / "model.json").read_text())["enrolled"]]


def _enroll_child(kill: str, limit: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ENROLL_CHILD, kill, str(limit), "enroll", *args],
                            env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(child: subprocess.Popen) -> tuple[int, str, str]:
    out, err = child.communicate(timeout=600)
    return child.returncode, out, err


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != f".{path.name}.lock")


def test_a_dataset_is_refused_before_it_is_mapped_when_the_disk_lacks_room(tiny_library, cache_dir, monkeypatch):
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=1000, f_frsize=4096))  # 4 MB free
    with pytest.raises(StorageError, match="no space left on the device.*MiB free") as caught:
        build_dataset(tiny_library, DatasetSpec(builtin_policy("clean"), augmentations_per_track=2), cache_dir,
                      workers=1)
    assert str(cache_dir / "datasets") in str(caught.value) and "--cache-dir" in str(caught.value)
    assert list((cache_dir / "datasets").iterdir()) == []  # no partial folder


def test_a_dataset_past_the_file_size_limit_is_one_error_and_leaves_nothing(tiny_library, session_cache, tmp_path):
    done = subprocess.run([sys.executable, "-c", DATASET_CHILD, str(session_cache), str(tmp_path / "cache")],
                          env=CHILD_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "file too large for the file-size limit" in done.stderr and "ulimit -f" in done.stderr
    assert str(tmp_path / "cache" / "datasets") in done.stderr
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


def test_rendering_onto_a_full_disk_is_one_error_and_leaves_no_half_written_track(tmp_path, monkeypatch, capsys):
    """Fifth fault hunt: a full disk while the synthetic library was rendered was a libsndfile
    traceback ("System error") and left ``.track_*.tmp`` files that kept the disk full."""
    command = ["library", "info", "synthetic", "--n-tracks", "2", "--duration", "2", "--cache-dir",
               str(tmp_path / "cache"), "--workers", "1"]
    with monkeypatch.context() as full:
        full.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=1000, f_frsize=4096))  # 4 MB free
        assert main(command) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "no space left on the device" in err and "Traceback" not in err
    folder = next((tmp_path / "cache" / "synthetic").iterdir())
    assert list(folder.iterdir()) == []  # nothing half-written
    stale = folder / f".track_00000.flac.partial-{_dead_pid()}@{host_name()}-file"  # a render that died
    stale.write_bytes(b"half a track")
    assert main(command) == 0 and not stale.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["library.json", "track_00000.flac", "track_00001.flac"]


def test_enroll_onto_a_full_disk_is_one_error_and_keeps_the_model(model_with_a, songs, common, tmp_path):
    into = _copy_of(model_with_a, tmp_path)
    code, _, err = _finished(_enroll_child("none", 2**16, str(songs[1]), "--into", str(into), *common))
    assert code == 1 and "Traceback" not in err and "error: cannot write" in err, err
    assert str(tmp_path) in err and ("ulimit -f" in err or "copy failed" in err)
    assert _enrolled(into) == ["song_a"] and is_complete(into)
    assert _beside(into) == ["model"]  # no partial folder


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left"), (errno.EDQUOT, "quota"),
                                          (errno.EROFS, "read-only"), (errno.EACCES, "permission denied")])
def test_a_storage_fault_names_the_path_and_what_to_do(tmp_path, code, reason):
    final = tmp_path / "artifact"
    with pytest.raises(StorageError, match=reason) as caught:
        with atomic_folder(final) as tmp:
            raise OSError(code, os.strerror(code), str(tmp / "weights.bin"))
    assert f"cannot write {final / 'weights.bin'}: " in str(caught.value)  # as the user will know it
    assert " folder" in str(caught.value) and "--cache-dir" in str(caught.value)  # what to do
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StorageError, match=f"cannot write {final}: copy failed.*No space left"):
        with atomic_folder(final) as tmp:
            raise shutil.Error([("a", str(tmp / "a"), "[Errno 28] No space left on device")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (the errno cases above run)")
def test_a_read_only_folder_is_one_clear_error(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(StorageError, match=f"cannot write {tmp_path}.*permission denied"):
            with atomic_folder(tmp_path / "artifact"):
                pass
    finally:
        tmp_path.chmod(0o755)
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_dead_writers_are_removed_and_others_reported(tmp_path, caplog):
    dead, host = _dead_pid(), host_name()
    names = {"dead": f".artifact.partial-{dead}@{host}-k3x_9a", "dead-other": f".other.old-{dead}@{host}-q1w2e3",
             "live": f".artifact.partial-{os.getpid()}@{host}-z8y7x6",
             "remote": f".artifact.partial-{dead}@far-away-a1", "older": ".artifact.partial-k9j8h7g6"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.bin").write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="ppazam_core.store"):
        with atomic_folder(tmp_path / "artifact") as tmp:
            (tmp / "whole.bin").write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["artifact", names["live"], names["remote"],
                                                                 names["older"]])
    assert f"process {dead} on far-away" in caplog.text and "an older ppazam" in caplog.text


def test_a_folder_a_dead_writer_moved_aside_is_put_back(tmp_path, caplog):
    aside = tmp_path / f".artifact.old-{_dead_pid()}@{host_name()}-r4t5y6"
    with atomic_folder(aside / "artifact") as tmp:
        (tmp / "v").write_text("1")
    with caplog.at_level(logging.WARNING, logger="ppazam_core.store"):
        recover_leftovers(tmp_path)
    assert (tmp_path / "artifact" / "v").read_text() == "1" and is_complete(tmp_path / "artifact")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"] and "put " in caplog.text


def test_two_enrolls_into_one_folder_keep_both_songs(model_with_a, songs, common, tmp_path):
    into = _copy_of(model_with_a, tmp_path)
    children = [_enroll_child("none", 0, str(song), "--into", str(into), *common) for song in songs[1:]]
    for code, out, err in map(_finished, children):
        assert code == 0 and "1 track(s) added" in out, err
    assert sorted(_enrolled(into)) == ["song_a", "song_b", "song_c"]
    assert _beside(into) == ["model"]


def test_an_enroll_killed_in_the_middle_of_the_swap_loses_nothing(model_with_a, songs, common, tmp_path, caplog):
    into = _copy_of(model_with_a, tmp_path)
    code, _, _ = _finished(_enroll_child("SIGKILL", 0, str(songs[1]), "--into", str(into), *common))
    assert code == -signal.SIGKILL and not into.exists()  # the crash window: the model is only aside
    with caplog.at_level(logging.WARNING, logger="ppazam_core.store"):
        assert main(["enroll", str(songs[2]), "--into", str(into), *common]) == 0
    assert _enrolled(into) == ["song_a", "song_c"]  # not a new model from the trained one
    assert f"put {into} back" in caplog.text
    assert _beside(into) == ["model"]


def test_sigterm_in_the_middle_of_the_swap_waits_for_it(model_with_a, songs, common, tmp_path):
    into = _copy_of(model_with_a, tmp_path)
    code, out, err = _finished(_enroll_child("SIGTERM", 0, str(songs[1]), "--into", str(into), *common))
    assert code == -signal.SIGTERM, err
    assert is_complete(into) and _enrolled(into) == ["song_a", "song_b"]


def test_a_mount_point_is_refused_as_an_atomic_folder_and_nothing_is_left(tmp_path, monkeypatch):
    """Was: `enroll --into` a mounted volume failed with "Device or resource busy" after the
    work, and left an empty folder beside it."""
    mounted = tmp_path / "volume"
    mounted.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == mounted)
    with pytest.raises(StorageError, match=f"cannot write {mounted}: it is a mount point.*{mounted / 'model'}"):
        with atomic_folder(mounted):
            pytest.fail("nothing may be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"] and not any(mounted.iterdir())


def test_a_track_removed_twice_is_removed_and_counted_once(model_with_a, common, tmp_path, capsys):
    into = tmp_path / "model"
    shutil.copytree(model_with_a, into)
    assert main(["enroll", "--into", str(into), "--remove", "song_a", "--remove", "song_a", *common]) == 0
    out = capsys.readouterr().out
    assert out.count("removed song_a") == 1 and "0 track(s) added, 1 removed" in out
