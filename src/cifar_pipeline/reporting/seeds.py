"""How far a model's accuracy moves with the seed alone: the finished runs of the same params with other
seeds, for the comparison table."""

from __future__ import annotations

from cifar_pipeline.reporting.stats import mean_sd, summarize
from cifar_pipeline.tracking.connection import retry_locked

TEST = "test/accuracy"


def same_params_runs(client, experiment_id: str, run_id: str) -> list:
    """This run and, per other seed, the latest finished evaluated run of its model whose params all equal its
    own but `seed`."""
    this = retry_locked(lambda: client.get_run(run_id))
    params = {k: v for k, v in this.data.params.items() if k != "seed"}
    found = retry_locked(
        lambda: client.search_runs(
            [experiment_id],
            f"tags.model = '{this.data.tags.get('model')}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=50000,
        )
    )
    per_seed = {this.data.params.get("seed"): this}
    for run in found:
        if TEST in run.data.metrics and {k: v for k, v in run.data.params.items() if k != "seed"} == params:
            per_seed.setdefault(run.data.params.get("seed"), run)
    return list(per_seed.values())


def seed_cells(runs: list) -> dict[str, str]:
    """The comparison table's `seeds` (how many, which) and `test_accuracy_over_seeds` (mean ± sd) cells."""
    seeds = sorted((run.data.params.get("seed", "?") for run in runs), key=lambda s: (not s.isdigit(), s.zfill(20)))
    accuracies = [run.data.metrics[TEST] for run in runs if TEST in run.data.metrics]
    spread = mean_sd(summarize(accuracies)) if len(accuracies) > 1 else "one seed"
    return {"seeds": f"{len(seeds)} ({', '.join(seeds)})", "test_accuracy_over_seeds": spread}
