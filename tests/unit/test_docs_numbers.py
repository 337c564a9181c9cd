"""The numbers the docs give for the default pipeline are the ones `make run` wrote.

`make run` (`dvc repro`) writes metrics/<experiment>.json and records in dvc.lock the
pipeline files and params it ran with; both are committed, like any DVC metric. So:
every default-pipeline number in README.md and the catalogue equals the committed
metrics file, and the committed dvc.lock ran the pipeline files and params that are
in the repository now. Change a pipeline without running it again, or a number in the
docs by hand, and this fails.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md", REPO / "docs" / "catalogue" / "index.md")
METRIC = {"acc": "test/acc", "MSE": "test/mse"}
# A table row naming an experiment, then "acc 0.936" or "MSE 0.0003" in a later cell.
ROW = re.compile(r"^\| `(?P<name>\w+)` \|.*?\| (?P<kind>acc|MSE) (?P<value>\d+\.\d+) \|", re.M)


def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def default_runs() -> list[str]:
    p = params()
    return [*p["experiments"], *p["searches"]]


def metrics_of(name: str) -> dict:
    search = name in params()["searches"]
    path = REPO / "metrics" / ("tune" if search else "") / f"{name}.json"
    assert path.is_file(), f"{path.relative_to(REPO)} is not committed: run `make run` and commit metrics/"
    data = json.loads(path.read_text())
    return data["test"] if search else data


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_default_numbers_are_the_committed_metrics(doc):
    rows = [m for m in ROW.finditer(doc.read_text()) if m["name"] in default_runs()]
    assert {m["name"] for m in rows} >= set(params()["experiments"]), f"{doc.name}: a default experiment's row is gone"
    for m in rows:
        measured = metrics_of(m["name"])[METRIC[m["kind"]]]
        decimals = len(m["value"].split(".")[1])
        assert f"{measured:.{decimals}f}" == m["value"], (
            f"{doc.relative_to(REPO)}: {m['name']} says {m['kind']} {m['value']}, "
            f"metrics/ says {measured:.{decimals}f}: update the docs from a fresh `make run`")


def test_the_committed_run_used_the_pipelines_and_params_of_the_repository():
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    current = params()
    for name in default_runs():
        stage = lock.get(f"train@{name}") or lock.get(f"tune@{name}")
        assert stage, f"dvc.lock has no stage for {name}: run `make run` and commit dvc.lock"
        pipeline = f"pipelines/{name}.yaml"
        (dep,) = [d for d in stage["deps"] if d["path"] == pipeline]
        md5 = hashlib.md5((REPO / pipeline).read_bytes()).hexdigest()
        assert dep["md5"] == md5, f"{pipeline} changed since the committed `make run`: run it again"
        for key, value in stage["params"]["params.yaml"].items():
            node = current
            for part in key.split("."):
                node = node[part]
            assert node == value, f"params.yaml: {key} changed since the committed `make run`: run it again"
