"""Thread counts that do not depend on the machine, so that training is reproducible.

torch splits a reduction (a convolution's or a matrix product's sum) into as many chunks as it
has intra-op threads, and float addition is not associative: the tiny identifier trained with
``torch.set_num_threads(1)`` and with 2 threads gets other weights on the same machine. torch's
default is the machine's core count, so a 16-core machine trained other models than a 2-core
one from the same commit, configuration and seeds. Everything that makes an artifact runs with
:data:`ARTIFACT_THREADS` torch and BLAS threads (``threadpoolctl``) whatever the machine has.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from threadpoolctl import threadpool_limits

ARTIFACT_THREADS = 2  # what the 2-core development machine used; fewer cores only run them slower


@contextmanager
def fixed_threads(threads: int = ARTIFACT_THREADS) -> Iterator[None]:
    """Run the block (or, as a decorator, the function) on ``threads`` torch intra-op and BLAS
    threads, restoring the previous counts after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)
