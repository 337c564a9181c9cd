"""`runyard reproduce MODEL@ALIAS`: rebuild a registered model from its lineage tags.

The model version's run says which commit trained it (``runyard.git.commit``, clean
per ``runyard.git.dirty``) and which data it read (``runyard.data.<dataset>.md5``, the
DVC hash from dvc.lock). Reproducing it:

1. checks the commit out in a temporary git worktree (the project is left alone);
2. pulls exactly that data version with DVC (by its hash, so it need not be the one
   in the commit's dvc.lock: `dvc repro` writes dvc.lock after the commit it trains),
   and for a dataset of the user's files (``files:``) its raw files at the commit;
3. runs the commit's own code: `runyard train` and `runyard evaluate` for that
   experiment, into the same tracking store, without registering or moving aliases;
4. compares the new run's metrics with the recorded ones.

Training is seeded, so on the same software the metrics agree; any difference is
reported, and one beyond the tolerance makes the command fail.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mlflow.exceptions import MlflowException
from rich.table import Table

from runyard.errors import RunyardError, summary_line
from runyard.models import saved
from runyard.project import Project
from runyard.tracking.client import Tracking
from runyard.tracking.lineage import package_versions

TOLERANCE = 1e-4
"""Largest absolute difference allowed between a recorded and a reproduced metric."""
COMPARED = ("train/", "val/", "test/", "cv/val/")
"""Metric prefixes compared: what the model learned and scored, not timings."""
WORK_DIR = ".runyard-reproduce"
"""Inside the worktree: the data version's .dvc file, apart from dvc.yaml's outputs."""
TAG_OF = "runyard.reproduction.of"
VERSION_TAG = "runyard.version."


@dataclass
class Row:
    metric: str
    recorded: float
    reproduced: float | None

    @property
    def difference(self) -> float:
        return math.nan if self.reproduced is None else self.reproduced - self.recorded

    def within(self, tolerance: float) -> bool:
        return self.reproduced is not None and abs(self.difference) <= tolerance


@dataclass
class Reproduction:
    model: str
    version: str
    experiment: str
    commit: str
    recorded_run: str
    new_run: str
    data: str
    tolerance: float
    rows: list[Row] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    """Packages whose version differs from the recorded one (``torch 2.12.0 -> 2.13.0``)."""

    @property
    def off(self) -> list[Row]:
        return [r for r in self.rows if not r.within(self.tolerance)]

    @property
    def ok(self) -> bool:
        return bool(self.rows) and not self.off


@dataclass
class Lineage:
    """What a registered model version's run recorded about how it was made."""

    model: str
    alias: str
    version: str
    run_id: str
    experiment: str
    commit: str
    dataset: str
    data_md5: str
    metrics: dict[str, float]
    versions: dict[str, str]


def parse_spec(spec: str) -> tuple[str, str]:
    name, sep, alias = spec.partition("@")
    if not (sep and name and alias) or "@" in alias:
        raise RunyardError(f"reproduce: {spec!r}: expected MODEL@ALIAS, e.g. mnist1d_cnn@champion")
    return name, alias


def lineage(client, spec: str) -> Lineage:
    """The lineage of ``MODEL@ALIAS``; one line naming what is missing otherwise."""
    name, alias = parse_spec(spec)
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
        raise RunyardError(f"reproduce: {name!r}: unknown registered model; "
                           f"registered: {', '.join(known) or '(none)'}") from None
    aliases = dict(model.aliases or {})
    if alias not in aliases:
        raise RunyardError(f"reproduce: {spec}: model {name} has no alias {alias!r}; "
                           f"aliases: {', '.join(sorted(aliases)) or '(none)'}")
    version = str(aliases[alias])
    mv = client.get_model_version(name, version)
    what = f"reproduce: {spec} (version {version}, run {mv.run_id})"
    if not mv.run_id:
        raise RunyardError(f"{what}: the version has no run; nothing to reproduce from")
    run = client.get_run(mv.run_id)
    tags = run.data.tags
    commit = tags.get("runyard.git.commit")
    data_tags = [k for k in tags if k.startswith("runyard.data.") and k.endswith(".md5")]
    if not commit or commit == "none" or len(data_tags) != 1 or "runyard.config.digest" not in tags:
        raise RunyardError(f"{what}: no lineage tags (runyard.git.commit, runyard.data.<dataset>.md5, "
                           "runyard.config.digest); only runs trained by runyard in a git repository "
                           "can be reproduced")
    if tags.get("runyard.kind") == "search":
        raise RunyardError(f"{what}: registered by a search (runyard.kind=search); reproduce a training, "
                           "or run `runyard tune` at that commit")
    dirty = tags.get("runyard.git.dirty")
    if dirty != "false":
        raise RunyardError(f"{what}: trained at commit {commit[:12]} with uncommitted changes "
                           f"(runyard.git.dirty={dirty}); the code that trained it is not in git")
    return Lineage(
        model=name, alias=alias, version=version, run_id=mv.run_id,
        experiment=client.get_experiment(run.info.experiment_id).name, commit=commit,
        dataset=data_tags[0].removeprefix("runyard.data.").removesuffix(".md5"),
        data_md5=tags[data_tags[0]], metrics=dict(run.data.metrics),
        versions={k.removeprefix(VERSION_TAG): v for k, v in tags.items() if k.startswith(VERSION_TAG)},
    )


