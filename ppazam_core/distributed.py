"""Long work on a Ray cluster: the optional ``ppazam[ray]`` extra (``pip install 'ppazam[ray]'``).

:func:`start` connects this process, the driver, to Ray (a local instance, or a running
cluster's address) and from then on :func:`~ppazam_core.parallel.parallel_map` runs its items as
Ray tasks: library rendering and scanning, query datasets (augmentation), the encoder's corpus,
and whatever the caller maps (the bench's model builds). Each item is one task that declares
its CPUs and memory (:class:`RayConfig`); a task whose worker dies is run again by Ray
(``max_retries``); results come back in item order and the progress bar stays on the driver.
A task that raises is not retried (the same item raises again): the remaining ones are
cancelled and its own exception is raised on the driver, as without Ray. :class:`ActorPool`
keeps a large object (a model) loaded in a few actors for many calls (the bench's simulated
queries). :func:`stop` disconnects.

What every node needs: the same ppazam (one commit, installed alike) and the same cache folder,
the artifact store, at the same path (a shared file system: NFS, or one machine's disk for a
cluster on loopback). Artifacts are written into a temporary folder and renamed into place
(:func:`~ppazam_core.store.atomic_folder`), so a task retried after its worker died, or two
tasks building the same artifact, never leave a half-written one that a later run trusts.
Work runs on :data:`~ppazam_core.threads.ARTIFACT_THREADS` torch and BLAS threads wherever it
runs, so results are the same with and without Ray.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence, TypeVar

from ppazam_core.errors import ConfigError, PpazamError, is_integer, is_number
from ppazam_core.parallel import progress_bar, set_remote_map

T = TypeVar("T")
R = TypeVar("R")

LOCAL = "local"
"""The ``--ray`` value (and the option's value when given without an address) that starts a
Ray instance on this machine for this process only."""


LOCAL_WORKER_NICENESS = 0
"""The niceness of a local instance's worker processes (Ray's own default is 15, which on a
machine shared with other jobs makes a run on Ray slower than the same run without it)."""


class DistributedError(PpazamError):
    """Ray cannot be used: not installed, no cluster at the address, or a task that could not
    finish (its worker died more often than it is retried)."""


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray and what each task declares. ``address``: ``None`` or :data:`LOCAL`
    starts a local instance (``local_cpus`` logical CPUs, default this machine's, and an object
    store of ``local_object_store_mb``); otherwise a running cluster's address (``HOST:PORT``
    of ``ray start --head``, or ``auto``). ``cpus_per_task``, ``memory_per_task_mb``: the
    resources each task declares to Ray's scheduler. ``max_retries``: how often a task whose
    worker died is run again. ``in_flight_per_cpu``: tasks submitted ahead of the results
    consumed, per cluster CPU (bounds the driver's and the object store's memory)."""

    address: str | None = None
    cpus_per_task: float = 1.0
    memory_per_task_mb: int = 2048
    max_retries: int = 3
    local_cpus: int | None = None
    local_object_store_mb: int = 256
    in_flight_per_cpu: int = 4

    def __post_init__(self) -> None:
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ConfigError.bad_value("ray address", self.address, f"'{LOCAL}', 'auto' or HOST:PORT")
        if not is_number(self.cpus_per_task) or not self.cpus_per_task > 0:
            raise ConfigError.bad_value("ray cpus_per_task", self.cpus_per_task, "a number > 0")
        for key in ("memory_per_task_mb", "local_object_store_mb", "in_flight_per_cpu"):
            value = getattr(self, key)
            if not is_integer(value) or value < 1:
                raise ConfigError.bad_value(f"ray {key}", value, "an integer >= 1")
        if not is_integer(self.max_retries) or self.max_retries < 0:
            raise ConfigError.bad_value("ray max_retries", self.max_retries, "an integer >= 0")
        if self.local_cpus is not None and (not is_integer(self.local_cpus) or self.local_cpus < 1):
            raise ConfigError.bad_value("ray local_cpus", self.local_cpus, "an integer >= 1")

    @property
    def is_local(self) -> bool:
        """Whether :func:`start` starts a Ray instance of its own rather than joining a cluster."""
        return self.address in (None, LOCAL)


_config: RayConfig | None = None


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`DistributedError` saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise DistributedError("Ray is not installed: pip install 'ppazam[ray]' (or pip install 'ray>=2.30,<3')") from e
    return ray


