"""Where a number came from: run id, git commit, code fingerprint, versions and machine.

:func:`build_record` goes into every cache folder's ``.done`` marker (what built it, when, where);
:func:`environment` into every ``run.json`` (what its figures depend on: CPU, BLAS and thread
counts as well as package versions, since float kernels differ between machines).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
import uuid
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

TRACKED_PACKAGES = ("ppazam", "concrete-ml", "torch", "torchaudio", "brevitas", "audiomentations",
                    "numpy", "faiss-cpu", "soundfile")


@lru_cache(maxsize=1)
def code_fingerprint(length: int = 16) -> str:
    """SHA-256 (hex, first ``length`` digits) of every Python source file of ``ppazam_core``:
    their paths relative to the package and their bytes, in sorted order. Any edit to the code
    that builds artifacts changes it; comments included, which errs on the side of rebuilding."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:length]


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a short random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit (with ``+dirty`` for uncommitted changes) of the repository at
    ``cwd`` (default: the one holding this package, whatever the working directory), or
    ``unknown`` outside a git checkout (then :func:`code_fingerprint` still names the code)."""
    cwd = Path(__file__).resolve().parent if cwd is None else cwd
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`TRACKED_PACKAGES` (``None``: not installed)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def build_record() -> dict:
    """What built an artifact: commit, code fingerprint, package versions, machine, UTC time.
    Written into every manifest; result rows quote its commit."""
    return {"git_commit": git_commit(), "code_hash": code_fingerprint(), "packages": package_versions(),
            "machine": {"cpu": cpu_model(), "platform": platform.platform(), "cpu_count": os.cpu_count()},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Machine, package versions and what float arithmetic depends on, for ``run.json``: the
    CPU model and flags that pick kernels, the BLAS libraries loaded with their threads
    (threadpoolctl) and torch's thread counts and parallel backend."""
    import threadpoolctl
    import torch

    cpu_flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu_flags = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text(errors="replace").splitlines()
                          if line.startswith("flags")), "")
    simd = sorted(flag for flag in cpu_flags.split() if flag.startswith(("avx", "sse", "fma", "amx")))
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpu_simd_flags": simd,
        "cpu_count": os.cpu_count(),
        "blas": [{key: info.get(key) for key in ("internal_api", "version", "num_threads", "architecture",
                                                  "threading_layer")} for info in threadpoolctl.threadpool_info()],
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "thread_environment": {name: os.environ.get(name) for name in
                               ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PPAZAM_WORKERS")},
        "packages": package_versions(),
    }
