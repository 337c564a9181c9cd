"""`runyard prepare DATASET`: data/<dataset>/ from its builder and params.yaml arguments."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from runyard.data import builder, dataset_info
from runyard.data import splits as split_store
from runyard.progress import status
from runyard.project import Project


def prepare(project: Project, dataset: str) -> Path:
    """Build data/<dataset>/ from the builder and its params.yaml arguments."""
    args = project.dataset_args(dataset)
    info = dataset_info(dataset, args)
    with status(f"preparing {dataset}"):
        built = builder(dataset).build(args, project.params.seed)
    out = project.data_dir(dataset)
    meta = {"dataset": dataset, **asdict(info), "args": args.model_dump()}
    split_store.save(built, out, meta)
    return out
