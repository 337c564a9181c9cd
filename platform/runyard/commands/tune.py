"""`runyard tune EXPERIMENT`: a search with one MLflow parent run (a child per trial); the best model registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runyard.commands.train import model_record
from runyard.config import RayParams
from runyard.errors import RunyardError
from runyard.execution import ray_session
from runyard.models import saved as saved_model
from runyard.project import Project
from runyard.tracking import registry
from runyard.tracking.client import Tracking
from runyard.tracking.uri import resolve
from runyard.tuning.children import ChildRuns
from runyard.tuning.results import max_epochs, trial_count
from runyard.tuning.search import finish, run_search
from runyard.tuning.space import apply

KIND_TAG = "runyard.kind"
"""``search`` on a search's parent run: the runs list filters on it."""


def tune(project: Project, name: str, resume: bool = False, retry_errored: bool = False) -> dict[str, Any]:
    """Run (or resume) the search declared in pipelines/<name>.yaml; return its summary."""
    exp, info, splits = project.load_inputs(name)
    where = project.rel(project.pipeline_file(name))
    if exp.search is None:
        raise RunyardError(f"{where}: search: missing; `runyard tune` needs a search section "
                           "(see pipelines/mnist1d_cnn_search.yaml)")
    params = project.params
    tracking = Tracking.of(project)
    client = tracking.client
    parent_id = _resumable_search(client, name, where) if resume else None
    one_trial = RayParams(num_workers=exp.search.workers_per_trial, cpus_per_worker=exp.search.cpus_per_worker)
    address = ray_session.connect(params.ray, project.rel(project.params_file),
                                  need=one_trial, need_where=f"{where}: search.workers_per_trial")

    run_params = {**exp.model_dump(mode="json", by_alias=True, exclude={"name", "description"}), "seed": params.seed}
    storage = Path(params.ray.storage_path or project.root / ".runyard" / "ray")
    study = resolve(params.study_storage, project.root)
    with tracking.run(exp, f"{name}-search", run_params, address, _parent_tags(exp),
                      resume_run_id=parent_id) as parent:
        children = ChildRuns(client, tracking.experiment_id(exp), parent, max_epochs(exp))
        try:
            grid = run_search(exp, info, splits, params.seed, storage, f"{name}-search-{parent}", study,
                              children, resume=parent_id is not None, retry_errored=retry_errored,
                              checkpoint_every=params.ray.checkpoint_every)
            children.reconcile(grid)
        finally:
            children.close_open()
        summary = finish(project, exp, info, splits, params.seed, grid, parent, children)
    reg = registry.register(client, name, summary["model_uri"], parent, exp.optimized_metric,
                            exp.optimized_mode, params.mlflow.champion_alias)
    summary["registered"] = reg.as_dict()
    # models/<name>/: the best trial's model, as a training leaves its own. It is the tune
    # stage's DVC out: a fresh clone (no DVC cache) runs the search again, rather than
    # skipping it on metrics/tune/ that git holds.
    best = apply(exp, summary["best_config"])
    saved_model.save(project.model_dir(name), summary.pop("state_dict"),
                     model_record(project, best, info, summary["parent_run_id"], summary["model_uri"]))
    _write_summary(project, name, summary)
    return summary


def _parent_tags(exp) -> dict[str, str]:
    """The parent run stands out in the runs list: ``runyard.kind = 'search'`` to filter on,
    and a description (the run page's note) saying where its trials are."""
    search = exp.search
    note = (f"Search over {', '.join(search.space)}: {trial_count(search)} trials "
            f"({search.algorithm}, {search.scheduler}), one child run each (expand this run's row). "
            f"This run holds the best trial's params, {exp.optimized_metric}, test metrics and model, "
            "the trials plot (search/) and the sweep (sweep/).")
    return {KIND_TAG: "search", "mlflow.note.content": note}


def _resumable_search(client, name: str, where: str) -> str:
    exp = client.get_experiment_by_name(name)
    runs = exp and client.search_runs(
        [exp.experiment_id], f"tags.`{KIND_TAG}` = 'search' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not runs:
        raise RunyardError(f"{where}: --resume: no interrupted search of this experiment to resume")
    return runs[0].info.run_id


def _write_summary(project: Project, name: str, summary: dict[str, Any]) -> None:
    out = project.root / "metrics" / "tune" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: summary[k] for k in ("metric", "best_value", "best_config", "test", "trials", "completed",
                                    "pruned", "errored", "parent_run_id")}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(keep, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)
