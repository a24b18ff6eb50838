"""The ``ppazam`` command.

    ppazam library info synthetic|PATH     track counts, duration, silent and skipped files
    ppazam library build-debian DEST       real music from Debian's packages
    ppazam prepare [--library ...]         the data path: library, noise, datasets, summary
    ppazam train [--library ...]           train every stage of the identifier
    ppazam compile [--library ...]         compile the QAT classifiers for FHE, print their costs
    ppazam identify CLIP|FOLDER            top-3 tracks of each clip (--mode fhe: with per-stage costs)
    ppazam evaluate [--library ...]        top-1/top-3 and cluster accuracy per level and mode
    ppazam report RUN_DIR                  (harness) rebuild report.html and tables from the CSVs
    ppazam compare RUN_DIR BASELINE_DIR    (harness) regression check against a baseline run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

from ppazam_core.audio import is_audio_path, load_audio
from ppazam_core.config import ExperimentConfig
from ppazam_core.dataset import build_dataset
from ppazam_core.debian import MUSIC_PACKAGES, NOISE_PACKAGE, build_debian_library
from ppazam_core.deployment import KeySetup, StageCost
from ppazam_core.errors import ArtifactError, AudioError, ConfigError, LibraryError, PpazamError
from ppazam_core.families import FAMILIES, TWO_STAGE, family_eval_spec, family_modes, train_family
from ppazam_core.fhe import SECONDS_PER_COMPLEXITY, CircuitStats
from ppazam_core.identifier import Identifier
from ppazam_core.library import DEFAULT_QUERY_S, Library, SyntheticSpec, open_library
from ppazam_core.pipeline import compile_identifier, model_folder, noise_folder, train_identifier
from ppazam_core.provenance import environment, git_commit, new_run_id
from ppazam_core.recognition import Mode, Recognizer, evaluate
from ppazam_core.store import atomic_write_text, canonical_json, config_hash, default_cache_dir

console = Console()
DEFAULT_FHE_QUERIES = 2
DEFAULT_EVALUATE_MODES = ("fp32", "quant", "fhe-sim")
COMMAND_PLUGINS = "ppazam.commands"  # entry points adding subcommands (the harness adds report, compare)


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
    _experiment_options(prepare)
    prepare.add_argument("--out", type=Path, help="report folder (default reports/<run-id>)")
    prepare.set_defaults(run=_prepare)

    train = commands.add_parser("train", help="train a family's models (default: the two-stage CNN's embeddings, "
                                              "clusters and classifiers, fp32 and QAT)")
    _experiment_options(train)
    _family_option(train)
    train.add_argument("--refresh", action="store_true", help="retrain even if the cache holds the models")
    train.set_defaults(run=_train)

    compile_command = commands.add_parser("compile", help="compile the QAT classifiers with Concrete ML")
    _experiment_options(compile_command)
    compile_command.add_argument("--refresh", action="store_true", help="recompile even if the cache holds circuits")
    compile_command.set_defaults(run=_compile)

    identify = commands.add_parser("identify", help="print the top-3 tracks of a clip or of every clip in a folder")
    identify.add_argument("clips", type=Path, help="an audio file or a folder of audio files")
    _experiment_options(identify)
    identify.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.FP32.value)
    identify.set_defaults(run=_identify)

    evaluate_command = commands.add_parser("evaluate", help="accuracy on the evaluation sets, per level and mode")
    _experiment_options(evaluate_command)
    _family_option(evaluate_command)
    evaluate_command.add_argument("--mode", dest="modes", action="append", choices=[m.value for m in Mode],
                                  help="mode to evaluate (repeatable; default: fp32, quant, fhe-sim; "
                                       "fhe runs --fhe-queries truly encrypted queries per level)")
    evaluate_command.add_argument("--fhe-queries", type=int, default=DEFAULT_FHE_QUERIES,
                                  help=f"queries per level run truly encrypted (default {DEFAULT_FHE_QUERIES})")
    evaluate_command.add_argument("--out", type=Path, help="report folder (default reports/<run-id>)")
    evaluate_command.set_defaults(run=_evaluate)
    for entry in entry_points(group=COMMAND_PLUGINS):
        entry.load()(commands)
    return parser


def _experiment_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--library", default="synthetic", help="'synthetic' (default) or a folder")
    command.add_argument("--config", type=Path, help="TOML experiment configuration")
    command.add_argument("--cache-dir", type=Path, help="cache folder (default $PPAZAM_CACHE or ~/.cache/ppazam)")
    command.add_argument("--workers", type=int, help="worker processes (default: all cores)")


def _family_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--family", choices=FAMILIES, default=TWO_STAGE, help=f"model family (default {TWO_STAGE})")


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
    run_id = new_run_id()
    out = args.out or Path("reports") / run_id
    timings: dict[str, float] = {}
    started = time.perf_counter()
    experiment, library, cache_dir = _experiment(args)
    config = experiment.data
    timings["library_s"] = time.perf_counter() - started
    started = time.perf_counter()
    noise_dir = noise_folder(library, config, cache_dir)
    timings["noise_s"] = time.perf_counter() - started

    datasets = []
    specs = [config.train_spec()] + [config.eval_spec(level) for level in config.eval_levels]
    for spec in specs:
        started = time.perf_counter()
        dataset = build_dataset(library, spec, cache_dir, noise_dir, args.workers)
        datasets.append({"split": spec.split, "policy": spec.policy.name, "rows": len(dataset),
                         "shape": list(dataset.X.shape), "bytes": dataset.size_bytes,
                         "seconds": round(time.perf_counter() - started, 3),
                         "built_seconds": dataset.info["build_seconds"], "folder": str(dataset.folder)})
    report = {
        "run_id": run_id, "git_commit": git_commit(), "config_hash": config_hash(config),
        "config": json.loads(canonical_json(config)),
        "library": asdict(library.summary()), "noise_dir": str(noise_dir),
        "timings": {k: round(v, 3) for k, v in timings.items()}, "datasets": datasets,
        "environment": environment(),
    }
    atomic_write_text(out / "prepare.json", json.dumps(report, indent=2, default=str))
    _print_prepare(library, report, out)
    return 0


def _experiment(args: argparse.Namespace) -> tuple[ExperimentConfig, Library, Path]:
    config = ExperimentConfig.from_toml(args.config) if args.config else ExperimentConfig()
    cache_dir = args.cache_dir or default_cache_dir()
    library = open_library(args.library, cache_dir, config.data.synthetic, config.data.segment_s, args.workers)
    return config, library, cache_dir


def _train(args: argparse.Namespace) -> int:
    config, library, cache_dir = _experiment(args)
    started = time.perf_counter()
    if args.family != TWO_STAGE:
        model = train_family(args.family, library, config, cache_dir, args.workers, refresh=args.refresh)
        console.print(f"{args.family} for {library.name} ({len(library)} tracks) in {model.folder} "
                      f"[{time.perf_counter() - started:.1f} s]; stage times {model.manifest['timings']}",
                      highlight=False, soft_wrap=True)
        return 0
    folder = train_identifier(library, config, cache_dir, args.workers, refresh=args.refresh)
    identifier = Identifier(folder)
    console.print(f"identifier for {library.name} ({len(library)} tracks) in {folder} "
                  f"[{time.perf_counter() - started:.1f} s]", highlight=False, soft_wrap=True)
    console.print(f"clusters: {identifier.n_clusters}, sizes {identifier.manifest['cluster_sizes']}; "
                  f"stage times {identifier.manifest['timings']}", highlight=False, soft_wrap=True)
    return 0


def _compile(args: argparse.Namespace) -> int:
    config, library, cache_dir = _experiment(args)
    circuits = compile_identifier(library, config, cache_dir, args.workers, refresh=args.refresh)
    summary = json.loads((circuits / "circuits.json").read_text())
    table = Table(title=f"circuits of {library.name} ({summary['quant']}, fhe {summary['fhe']})")
    for column in ("classifier", "PBS", "max bits", "est. FHE s", "eval keys MB", "query KB", "result KB", "compile s"):
        table.add_column(column)
    for name, c in summary["circuits"].items():
        table.add_row(name, str(c["pbs_count"]), str(c["max_bit_width"]), f"{c['complexity'] * SECONDS_PER_COMPLEXITY:.1f}",
                      f"{(c['bootstrap_key_bytes'] + c['keyswitch_key_bytes']) / 1e6:.0f}",
                      f"{c['input_ciphertext_bytes'] / 1e3:.0f}", f"{c['output_ciphertext_bytes'] / 1e3:.0f}",
                      f"{c['compile_s']:.1f}")
    console.print(table)
    console.print(f"circuits: {circuits}", highlight=False, soft_wrap=True)
    return 0


def _identifier(args: argparse.Namespace, mode: Mode) -> tuple[Identifier, Library, ExperimentConfig]:
    config, library, cache_dir = _experiment(args)
    folder = model_folder(library, config, cache_dir)
    if not folder.is_dir():
        raise ArtifactError(f"no identifier trained for {library.name} with this config; "
                            f"run `ppazam train --library {args.library}` first")
    circuits = compile_identifier(library, config, cache_dir, args.workers) if mode.needs_circuits else None
    return Identifier(folder, circuits), library, config


def _identify(args: argparse.Namespace) -> int:
    mode = Mode(args.mode)
    identifier, library, config = _identifier(args, mode)
    titles = {t.id: t.title for t in library}
    if args.clips.is_dir():
        clips = sorted(p for p in args.clips.rglob("*") if p.is_file() and is_audio_path(p))
    else:
        clips = [args.clips]
    if not clips:
        raise LibraryError(f"no audio files under {args.clips}")
    failures = 0
    for clip in clips:
        try:
            audio = load_audio(clip, config.data.features.sample_rate)
            started = time.perf_counter()
            patches = identifier.patches(audio)
            feature_s = time.perf_counter() - started
            costs_before = len(identifier.channel.costs) if identifier.channel else 0
            started = time.perf_counter()
            matches = identifier.combine(identifier.scores(patches, mode).track_scores)
            total_s = time.perf_counter() - started
        except AudioError as e:
            failures += 1
            console.print(f"{clip}: skipped ({e.reason})", highlight=False, soft_wrap=True)
            continue
        console.print(f"[bold]{clip}[/] ({mode}, cluster top-{min(config.cluster_top_k, identifier.n_clusters)}, "
                      f"{len(patches)} segment(s); features {feature_s:.3f} s, classifiers {total_s:.2f} s)",
                      highlight=False, soft_wrap=True)
        for rank, match in enumerate(matches, start=1):
            console.print(f"  {rank}. {match.track_id}  score {match.score:.3f}  {titles.get(match.track_id, '')}",
                          highlight=False, soft_wrap=True)
        if mode is Mode.FHE:
            _print_costs(identifier.channel.costs[costs_before:], identifier.channel.key_setups)
    return 1 if failures == len(clips) else 0


def _print_costs(costs: list[StageCost], setups: dict[str, KeySetup]) -> None:
    table = Table(title="encrypted stages (client -> server -> client)")
    for column in ("classifier", "PBS", "encrypt s", "sent KB", "server s", "ms/PBS", "received KB", "decrypt s"):
        table.add_column(column)
    for c in costs:
        table.add_row(c.classifier, str(c.pbs_count), f"{c.encrypt_s:.3f}", f"{c.request_bytes / 1e3:.0f}",
                      f"{c.server_s:.2f}", f"{1000 * c.server_s / c.pbs_count:.1f}", f"{c.response_bytes / 1e3:.0f}",
                      f"{c.decrypt_s:.3f}")
    console.print(table)
    for s in setups.values():
        console.print(f"  keys {s.classifier}: {'generated' if s.generated else 'loaded'} in {s.keys_s:.1f} s, "
                      f"evaluation keys {s.evaluation_key_bytes / 1e6:.0f} MB", highlight=False, soft_wrap=True)


def _evaluate(args: argparse.Namespace) -> int:
    config, library, cache_dir = _experiment(args)
    allowed = family_modes(args.family)
    for mode in args.modes or []:
        if Mode(mode) not in allowed:
            raise ConfigError.bad_value(f"--mode of family {args.family}", mode, [m.value for m in allowed])
    modes = [Mode(m) for m in args.modes or DEFAULT_EVALUATE_MODES if Mode(m) in allowed]
    needs_circuits = any(m.needs_circuits for m in modes)
    identifier = train_family(args.family, library, config, cache_dir, args.workers, compiled=needs_circuits)
    folder = identifier.folder
    noise_dir = noise_folder(library, config.data, cache_dir)
    run_id = new_run_id()
    out = args.out or Path("reports") / run_id
    rows = []
    for level in config.data.eval_levels:
        dataset = build_dataset(library, family_eval_spec(args.family, config, level), cache_dir, noise_dir,
                                args.workers)
        for mode in modes:
            started = time.perf_counter()
            if mode is Mode.FHE:
                result = evaluate(identifier, dataset, mode, limit=args.fhe_queries, agreement_with=Mode.FHE_SIM,
                                  condition=level)
            else:
                result = evaluate(identifier, dataset, mode, condition=level)
            rows.append({**asdict(result), "seconds": round(time.perf_counter() - started, 3)})
    provenance = {"run_id": run_id, "git_commit": git_commit(), "config_hash": folder.name,
                  "family": args.family, "library": library.name, "train_seed": config.data.train_seed, "eval_seed": config.data.eval_seed}
    report = {**provenance, "results": rows,
              "training": {key: identifier.manifest[key] for key in ("cluster_sizes", "quant", "timings")
                           if key in identifier.manifest},
              "environment": environment()}
    if needs_circuits:
        report["circuits"] = {name: asdict(CircuitStats.load(identifier.channel.circuits / name))
                              for name in identifier.circuit_names()}
    if identifier.channel is not None and identifier.channel.costs:
        report["key_setups"] = [asdict(k) for k in identifier.channel.key_setups.values()]
        atomic_write_text(out / "fhe_costs.csv", pd.DataFrame(
            [{**provenance, **asdict(c)} for c in identifier.channel.costs]).to_csv(index=False))
    atomic_write_text(out / "evaluation.json", json.dumps(report, indent=2))
    atomic_write_text(out / "evaluation.csv", pd.DataFrame([{**provenance, **r} for r in rows]).to_csv(index=False))
    _print_evaluation(library, identifier, rows, config)
    console.print(f"report: {out / 'evaluation.csv'} (run {run_id}, config {folder.name})", highlight=False,
                  soft_wrap=True)
    return 0


def _print_evaluation(library: Library, identifier: Recognizer, rows: list[dict], config: ExperimentConfig) -> None:
    stages = "" if identifier.cluster_top_k is None else \
        f", {len(identifier.manifest['cluster_sizes'])} clusters, cluster top-{identifier.cluster_top_k}"
    table = Table(title=f"{identifier.family} on {library.name}: {len(library)} tracks{stages}")
    for column in ("mode", "level", "n", "top-1", "top-3", "cluster acc", "agreement", "time s"):
        table.add_column(column)
    for r in rows:
        agreement = "" if r["agreement"] is None else f"{r['agreement']:.2f} with {r['agreement_with']}"
        table.add_row(r["mode"], r["level"], str(r["n"]), f"{r['top1']:.3f}", f"{r['top3']:.3f}",
                      "-" if r["cluster_accuracy"] is None else f"{r['cluster_accuracy']:.3f}", agreement,
                      f"{r['seconds']:.1f}")
    console.print(table)
    if identifier.channel is not None and identifier.channel.costs:
        costs = pd.DataFrame([asdict(c) for c in identifier.channel.costs])
        per_query = costs["server_s"].sum() / max(1, sum(r["n"] for r in rows if r["mode"] == Mode.FHE.value))
        console.print(f"fhe: {len(costs)} encrypted classifier calls, server {costs['server_s'].median():.2f} s "
                      f"median per call, {per_query:.1f} s server time per query, "
                      f"{_ms_per_pbs(costs)} (p_error {config.fhe.p_error})", highlight=False, soft_wrap=True)


def _ms_per_pbs(costs: pd.DataFrame) -> str:
    bootstrapped = costs[costs["pbs_count"] > 0]
    if bootstrapped.empty:
        return "no PBS in these circuits"
    return f"{1000 * (bootstrapped['server_s'] / bootstrapped['pbs_count']).median():.1f} ms per PBS"


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
