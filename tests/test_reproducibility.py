"""Same commit, configuration and seeds -> the same weights: across cache folders, worker counts,
processes and the process's own torch thread count (training pins its threads; see
:mod:`ppazam_core.threads`)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import torch

from ppazam_core.models.pipeline import model_folder
from ppazam_core.threads import fixed_threads

TRAIN = """
import sys
import torch
from ppazam_core.cli import main
torch.set_num_threads(int(sys.argv[1]))  # what another machine's core count would give
sys.exit(main(["train", "--config", sys.argv[2], "--cache-dir", sys.argv[3], "--workers", sys.argv[4]]))
"""


def weights_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every tensor's bytes of every ``.pt`` file under ``folder``, by file and key."""
    digests = {}
    for path in sorted(folder.rglob("*.pt")):
        for key, tensor in torch.load(path, weights_only=True).items():
            digests[f"{path.relative_to(folder)}:{key}"] = hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
    return digests


def test_two_fresh_caches_two_processes_two_worker_counts_give_identical_weights(tiny_config, tiny_library,
                                                                                  tmp_path):
    config, toml = tiny_config
    runs = (("1", tmp_path / "cache-a", "1"), ("2", tmp_path / "cache-b", "2"))
    for threads, cache, workers in runs:
        done = subprocess.run([sys.executable, "-c", TRAIN, threads, str(toml), str(cache), workers],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    folders = [model_folder(tiny_library, config, cache) for _, cache, _ in runs]
    assert folders[0].name == folders[1].name  # content-keyed: the same key in both caches
    first, second = (weights_digest(folder) for folder in folders)
    assert first and first == second
    for name in ("clusters.npz", "normalizer.npz"):
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes()


def test_fixed_threads_restores_the_callers_count():
    before = torch.get_num_threads()
    with fixed_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