def reproduce(project: Project, spec: str, tolerance: float = TOLERANCE) -> Reproduction:
    """Rebuild ``MODEL@ALIAS`` from its lineage and compare its metrics with the recorded ones."""
    if not (tolerance >= 0):
        raise RunyardError(f"--tolerance: must be >= 0 (got {tolerance})")
    tracking = Tracking.of(project)
    uri, client = tracking.uri, tracking.client
    rec = lineage(client, spec)
    top = _git(project.root, "rev-parse", "--show-toplevel")
    if _git(project.root, "cat-file", "-e", f"{rec.commit}^{{commit}}", check=False) is None:
        raise RunyardError(f"reproduce: {spec}: commit {rec.commit[:12]} is not in this repository "
                           "(git fetch it first)")
    with _worktree(Path(top), rec.commit) as tree:
        wt = tree / project.root.relative_to(Path(top).resolve())
        data = _checkout_data(project, wt, rec, spec)
        env = {"MLFLOW_TRACKING_URI": uri,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(wt / "platform"), os.environ.get("PYTHONPATH")]))}
        _stage(wt, env, spec, "train", rec.experiment)
        new_run = _new_run_id(wt, rec.experiment)
        _stage(wt, env, spec, "evaluate", rec.experiment)
    client.set_tag(new_run, TAG_OF, rec.run_id)
    client.set_tag(new_run, "runyard.reproduction.model", f"{rec.model}@{rec.alias} (version {rec.version})")
    # The worktree's dvc.lock is the commit's, not the one that named the data: record what was read.
    client.set_tag(new_run, f"runyard.data.{rec.dataset}.md5", rec.data_md5)
    reproduced = client.get_run(new_run).data.metrics
    rows = [Row(k, v, reproduced.get(k)) for k, v in sorted(rec.metrics.items())
            if k.startswith(COMPARED) and not k.startswith("cv/fold/")]
    now = {k.removeprefix(VERSION_TAG): v for k, v in package_versions().items()}
    versions = [f"{pkg} {old} -> {now.get(pkg, 'missing')}" for pkg, old in sorted(rec.versions.items())
                if now.get(pkg) != old]
    return Reproduction(rec.model, rec.version, rec.experiment, rec.commit, rec.run_id, new_run,
                        data, tolerance, rows, versions)


# --------------------------------------------------------------------------- steps


def _git(cwd: Path, *args: str, check: bool = True) -> str | None:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        if check:
            raise RunyardError(f"reproduce: git {args[0]} failed: {summary_line(done.stderr)}")
        return None
    return done.stdout.strip()


@contextmanager
def _worktree(top: Path, commit: str) -> Iterator[Path]:
    """A detached worktree of ``commit`` in a temporary directory, removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="runyard-reproduce-"))
    tree = tmp / "tree"
    _git(top, "worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree
    finally:
        _git(top, "worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        _git(top, "worktree", "prune", check=False)


def _bin(name: str) -> str:
    """A console script of this environment (the one running runyard), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else (shutil.which(name) or name)


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_bin("dvc"), *args], cwd=cwd, capture_output=True, text=True, timeout=1800)


