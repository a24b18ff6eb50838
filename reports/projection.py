"""What a suite would cost at full size, from the per-unit costs one run measured.

A suite that names ``project_tracks`` (Ppazam's own scale: 8,000 tracks in clusters of ~100)
is run reduced (e.g. ``pytest bench --suite ppazam-scale --tracks 800``) and projected: each
step's measured cost is divided by its unit and multiplied out to the full size.

| step | unit | measured in the run | runs as |
| --- | --- | --- | --- |
| render | a track | the ``library`` stage of ``run.json`` | one task a track |
| datasets | a track | ``train_s:dataset`` (the model's build) | one task a track |
| train | a track | the rest of ``train_s`` (embedding, clusters, fp32 and QAT CNNs) | one task a model |
| compile | a circuit (clusters + 1) | ``compile_s`` of each circuit | one task a model, with training |
| keys | a circuit | ``keys_s`` of each circuit | the driver, one after another |
| encrypted query | a query | the median seconds of an ``fhe`` query | the driver, one after another |

The cost of a step is its wall seconds times the cores it held: all of the machine's (or the
Ray cluster's) for render and datasets, :data:`~ppazam_core.threads.ARTIFACT_THREADS` for the
rest. That is an upper bound of the CPU it used. On ``N`` nodes of ``M`` cores the parallel
steps take ``core-seconds / (N x M)``; the others do not shrink: today a two-stage model,
every cluster's classifier included, is one task, so training and compiling set a floor on the
wall time whatever the cluster, and keys and encrypted queries run on the driver. Training
is taken as linear in the tracks at a fixed cluster size (every classifier sees its tracks'
clips for the same epochs; early stopping can end some sooner).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ppazam_core.threads import ARTIFACT_THREADS

PARALLEL_STEPS = ("render", "datasets")


@dataclass(frozen=True)
class Step:
    """One step of the projection: its measured wall seconds and cores, its units measured
    and at full size, and whether it runs as one task an item (``parallel``)."""

    name: str
    measured_s: float
    cores: float
    units: float
    full_units: float
    parallel: bool

    @property
    def core_s(self) -> float:
        """Core-seconds at full size."""
        return self.measured_s * self.cores * self.full_units / self.units

    def wall_s(self, nodes: int, cores: int) -> float:
        """Wall seconds at full size on ``nodes`` nodes of ``cores`` cores."""
        if self.parallel:
            return self.core_s / (nodes * cores)
        return self.core_s / self.cores


@dataclass(frozen=True)
class Projection:
    """The steps of one family measured at ``tracks`` and projected to ``full_tracks``."""

    family: str
    tracks: int
    full_tracks: int
    clusters: int
    full_clusters: int
    queries: int
    steps: tuple[Step, ...]

    def cpu_hours(self) -> float:
        return sum(step.core_s for step in self.steps) / 3600

    def wall_hours(self, nodes: int, cores: int) -> float:
        return sum(step.wall_s(nodes, cores) for step in self.steps) / 3600


def project(run: dict, results: pd.DataFrame, latency: pd.DataFrame) -> list[Projection]:
    """The projection of every compiled family of a run folder's tables to the suite's
    ``project_tracks`` (none when the suite sets none, or the run measured no compiled model).
    A step the run did not measure (no library stage, no encrypted query) is left out."""
    suite = run.get("suite") or {}
    full_tracks = int(suite.get("project_tracks") or 0)
    if not full_tracks or results.empty:
        return []
    machine_cores = float((run.get("ray") or {}).get("cpus") or (run.get("environment") or {}).get("cpu_count") or 1)
    per_cluster = _tracks_per_cluster(run)
    render_s = sum(float(s.get("seconds", 0.0)) for s in run.get("stages", []) if s.get("stage") == "library")
    projections = []
    for family, rows in results.groupby("family", sort=False):
        compiled = rows[rows["metric"] == "compile_s"]
        tracks = rows.loc[rows["metric"] == "library_tracks", "value"]
        if compiled.empty or tracks.empty:
            continue
        tracks = int(tracks.iloc[0])
        circuits = int(compiled["stage"].nunique())
        full_clusters = max(1, round(full_tracks / per_cluster)) if per_cluster else max(1, circuits - 1)
        full_circuits = full_clusters + 1 if circuits > 1 else 1
        train = rows[rows["metric"].astype(str).str.startswith("train_s:")].groupby("metric")["value"].first()
        dataset_s = float(train.get("train_s:dataset", 0.0))
        queries = _full_queries(suite, full_tracks)
        steps = []
        if render_s > 0:
            steps.append(Step("render", render_s, machine_cores, tracks, full_tracks, True))
        if dataset_s > 0:
            steps.append(Step("datasets", dataset_s, machine_cores, tracks, full_tracks, True))
        steps.append(Step("train", float(train.sum()) - dataset_s, ARTIFACT_THREADS, tracks, full_tracks, False))
        steps.append(Step("compile", float(compiled.groupby("stage")["value"].first().sum()), ARTIFACT_THREADS,
                          circuits, full_circuits, False))
        keys = latency[(latency["family"] == family) & (latency["metric"] == "keys_s")]
        if not keys.empty:
            steps.append(Step("keys", float(keys.groupby("stage")["value"].first().sum()), ARTIFACT_THREADS,
                              keys["stage"].nunique(), full_circuits, False))
        query = latency[(latency["family"] == family) & (latency["mode"] == "fhe") & (latency["stage"] == "query")
                        & (latency["metric"] == "median_s")]
        if not query.empty and queries:
            steps.append(Step("encrypted queries", float(query["value"].median()), ARTIFACT_THREADS, 1, queries, False))
        projections.append(Projection(str(family), tracks, full_tracks, max(1, circuits - 1) if circuits > 1 else 1,
                                      full_clusters, queries, tuple(steps)))
    return projections


PROJECTION_NOTE = ("Each step's measured cost per unit, multiplied out to the suite's full size (reports/projection.py "
                   "says how). CPU hours are wall seconds times the cores a step held, an upper bound. The parallel "
                   "steps spread over the nodes; training and compiling are one task a model, and keys and encrypted "
                   "queries run on the driver, so they do not shrink with more nodes.")


def projection_tables(run: dict, results: pd.DataFrame,
                      latency: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """For each :func:`project` projection, a caption and its table: one row a step and a
    total; the measured seconds and units, the units at full size, CPU hours, and the wall
    hours on each of the suite's ``project_nodes`` nodes of ``project_cores`` cores."""
    suite = run.get("suite") or {}
    nodes = [int(n) for n in suite.get("project_nodes") or (1,)]
    cores = int(suite.get("project_cores") or 1)
    tables = []
    for p in project(run, results, latency):
        rows = [{"step": f"{step.name}{' (parallel)' if step.parallel else ''}",
                 "measured s": f"{step.measured_s:,.1f}", "units measured": f"{step.units:,.0f}",
                 "units at full size": f"{step.full_units:,.0f}", "CPU h": f"{step.core_s / 3600:,.2f}",
                 **{f"wall h, {n} x {cores} cores": f"{step.wall_s(n, cores) / 3600:,.2f}" for n in nodes}}
                for step in p.steps]
        rows.append({"step": "total", "measured s": "", "units measured": "", "units at full size": "",
                     "CPU h": f"{p.cpu_hours():,.1f}",
                     **{f"wall h, {n} x {cores} cores": f"{p.wall_hours(n, cores):,.2f}" for n in nodes}})
        caption = (f"{p.family}: measured at {p.tracks:,} tracks in {p.clusters} clusters, projected to "
                   f"{p.full_tracks:,} tracks in {p.full_clusters} clusters and {p.queries:,} encrypted queries")
        tables.append((caption, pd.DataFrame(rows).set_index("step")))
    return tables


def _tracks_per_cluster(run: dict) -> int | None:
    """The ``[clusters] tracks_per_cluster`` of the run's first point, if set."""
    for point in run.get("points") or []:
        value = ((point.get("config") or {}).get("clusters") or {}).get("tracks_per_cluster")
        if value:
            return int(value)
    return None


def _full_queries(suite: dict, full_tracks: int) -> int:
    """Encrypted queries of the full suite: its queried tracks (``query_tracks``, else every
    track) times its queries a track times its encrypted levels."""
    tracks = int(suite.get("query_tracks") or 0) or full_tracks
    levels = len(suite.get("levels") or ()) if suite.get("fhe_budget_s") else 0
    return min(tracks, full_tracks) * int(suite.get("queries_per_track") or 1) * levels
