"""A runyard project: the directory holding params.yaml, dvc.yaml and pipelines/.

``Project`` knows where everything lives and loads the configuration, checked in
full (``runyard.checks``) before any command starts work.
"""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Any

from runyard import checks
from runyard.config import Experiment, Params, env_settings, read_yaml, resolve_extends, validate
from runyard.data import DATASETS, DatasetInfo, build_dataset, dataset_info, dataset_params, dataset_source
from runyard.data import splits as split_store
from runyard.data.splits import Splits
from runyard.data.view import view_splits
from runyard.errors import RunyardError


class Project:
    def __init__(self, root: Path):
        self.root = root.resolve()
        # The user's own code (a model named ``labnets.tabular:ResidualMLP``) lives in the
        # project, beside pipelines/: importable like an installed package.
        if str(self.root) not in sys.path:
            sys.path.insert(0, str(self.root))

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        here = (start or Path.cwd()).resolve()
        for d in (here, *here.parents):
            if (d / "params.yaml").is_file() and (d / "pipelines").is_dir():
                return cls(d)
        raise RunyardError(
            f"{here}: not inside a runyard project (no params.yaml and pipelines/ here or above)"
        )

    # -- paths
    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    def pipeline_file(self, experiment: str) -> Path:
        return self.root / "pipelines" / f"{experiment}.yaml"

    def data_dir(self, dataset: str) -> Path:
        return self.root / "data" / dataset

    def model_dir(self, experiment: str) -> Path:
        return self.root / "models" / experiment

    def metrics_file(self, experiment: str) -> Path:
        return self.root / "metrics" / f"{experiment}.json"

    def plots_dir(self, experiment: str) -> Path:
        return self.root / "plots" / experiment

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def experiment_names(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "pipelines").glob("*.yaml"))

    # -- loading
    @cached_property
    def params(self) -> Params:
        where = self.rel(self.params_file)
        raw = env_settings(read_yaml(self.params_file, where))
        params = validate(Params, raw, where)
        checks.check_params(self, params)
        return params

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """params.yaml's ``files:``: the datasets read from the user's files, name -> arguments."""
        return self.params.files

    def dataset_names(self) -> list[str]:
        """Every dataset an experiment may name: the built-in ones, and params.yaml's."""
        return list(dict.fromkeys([*DATASETS, *self.params.datasets, *self.params.catalogue.datasets,
                                   *self.files]))

    def dataset_section(self, dataset: str) -> tuple[dict[str, Any], bool, str]:
        """A dataset's params.yaml section, whether it is a ``files:`` entry, and where it is."""
        params = self.rel(self.params_file)
        if dataset in self.files:
            return self.files[dataset], True, f"{params}: files.{dataset}"
        if dataset in self.params.catalogue.datasets:
            return self.params.catalogue.datasets[dataset], False, f"{params}: catalogue.datasets.{dataset}"
        if dataset not in self.dataset_names():
            raise RunyardError(f"unknown dataset {dataset!r}; allowed: {', '.join(self.dataset_names())}")
        return self.params.datasets.get(dataset, {}), False, f"{params}: datasets.{dataset}"

    def dataset_args(self, dataset: str):
        """The typed builder arguments for one dataset (defaults where params.yaml is silent)."""
        raw, files, where = self.dataset_section(dataset)
        return dataset_params(dataset, raw, where=where, files=files)

    def dataset_info(self, dataset: str) -> DatasetInfo:
        """The dataset's task and shapes with this project's builder arguments."""
        cache = self.__dict__.setdefault("_infos", {})
        if dataset not in cache:
            raw, files, where = self.dataset_section(dataset)
            cache[dataset] = dataset_info(dataset, self.dataset_args(dataset), raw=raw, files=files,
                                          root=self.root, where=where)
        return cache[dataset]

    def build_dataset(self, dataset: str):
        """The dataset's splits (with ``.meta`` for a file dataset); nothing is written."""
        raw, files, where = self.dataset_section(dataset)
        return build_dataset(dataset, self.dataset_args(dataset), self.params.seed, raw=raw, files=files,
                             root=self.root, where=where)

    def dataset_source(self, dataset: str) -> str:
        """Where the dataset comes from: its raw files' path, or runyard:<name>, python:<module>."""
        raw, files, _ = self.dataset_section(dataset)
        return dataset_source(dataset, self.dataset_args(dataset), raw=raw, files=files)

    def experiment(self, name: str) -> Experiment:
        """pipelines/<name>.yaml (with what it extends), checked in full."""
        where = self.rel(self.pipeline_file(name))
        raw = resolve_extends(self._pipeline_raw(name), self._read_base, where)
        if isinstance(raw, dict) and "name" in raw:
            raise RunyardError(f"{where}: name: not allowed; the file name is the experiment name")
        checks.refuse_classical_recipe(raw, where)
        exp = validate(Experiment, {"name": name, **(raw or {})}, where)
        checks.check_experiment(self, exp, where)
        return exp

    def experiment_info(self, exp: Experiment) -> DatasetInfo:
        """The task and shapes ``exp`` trains on (checked when ``exp`` was loaded)."""
        return checks.experiment_info(self, exp, self.rel(self.pipeline_file(exp.name)))

    def load_inputs(self, name: str) -> tuple[Experiment, DatasetInfo, Splits]:
        """The experiment, and its dataset's info and splits as it sees them (``subset:``, ``task:``)."""
        exp = self.experiment(name)
        info = self.experiment_info(exp)
        data_dir = self.data_dir(exp.dataset)
        splits = split_store.load(data_dir, self.rel(data_dir))
        if tuple(splits.x_train.shape[1:]) != tuple(info.input_shape):
            raise RunyardError(
                f"{self.rel(data_dir)}: inputs have shape {tuple(splits.x_train.shape[1:])} but "
                f"{self.dataset_section(exp.dataset)[2]} makes {tuple(info.input_shape)}; "
                f"run `runyard prepare {exp.dataset}` again"
            )
        splits = view_splits(splits, exp)
        wanted = exp.recipe and exp.recipe.train_samples
        if wanted and wanted > len(splits.y_train):
            raise RunyardError(
                f"{self.rel(self.pipeline_file(name))}: recipe.train_samples: {wanted} is more than "
                f"the {len(splits.y_train)} training samples of {exp.dataset}"
            )
        return exp, info, splits

    def _pipeline_raw(self, name: str) -> Any:
        path = self.pipeline_file(name)
        if not path.is_file():
            raise RunyardError(
                f"{self.rel(path)}: no such experiment {name!r}; "
                f"allowed: {', '.join(self.experiment_names()) or '(none)'}"
            )
        return read_yaml(path, self.rel(path))

    def _read_base(self, name: str) -> tuple[Any, str] | None:
        """A pipeline another one extends: its raw mapping and where it lives."""
        if not self.pipeline_file(name).is_file():
            return None
        return self._pipeline_raw(name), self.rel(self.pipeline_file(name))
