"""ppazam: benchmark privacy-preserving song identification in the clear, quantized, simulated and encrypted.

    ppazam library info synthetic|PATH     track counts, duration, silent and skipped files
    ppazam library build-debian DEST       real music from Debian's packages
    ppazam encoder train --out DIR         train a fingerprint encoder on its own corpus
    ppazam encoder info [DIR]              how the shipped (or another) encoder was made
    ppazam prepare [--library ...]         the data path: library, noise, datasets, summary
    ppazam train [--library ...]           train every stage of the identifier
    ppazam compile [--library ...]         compile the QAT classifiers for FHE, print their costs
    ppazam calibrate [--family ...]        choose and store the family's "no match" threshold
    ppazam identify CLIP|FOLDER            top-3 tracks of each clip, with any trained --family (--mode fhe:
                                           with per-stage costs; --server URL: the encrypted classifiers
                                           run on that server)
    ppazam export-server DIR               the server bundle of a compiled model (no client part, no key)
    ppazam serve DIR                       serve a server bundle over HTTP
    ppazam evaluate [--library ...]        top-1/top-3 and cluster accuracy per level and mode
    ppazam report RUN_DIR                  (harness) rebuild report.html and tables from the CSVs
    ppazam compare RUN_DIR BASELINE_DIR    (harness) regression check against a baseline run
"""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ppazam_core.audio.decode import DEFAULT_SAMPLE_RATE, audio_files, load_audio, require_audible
from ppazam_core.results.calibration import calibrate_open_set, rule_folder, rule_mode
from ppazam_core.cli_help import Parser, positive_int
from ppazam_core.config import ExperimentConfig
from ppazam_core.distributed import add_ray_option, ray_session
from ppazam_core.fhe.costs import calibrate
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.audio.debian import MUSIC_PACKAGES, NOISE_PACKAGE, build_debian_library
from ppazam_core.models.encoder.cli import register as register_encoder_commands
from ppazam_core.fhe.deployment import KeySetup, ServerBundle, StageCost, export_server
from ppazam_core.errors import (ArtifactError, AudioError, ConfigError, DamagedArtifactError, LibraryError, PpazamError,
                                StorageError)
from ppazam_core.families import (family_bits, family_eval_spec, family_modes, family_segment_s, get_family,
                                  is_trained, train_family)
from ppazam_core.families.registry import families
from ppazam_core.manifest import family_of, holds_model
from ppazam_core.fhe.concrete import CircuitStats
from ppazam_core.models.identifier import FAMILY, OBLIVIOUS_FAMILY
from ppazam_core.audio.library import Library, SkippedFile, Track, open_library, scan_folder, synthetic_distractors
from ppazam_core.models.pipeline import compile_identifier, noise_folder
from ppazam_core.preflight import check_before_opening
from ppazam_core.results.open_set import DEFAULT_FAR, OpenSetRule, check_far
from ppazam_core.results.privacy import ledger
from ppazam_core.recognition import MAX_QUERY_S, Mode, Recognizer, predict, prepare_query, sample_queries
from ppazam_core.results.records import RunInfo, RunRecord, accuracy_rows, check_out_folder, prediction_frame
from ppazam_core.seeding import derive_seed
from ppazam_core.store import (atomic_write_text, canonical_json, config_hash, default_cache_dir,
                                recover_leftovers, require_writable, storage_errors, writer_lock)
from ppazam_core.threads import ARTIFACT_THREADS

