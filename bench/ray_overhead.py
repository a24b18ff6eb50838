"""What Ray costs on this machine (issue 35): its start, its overhead per task, and the wall time
of real work with and without it.

A measurement, not a test (pytest does not collect it); run it on a machine as quiet as you can::

    .tox/ppazam/bin/python bench/ray_overhead.py --out /tmp/ray-overhead
    .tox/ppazam/bin/python bench/ray_overhead.py --out DIR --tracks 64 --tasks 400 --address 127.0.0.1:6379

It measures, each on a fresh cache folder:

* ``start_s``: :func:`ppazam_core.distributed.start` of a local instance (or joining ``--address``);
* ``overhead_per_task_ms``: ``--tasks`` tasks that return at once, through
  :func:`~ppazam_core.distributed.ray_map`, wall time divided by the tasks (the first map, which
  also starts the workers and imports ppazam in them, apart: ``first_map_s``);
* ``render_local_s`` / ``render_ray_s``: rendering a synthetic library of ``--tracks`` songs of
  30 s with ``parallel_map`` on ``--workers`` processes, then as Ray tasks, and whether both
  libraries have the same content fingerprint.

It writes ``DIR/ray_overhead.json`` (figures, command, commit, machine) and prints it; it refuses
a folder that already holds one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ppazam_core import distributed
from ppazam_core.audio.library import open_library
from ppazam_core.config import ExperimentConfig
from ppazam_core.distributed import LOCAL, RayConfig
from ppazam_core.provenance import environment, git_commit
from ppazam_core.parallel import parallel_map

RESULT_FILE = "ray_overhead.json"


def _nothing(item: int) -> int:
    return item


def _rendered(folder: Path, tracks: int, workers: int) -> tuple[float, str]:
    """Seconds to render the library of ``tracks`` 30-s songs into ``folder``, and its fingerprint."""
    config = ExperimentConfig()
    synthetic = replace(config.data.synthetic, n_tracks=tracks, duration_s=30.0)
    started = time.perf_counter()
    library = open_library("synthetic", folder, synthetic, config.data.segment_s, workers)
    return time.perf_counter() - started, library.fingerprint()


def measure(tracks: int, tasks: int, workers: int, address: str) -> dict:
    """Every figure of the module docstring."""
    scratch = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    try:
        render_local_s, local_print = _rendered(scratch / "local", tracks, workers)
        started = time.perf_counter()
        cluster = distributed.start(RayConfig(address=address))
        start_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            list(parallel_map(_nothing, list(range(tasks)), workers, "first map"))
            first_map_s = time.perf_counter() - started
            started = time.perf_counter()
            list(parallel_map(_nothing, list(range(tasks)), workers, "no-op tasks"))
            per_task_ms = (time.perf_counter() - started) / tasks * 1e3
            render_ray_s, ray_print = _rendered(scratch / "ray", tracks, workers)
        finally:
            distributed.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"cluster": cluster, "start_s": round(start_s, 2), "first_map_s": round(first_map_s, 2),
            "tasks": tasks, "overhead_per_task_ms": round(per_task_ms, 2), "tracks": tracks, "workers": workers,
            "render_local_s": round(render_local_s, 1), "render_ray_s": round(render_ray_s, 1),
            "same_library": local_print == ray_print}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {RESULT_FILE}")
    parser.add_argument("--tracks", type=int, default=64, help="songs of 30 s rendered with and without Ray")
    parser.add_argument("--tasks", type=int, default=400, help="no-op tasks timed for the overhead")
    parser.add_argument("--workers", type=int, default=2, help="processes of the run without Ray")
    parser.add_argument("--address", default=LOCAL, help="a Ray cluster's address (default: a local instance)")
    args = parser.parse_args(argv)
    if (args.out / RESULT_FILE).exists():
        print(f"error: {args.out / RESULT_FILE} exists; name another --out", file=sys.stderr)
        return 1
    figures = measure(args.tracks, args.tasks, args.workers, args.address)
    result = {"command": " ".join(sys.argv), "commit": git_commit(), "environment": environment(), **figures}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / RESULT_FILE).write_text(json.dumps(result, indent=2))
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
