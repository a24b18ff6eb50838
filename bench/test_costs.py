"""What each model costs to build: library size, training time per step, artifact size on disk
(client keys left out). The scaling suite plots these against the library size."""

from ppazam_core.store import dir_size


def test_model_costs(ppazam_run, ppazam_point, ppazam_model):
    condition = ppazam_run.condition(ppazam_point, ppazam_model, "fp32", stage="build")
    timings = ppazam_model.manifest.get("timings", {})
    rows = [condition.row("library_tracks", len(ppazam_model.track_ids), 1),
            condition.row("artifact_bytes", dir_size(ppazam_model.folder, skip=("client-keys",)), 1),
            condition.row("train_s", sum(timings.values()), 1)]
    rows += [condition.row(f"train_s:{step.removesuffix('_s')}", seconds, 1) for step, seconds in timings.items()]
    ppazam_run.record.results += rows
    assert len(ppazam_model.track_ids) >= 2
