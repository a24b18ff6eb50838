import pytest

from ppazam_core.seeding import Split, derive_seed
from ppazam_core import store
from ppazam_core.provenance import code_fingerprint, git_commit
from ppazam_core.store import atomic_folder, atomic_write_text, build_of, config_hash, is_complete


def test_atomic_folder_publishes_only_finished_work(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_folder(final) as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert is_complete(final) and (final / "whole.bin").read_bytes() == b"x"


def test_stale_unfinished_folder_is_replaced(tmp_path):
    final = tmp_path / "artifact"
    final.mkdir()
    (final / "stale").write_text("from a killed writer")
    with atomic_folder(final) as tmp:
        (tmp / "fresh").write_text("ok")
    assert sorted(p.name for p in final.iterdir()) == [".done", "fresh"]


def test_atomic_write_text(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.json", "{}")
    assert (tmp_path / "a" / "b.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_hashes_and_seeds_are_stable_and_distinct():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert derive_seed(0, Split.TRAIN, "t1", 0) == derive_seed(0, "train", "t1", 0)
    train = {derive_seed(0, Split.TRAIN, f"t{i}", j) for i in range(50) for j in range(20)}
    evaluation = {derive_seed(0, Split.EVAL, f"t{i}", j) for i in range(50) for j in range(20)}
    assert len(train) == 1000 and not train & evaluation


def test_a_finished_rebuild_replaces_the_previous_build(tmp_path):
    final = tmp_path / "artifact"
    with atomic_folder(final) as tmp:
        (tmp / "v").write_text("1")
    with atomic_folder(final) as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2" and is_complete(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_artifact_keys_change_with_the_code(monkeypatch):
    before = config_hash({"a": 1})
    monkeypatch.setattr(store, "code_fingerprint", lambda: "another-commit's-code")
    assert config_hash({"a": 1}) != before


def test_a_finished_folder_records_what_built_it(tmp_path):
    with atomic_folder(tmp_path / "artifact") as tmp:
        (tmp / "x").write_text("1")
    record = build_of(tmp_path / "artifact")
    assert record["code_hash"] == code_fingerprint() and record["git_commit"] == git_commit()
    assert {"packages", "machine", "built_at"} <= set(record) and record["packages"]["torch"] == "2.3.1"
    (tmp_path / "artifact" / ".done").write_text("0.1.0")  # a marker of an older version
    assert build_of(tmp_path / "artifact") == {} and is_complete(tmp_path / "artifact")


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    atomic_write_text(tmp_path / "results.csv", "a,b\n")
    (tmp_path / "plain.csv").write_text("a,b\n")
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == (tmp_path / "plain.csv").stat().st_mode & 0o777