console = Console()
DEFAULT_FHE_QUERIES = 2
DEFAULT_EVALUATE_MODES = ("fp32", "quant", "fhe-sim")
DEFAULT_DISTRACTOR_TRACKS = 16
DEFAULT_ENROLL_FAMILY = "embedding-prototypes"
COMMAND_PLUGINS = "ppazam.commands"  # entry points adding subcommands (the harness adds report, compare)
WRITE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)  # file-system faults only writes meet


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ppazam`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        with ray_session(getattr(args, "ray", None)):
            return args.run(args)
    except PpazamError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(_os_error(e))
    except UnicodeDecodeError as e:
        return _fail(f"text that is not {e.encoding}: byte 0x{e.object[e.start]:02x} at offset {e.start} ({e.reason}); "
                     "save the file as UTF-8")
    except MemoryError as e:
        return _fail(f"out of memory{f' ({e})' if str(e) else ''}: use fewer --workers, a smaller library or input, "
                     "or a machine with more memory")
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _fail(message: str, status: int = 1) -> int:
    """Print ``message`` as the one ``error:`` line of a failed command; returns ``status``."""
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return status


def _os_error(error: OSError) -> str:
    """One line on a file-system error no command turned into a :class:`PpazamError`: its path,
    the system's reason and, by errno, what to do (a fault only writes meet, as
    :class:`StorageError` words it)."""
    if error.errno in WRITE_FAULTS and error.filename is not None:
        return str(StorageError.of(error, error.filename))
    permissions = "check the permissions of the file and its folder, or point --cache-dir (or --out) elsewhere"
    advice = {
        errno.EACCES: permissions,
        errno.EPERM: permissions,
        errno.ENOENT: "check that the path exists and is spelled right",
        errno.ENOTDIR: "a part of the path is a file, not a folder: check --cache-dir, --out and the paths given",
        errno.EEXIST: "a file stands where a folder is needed: check --cache-dir, --out and the paths given",
        errno.EISDIR: "it is a folder: name a file",
        errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer --workers",
    }.get(error.errno)
    path = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    line = f"{path}: {error.strerror or error}" if path else str(error.strerror or error)
    return f"{line}; {advice}" if advice else line


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ppazam", description=__doc__.strip().splitlines()[0])
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    library = commands.add_parser("library", help="inspect or build music libraries")
    library_commands = library.add_subparsers(title="library commands", metavar="COMMAND")
    info = library_commands.add_parser("info", help="summarise a library")
    info.add_argument("source", help="'synthetic' or a folder of audio files")
    info.add_argument("--config", type=Path, metavar="FILE",
                      help="TOML experiment configuration: its [synthetic] table and [data] segment_s give the "
                           "defaults of the options below")
    _library_options(info)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(run=_library_info)

    debian = library_commands.add_parser(
        "build-debian", help="real music from Debian packages (needs apt-get and dpkg)",
        description="Fetch Debian's music packages with `apt-get download` (no install, no root), unpack them "
                    "with `dpkg -x` and lay them out as a library folder. Needs a Debian or Ubuntu system "
                    "(apt-get, dpkg, dpkg-deb), its package mirrors, and apt's package lists: run `apt-get "
                    "update` once, as root, if apt does not know the packages.")
    debian.add_argument("dest", type=Path, help="new or empty folder for the library")
    debian.add_argument("--package", dest="packages", action="append",
                        help=f"music package (repeatable; default: {', '.join(MUSIC_PACKAGES)})")
    debian.add_argument("--noise-package", default=NOISE_PACKAGE,
                        help="package whose sound effects become the background-noise folder")
    debian.set_defaults(run=_library_build_debian)

    register_encoder_commands(commands)

    prepare = commands.add_parser("prepare", help="build the library, noise bank and datasets")
    _experiment_options(prepare)
    prepare.add_argument("--out", type=Path, help="the folder prepare.json is written to (default reports/<run-id>)")
    prepare.set_defaults(run=_prepare)

    train = commands.add_parser(
        "train", help="train a family's model into the cache",
        description="Train (or load from the cache) a family's model; the two-stage CNN's: clusters of the "
                    "fingerprint encoder's embeddings, fp32 and QAT classifiers.")
    _experiment_options(train)
    _family_option(train)
    train.add_argument("--refresh", action="store_true", help="retrain even if the cache holds the models")
    train.set_defaults(run=_train)

    compile_command = commands.add_parser(
        "compile", help="compile a family's encrypted circuits, print their costs",
        description="Compile a family's encrypted circuits (training its model first if the cache lacks it) "
                    "and print each circuit's PBS count, bit width, estimated server seconds and sizes.")
    _experiment_options(compile_command)
    _family_option(compile_command, encrypted=True)
    compile_command.add_argument("--refresh", action="store_true",
                                 help="compile again even if the cache holds the circuits (the two-stage CNNs "
                                      "compile apart from training; the other families train again)")
    compile_command.set_defaults(run=_compile)

    identify = commands.add_parser("identify", help="the top-3 tracks of a clip or of each clip in a folder")
    identify.add_argument("clips", type=Path, help="an audio file or a folder of audio files")
    _experiment_options(identify)
    _family_option(identify)
    identify.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.FP32.value,
                          help="fp32 (default), quant, fhe-disable (Concrete ML's clear execution of the compiled "
                               "circuits), fhe-sim (Concrete's simulation of the encrypted circuits) or fhe (truly "
                               "encrypted, with the cost of each stage)")
    identify.add_argument("--model", type=Path, help="a model folder (e.g. written by `ppazam enroll --into`) "
                                                     "instead of the trained model of --library and --config")
    identify.add_argument("--server", metavar="URL",
                          help="with --mode fhe: run the encrypted classifiers on the `ppazam serve` server at URL "
                               "(e.g. http://127.0.0.1:8000) instead of in this process")
    identify.set_defaults(run=_identify)

    calibrate_command = commands.add_parser(
        "calibrate", help="choose and store a family's 'no match' threshold",
        description="Choose a family's open-set threshold on distractor queries at a false-accept rate and store "
                    "it with the model: identify then answers 'no match' at or below it.")
    _experiment_options(calibrate_command)
    _family_option(calibrate_command)
    calibrate_command.add_argument("--mode", choices=[m.value for m in Mode if m is not Mode.FHE],
                                   default=Mode.FP32.value, help="mode (default fp32; fhe answers by the fhe-sim rule)")
    calibrate_command.add_argument("--far", type=float, default=DEFAULT_FAR,
                                   help="target false-accept rate on the distractors")
    calibrate_command.add_argument("--distractors", type=Path,
                                   help="folder of songs outside the library (needed for a folder library; "
                                        "default for the synthetic one: more tracks of its generator, another seed)")
    calibrate_command.add_argument("--distractor-tracks", type=int, default=DEFAULT_DISTRACTOR_TRACKS,
                                   help="synthetic distractor tracks")
    calibrate_command.add_argument("--model", type=Path,
                                   help="a model folder written by `ppazam enroll --into` instead of the trained "
                                        "model of --family; its library is the tracks it kept of --library and "
                                        "the songs enrolled (read from their files)")
    calibrate_command.set_defaults(run=_calibrate)

    enrolling = _enrolling_families()
    enroll_command = commands.add_parser(
        "enroll", help="add songs to a model without training, or remove some",
        description=f"Add songs to a model without training ({', '.join(enrolling)}), or remove some; its "
                    "encrypted part, if any, is rebuilt.")
    enroll_command.add_argument("tracks", nargs="?", type=Path, help="an audio file or a folder of songs to add")
    enroll_command.add_argument("--into", type=Path, required=True,
                                help="the enrolled model's folder: new or empty (the trained model of --library "
                                     "and --config plus the songs), or one enroll wrote (updated in place)")
    enroll_command.add_argument("--remove", action="append", default=[], metavar="TRACK_ID",
                                help="a track to remove (repeatable)")
    _experiment_options(enroll_command)
    enroll_command.set_defaults(library=None)  # given with a model in --into: refused, not ignored
    enroll_command.add_argument("--family", choices=enrolling,
                                help=f"the family of the trained model a new --into starts from (default "
                                     f"{DEFAULT_ENROLL_FAMILY})")
    enroll_command.set_defaults(run=_enroll)

    export = commands.add_parser(
        "export-server", help="write the server bundle of a compiled model",
        description="Write the server bundle of a trained and compiled model: each circuit's server side, no "
                    "client part and no key.")
    export.add_argument("dest", type=Path, help="new or empty folder for the bundle")
    _experiment_options(export)
    _family_option(export, encrypted=True)
    export.set_defaults(run=_export_server)

    serve = commands.add_parser("serve", help="serve a server bundle over HTTP",
                                description="Serve a server bundle (from `ppazam export-server`) over HTTP.")
    serve.add_argument("bundle", type=Path, help="folder written by `ppazam export-server`")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: one the OS picks)")
    serve.add_argument("--max-sessions", type=int, default=None,
                       help="client sessions kept at once, each with its evaluation keys; past that the least "
                            "recently used is dropped (default 16)")
    serve.add_argument("--parallel-runs", type=int, default=None,
                       help="FHE evaluations at once; the others queue (default 1: Concrete already uses "
                            "every core for one run)")
    serve.add_argument("--max-key-gib", type=float, default=None,
                       help="evaluation keys kept in all sessions, in GiB of memory as Concrete sizes them "
                            "(default 8; Concrete sizes a key set at 3-10x its upload)")
    serve.set_defaults(run=_serve)

    evaluate_command = commands.add_parser("evaluate", help="accuracy on the evaluation sets, per level and mode")
    _experiment_options(evaluate_command)
    _family_option(evaluate_command)
    evaluate_command.add_argument("--mode", dest="modes", action="append", choices=[m.value for m in Mode],
                                  help="mode to evaluate (repeatable; default: fp32, quant, fhe-sim; "
                                       "fhe runs --fhe-queries truly encrypted queries per level)")
    evaluate_command.add_argument("--fhe-queries", type=int, default=DEFAULT_FHE_QUERIES,
                                  help="with --mode fhe: queries run truly encrypted per level of the configuration, "
                                       "a seeded sample spread over the tracks (the bench's option of the same name "
                                       "counts per condition: a level, or a level at one gain or query length of "
                                       "its sweeps)")
    evaluate_command.add_argument("--out", type=Path, help="the run folder results.csv, latency.csv and run.json are "
                                                           "written to (default reports/<run-id>)")
    evaluate_command.set_defaults(run=_evaluate)
    for entry in entry_points(group=COMMAND_PLUGINS):
        entry.load()(commands)
    return parser


