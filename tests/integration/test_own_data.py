"""Your own data and your own model, end to end, as docs/guides/own-data.md walks through it.

Real DVC CLI, real local Ray, real MLflow sqlite store, in a throwaway copy of the project:
a CSV (scikit-learn's wine) is `dvc add`-ed and declared under params.yaml's ``files:``;
`dvc repro` trains, evaluates and registers it; editing the CSV re-runs its chain only.
An image folder (PNGs, one subfolder per class) and a Parquet table go the same way.
A model of the user's own (``labnets/tabular.py`` beside pipelines/) trains and loads
from the registry in a fresh process that cannot import the project.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import files_under, one_line_error, runyard_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]

# The guide's worked example, exactly.
WINE_FILES = {"wine": {"source": "data/raw/wine.csv", "target": "class", "task": "classification",
                       "split": {"val": 0.2, "test": 0.2}}}
WINE_MLP = {
    "description": "An MLP on the wine CSV (13 chemical measurements -> 3 cultivars)",
    "dataset": "wine",
    "model": {"name": "mlp", "hidden": [32]},
    "recipe": {"optimizer": "adam", "lr": 0.01, "batch_size": 32, "epochs": 3},
    "optimized_metric": "val/acc",
    "optimized_mode": "max",
}
WINE_RESMLP = {**WINE_MLP, "description": "The lab's own residual MLP on the wine CSV",
               "model": {"name": "labnets.tabular:ResidualMLP", "hidden": 16}}
RESIDUAL_MLP = '''\
"""The lab's own networks: plain torch.nn.Modules, found by their import path."""

from torch import nn


class ResidualMLP(nn.Module):
    """Two layers and a skip connection; runyard passes the dataset's shapes."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: int = 64):
        super().__init__()
        self.inp = nn.Linear(input_shape[0], hidden)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, num_outputs)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.block(h))
'''


def env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def dvc(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([Path(sys.executable).parent / "dvc", *args], cwd=cwd,
                            capture_output=True, text=True, env=env(), timeout=900)
    if ok:
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def commit(root: Path, *paths: str) -> None:
    subprocess.run(["git", "add", *paths], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qm", "own data"], cwd=root, check=True)


def write_wine(root: Path) -> Path:
    """scikit-learn's wine (178 rows, 13 numeric columns, 3 classes) as data/raw/wine.csv."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.rename(columns={"target": "class"})
    path = root / "data" / "raw" / "wine.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


RAW_DATA_IGNORE = "/data/?*\n!/data/raw/\n"
"""data/raw/*.dvc must reach git (`dvc add` ignores the data itself in data/raw/.gitignore).
Not ``/data/*``: DVC's reading of it ignores data/ itself, and `dvc push` then skips data/raw/."""


def allow_raw_data(root: Path) -> None:
    ignore = root / ".gitignore"
    text = ignore.read_text()
    if "!/data/raw/" not in text:
        ignore.write_text(text.replace("/data/\n", RAW_DATA_IGNORE))


def setup_wine(root: Path, experiments: dict[str, str], pipelines: dict[str, dict], track: bool = True) -> None:
    """The guide's steps: the CSV under DVC, its files: entry, the pipelines, committed."""
    allow_raw_data(root)
    write_wine(root)
    if track:
        dvc("add", "data/raw/wine.csv", cwd=root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(files=WINE_FILES, datasets={"digits": {}}, experiments=experiments, searches={})
    for name in experiments:  # one stage per experiment: out of the catalogue's dvc.yaml
        params["catalogue"]["experiments"].pop(name, None)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, pipeline in pipelines.items():
        (root / "pipelines" / f"{name}.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    dvcfile = yaml.safe_load((root / "dvc.yaml").read_text())
    dvcfile["stages"].pop("paper")  # reads experiments this project does not train
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvcfile, sort_keys=False))
    commit(root, ".")


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def status(root: Path) -> dict[str, set[str]]:
    """`dvc status --json` of dvc.yaml's stages: stage -> its changed dependencies."""
    out = json.loads(dvc("status", "--json", "dvc.yaml", cwd=root).stdout or "{}")
    return {stage: {path for entry in changes if isinstance(entry, dict)
                    for path in entry.get("changed deps", {})}
            for stage, changes in out.items()}


