"""The MLflow UI, started the way the README says (`runyard ui`), in headless Chromium.

After a tiny search (2 trials, 2 epochs), the address `runyard ui` prints opens on the
runs, with no view switch clicked: the search's parent run and its child runs. The
parent's page shows its metric and lineage tags, and the models page shows the
registered model with its `champion` alias. Debian's chromium, driven by Playwright
(no browser download).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import services
from tests.conftest import ON_CI, runyard_cli
from tests.integration.test_tune import NAME, client, search_runs, write_search

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # the UI's first render on a busy 2-core machine


def need_chromium():
    """Playwright driving Debian's chromium; missing is a failure on CI, a skip elsewhere."""
    missing = None
    if not Path(CHROMIUM).is_file():
        missing = f"{CHROMIUM} not found (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing:
        (pytest.fail if ON_CI else pytest.skip)(missing)
    return sync_playwright


@pytest.fixture
def browser_page(tmp_path):
    sync_playwright = need_chromium()
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS,
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def searched(prepared):
    """The project after `runyard tune` of a 2-trial search, with `runyard ui` started
    alongside it (the UI's start-up is slow, so it overlaps the search)."""
    from mlflow import MlflowClient

    write_search(prepared, num_samples=2, epochs=2)
    # Create the store's tables once, so the UI and the search do not race to.
    MlflowClient(f"sqlite:///{prepared / 'mlruns' / 'mlflow.db'}").search_experiments()
    port = services.free_port()
    with (prepared.parent / "ui.log").open("wb") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "runyard", "ui", "--port", str(port)], cwd=prepared,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        result = runyard_cli("tune", NAME, cwd=prepared, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        base = f"http://127.0.0.1:{port}"
        services.wait_mlflow(base, ui, prepared.parent / "ui.log", timeout_s=180)
        printed = re.search(r"MLflow UI: (\S+)", (prepared.parent / "ui.log").read_text())
        assert printed, "runyard ui prints the address to open"
        yield prepared, base, printed.group(1)
    finally:
        services.stop(ui)


def test_ui_shows_search_runs_lineage_and_champion(searched, browser_page):
    root, url, printed = searched
    page = browser_page
    (parent,), children = search_runs(root)
    assert len(children) == 2
    exp_id = parent.info.experiment_id
    assert client(root).get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # What the search cost is its trials' sum; its trials' picture is on the parent and under plots/.
    trial_cost = [c.data.metrics["cost/core_seconds"] for c in children]
    assert all(v > 0 for v in trial_cost)
    assert parent.data.metrics["cost/core_seconds"] == pytest.approx(sum(trial_cost))
    assert (root / "plots" / "tune" / NAME / "trials.png").is_file()
    assert "search/trials.png" in {a.path for a in client(root).list_artifacts(parent.info.run_id, "search")}

    # What `runyard ui` printed (a fresh browser, no view switch clicked): the runs, the
    # parent run listed; its children once its row is expanded.
    assert printed.startswith(url) and f"%22{exp_id}%22" in printed  # the id, quoted, in the list of experiments
    page.goto(printed)
    name_cell = page.get_by_role("gridcell").filter(has_text=parent.info.run_name)
    name_cell.first.wait_for()
    for child in children:
        assert not page.get_by_text(child.info.run_name, exact=True).count()
    name_cell.first.get_by_role("button").first.click()
    for child in children:
        page.get_by_text(child.info.run_name, exact=True).first.wait_for()

    # The parent's run page: its metric and its lineage tags.
    page.goto(f"{url}/#/experiments/{exp_id}/runs/{parent.info.run_id}")
    page.get_by_text("val/acc", exact=True).first.wait_for()
    commit = parent.data.tags["runyard.git.commit"]
    page.get_by_text("runyard.git.commit").first.wait_for()
    page.get_by_text(commit[:7]).first.wait_for()

    # The models page: the model, with its champion alias.
    page.goto(f"{url}/#/models")
    page.get_by_text(NAME, exact=True).first.wait_for()
    page.get_by_text("champion").first.wait_for()
