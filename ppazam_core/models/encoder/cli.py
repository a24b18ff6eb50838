"""``ppazam encoder train`` and ``ppazam encoder info``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from ppazam_core.cli_help import positive_int
from ppazam_core.distributed import add_ray_option
from ppazam_core.models.encoder.corpus import CORPUS_PACKAGES, CorpusSpec
from ppazam_core.models.encoder.shipped import SHIPPED, encoder_folder, verify_encoder
from ppazam_core.models.encoder.training import EncoderTrainConfig, train_encoder, work_folder
from ppazam_core.parallel import default_workers
from ppazam_core.store import default_cache_dir

console = Console()


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``encoder`` command and its subcommands to the ``ppazam`` parser."""
    defaults = EncoderTrainConfig()
    encoder = commands.add_parser("encoder", help="train or inspect the fingerprint encoder",
                                  description="Train or inspect the fingerprint encoder the embedding families use.")
    subcommands = encoder.add_subparsers(title="encoder commands", metavar="COMMAND")
    train = subcommands.add_parser(
        "train", help="train a fingerprint encoder on its own corpus (generated songs and Debian music)")
    train.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="new folder for the encoder; use it with [embedding] encoder = \"DIR\"")
    train.add_argument("--songs", type=int, default=defaults.corpus.generated_songs,
                       help="generated songs in the corpus (a seed of their own, never a library's)")
    train.add_argument("--song-s", type=float, default=defaults.corpus.song_s, help="seconds per generated song")
    train.add_argument("--no-debian", action="store_true",
                       help=f"leave out the real music of {', '.join(CORPUS_PACKAGES)} (fetched with apt-get)")
    train.add_argument("--debian-dir", type=Path, metavar="DIR",
                       help="a folder holding those packages' .deb files already")
    train.add_argument("--steps", type=int, default=defaults.steps, help="training steps")
    train.add_argument("--batch", type=int, default=defaults.batch, help="songs per step (2 windows each)")
    train.add_argument("--seed", type=int, default=defaults.seed, help="seed of the corpus and the training")
    train.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache folder for the corpus, rooms and noise "
                       "(default $PPAZAM_CACHE, else $XDG_CACHE_HOME/ppazam, else ~/.cache/ppazam)")
    train.add_argument("--workers", type=positive_int, metavar="N",
                       help="processes rendering the corpus (default: every core, or $PPAZAM_WORKERS)")
    add_ray_option(train)
    train.set_defaults(run=_train)
    info = subcommands.add_parser("info", help="print how an encoder was made and check its weights")
    info.add_argument("encoder", nargs="?", default=SHIPPED, help=f"'{SHIPPED}' (default) or an encoder folder")
    info.set_defaults(run=_info)


def _train(args: argparse.Namespace) -> int:
    defaults = EncoderTrainConfig()
    corpus = CorpusSpec(generated_songs=args.songs, song_s=args.song_s, seed=args.seed,
                        packages=() if args.no_debian else CORPUS_PACKAGES)
    config = replace(defaults, corpus=corpus, steps=args.steps, batch=args.batch, seed=args.seed)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped run keeps its last checkpoint
    try:
        out = train_encoder(config, args.out, args.cache_dir or default_cache_dir(), args.workers or default_workers(),
                            args.debian_dir)
    except KeyboardInterrupt:
        console.print(f"interrupted; the same command resumes from the last checkpoint in {work_folder(args.out)}")
        return 130
    manifest = json.loads((out / "manifest.json").read_text())
    console.print(f"encoder written to {out}: {manifest['corpus']['songs']} songs "
                  f"({manifest['corpus']['hours']:.1f} h), {config.steps} steps in {manifest['training_s']:.0f} s, "
                  f"weights SHA-256 {manifest['weights_sha256']}", highlight=False)
    console.print(f"use it with: [embedding] encoder = \"{out}\"", highlight=False, markup=False)
    return 0


def _info(args: argparse.Namespace) -> int:
    folder = encoder_folder(args.encoder)
    manifest = verify_encoder(folder)
    if not manifest:
        console.print(f"{folder}: an encoder without a manifest", highlight=False)
        return 0
    corpus, training = manifest["corpus"], manifest["training"]
    console.print(f"{folder}\n  weights SHA-256 {manifest['weights_sha256']} (checked)\n"
                  f"  corpus: {corpus['generator']['songs']} generated songs (seed {corpus['generator']['seed']}), "
                  f"{corpus['debian']['tracks']} Debian tracks ({corpus['debian']['hours']:.1f} h) of "
                  f"{', '.join(f'{k} {v}' for k, v in corpus['debian']['packages'].items()) or 'no package'}; "
                  f"{corpus['hours']:.1f} h in all\n"
                  f"  training: {training['steps']} steps of {training['batch']} pairs, "
                  f"{manifest['training_s']:.0f} s on {manifest['machine']['cpu']}\n"
                  f"  commit {manifest['git_commit']}, code {manifest['code_hash']}", highlight=False, markup=False)
    return 0