def _experiment_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--library", default="synthetic", help="'synthetic' (default) or a folder")
    command.add_argument("--config", type=Path, metavar="FILE", help="TOML experiment configuration")
    _store_options(command)


def _store_options(command: argparse.ArgumentParser) -> None:
    """``--cache-dir`` and ``--workers``, which every command that builds something takes."""
    command.add_argument("--cache-dir", type=Path, metavar="DIR",
                         help="the cache of everything built (default $PPAZAM_CACHE, else $XDG_CACHE_HOME/ppazam, "
                              "else ~/.cache/ppazam)")
    command.add_argument("--workers", type=positive_int, metavar="N",
                         help="processes that render libraries, scan folders and build datasets (default: every "
                              "core, or $PPAZAM_WORKERS); dataset workers run on one thread each, and training and "
                              f"compiling on a fixed {ARTIFACT_THREADS} torch/BLAS threads whatever N "
                              "(ppazam_core/threads.py), so N changes the speed, never an artifact")
    add_ray_option(command)


def _family_option(command: argparse.ArgumentParser, encrypted: bool = False) -> None:
    """``--family``: a registered family (with ``encrypted``, one with an encrypted mode), the
    first registered by default."""
    names = [name for name, family in families().items() if Mode.FHE in family.modes or not encrypted]
    what = "a family with an encrypted mode (the clear-text families have none)" if encrypted else "model family"
    command.add_argument("--family", choices=names, default=names[0], metavar="FAMILY", help=f"{what}: %(choices)s")


def _library_options(command: argparse.ArgumentParser) -> None:
    """The library options of ``library info``; one left out takes ``--config``'s value (else the default)."""
    data = ExperimentConfig().data

    def option(flag: str, kind: type, what: str, key: str, default: float) -> None:
        command.add_argument(flag, type=kind, help=f"{what} (default: --config's {key}, else {default:g})")

    option("--n-tracks", int, "synthetic: tracks", "[synthetic] n_tracks", data.synthetic.n_tracks)
    option("--duration", float, "synthetic: seconds per track", "[synthetic] duration_s", data.synthetic.duration_s)
    option("--seed", int, "synthetic: generator seed", "[synthetic] seed", data.synthetic.seed)
    option("--query-length", float, "folders: skip tracks shorter than this (s)", "[data] segment_s", data.segment_s)
    _store_options(command)


def _library_info(args: argparse.Namespace) -> int:
    data = _config(args).data
    given = {"n_tracks": args.n_tracks, "duration_s": args.duration, "seed": args.seed}
    spec = replace(data.synthetic, **{key: value for key, value in given.items() if value is not None})
    query_s = data.segment_s if args.query_length is None else args.query_length
    library = open_library(args.source, args.cache_dir or default_cache_dir(), spec, query_s, args.workers)
    summary = library.summary()
    if args.json:
        print(json.dumps(asdict(summary), indent=2))
        return 0
    table = Table(title=f"library {summary.name}", show_header=False)
    table.add_row("tracks", str(summary.n_tracks))
    table.add_row("total duration", _duration(summary.total_duration_s))
    table.add_row("sample rates (Hz: tracks)", ", ".join(f"{k}: {v}" for k, v in summary.sample_rates.items()))
    table.add_row("channels (n: tracks)", ", ".join(f"{k}: {v}" for k, v in summary.channels.items()))
    table.add_row("silent tracks", escape(", ".join(summary.silent_tracks)) or "none")
    table.add_row("identical files", escape("; ".join(" = ".join(group) for group in summary.same_audio)) or "none")
    table.add_row("skipped files", str(len(summary.skipped)))
    table.add_row("background noise", str(library.noise_dir) if library.noise_dir else "built-in synthetic bank")
    console.print(table)
    for skipped in summary.skipped:
        console.print(escape(f"  skipped {skipped.path}: {skipped.reason}"), highlight=False, soft_wrap=True)
    return 0