def start(config: RayConfig) -> dict:
    """Connect this process to Ray as ``config`` says and route
    :func:`~ppazam_core.parallel.parallel_map` through it. Returns the cluster as recorded in a
    run's provenance: ``address``, ``nodes``, ``cpus``, ``memory_gb``, ``ray_version``.

    Raises:
        DistributedError: Ray is not installed, or no cluster answers at the address.
        ConfigError: the address is not ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``.
    """
    global _config
    ray = import_ray()
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "configure_logging": True, "logging_level": "ERROR"}
    if config.is_local:  # "local": a new instance, never a cluster left running on this machine
        # Ray starts its workers at niceness 15; a local run competes with whatever else the
        # machine runs as a run without Ray does ($RAY_worker_niceness still wins)
        os.environ.setdefault("RAY_worker_niceness", str(LOCAL_WORKER_NICENESS))
        options.update(address=LOCAL, num_cpus=config.local_cpus or os.cpu_count() or 1,
                       object_store_memory=config.local_object_store_mb * 2**20)
    else:
        options["address"] = reachable(config.address)
    if not ray.is_initialized():
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise DistributedError(f"cannot reach Ray at {config.address}: {e}") from e
    _config = config
    set_remote_map(ray_map)
    return describe(config)


CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for a cluster's head to accept a connection before giving up (Ray itself
would retry without end)."""
CURRENT_CLUSTER_FILE = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
"""Where ``ray start --head`` writes the address ``auto`` stands for."""


def reachable(address: str) -> str:
    """``address`` (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``: ``$RAY_ADDRESS``, else the
    cluster ``ray start --head`` last started on this machine) once its head accepts a TCP
    connection and answers Ray's first call within :data:`CONNECT_TIMEOUT_S` each.

    Raises:
        DistributedError: no address stands for ``auto``, nothing answers there, or what
            answers is not a Ray head.
        ConfigError: ``address`` is not of that form, or its port is not 1 to 65535.
    """
    origin = ""
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS") or (CURRENT_CLUSTER_FILE.read_text().strip()
                                                 if CURRENT_CLUSTER_FILE.is_file() else "")
        if not found:
            raise DistributedError("--ray auto: no Ray cluster was started on this machine ($RAY_ADDRESS is unset "
                                   f"and {CURRENT_CLUSTER_FILE} is missing); start one with `ray start --head` or "
                                   "give its HOST:PORT")
        origin = (" (auto: $RAY_ADDRESS)" if os.environ.get("RAY_ADDRESS")
                  else f" (auto: the cluster {CURRENT_CLUSTER_FILE} names, perhaps left by one that stopped)")
        address = found
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError.bad_value("ray address", address, "auto, HOST:PORT or ray://HOST:PORT with a port of 1 to 65535")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise DistributedError(f"no Ray cluster answers at {address}{origin} ({e.strerror or e}); start its head "
                               f"with `ray start --head --port={port}` or check the address") from e
    _answers_as_ray_head(address)
    return address


RAY_HEAD_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"
"""The gRPC method of Ray's GCS that :func:`ray.init` calls first; an empty request is a valid
one."""


def _answers_as_ray_head(address: str) -> None:
    """Raise a :class:`DistributedError` unless the server at ``address`` (which accepts TCP
    connections) answers Ray's GCS call :data:`RAY_HEAD_PROBE` within :data:`CONNECT_TIMEOUT_S`
    (at another service's port ``ray.init`` waits for a GCS without end); for a Ray Client
    address (``ray://``), unless it completes a gRPC handshake in that time."""
    try:
        import grpc
    except ImportError as e:
        raise DistributedError("grpcio is not installed: pip install 'ppazam[ray]' (or pip install 'grpcio>=1.60')") from e
    client = address.startswith("ray://")
    channel = grpc.insecure_channel(address.removeprefix("ray://"))
    try:
        if client:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        else:
            channel.unary_unary(RAY_HEAD_PROBE)(b"", timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError as e:
        raise DistributedError(f"{address} accepts connections but completes no gRPC handshake within "
                               f"{CONNECT_TIMEOUT_S:g} s: not a Ray Client server (`ray start --head` serves one "
                               "on port 10001)") from e
    except grpc.RpcError as e:
        if e.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):  # Ray, locked
            raise DistributedError(f"{address} accepts connections but is not a Ray head (its answer to Ray's "
                                   f"first call: {e.code().name}); give the port of `ray start --head` "
                                   "(6379 unless --port says otherwise)") from e
    finally:
        channel.close()


def add_ray_option(command: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` of a command that fans work out (see :func:`ray_session`)."""
    command.add_argument("--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
                         help="render, scan and build datasets as Ray tasks: on a local Ray instance without "
                              "ADDRESS, else on the cluster at ADDRESS (HOST:PORT of `ray start --head`, or auto), "
                              "whose nodes all see --cache-dir at the same path; needs pip install 'ppazam[ray]'; "
                              "write --ray=ADDRESS before a positional argument")


@contextmanager
def ray_session(address: str | None) -> Iterator[dict | None]:
    """A Ray session for the block when ``address`` is given (``--ray``), else nothing: the
    cluster's description (:func:`describe`) or ``None``.

    Raises:
        DistributedError: as :func:`start`; or ``address`` names an existing path (``--ray``
            took the positional argument after it).
    """
    if address is None:
        yield None
        return
    if address != LOCAL and Path(address).exists():
        raise DistributedError(f"--ray {address}: that is a path, not a Ray address; write --ray=HOST:PORT, or put "
                               "--ray after the other arguments")
    try:
        yield start(RayConfig(address=address))
    finally:
        stop()


def describe(config: RayConfig) -> dict:
    """The connected cluster: ``address``, live ``nodes``, ``cpus``, ``memory_gb`` and
    ``ray_version``."""
    ray = import_ray()
    resources = ray.cluster_resources()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return {"address": LOCAL if config.is_local else config.address, "nodes": len(nodes),
            "cpus": float(resources.get("CPU", 0.0)), "memory_gb": round(resources.get("memory", 0.0) / 2**30, 2),
            "ray_version": ray.__version__}


def stop() -> None:
    """Stop routing work through Ray and disconnect (a local instance is shut down)."""
    global _config
    set_remote_map(None)
    if _config is not None:
        ray = import_ray()
        if ray.is_initialized():
            ray.shutdown()
    _config = None


def active() -> RayConfig | None:
    """The configuration of the Ray session this process is connected to, or ``None``."""
    return _config


def _apply(fn: Callable[[T], R], item: T, config: RayConfig) -> R:
    """One task, on a worker: ``fn(item)``, with the worker's own maps going through Ray too."""
    global _config
    if _config is None:
        _config = config
        set_remote_map(ray_map)
    return fn(item)


def ray_map(fn: Callable[[T], R], items: Sequence[T], description: str, cpus: float | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, each item a Ray task declaring ``cpus``
    (default: ``cpus_per_task``) and ``memory_per_task_mb`` (see the module docstring); at most
    ``in_flight_per_cpu`` tasks a cluster CPU are submitted ahead.

    Raises:
        DistributedError: a task's worker died more than ``max_retries`` times, or Ray failed
            otherwise (the cluster went away).
        Exception: whatever ``fn`` raised for an item (the other tasks are cancelled).
    """
    config = _config
    if config is None:
        raise DistributedError("ray_map needs a Ray session: call ppazam_core.distributed.start first")
    ray = import_ray()
    try:
        yield from _ordered_tasks(ray, config, fn, items, description, cpus)
    except ray.exceptions.RayError as e:
        raise DistributedError(f"{description}: Ray failed: {type(e).__name__}: {e}") from e


def _ordered_tasks(ray: Any, config: RayConfig, fn: Callable[[T], R], items: Sequence[T], description: str,
                   cpus: float | None) -> Iterator[R]:
    """The body of :func:`ray_map`: submit ahead within the window, yield in order."""
    task = ray.remote(_apply).options(num_cpus=fitting_cpus(cpus or config.cpus_per_task),
                                      memory=config.memory_per_task_mb * 2**20,
                                      max_retries=config.max_retries, retry_exceptions=False)
    window = max(1, int(ray.cluster_resources().get("CPU", 1)) * config.in_flight_per_cpu)
    fn_ref = ray.put(fn)
    pending: deque = deque()
    submitted = 0
    with progress_bar() as progress:
        bar = progress.add_task(f"{description} (Ray)", total=len(items))
        try:
            while submitted < len(items) or pending:
                while submitted < len(items) and len(pending) < window:
                    pending.append((submitted, task.remote(fn_ref, items[submitted], config)))
                    submitted += 1
                index, ref = pending.popleft()
                result = fetch(ref, f"{description}: item {index} (after {config.max_retries} retries)")
                progress.advance(bar)
                yield result
        finally:
            for _, ref in pending:
                try:
                    ray.cancel(ref)
                except ray.exceptions.RayError:  # the cluster is gone: nothing left to cancel
                    pass


def fitting_cpus(cpus: float) -> float:
    """``cpus``, or fewer when no live node of the cluster has that many (a task or actor that
    asks for more CPUs than any node has would wait forever)."""
    ray = import_ray()
    largest = max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")), default=1.0)
    return min(cpus, largest) if largest > 0 else cpus


def slots(cpus: float) -> int:
    """How many tasks or actors declaring ``cpus`` CPUs (as :func:`fitting_cpus` fits them) the
    live nodes of the cluster run at once."""
    ray = import_ray()
    each = fitting_cpus(cpus)
    return sum(int(node["Resources"].get("CPU", 0.0) // each) for node in ray.nodes() if node.get("Alive"))


def fetch(ref: Any, what: str) -> Any:
    """The value of a Ray object reference (a task's or an actor call's result): its own
    exception when the code raised, as without Ray; a :class:`DistributedError` naming
    ``what`` when the process or node running it died beyond its retries.

    Raises:
        DistributedError: the worker, actor, node or the object's owner died, or the result was
            lost (any other error of Ray's).
        Exception: whatever the remote code raised.
    """
    ray = import_ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        _raise_from(ray, e, what)


def _raise_from(ray: Any, error: Exception, what: str) -> NoReturn:
    """Raise what :func:`fetch` raises for a Ray ``error``: the remote code's own exception, or
    a :class:`DistributedError` naming ``what`` (a worker, actor, node or object owner died, or
    the cluster went away)."""
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        raise (cause if isinstance(cause, BaseException) else error.as_instanceof_cause()) from None
    raise DistributedError(f"{what} did not finish on Ray: {type(error).__name__}: {error}") from error


class ActorPool:
    """``size`` Ray actors, each ``cls(*args)``, spread over the nodes, that :meth:`map` spreads
    method calls over through Ray's own ``ray.util.ActorPool``: work that needs a large object
    loaded once (a model) and then many calls. The actors declare no CPU for their lifetime (Ray
    would hold those CPUs while they idle, and the tasks the driver submits between calls would
    wait for them): a method sets the threads it computes on. :meth:`close` (or leaving the
    ``with`` block) ends the actors.

    Raises:
        DistributedError: there is no Ray session.
    """

    def __init__(self, cls: type, args: tuple, size: int) -> None:
        if _config is None:
            raise DistributedError("an actor pool needs a Ray session: call ppazam_core.distributed.start first")
        ray = import_ray()
        from ray.util import ActorPool as RayActorPool

        actor = ray.remote(cls).options(num_cpus=0, scheduling_strategy="SPREAD",
                                        memory=_config.memory_per_task_mb * 2**20)
        self._actors = [actor.remote(*args) for _ in range(max(1, size))]
        self._pool = RayActorPool(self._actors)

    def __len__(self) -> int:
        return len(self._actors)

    def map(self, method: str, items: Sequence[tuple], description: str) -> Iterator[Any]:
        """Yield ``actor.method(*item)`` for each item, in order, each on the next free actor.

        Raises:
            DistributedError: an actor died, or Ray failed otherwise.
            Exception: whatever the method raised for an item.
        """
        ray = import_ray()
        calls = self._pool.map(lambda actor, item: getattr(actor, method).remote(*item), list(items))
        with progress_bar() as progress:
            bar = progress.add_task(f"{description} (Ray, {len(self)} actors)", total=len(items))
            try:
                for result in calls:
                    progress.advance(bar)
                    yield result
            except ray.exceptions.RayError as e:
                _raise_from(ray, e, description)

    def close(self) -> None:
        if _config is not None:
            ray = import_ray()
            for actor in self._actors:
                try:
                    ray.kill(actor)
                except ray.exceptions.RayError:  # the cluster is gone: nothing left to end
                    pass
        self._actors = []

    def __enter__(self) -> "ActorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
