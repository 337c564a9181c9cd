"""`runyard cluster up` on a busy machine: every CPU loaded by other work, as on a user's
laptop with a package install beside it. Ray waits a fixed 30 s for a node's raylet to
register; runyard retries a node that misses it, and otherwise fails in one line naming
the node's log."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import copy_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def busy_cpus():
    """One process spinning on every CPU for the length of the test."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield len(hogs)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_a_three_node_cluster_comes_up_with_every_cpu_busy(busy_cpus, tmp_path):
    from runyard.execution import cluster

    root = copy_project(tmp_path / "project")
    state = cluster.up(nodes=3, cpus_per_node=1, state_dir=root / ".runyard")
    try:
        rows = cluster.status(root / ".runyard")
        assert [r["state"] for r in rows] == ["ALIVE"] * 3
    finally:
        cluster.down(root / ".runyard")
    assert cluster._processes(state) == []
