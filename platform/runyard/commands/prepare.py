"""`runyard prepare DATASET`: data/<dataset>/ from its builder and params.yaml arguments."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from runyard.data import splits as split_store
from runyard.errors import RunyardError
from runyard.progress import status
from runyard.project import Project


def prepare(project: Project, dataset: str) -> Path:
    """Build data/<dataset>/ from the builder and its params.yaml arguments.

    A dataset of the user's files is built only from files DVC tracks: otherwise
    its prepare stage could not re-run when they change."""
    args = project.dataset_args(dataset)
    _, files, where = project.dataset_section(dataset)
    if files:
        from runyard.data.files import dvc_tracked, sources

        for key, path in zip(("source", "labels"), sources(args), strict=False):
            if not dvc_tracked(path, project.root):
                raise RunyardError(f"{where}: {key}: DVC does not track {path}; track it with `dvc add {path}` "
                                   f"(and commit {path}.dvc)")
    info = project.dataset_info(dataset)
    with status(f"preparing {dataset}"):
        built = project.build_dataset(dataset)
    out = project.data_dir(dataset)
    meta = {"dataset": dataset, "source": project.dataset_source(dataset), **asdict(info),
            "args": args.model_dump(mode="json"), **getattr(built, "meta", {})}
    split_store.save(built, out, meta)
    return out
