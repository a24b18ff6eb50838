"""A server of encrypted queries on a Ray worker: the :class:`~ppazam_core.fhe.deployment.Transport`
of ``pytest bench --ray --fhe-transport ray``.

The driver keeps the client: it generates and holds the secret keys, encrypts each query and
decrypts each answer. The worker gets what ``ppazam serve`` gets and nothing more: the path of
the model's server sides (each circuit's ``server.zip`` and ``circuit.json``, read from the
shared store by :meth:`~ppazam_core.fhe.deployment.ServerBundle.from_circuits`, or a bundle
written by ``ppazam export-server``), the framed evaluation keys once per circuit, and framed
ciphertexts. Every byte a worker receives passes through :meth:`RayTransport.upload_keys` and
:meth:`RayTransport.run`, so a check of those arguments is a check of the worker's input
(``tests/test_distributed.py`` runs the secret-key check of ``tests/test_packed.py`` on them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppazam_core import distributed
from ppazam_core.distributed import DistributedError
from ppazam_core.fhe.deployment import LocalTransport, ServerBundle


class ServerHost:
    """The worker's side: one client session's server of the bundle at ``source`` (a model's
    compiled ``circuits`` folder when ``from_circuits``, else an exported bundle folder)."""

    def __init__(self, source: str, from_circuits: bool) -> None:
        bundle = ServerBundle.from_circuits(Path(source)) if from_circuits else ServerBundle.load(Path(source))
        self._transport = LocalTransport(bundle)

    def upload_keys(self, name: str, message: bytes) -> None:
        self._transport.upload_keys(name, message)

    def run(self, name: str, message: bytes) -> tuple[bytes, float]:
        return self._transport.run(name, message)


class RayTransport:
    """A client's transport to a :class:`ServerHost` actor on the Ray cluster this process is
    connected to (:func:`ppazam_core.distributed.start`), declaring ``cpus`` CPUs. ``run``
    returns the answer and the worker's own seconds. Errors of the server (a tampered or foreign
    ciphertext, unknown circuit) are raised here as they are by a local server; a
    :class:`DistributedError` when there is no Ray session or the actor died. :meth:`close`
    (or leaving the ``with`` block) ends the actor and its keys."""

    def __init__(self, source: Path, from_circuits: bool = True, cpus: float = 2.0) -> None:
        if distributed.active() is None:
            raise DistributedError("the ray transport needs a Ray session: run the bench with --ray")
        ray = distributed.import_ray()
        self._actor: Any = ray.remote(ServerHost).options(num_cpus=distributed.fitting_cpus(cpus)).remote(str(source), from_circuits)

    def upload_keys(self, name: str, message: bytes) -> None:
        distributed.fetch(self._actor.upload_keys.remote(name, message), f"uploading the keys of {name}")

    def run(self, name: str, message: bytes) -> tuple[bytes, float]:
        return distributed.fetch(self._actor.run.remote(name, message), f"an encrypted call of {name}")

    def close(self) -> None:
        if self._actor is not None and distributed.active() is not None:
            distributed.import_ray().kill(self._actor)
        self._actor = None

    def __enter__(self) -> "RayTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