def ran(result) -> set[str]:
    return {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage '")}


def test_a_csv_under_dvc_trains_registers_and_reruns_only_its_chain(project_dir):
    root = project_dir
    setup_wine(root, {"wine_mlp": "wine", "digits_decision_tree": "digits"}, {"wine_mlp": WINE_MLP})

    first = dvc("repro", cwd=root)
    assert {"prepare_files@wine", "train@wine_mlp", "evaluate@wine_mlp", "register@wine_mlp",
            "prepare@digits", "train@digits_decision_tree"} <= ran(first), first.stdout

    meta = json.loads((root / "data" / "wine" / "meta.json").read_text())
    assert meta["source"] == "data/raw/wine.csv" and meta["classes"] == ["0", "1", "2"]
    assert len(meta["features"]) == 13 and meta["input_shape"] == [13]
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert lock["prepare_files@wine"]["deps"][0]["path"] == "data/raw/wine.csv"

    c = client(root)
    (run,) = c.search_runs([c.get_experiment_by_name("wine_mlp").experiment_id])
    assert run.info.status == "FINISHED" and 0 <= run.data.metrics["test/acc"] <= 1
    assert c.get_model_version_by_alias("wine_mlp", "champion").run_id == run.info.run_id
    assert (root / "metrics" / "wine_mlp.json").is_file()
    # The dataset input: name, the raw file as source, the DVC hash of data/wine as digest, a schema.
    (ds,) = [i.dataset for i in run.inputs.dataset_inputs]
    assert ds.name == "wine" and "data/raw/wine.csv" in ds.source
    assert ds.digest == lock["prepare_files@wine"]["outs"][0]["md5"]
    assert '"name":"features"' in ds.schema.replace(" ", "") and "[-1,13]" in ds.schema.replace(" ", "")
    (tree,) = c.search_runs([c.get_experiment_by_name("digits_decision_tree").experiment_id])
    (tree_ds,) = [i.dataset for i in tree.inputs.dataset_inputs]
    assert tree_ds.name == "digits" and "runyard:digits" in tree_ds.source

    # Edit the raw CSV (one measurement), re-track it: only the wine chain is stale.
    csv = root / "data" / "raw" / "wine.csv"
    lines = csv.read_text().splitlines()
    cells = lines[1].split(",")
    cells[0] = str(float(cells[0]) + 0.5)
    csv.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    dvc("add", "data/raw/wine.csv", cwd=root)
    # (platform/ is the live package: an edit there while the test runs changes it too.)
    stale = {stage: {d for d in deps if d != "platform/runyard"}
             for stage, deps in status(root).items()}
    assert stale["prepare_files@wine"] == {"data/raw/wine.csv"}
    assert not {s: d for s, d in stale.items() if d and s != "prepare_files@wine"}, stale

    second = dvc("repro", cwd=root)
    assert {"prepare_files@wine", "train@wine_mlp", "evaluate@wine_mlp", "register@wine_mlp"} <= ran(second)
    assert "prepare@digits" not in ran(second), second.stdout
    assert len(c.search_runs([c.get_experiment_by_name("wine_mlp").experiment_id])) == 2


def test_a_users_model_trains_on_ray_and_loads_where_the_project_is_not(project_dir, tmp_path):
    root = project_dir
    (root / "labnets").mkdir()
    (root / "labnets" / "__init__.py").write_text("")
    (root / "labnets" / "tabular.py").write_text(RESIDUAL_MLP)
    setup_wine(root, {"wine_resmlp": "wine"}, {"wine_resmlp": WINE_RESMLP})

    for verb in ("prepare", "train", "register"):
        name = "wine" if verb == "prepare" else "wine_resmlp"
        result = runyard_cli(verb, name, cwd=root, env={"PYTHONPATH": ""}, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    record = json.loads((root / "models" / "wine_resmlp" / "run.json").read_text())
    assert record["model"]["name"] == "labnets.tabular:ResidualMLP"

    # A fresh process in another folder, runyard's and the project's folders off its path:
    # the registered model loads from its own copy of the code, and predicts 3 classes.
    away = tmp_path / "elsewhere"
    away.mkdir()
    script = textwrap.dedent(f"""
        import sys
        sys.path = [p for p in sys.path if p not in ("", {str(root)!r}) and "platform" not in p]
        import numpy as np, mlflow.pyfunc
        for name in ("labnets", "runyard"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(name + " is importable here: the test proves nothing")
        mlflow.set_tracking_uri({f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"!r})
        model = mlflow.pyfunc.load_model("models:/wine_resmlp@champion")
        out = model.predict(np.zeros((4, 13), np.float32))
        print("shape", tuple(np.asarray(out).shape))
    """)
    clean = {k: v for k, v in env().items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=away, capture_output=True, text=True,
                            env=clean, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "shape (4, 3)" in result.stdout


BAD_MODELS = {
    "no_module": ({"name": "labnets.nothere:Net"}, "no module 'labnets.nothere'"),
    "no_attr": ({"name": "labnets.tabular:Nope"}, "has no 'Nope'"),
    "not_a_module": ({"name": "labnets.tabular:helper"}, "is not a torch.nn.Module subclass"),
    "wrong_output": ({"name": "labnets.tabular:OneOutput"}, "gives outputs (1,) per sample, wine needs (3,)"),
}
EXTRA = '''

def helper(x):
    return x


class OneOutput(nn.Module):
    def __init__(self, input_shape: tuple[int, ...]):
        super().__init__()
        self.fc = nn.Linear(input_shape[0], 1)

    def forward(self, x):
        return self.fc(x)
'''


def test_bad_inputs_are_one_line_and_write_nothing(project_dir):
    root = project_dir
    (root / "labnets").mkdir()
    (root / "labnets" / "__init__.py").write_text("")
    (root / "labnets" / "tabular.py").write_text(RESIDUAL_MLP + EXTRA)
    pipelines = {f"wine_{k}": {**WINE_MLP, "model": spec} for k, (spec, _) in BAD_MODELS.items()}
    setup_wine(root, {}, {"wine_mlp": WINE_MLP, **pipelines}, track=False)

    # A source DVC does not track: say how to track it; no data/wine.
    before = files_under(root)
    line = one_line_error(runyard_cli("prepare", "wine", cwd=root, timeout=300))
    assert "params.yaml: files.wine: source:" in line and "`dvc add data/raw/wine.csv`" in line, line
    assert files_under(root) == before

    subprocess.run(["git", "rm", "-q", "--cached", "data/raw/wine.csv"], cwd=root, check=True)
    dvc("add", "data/raw/wine.csv", cwd=root)
    assert runyard_cli("prepare", "wine", cwd=root, timeout=300).returncode == 0
    before = files_under(root)
    for key, (_, expected) in BAD_MODELS.items():
        line = one_line_error(runyard_cli("train", f"wine_{key}", cwd=root, timeout=300))
        assert f"pipelines/wine_{key}.yaml: model" in line and expected in line, line
    assert files_under(root) == before, "no run, no model dir"


# --------------------------------------------------------------------------- images and Parquet

IMAGES_PER_CLASS = 20
PICTURES_FILES = {
    # A folder of PNGs, one subfolder per class, resized on the way in.
    "shades": {"source": "data/raw/shades", "image_size": [8, 8], "split": {"val": 0.25, "test": 0.25}},
    # A Parquet table: a regression target and a text column one-hot encoded.
    "houses": {"source": "data/raw/houses.parquet", "target": "price", "task": "regression",
               "categorical": ["district"], "split": {"val": 0.2, "test": 0.2}},
}
SHADES_CNN = {
    # No batch norm: 3 epochs of 3 batches leave its running statistics far from the data's.
    "dataset": "shades", "model": {"name": "cnn2d", "channels": [4], "batch_norm": False},
    "recipe": {"optimizer": "adam", "lr": 0.05, "batch_size": 8, "epochs": 3},
    "optimized_metric": "val/acc", "optimized_mode": "max",
}
HOUSES_MLP = {
    "dataset": "houses", "model": {"name": "mlp", "hidden": [8]},
    "recipe": {"optimizer": "adam", "lr": 0.01, "batch_size": 16, "epochs": 2},
    "optimized_metric": "val/mse", "optimized_mode": "min",
}


def write_shades(root: Path) -> Path:
    """data/raw/shades/{dark,light}/NN.png: 12x10 RGB noise around a dark or a light grey."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / "data" / "raw" / "shades"
    for label, level in (("dark", 60), ("light", 190)):
        (folder / label).mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            pixels = np.clip(rng.normal(level, 25, size=(12, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i:02d}.png")
    return folder


def write_houses(root: Path) -> Path:
    """data/raw/houses.parquet: 100 rows of rooms, area, district (text) -> price."""
    import pandas as pd

    rng = np.random.default_rng(1)
    n = 100
    table = pd.DataFrame({"rooms": rng.integers(1, 6, n).astype(float), "area": rng.uniform(30, 150, n),
                          "district": rng.choice(["north", "south", "centre"], n)})
    table["price"] = (0.2 * table["rooms"] + 0.01 * table["area"] + (table["district"] == "centre")
                      + rng.normal(0, 0.05, n))
    path = root / "data" / "raw" / "houses.parquet"
    table.to_parquet(path, index=False)
    return path


def test_an_image_folder_and_a_parquet_file_under_dvc_train_and_register(project_dir):
    root = project_dir
    allow_raw_data(root)
    write_shades(root)
    write_houses(root)
    dvc("add", "data/raw/shades", "data/raw/houses.parquet", cwd=root)
    experiments = {"shades_cnn": "shades", "houses_mlp": "houses"}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(files=PICTURES_FILES, datasets={}, experiments=experiments, searches={})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, pipeline in (("shades_cnn", SHADES_CNN), ("houses_mlp", HOUSES_MLP)):
        (root / "pipelines" / f"{name}.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    dvcfile = yaml.safe_load((root / "dvc.yaml").read_text())
    dvcfile["stages"].pop("paper")  # reads experiments this project does not train
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvcfile, sort_keys=False))
    commit(root, ".")

    first = dvc("repro", cwd=root)
    assert {f"{stage}@{name}" for stage in ("train", "evaluate", "register") for name in experiments} | {
        "prepare_files@shades", "prepare_files@houses"} <= ran(first), first.stdout

    shades = json.loads((root / "data" / "shades" / "meta.json").read_text())
    assert shades["classes"] == ["dark", "light"] and shades["input_shape"] == [3, 8, 8]
    houses = json.loads((root / "data" / "houses" / "meta.json").read_text())
    assert houses["features"] == ["rooms", "area", "district=centre", "district=north", "district=south"]
    assert houses["input_shape"] == [5]
    assert np.load(root / "data" / "shades" / "x_train.npy").shape[1:] == (3, 8, 8)
    sizes = {s: len(np.load(root / "data" / "shades" / f"y_{s}.npy")) for s in ("train", "val", "test")}
    assert sizes == {"train": 20, "val": 10, "test": 10}, sizes

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    c = client(root)
    for name, dataset, source in (("shades_cnn", "shades", "data/raw/shades"),
                                  ("houses_mlp", "houses", "data/raw/houses.parquet")):
        assert lock[f"prepare_files@{dataset}"]["deps"][0]["path"] == source
        (run,) = c.search_runs([c.get_experiment_by_name(name).experiment_id])
        assert run.info.status == "FINISHED"
        assert c.get_model_version_by_alias(name, "champion").run_id == run.info.run_id
        (ds,) = [i.dataset for i in run.inputs.dataset_inputs]
        assert ds.name == dataset and source in ds.source
        assert ds.digest == lock[f"prepare_files@{dataset}"]["outs"][0]["md5"]
        assert run.data.tags[f"runyard.data.{dataset}.md5"] == ds.digest
    # The images reached the network with their folders' labels: dark and light are told
    # apart (labels scrambled on the way would leave it at chance, 0.5).
    shades_test = json.loads((root / "metrics" / "shades_cnn.json").read_text())
    assert shades_test["test/acc"] >= 0.8, shades_test
    houses_test = json.loads((root / "metrics" / "houses_mlp.json").read_text())
    assert 0 <= houses_test["test/mse"] < float("inf"), houses_test

    # One image changed and re-tracked: only the image folder's chain is stale.
    png = root / "data" / "raw" / "shades" / "dark" / "00.png"
    from PIL import Image

    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(png)
    dvc("add", "data/raw/shades", cwd=root)
    stale = {stage: {d for d in deps if d != "platform/runyard"} for stage, deps in status(root).items()}
    assert stale["prepare_files@shades"] == {"data/raw/shades"}, stale
    assert not {s: d for s, d in stale.items() if d and s != "prepare_files@shades"}, stale
