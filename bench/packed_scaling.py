"""Costs of the packed CKKS head (``embedding-head-packed``, :mod:`ppazam_core.fhe.packed`) against
library size: query, answer and evaluation-key bytes (as framed on the wire), server, client
encryption and decryption seconds, and the CKKS error, for random heads of 64 inputs.

A measurement, not a test (pytest does not collect it); run it on a quiet machine::

    .tox/ppazam/bin/python bench/packed_scaling.py                 # N = 64, 1000, 4096, 100000
    .tox/ppazam/bin/python bench/packed_scaling.py --sizes 4096 --rounds 20

Every size is run in full (no extrapolation): 100,000 tracks are 25 shards of 4,096 under the
default ring; the per-shard figures let a larger library be extrapolated (server work and answer
grow by shard; the query and the keys do not).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ppazam_core.fhe.wire import HEADER
from ppazam_core.fhe.packed import PackedClient, PackedServer, build_packed

DIM = 64
SIZES = (64, 1000, 4096, 100_000)


def measure(n_tracks: int, rounds: int, ring: int, moduli_bits: tuple[int, ...], query_scale_bits: int,
            seed: int = 0) -> dict:
    """One head of ``n_tracks`` random track vectors: build it, then ``rounds`` timed queries."""
    rng = np.random.default_rng(seed)
    W = rng.normal(scale=2.0, size=(n_tracks, DIM))  # row norms ~16: scores of a few tens, like a fitted head's
    b = rng.normal(size=n_tracks)
    X = rng.normal(size=(rounds + 2, DIM))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(prefix="ppazam-packed-bench-") as tmp:
        folder = Path(tmp) / "packed"
        started = time.perf_counter()
        stats = build_packed(W, b, ring, moduli_bits, query_scale_bits, X[:2], folder)
        build_s = time.perf_counter() - started
        server, client = PackedServer(folder / "server"), PackedClient(folder / "client", Path(tmp) / "keys")
        started = time.perf_counter()
        server.prepare()  # the weights' plaintexts, encoded once when the server loads
        prepare_s = time.perf_counter() - started
        started = time.perf_counter()
        keys_message = client.evaluation_keys()
        keygen_s = time.perf_counter() - started
        keys = server.read_keys(keys_message)
        encrypt, serve, decrypt, errors, queries, answers = [], [], [], [], [], []
        for x in X[2:]:
            started = time.perf_counter()
            query = client.encrypt(x[None])
            encrypted = time.perf_counter()
            answer = server.run(query, keys)
            served = time.perf_counter()
            scores = client.decrypt(answer)[0]
            decrypt.append(time.perf_counter() - served)
            encrypt.append(encrypted - started)
            serve.append(served - encrypted)
            errors.append(np.abs(scores - (W @ x + b)).max())
            queries.append(len(query))
            answers.append(len(answer))
    params = server.params
    return {"tracks": n_tracks, "shards": params.shards, "baby x giant": f"{params.baby}x{params.giant}",
            "rotations": params.rotations_per_query(), "query_bytes": int(statistics.median(queries)),
            "answer_bytes": int(statistics.median(answers)), "key_bytes": len(keys_message),
            "server_s": statistics.median(serve), "server_s_min": min(serve),
            "encrypt_s": statistics.median(encrypt), "decrypt_s": statistics.median(decrypt),
            "keygen_s": keygen_s, "server_load_s": prepare_s, "build_s": build_s,
            "max_abs_error": float(max(errors)), "security_bits": stats.security_bits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=10, help="timed queries per size (median reported)")
    parser.add_argument("--ring", type=int, default=4096)
    parser.add_argument("--moduli-bits", type=int, nargs=3, default=[38, 28, 43])
    parser.add_argument("--query-scale-bits", type=int, default=30)
    args = parser.parse_args(argv)
    print(f"packed CKKS head, {DIM}-dim queries, ring {args.ring}, moduli {args.moduli_bits} bits "
          f"(sum {sum(args.moduli_bits)}), query scale 2^{args.query_scale_bits}; bytes are framed messages "
          f"(+{HEADER.size} B header); {os.cpu_count()} CPUs, server single-threaded (SEAL)")
    columns = ("tracks", "shards", "baby x giant", "rotations", "query KB", "answer KB", "keys MB", "server ms",
               "server ms/shard", "encrypt ms", "decrypt ms", "max |error|")
    print(" | ".join(columns))
    for n_tracks in args.sizes:
        r = measure(n_tracks, args.rounds, args.ring, tuple(args.moduli_bits), args.query_scale_bits)
        print(" | ".join([f"{r['tracks']:,}", str(r["shards"]), r["baby x giant"], str(r["rotations"]),
                          f"{r['query_bytes'] / 1024:.1f}", f"{r['answer_bytes'] / 1024:.1f}",
                          f"{r['key_bytes'] / 1e6:.2f}", f"{1000 * r['server_s']:.1f}",
                          f"{1000 * r['server_s'] / r['shards']:.1f}", f"{1000 * r['encrypt_s']:.1f}",
                          f"{1000 * r['decrypt_s']:.1f}", f"{r['max_abs_error']:.1e}"]), flush=True)
        print(f"    (min server {1000 * r['server_s_min']:.1f} ms; Galois keygen {r['keygen_s']:.2f} s; server load "
              f"{r['server_load_s']:.2f} s; build {r['build_s']:.1f} s; {r['security_bits']}-bit security)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
