"""The ``ppazam`` command.

    ppazam library info synthetic|PATH     track counts, duration, silent and skipped files
    ppazam library build-debian DEST       real music from Debian's packages
    ppazam prepare [--library ...]         the data path: library, noise, datasets, summary
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from ppazam_core.config import DataConfig, ExperimentConfig
from ppazam_core.dataset import build_dataset
from ppazam_core.debian import MUSIC_PACKAGES, NOISE_PACKAGE, build_debian_library
from ppazam_core.errors import PpazamError
from ppazam_core.library import DEFAULT_QUERY_S, Library, SyntheticSpec, open_library
from ppazam_core.noise import synthetic_noise_bank
from ppazam_core.parallel import default_workers
from ppazam_core.provenance import environment, git_commit, new_run_id
from ppazam_core.store import atomic_write_text, config_hash, default_cache_dir

console = Console()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ppazam`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except PpazamError as e:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {e}", highlight=False)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppazam", description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(title="commands")

    library = commands.add_parser("library", help="inspect or build music libraries")
    library_commands = library.add_subparsers(title="library commands")
    info = library_commands.add_parser("info", help="summarise a library")
    info.add_argument("source", help="'synthetic' or a folder of audio files")
    _library_options(info)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(run=_library_info)

    debian = library_commands.add_parser("build-debian", help="real music from Debian packages")
    debian.add_argument("dest", type=Path, help="new or empty folder for the library")
    debian.add_argument("--package", dest="packages", action="append",
                        help=f"music package (repeatable; default: {', '.join(MUSIC_PACKAGES)})")
    debian.add_argument("--noise-package", default=NOISE_PACKAGE,
                        help="package whose sound effects become the background-noise folder")
    debian.set_defaults(run=_library_build_debian)

    prepare = commands.add_parser("prepare", help="build the library, noise bank and datasets")
    prepare.add_argument("--library", default="synthetic", help="'synthetic' (default) or a folder")
    prepare.add_argument("--config", type=Path, help="TOML data configuration")
    prepare.add_argument("--out", type=Path, help="report folder (default reports/<run-id>)")
    prepare.add_argument("--cache-dir", type=Path, help="cache folder (default $PPAZAM_CACHE or ~/.cache/ppazam)")
    prepare.add_argument("--workers", type=int, help="worker processes (default: all cores)")
    prepare.set_defaults(run=_prepare)
    return parser


def _library_options(command: argparse.ArgumentParser) -> None:
    defaults = SyntheticSpec()
    command.add_argument("--n-tracks", type=int, default=defaults.n_tracks, help="synthetic: tracks")
    command.add_argument("--duration", type=float, default=defaults.duration_s, help="synthetic: seconds per track")
    command.add_argument("--seed", type=int, default=defaults.seed, help="synthetic: generator seed")
    command.add_argument("--query-length", type=float, default=DEFAULT_QUERY_S,
                         help="folders: skip tracks shorter than this (s)")
    command.add_argument("--cache-dir", type=Path, help="cache folder (default $PPAZAM_CACHE or ~/.cache/ppazam)")
    command.add_argument("--workers", type=int, help="worker processes (default: all cores)")


def _library_info(args: argparse.Namespace) -> int:
    spec = SyntheticSpec(seed=args.seed, n_tracks=args.n_tracks, duration_s=args.duration)
    library = open_library(args.source, args.cache_dir or default_cache_dir(), spec,
                           args.query_length, args.workers)
    summary = library.summary()
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
        return 0
    table = Table(title=f"library {summary.name}", show_header=False)
    table.add_row("tracks", str(summary.n_tracks))
    table.add_row("total duration", _duration(summary.total_duration_s))
    table.add_row("sample rates (Hz: tracks)", ", ".join(f"{k}: {v}" for k, v in summary.sample_rates.items()))
    table.add_row("channels (n: tracks)", ", ".join(f"{k}: {v}" for k, v in summary.channels.items()))
    table.add_row("silent tracks", ", ".join(summary.silent_tracks) or "none")
    table.add_row("skipped files", str(len(summary.skipped)))
    table.add_row("background noise", str(library.noise_dir) if library.noise_dir else "built-in synthetic bank")
    console.print(table)
    for skipped in summary.skipped:
        console.print(f"  skipped {skipped.path}: {skipped.reason}", highlight=False, soft_wrap=True)
    return 0


def _library_build_debian(args: argparse.Namespace) -> int:
    packages = tuple(args.packages) if args.packages else MUSIC_PACKAGES
    console.print(f"downloading and unpacking {', '.join(packages)} ...")
    build = build_debian_library(args.dest, packages, args.noise_package)
    console.print(f"built {build.root}: {build.music_files} music files, {build.noise_files} noise files "
                  f"from {', '.join(f'{k} {v}' for k, v in build.packages.items())}", highlight=False, soft_wrap=True)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    config = ExperimentConfig.from_toml(args.config).data if args.config else DataConfig()
    cache_dir = args.cache_dir or default_cache_dir()
    workers = args.workers or default_workers()
    run_id = new_run_id()
    out = args.out or Path("reports") / run_id
    timings: dict[str, float] = {}

    started = time.perf_counter()
    library = open_library(args.library, cache_dir, config.synthetic, config.segment_s, workers)
    timings["library_s"] = time.perf_counter() - started
    noise_dir = library.noise_dir
    if noise_dir is None:
        started = time.perf_counter()
        noise_dir = synthetic_noise_bank(cache_dir, seed=config.train_seed, sample_rate=config.features.sample_rate)
        timings["noise_bank_s"] = time.perf_counter() - started

    datasets = []
    specs = [config.train_spec()] + [config.eval_spec(level) for level in config.eval_levels]
    for spec in specs:
        started = time.perf_counter()
        dataset = build_dataset(library, spec, cache_dir, noise_dir, workers)
        datasets.append({"split": spec.split, "policy": spec.policy.name, "rows": len(dataset),
                         "shape": list(dataset.X.shape), "bytes": dataset.size_bytes,
                         "seconds": round(time.perf_counter() - started, 3),
                         "built_seconds": dataset.info["build_seconds"], "folder": str(dataset.folder)})
    report = {
        "run_id": run_id, "git_commit": git_commit(), "config_hash": config_hash(config),
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "library": asdict(library.summary()), "noise_dir": str(noise_dir),
        "timings": {k: round(v, 3) for k, v in timings.items()}, "datasets": datasets,
        "environment": environment(),
    }
    atomic_write_text(out / "prepare.json", json.dumps(report, indent=2, default=str))
    _print_prepare(library, report, out)
    return 0


def _print_prepare(library: Library, report: dict, out: Path) -> None:
    summary = report["library"]
    timings = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in report["timings"].items())
    console.print(f"[bold]library[/] {library.name}: {summary['n_tracks']} tracks, "
                  f"{_duration(summary['total_duration_s'])}, {len(summary['skipped'])} skipped, "
                  f"{len(summary['silent_tracks'])} silent ({timings})", highlight=False, soft_wrap=True)
    table = Table(title="datasets")
    for column in ("split", "policy", "rows", "patch", "size", "time (s)"):
        table.add_column(column)
    for d in report["datasets"]:
        table.add_row(d["split"], d["policy"], str(d["rows"]), "x".join(map(str, d["shape"][1:])),
                      f"{d['bytes'] / 1e6:.1f} MB", f"{d['seconds']:.1f}")
    console.print(table)
    console.print(f"report: {out / 'prepare.json'} (run {report['run_id']}, commit {report['git_commit']}, "
                  f"config {report['config_hash']})", highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h {rest // 60:02d}m {rest % 60:02d}s"


if __name__ == "__main__":
    sys.exit(main())