def _checkout_data(project: Project, wt: Path, rec: Lineage, spec: str) -> str:
    """Put the recorded data version at data/<dataset> in the worktree; say where it came from."""
    target = wt / "data" / rec.dataset
    raw = _raw_sources(wt, rec.dataset)
    if raw or rec.data_md5 != "untracked":
        if not (wt / ".dvc").is_dir():
            raise RunyardError(f"reproduce: {spec}: commit {rec.commit[:12]} has no .dvc/: not a DVC project then")
        _share_dvc_settings(project.root, wt)
    if raw:
        # A dataset of the user's files: a training reads its shapes and classes from the raw
        # files (a git worktree has only their .dvc files), at the commit's version.
        dvc_files = [_dvc_file(wt, path) for path in raw]
        pulled = _dvc(wt, "pull", *dvc_files)
        if pulled.returncode != 0 and _dvc(wt, "checkout", *dvc_files).returncode != 0:
            raise RunyardError(f"reproduce: {spec}: {', '.join(raw)} at commit {rec.commit[:12]} is neither in the "
                               f"DVC cache nor pulled from the remote ({summary_line(pulled.stderr)}); "
                               "`dvc push` it where it was trained")
    if rec.data_md5 == "untracked":
        # Not versioned by DVC when it trained: the builders are seeded, so build it again.
        _stage(wt, {}, spec, "prepare", rec.dataset)
        return "rebuilt (untracked when trained)"
    # Track the version by its hash in a .dvc file of its own: it need not be in the
    # commit's dvc.lock, and dvc.yaml's outputs may not overlap another file's.
    work = wt / WORK_DIR
    work.mkdir()
    out = {"md5": rec.data_md5, "path": rec.dataset, "hash": "md5"}
    (work / f"{rec.dataset}.dvc").write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))
    dvc_file = f"{WORK_DIR}/{rec.dataset}.dvc"
    pulled = _dvc(wt, "pull", dvc_file)
    if pulled.returncode != 0 and _dvc(wt, "checkout", dvc_file).returncode != 0:
        raise RunyardError(f"reproduce: {spec}: data/{rec.dataset} version {rec.data_md5} is neither in the "
                           f"DVC cache nor pulled from the remote ({summary_line(pulled.stderr)}); "
                           "`dvc push` it where it was trained")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    (work / rec.dataset).rename(target)
    return f"data/{rec.dataset} {rec.data_md5} (DVC)"


def _raw_sources(wt: Path, dataset: str) -> list[str]:
    """The raw files (``source:``, ``labels:``) of a ``files:`` dataset in the commit's params.yaml."""
    try:
        params = yaml.safe_load((wt / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    entry = (params.get("files") or {}).get(dataset)
    if not isinstance(entry, dict) or not entry.get("source"):
        return []
    return [entry["source"], *([entry["labels"]] if entry.get("labels") else [])]


def _dvc_file(wt: Path, path: str) -> str:
    """The .dvc file tracking ``path`` (its own, or a tracked folder's above it); else the path
    itself, for DVC to find among dvc.yaml's outputs."""
    rel = Path(path)
    for tracked in (rel, *rel.parents[:-1]):
        if (wt / f"{tracked}.dvc").is_file():
            return f"{tracked}.dvc"
    return path


def _share_dvc_settings(root: Path, wt: Path) -> None:
    """The worktree uses the project's DVC cache and its local settings (remote credentials
    live in .dvc/config.local, outside git)."""
    # DVC's Python API loads its whole repo machinery (seconds): only a reproduction needs it.
    from configobj import ConfigObj
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        cache_dir = repo.cache.local_cache_dir
    local = ConfigObj(str(root / ".dvc" / "config.local"))
    local.filename = str(wt / ".dvc" / "config.local")
    local.setdefault("cache", {})["dir"] = cache_dir
    local.write()


def _stage(wt: Path, env: dict[str, str], spec: str, verb: str, name: str) -> None:
    """`runyard VERB NAME` with the commit's code; its output goes to stderr, as progress."""
    cmd = [sys.executable, "-m", "runyard", verb, name]
    done = subprocess.run(cmd, cwd=wt, env={**os.environ, **env}, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        raise RunyardError(f"reproduce: {spec}: `runyard {verb} {name}` at the recorded commit failed "
                           f"(exit {done.returncode}); its output is above")


def _new_run_id(wt: Path, experiment: str) -> str:
    return saved.read_record(wt / "models" / experiment, f"models/{experiment}")["run_id"]


# --------------------------------------------------------------------------- report


def report(result: Reproduction, console) -> None:
    """Recorded against reproduced metrics as a table, then one verdict line."""
    table = Table(title=f"{result.model} v{result.version}: run {result.recorded_run[:8]} "
                        f"(commit {result.commit[:8]}) against run {result.new_run[:8]}")
    for col, justify in (("metric", "left"), ("recorded", "right"), ("reproduced", "right"),
                         ("difference", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    for r in result.rows:
        new = "missing" if r.reproduced is None else f"{r.reproduced:.6f}"
        diff = "" if r.reproduced is None else f"{r.difference:+.2e}"
        table.add_row(r.metric, f"{r.recorded:.6f}", new, diff, "ok" if r.within(result.tolerance) else "OFF")
    console.print(table)
    console.print(f"data: {result.data}")
    if result.versions:  # the usual reason for a difference
        console.print(f"packages differ from the recorded run's: {', '.join(result.versions)}")
    if result.ok:
        console.print(f"reproduced {result.model} v{result.version}: all {len(result.rows)} metrics within "
                      f"{result.tolerance:g} (new run {result.new_run})")
    else:
        console.print(f"NOT reproduced {result.model} v{result.version}: {len(result.off)} of {len(result.rows)} "
                      f"metrics differ by more than {result.tolerance:g} (new run {result.new_run})")