def _print_library_warnings(library: Library) -> None:
    """What a user should know of ``library`` before trusting figures made on it (see
    :meth:`~ppazam_core.audio.library.LibrarySummary.warnings`)."""
    for line in library.summary().warnings():
        console.print(f"  [yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _library_build_debian(args: argparse.Namespace) -> int:
    packages = tuple(args.packages) if args.packages else MUSIC_PACKAGES
    console.print(f"downloading and unpacking {', '.join(packages)} ...")
    build = build_debian_library(args.dest, packages, args.noise_package)
    console.print(f"built {build.root}: {build.music_files} music files, {build.noise_files} noise files "
                  f"from {', '.join(f'{k} {v}' for k, v in build.packages.items())}", highlight=False, soft_wrap=True)
    return 0


def _command_line() -> str:
    return shlex.join(["ppazam", *sys.argv[1:]])


def _prepare(args: argparse.Namespace) -> int:
    info = RunInfo.start("prepare")
    out = args.out or Path("reports") / info.run_id
    if out.exists() and not out.is_dir():  # said before anything is built
        raise ArtifactError(f"--out {out} is a file, not a folder: choose another --out")
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
    report = info.provenance(_command_line(), {library.name: library.fingerprint()}, 0,
                             config_hash=config_hash(config), config=json.loads(canonical_json(config)),
                             library=asdict(library.summary()), noise_dir=str(noise_dir),
                             timings={k: round(v, 3) for k, v in timings.items()}, datasets=datasets)
    atomic_write_text(out / "prepare.json", json.dumps(report, indent=2, default=str))
    _print_prepare(library, report, out)
    return 0


def _config(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration of ``--config``, else the defaults."""
    return ExperimentConfig.from_toml(args.config) if args.config else ExperimentConfig()


def _experiment(args: argparse.Namespace) -> tuple[ExperimentConfig, Library, Path]:
    config = _config(args)
    cache_dir = args.cache_dir or default_cache_dir()
    family = getattr(args, "family", None)
    check_before_opening(config, args.library, [family] if family else [])
    library = open_library(args.library, cache_dir, config.data.synthetic, config.data.segment_s, args.workers)
    return config, library, cache_dir


def _train(args: argparse.Namespace) -> int:
    config, library, cache_dir = _experiment(args)
    started = time.perf_counter()
    _print_library_warnings(library)
    model = train_family(args.family, library, config, cache_dir, args.workers, refresh=args.refresh, compiled=False)
    console.print(f"{args.family} for {library.name} ({len(library)} tracks) in {model.folder} "
                  f"[{time.perf_counter() - started:.1f} s]", highlight=False, soft_wrap=True)
    if model.assignment is not None:  # a clustered model
        sizes = np.bincount(model.assignment)
        console.print(f"clusters: {sizes.size}, sizes {sizes.tolist()}", highlight=False, soft_wrap=True)
    console.print(f"stage times {model.manifest.get('timings', {})}", highlight=False, soft_wrap=True)
    return 0


def _compile(args: argparse.Namespace) -> int:
    config, library, cache_dir = _experiment(args)
    apart = args.family in (FAMILY, OBLIVIOUS_FAMILY)  # they compile apart from training: recompile only
    if args.refresh and apart:
        compile_identifier(library, config, cache_dir, args.workers, refresh=True)
    model = train_family(args.family, library, config, cache_dir, args.workers, refresh=args.refresh and not apart,
                         compiled=True)
    rounding = get_family(args.family).rounding_bits(config)
    _print_circuits(model, f"circuits of {args.family} for {library.name} ({family_bits(args.family, config)} bits"
                           f"{f', rounding to {rounding} bits' if rounding else ''})")
    console.print(f"circuits: {model.channel.circuits}", highlight=False, soft_wrap=True)
    return 0


def _print_circuits(model: Recognizer, title: str) -> None:
    """Each compiled circuit's costs, with the server seconds Concrete's cost model (calibrated
    on this machine) predicts for the circuits that have table lookups (a CKKS head has none)."""
    stats = {name: CircuitStats.load(model.channel.circuits / name) for name in model.circuit_names()}
    cost_model = None
    if any(s.pbs_count for s in stats.values()):
        console.print("calibrating Concrete's cost model on this machine (two small circuits, ~15 s) ...")
        cost_model = calibrate()
    table = Table(title=title)
    for column in ("classifier", "PBS", "max bits", "est. server s", "eval keys MB (sent)", "query KB", "result KB",
                   "compile s"):
        table.add_column(column)
    for name, c in stats.items():
        table.add_row(name, str(c.pbs_count), str(c.max_bit_width),
                      f"{cost_model.server_seconds(c):.1f}" if cost_model and c.pbs_count else "-",
                      f"{c.serialized_key_bytes / 1e6:.1f}", f"{c.input_ciphertext_bytes / 1e3:.0f}",
                      f"{c.output_ciphertext_bytes / 1e3:.0f}", f"{c.compile_s:.1f}")
    console.print(table)


def _setting_flags(args: argparse.Namespace) -> str:
    """`` --config FILE`` and `` --cache-dir DIR`` when the user gave them: for the commands a
    hint tells them to run."""
    config = f" --config {args.config}" if args.config else ""
    return config + (f" --cache-dir {args.cache_dir}" if getattr(args, "cache_dir", None) else "")


def _trained_model(args: argparse.Namespace, mode: Mode) -> tuple[Recognizer, Library, ExperimentConfig]:
    """The trained model of ``args.family`` from the cache, with its compiled circuits when
    ``mode`` needs them (compiled now if the family compiles apart from training and they are
    missing). A :class:`ConfigError` for a mode the family lacks, an :class:`ArtifactError`
    naming the command to run when the model is not trained."""
    modes = family_modes(args.family)
    if mode not in modes:
        raise ConfigError.bad_value("--mode", mode.value, f"a mode of {args.family} "
                                                          f"({', '.join(m.value for m in modes)})")
    config, library, cache_dir = _experiment(args)
    if not is_trained(args.family, library, config, cache_dir):
        raise ArtifactError(f"no {args.family} model trained for {library.name} with this config; run `ppazam "
                            f"train --family {args.family} --library {args.library}{_setting_flags(args)}` first")
    model = train_family(args.family, library, config, cache_dir, args.workers, compiled=mode.needs_circuits)
    return model, library, config


def _identify(args: argparse.Namespace) -> int:
    mode = Mode(args.mode)
    if args.server and mode is not Mode.FHE:
        raise ConfigError.bad_value("--server", args.server, "only with --mode fhe")
    clips = _clip_paths(args.clips)  # before a model is loaded or compiled
    transport = None
    if args.server:
        from ppazam_core.fhe.serving import HttpTransport  # the HTTP stack only when asked for

        transport = HttpTransport(args.server)  # a malformed URL refused before a model is loaded
    if args.model is not None:
        model = _model_in(args.model, mode)
        config = model.config
        titles = model.manifest["titles"]
    else:
        model, library, config = _trained_model(args, mode)
        titles = {t.id: t.title for t in library}
    if transport is not None:
        model.channel.transport = transport
    try:
        return _identify_clips(args, clips, mode, model, titles, config)
    finally:
        if transport is not None:
            transport.close()


def _model_in(folder: Path, mode: Mode) -> Recognizer:
    """The model of a folder a family wrote (e.g. ``ppazam enroll --into``), in ``mode``."""
    family = get_family(family_of(folder))
    if family.load is None:
        raise ArtifactError(f"{family.name} models are not loaded from one folder; use --library and --config")
    if mode not in family.modes:
        raise ConfigError.bad_value("--mode", mode.value, f"a mode of {family.name} "
                                                          f"({', '.join(m.value for m in family.modes)})")
    try:
        return family.load(Path(folder))
    except DamagedArtifactError as e:  # a folder the user keeps: nothing rebuilds what was enrolled into it
        raise DamagedArtifactError(e.path, e.reason, folder, "restore it from a copy, or enroll its songs again "
                                   "into a new folder (the trained model it started from is not affected)") from e


def _clip_paths(path: Path) -> list[Path]:
    """The clip ``path`` names, or every entry under it named like audio: its files, and its
    pipes and broken links too, which the caller then lists as skipped with their reason. A
    :class:`LibraryError` when it does not exist or a folder holds no such entry."""
    if not path.exists():
        raise LibraryError(f"{path}: no such file or folder")
    if path.is_dir():
        files, irregular = audio_files(path)
        clips = sorted([*files, *(entry for entry, _ in irregular)])
    else:
        clips = [path]
    if not clips:
        raise LibraryError(f"no audio files under {path}")
    return clips


def _announce_rule(args: argparse.Namespace, model: Recognizer, mode: Mode, rule: OpenSetRule | None) -> None:
    """Say which open-set rule the answers follow (or that none is stored, and how to store one)."""
    if rule is None:
        how = (f"`ppazam calibrate --model {args.model} --mode {rule_mode(mode)}` stores one" if args.model else
               f"`ppazam calibrate --family {model.family} --mode {rule_mode(mode)}` stores one")
        whose = f"{rule_mode(mode)}, whose rule {mode} answers by" if rule_mode(mode) is not mode else str(mode)
        console.print(f"no open-set threshold stored for {model.family} in {whose}: every clip gets its best "
                      f"tracks, even a song outside the library ({how})", style="dim", highlight=False, soft_wrap=True)
    else:
        console.print(f"no match at or below confidence {rule.threshold:.4g} (target false-accept rate {rule.far:g}; "
                      f"{rule.false_accepts:.2%} of {rule.n_distractors} distractor queries accepted, "
                      f"{rule.top1_at_false_accepts:.2%} of {rule.n_library} library queries accepted and right)",
                      style="dim", highlight=False, soft_wrap=True)


def _identify_clips(args: argparse.Namespace, clips: list[Path], mode: Mode, model: Recognizer,
                    titles: dict[str, str], config: ExperimentConfig) -> int:
    """Identify each clip and print its best tracks (or "no match"); a clip that cannot be read is
    listed as skipped and the others go on. Exit status 1 when every clip was skipped."""
    rule = OpenSetRule.load(rule_folder(model, mode), model.family, rule_mode(mode).value)
    failures = answered = 0
    for clip in clips:
        try:
            audio = load_audio(clip, model.features.sample_rate, duration_s=MAX_QUERY_S)
            started = time.perf_counter()
            query = prepare_query(audio, model.features, family_segment_s(model.family, config))
            patches = query.patches
            feature_s = time.perf_counter() - started
            costs_before = len(model.channel.costs) if model.channel else 0
            started = time.perf_counter()
            scores = model.scores(patches, mode)
            matches = model.combine(scores.track_scores)  # the family's rule (two-stage: the config's combine)
            confidence = float(np.mean(scores.confidence))  # as predict() combines a query's segments
            total_s = time.perf_counter() - started
        except AudioError as e:
            failures += 1
            console.print(f"{clip}: skipped ({e.reason})", highlight=False, soft_wrap=True)
            continue
        if answered == 0:  # said once, before the first answer: not at all when no clip can be read
            _announce_rule(args, model, mode, rule)
        answered += 1
        search = "" if model.cluster_top_k is None else f", cluster top-{model.cluster_top_k}"
        silent = f", {query.silent_segments} silent skipped" if query.silent_segments else ""
        silent += f", only its first {MAX_QUERY_S:g} s read" if query.read_s >= MAX_QUERY_S else ""
        # scoring: everything after the front-end (a client-side embedder, the classifiers, encryption)
        console.print(f"[bold]{clip}[/] ({model.family}, {mode}{search}, {len(patches)} segment(s){silent}; "
                      f"front-end {feature_s:.3f} s, scoring {total_s:.2f} s; confidence {confidence:.4g})",
                      highlight=False, soft_wrap=True)
        if rule is not None and not rule.accepts(confidence):
            console.print(f"  no match (confidence {confidence:.4g} <= threshold {rule.threshold:.4g}; "
                          f"best guess {matches[0].track_id if matches else 'none'})", highlight=False, soft_wrap=True)
        else:
            for rank, match in enumerate(matches, start=1):
                console.print(f"  {rank}. {match.track_id}  score {match.score:.3f}  {titles.get(match.track_id, '')}",
                              highlight=False, soft_wrap=True)
        if mode is Mode.FHE:
            _print_costs(model.channel.costs[costs_before:], model.channel.key_setups, remote=args.server)
    if failures:
        console.print(f"{failures} of {len(clips)} clip(s) skipped", style="bold red" if not answered else None,
                      highlight=False)
    return 1 if failures == len(clips) else 0


def _enrolling_families() -> list[str]:
    """The registered families that add songs without training."""
    return [name for name, family in families().items() if family.enroll is not None]


def _refuse_base_options(args: argparse.Namespace, model: Recognizer, into: Path) -> None:
    """A ``--family``, ``--config`` or ``--library`` naming another base model than the one
    ``into`` already holds is an error, not silently ignored; the same ones are accepted (a
    library is the same when it holds every track the model kept with the audio it was built
    with, as :func:`_library_of` checks)."""
    given = [f"--family {args.family}"] if args.family not in (None, model.family) else []
    if args.config is not None and canonical_json(_config(args)) != canonical_json(model.config):
        given.append(f"--config {args.config}")
    if args.library is not None and not _may_hold_the_library_of(model, args.library):
        given.append(f"--library {args.library}")
    elif args.library is not None:
        try:
            _library_of(model, args, args.cache_dir or default_cache_dir())
        except ConfigError:
            given.append(f"--library {args.library}")
    if given:
        raise ConfigError(f"--into {into} already holds an enrolled {model.family} model; {' and '.join(given)} "
                          "would only choose the trained model a new --into starts from: leave them out to update it, "
                          "or name a new folder")


def _may_hold_the_library_of(model: Recognizer, library: str) -> bool:
    """Whether the folder ``library`` holds at least as many audio files as ``model`` kept
    tracks of its trained library (a listing, no decoding): when not, it cannot be that library."""
    if library == "synthetic" or not Path(library).is_dir():
        return True  # for _library_of to judge
    enrolled = {entry["id"] for entry in model.manifest.get("enrolled", [])}
    files, _ = audio_files(Path(library))
    return len(files) >= sum(track_id not in enrolled for track_id in model.track_ids)


def _enrollable(tracks: Library, segment_s: float, folder: Path) -> Library:
    """The songs of a folder that can be enrolled: those with at least ``segment_s`` seconds of
    sound (:func:`~ppazam_core.audio.decode.require_audible`); the others join its skipped files
    with their reason, as unreadable files do.

    Raises:
        ConfigError: no song of the folder can be enrolled.
    """
    kept, skipped = [], list(tracks.skipped)
    for track in tracks:
        try:
            if track.silent:
                raise AudioError(track.source, "silent: no sound to enroll")
            require_audible(load_audio(track.source), DEFAULT_SAMPLE_RATE, segment_s, track.source)
            kept.append(track)
        except AudioError as e:
            skipped.append(SkippedFile(track.source, e.reason))
    if len(tracks) and not kept:
        raise ConfigError(f"no song of {folder} can be enrolled: {'; '.join(f'{s.path}: {s.reason}' for s in skipped[:3])}")
    return replace(tracks, tracks=tuple(kept), skipped=tuple(skipped))


def _enroll(args: argparse.Namespace) -> int:
    """Add songs to (or remove them from) the model of ``--into``, one writer of a folder at a
    time: a second waits for the first, then updates what the first wrote. The folder an
    interrupted enroll left aside is put back first (:func:`~ppazam_core.store.recover_leftovers`)."""
    if args.tracks is None and not args.remove:
        raise ConfigError("nothing to do: name songs to add (a file or a folder) or --remove TRACK_ID")
    args.remove = list(dict.fromkeys(args.remove))  # a track named twice is removed once
    into = Path(args.into)
    with writer_lock(into):
        with storage_errors(into):
            recover_leftovers(into.parent)
        return _enroll_into(args, into)


def _enroll_into(args: argparse.Namespace, into: Path) -> int:
    if holds_model(into):
        model = _model_in(into, Mode.FP32)
        if "enrolled" not in model.manifest:  # e.g. a trained model of the store: it must keep matching its hash
            raise ConfigError(f"--into {into} holds a model enroll did not write; name a new or empty folder")
        _refuse_base_options(args, model, into)
    elif into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise ConfigError(f"--into {into} is neither an enrolled model nor a new or empty folder")
    else:
        args.family, args.library = args.family or DEFAULT_ENROLL_FAMILY, args.library or "synthetic"
        model, _, _ = _trained_model(args, Mode.FP32)
    family = get_family(model.family)
    if family.enroll is None:
        raise ConfigError.bad_value("family of --into", model.family, _enrolling_families())
    cache_dir = args.cache_dir or default_cache_dir()
    tracks = Library("none", ())
    if args.tracks is not None:
        source = Path(args.tracks)
        if source.is_file():
            tracks = scan_folder(source.parent, model.config.data.segment_s, 1, cache_dir=cache_dir, only=source)
        else:
            tracks = open_library(source, cache_dir, min_duration_s=model.config.data.segment_s, workers=args.workers)
            tracks = _enrollable(tracks, family_segment_s(model.family, model.config), source)
        for skipped in tracks.skipped:
            console.print(f"  skipped {skipped.path}: {skipped.reason}", highlight=False, soft_wrap=True)
    started = time.perf_counter()
    enrolled = family.enroll(model, tracks, into, args.remove)
    timings = enrolled.manifest["timings"]
    per_track = f"{timings['last_enroll_s'] / len(tracks):.3f} s a track to enroll, " if len(tracks) else ""
    for track in tracks:
        console.print(f"  added {track.id} ({track.title})", highlight=False, soft_wrap=True)
    for track_id in args.remove:
        console.print(f"  removed {track_id}", highlight=False, soft_wrap=True)
    compiled = (f"{timings['last_compile_s']:.2f} s to recompile the encrypted layer" if Mode.FHE in family.modes
                else "nothing to recompile: a clear-text index")
    console.print(f"{len(tracks)} track(s) added, {len(args.remove)} removed: {len(enrolled.track_ids)} tracks in "
                  f"{into} [{time.perf_counter() - started:.1f} s: {per_track}{compiled}]; identify with "
                  f"`ppazam identify --model {into} CLIP`", highlight=False, soft_wrap=True)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    mode = Mode(args.mode)
    check_far(args.far, "--far")
    if args.distractors is None and args.library != "synthetic":
        raise ConfigError(f"--distractors FOLDER is needed for the folder library {args.library}: "
                          "songs outside it, to choose the threshold on")
    cache_dir = args.cache_dir or default_cache_dir()
    if args.model is not None:
        model = _model_in(args.model, mode)
        config = model.config
        library = _library_of(model, args, cache_dir)
    else:
        model, library, config = _trained_model(args, mode)
    in_library = {t.sha256 for t in library if t.sha256}
    if args.distractors is not None:
        distractors = open_library(args.distractors, cache_dir, config.data.synthetic, config.data.segment_s,
                                   args.workers)
        shared = {t.sha256 for t in distractors if t.sha256} & in_library
        if shared:
            raise ConfigError(f"{len(shared)} of the distractor tracks in {args.distractors} are library tracks; "
                              "distractors must be songs outside the library")
    else:
        generated = synthetic_distractors(config.data.synthetic, args.distractor_tracks, cache_dir, args.workers or 1)
        distractors = Library(generated.name, tuple(t for t in generated if t.sha256 not in in_library))
        if len(distractors) < len(generated):  # e.g. generated songs a user enrolled
            console.print(f"{len(generated) - len(distractors)} generated distractor track(s) are in the model's "
                          "library and were left out", style="dim", highlight=False, soft_wrap=True)
        if not len(distractors):
            raise ConfigError("every generated distractor is in the model's library: pass --distractors FOLDER")
    started = time.perf_counter()
    require_writable(rule_folder(model, mode), "calibrate stores its rule there: make the folder writable, or "
                                               "calibrate a copy of the model")  # before the queries, not after
    rule = calibrate_open_set(model, library, distractors, config, cache_dir, mode, args.far, args.workers)
    path = rule.save(rule_folder(model, mode))
    table = Table(title=f"open-set rule of {rule.family} in {rule.mode} ({library.name} against "
                        f"{distractors.name}; levels {', '.join(rule.levels)})")
    for column in ("target FAR", "threshold", "distractors accepted", "library accepted and right", "ROC-AUC",
                   "library queries", "distractor queries"):
        table.add_column(column)
    table.add_row(f"{rule.far:g}", f"{rule.threshold:.4g}", f"{rule.false_accepts:.2%}",
                  f"{rule.top1_at_false_accepts:.2%}", f"{rule.roc_auc:.3f}", str(rule.n_library),
                  str(rule.n_distractors))
    console.print(table)
    identify = f"--model {args.model}" if args.model else f"--family {rule.family}"
    console.print(f"stored in {path} [{time.perf_counter() - started:.1f} s]; `ppazam identify {identify} --mode "
                  f"{rule.mode}` answers 'no match' at or below the threshold (each mode has its own rule)",
                  highlight=False, soft_wrap=True)
    return 0


def _library_of(model: Recognizer, args: argparse.Namespace, cache_dir: Path) -> Library:
    """The library of a model folder, in its track order: the tracks of ``--library`` it keeps
    and the songs enroll added, scanned again from their files.

    Raises:
        ConfigError: a track of the model is neither in ``--library`` nor an enrolled song, or
            ``--library`` holds other audio under its id.
        LibraryError: an enrolled song's file is gone or holds other audio than when enrolled.
    """
    config = model.config
    tracks: dict[str, Track] = {}
    for entry in reversed(model.manifest.get("enrolled", [])):  # the latest enrollment of a song counts
        if entry["id"] not in model.track_ids or entry["id"] in tracks:
            continue
        source = Path(entry["source"])
        if not source.is_file():
            raise LibraryError(f"the file of enrolled song {entry['id']}, {source}, is gone")
        scanned = scan_folder(source.parent, config.data.segment_s, 1, cache_dir=cache_dir, only=source)
        if len(scanned) != 1 or scanned.tracks[0].sha256 != entry["sha256"]:
            raise LibraryError(f"{source} no longer holds the audio enrolled as {entry['id']}")
        tracks[entry["id"]] = replace(scanned.tracks[0], id=entry["id"])
    base = open_library(args.library, cache_dir, config.data.synthetic, config.data.segment_s, args.workers)
    audio = model.manifest["sha256"]
    for track in base:
        if track.id in model.track_ids and track.id not in tracks:
            if track.sha256 and audio.get(track.id, track.sha256) != track.sha256:
                raise ConfigError(f"track {track.id} of --library {args.library} is not the audio {model.folder} "
                                  "was built with: name the library the model was trained on")
            tracks[track.id] = track
    missing = [i for i in model.track_ids if i not in tracks]
    if missing:
        raise ConfigError(f"{len(missing)} tracks of {model.folder} ({', '.join(missing[:3])}) are neither in "
                          f"--library {args.library} nor enrolled songs: name the library the model was trained on")
    return Library(model.manifest["library"], tuple(tracks[i] for i in model.track_ids), noise_dir=base.noise_dir)


def _print_costs(costs: list[StageCost], setups: dict[str, KeySetup], remote: str | None = None) -> None:
    """The per-stage cost table; with ``remote`` (the server's URL) a transport column (round
    trip less the server's own seconds) and each key set's upload time."""
    title = f"encrypted stages (client -> server {remote} -> client)" if remote else \
        "encrypted stages (client -> server -> client)"
    table = Table(title=title)
    columns = ["classifier", "PBS", "encrypt s", "sent KB", "server s", "ms/PBS", "received KB", "decrypt s"]
    for column in columns + (["transport s"] if remote else []):
        table.add_column(column)
    for c in costs:
        row = [c.classifier, str(c.pbs_count), f"{c.encrypt_s:.3f}", f"{c.request_bytes / 1e3:.0f}",
               f"{c.server_s:.2f}", f"{1000 * c.server_s / c.pbs_count:.1f}" if c.pbs_count else "-",
               f"{c.response_bytes / 1e3:.0f}",
               f"{c.decrypt_s:.3f}"]
        table.add_row(*row, *([f"{c.transport_s:.3f}"] if remote else []))
    console.print(table)
    for s in setups.values():
        upload = f", uploaded in {s.upload_s:.2f} s" if remote else ""
        console.print(f"  keys {s.classifier}: {'generated' if s.generated else 'loaded'} in {s.keys_s:.1f} s, "
                      f"evaluation keys {s.evaluation_key_bytes / 1e6:.0f} MB{upload}", highlight=False, soft_wrap=True)


def _export_server(args: argparse.Namespace) -> int:
    model, library, _ = _trained_model(args, Mode.FHE)  # --family offers only families with an fhe mode
    folder, circuits = model.folder, model.channel.circuits
    description = {"family": args.family, "model": folder.name, "library": library.name, "n_tracks": len(library)}
    dest = export_server(circuits, args.dest, description)
    bundle = ServerBundle.load(dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    console.print(f"server bundle of {args.family} {folder.name} ({library.name}, {len(library)} tracks): {dest} "
                  f"({', '.join(bundle.names())}; {size / 1e6:.3g} MB, no client part, no key); "
                  f"serve it with `ppazam serve {dest}`", highlight=False, soft_wrap=True)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ppazam_core.fhe.serving import DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_SESSIONS, DEFAULT_PARALLEL_RUNS, bind, \
        create_app, ignore_broken_pipes, url_of, uvicorn_server

    for option, value in (("--max-sessions", args.max_sessions), ("--parallel-runs", args.parallel_runs)):
        if value is not None and value < 1:
            raise ConfigError.bad_value(option, value, "an integer >= 1")
    if args.max_key_gib is not None and not 0 < args.max_key_gib < 1024**2:
        raise ConfigError.bad_value("--max-key-gib", args.max_key_gib, "a number of GiB above 0 (and below 2^20)")
    if not 0 <= args.port <= 65535:
        raise ConfigError.bad_value("--port", args.port, "a port number from 0 to 65535")
    try:
        bundle = ServerBundle.load(args.bundle)
        app = create_app(bundle, max_sessions=args.max_sessions or DEFAULT_MAX_SESSIONS,
                         max_parallel_runs=args.parallel_runs or DEFAULT_PARALLEL_RUNS,
                         max_key_bytes=int((args.max_key_gib or DEFAULT_MAX_KEY_BYTES / 1024**3) * 1024**3))
    except DamagedArtifactError as e:  # serve rebuilds nothing: export-server writes bundles
        raise DamagedArtifactError(e.path, e.reason, args.bundle,
                                   "write the bundle again with `ppazam export-server DEST`") from e
    ignore_broken_pipes()
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e}") from e
    description = bundle.description
    console.print(f"serving {', '.join(bundle.names())} of {description.get('family', '?')} "
                  f"{description.get('model', '?')} at {url_of(sock)} (Ctrl-C stops)", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    try:  # SIGINT and SIGTERM: finish the requests in flight, then stop
        uvicorn_server(app, log_level="info").run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the captured Ctrl-C again once it has stopped
        console.print("stopped", highlight=False)
    finally:
        sock.close()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    config, library, cache_dir = _experiment(args)
    allowed = family_modes(args.family)
    for mode in args.modes or []:
        if Mode(mode) not in allowed:
            raise ConfigError.bad_value(f"--mode of family {args.family}", mode, [m.value for m in allowed])
    if args.fhe_queries < 1:
        raise ConfigError.bad_value("--fhe-queries", args.fhe_queries, "an integer >= 1 (leave out --mode fhe for none)")
    modes = [Mode(m) for m in args.modes or DEFAULT_EVALUATE_MODES if Mode(m) in allowed]
    _print_library_warnings(library)
    needs_circuits = any(m.needs_circuits for m in modes)
    action = "loaded" if is_trained(args.family, library, config, cache_dir, needs_circuits) else "built"
    model = train_family(args.family, library, config, cache_dir, args.workers, compiled=needs_circuits)
    noise_dir = noise_folder(library, config.data, cache_dir)
    info = RunInfo.start("evaluate")
    out = args.out or Path("reports") / info.run_id
    check_out_folder(out)
    record = RunRecord({})
    bits = family_bits(args.family, config)
    rounding = get_family(args.family).rounding_bits(config)  # as the bench names it
    for level in config.data.eval_levels:
        dataset = build_dataset(library, family_eval_spec(args.family, config, level), cache_dir, noise_dir,
                                args.workers)
        simulated = None
        for mode in modes:
            condition = info.condition(model, config, bits, rounding, mode.value, level, action=action)
            started = time.perf_counter()
            if mode is Mode.FHE:
                rows = sample_queries(dataset, derive_seed(config.data.eval_seed, "fhe queries", level), args.fhe_queries)
                result = predict(model, dataset, mode, rows)
            else:
                result = predict(model, dataset, mode)
            seconds = time.perf_counter() - started
            simulated = result if mode is Mode.FHE_SIM else simulated
            record.results += accuracy_rows(condition, result)
            if mode is Mode.FHE and simulated is not None:  # paired with fhe-sim on the same queries
                same = simulated.take(result.rows)
                record.results.append(condition.proportion("agreement", (same.ranking[:, 0] == result.ranking[:, 0]).sum(),
                                                           len(result.rows)))
            record.latency.append(condition.row("seconds", seconds, len(result.rows)))
            if mode is Mode.FHE:
                record.latency.append(replace(condition, stage="query").row(
                    "median_s", float(np.median(result.seconds)), len(result.rows),
                    spread=(float(result.seconds.min()), float(result.seconds.max()))))
            record.predictions.append(prediction_frame(condition, result, dataset, model.track_ids))
    for mode in modes:  # after the encrypted queries: their measured bytes go into the ledger
        condition = info.condition(model, config, bits, rounding, mode.value, stage="ledger", action=action)
        record.results += ledger(model, mode, model.channel).rows(condition)
    record.provenance = info.provenance(
        _command_line(), {library.name: library.fingerprint()}, 0, library=library.name, family=args.family,
        config=json.loads(canonical_json(config)), model=str(model.folder),
        training={key: model.manifest[key] for key in ("cluster_sizes", "quant", "timings") if key in model.manifest},
        circuits={name: asdict(CircuitStats.load(model.channel.circuits / name)) for name in model.circuit_names()}
        if needs_circuits else {},
        key_setups=[asdict(k) for k in model.channel.key_setups.values()] if model.channel is not None else [])
    record.write(out)
    _print_evaluation(library, model, record.results, record.latency)
    console.print(f"run folder: {out} (run {info.run_id}, model {model.folder.name}); "
                  f"`ppazam report {out}` renders report.html", highlight=False, soft_wrap=True)
    return 0


def _print_evaluation(library: Library, model: Recognizer, results: list[dict], latency: list[dict]) -> None:
    stages = "" if model.cluster_top_k is None else \
        f", {len(model.manifest['cluster_sizes'])} clusters, cluster top-{model.cluster_top_k}"
    table = Table(title=f"{model.family} on {library.name}: {len(library)} tracks{stages}")
    for column in ("mode", "level", "n", "top-1", "top-3", "cluster acc", "fhe = fhe-sim", "time s"):
        table.add_column(column)
    values = {(r["mode"], r["level"], r["metric"]): r for r in results + latency if r["stage"] == ""}
    for mode, level in dict.fromkeys((r["mode"], r["level"]) for r in results if r["stage"] == ""):
        cell = {metric: values.get((mode, level, metric)) for metric in
                ("top1", "top3", "cluster_accuracy", "agreement", "seconds")}
        table.add_row(mode, level, str(cell["top1"]["n"]),
                      *(f"{cell[m]['value']:.3f}" if cell[m] else "-" for m in ("top1", "top3", "cluster_accuracy",
                                                                                 "agreement")),
                      f"{cell['seconds']['value']:.1f}")
    console.print(table)
    ledger_rows = {(r["mode"], r["metric"]): r["value"] for r in results if r["stage"] == "ledger"}
    for mode in dict.fromkeys(m for m, _ in ledger_rows):
        row = {metric: value for (m, metric), value in ledger_rows.items() if m == mode}
        console.print(f"privacy ({mode}): the server learns {row['server_learns_bits']:.2f} bits about the song; "
                      f"{row['server_calls']:.2f} encrypted calls, {row['client_scores']:.0f} scores to the client, "
                      f"{row['bytes_up'] / 1e3:.1f} KB up, {row['bytes_down'] / 1e3:.1f} KB down per segment",
                      highlight=False, soft_wrap=True)


def _print_prepare(library: Library, report: dict, out: Path) -> None:
    summary = report["library"]
    timings = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in report["timings"].items())
    console.print(f"[bold]library[/] {library.name}: {summary['n_tracks']} tracks, "
                  f"{_duration(summary['total_duration_s'])}, {len(summary['skipped'])} skipped, "
                  f"{len(summary['silent_tracks'])} silent ({timings})", highlight=False, soft_wrap=True)
    _print_library_warnings(library)
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
