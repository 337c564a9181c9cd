"""The Ray Tune internals runyard relies on, in one place, checked against Ray 2.60.

Resuming a search needs two things Tune's public API does not give: the checkpoint
each trial's saved state records (``_TrainingRunMetadata``, how Tune reads its own
state), and a restored Tuner's callbacks (not part of Tune's saved state;
``Tuner._local_tuner``). A Ray outside ``TESTED`` fails loudly at import, and
tests/unit/test_tune_adapter.py fails when these assumptions break.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray
from ray.tune.trainable.metadata import _TrainingRunMetadata

from runyard.errors import RunyardError
from runyard.execution.checkpoints import CKPT_FILE

TESTED = ("2.60.",)
"""Ray releases whose Tune internals this module was checked against (prefixes)."""

if not ray.__version__.startswith(TESTED):
    raise RunyardError(f"Ray {ray.__version__} is untested with runyard's search resume "
                       f"(runyard.tuning.adapter checked Ray {', '.join(TESTED)}x): pip install 'ray==2.60.*'")


def set_callbacks(tuner, callbacks: list) -> None:
    """Give a restored Tuner its callbacks back (they are not part of Tune's saved state)."""
    tuner._local_tuner._run_config.callbacks = callbacks


def recorded_checkpoint(trial_run_state: str) -> str | None:
    """The name of the checkpoint a trial's saved run state records as its latest, if any."""
    manager = _TrainingRunMetadata.from_json_state(trial_run_state).checkpoint_manager
    latest = None if manager is None else manager.latest_checkpoint_result
    return None if latest is None else Path(latest.checkpoint.path).name


def restore_replaced_checkpoints(path: Path) -> None:
    """Give each trial's recorded checkpoint back its name before Tune restores the search.

    Tune keeps one checkpoint per trial but saves its own state only now and then:
    a search killed in between records checkpoints that a newer one already replaced,
    and Tune would fail those trials on resume ("does not exist on storage anymore").
    The oldest checkpoint kept takes the recorded name: Tune registered it last (after
    the driver logged its epoch) and deleted every older one; a newer one is a trial's
    write that the driver never saw.
    """
    states = sorted(path.glob("experiment_state-*.json"))  # Tune restores the newest
    if not states:
        return
    for trial, run in json.loads(states[-1].read_text())["trial_data"]:
        name = recorded_checkpoint(run)
        if name is None:
            continue
        trial_dir = path / json.loads(trial)["relative_logdir"]
        recorded = trial_dir / name
        kept = sorted(c for c in trial_dir.glob("checkpoint_*") if (c / CKPT_FILE).exists())
        if kept and not recorded.exists():
            kept[0].rename(recorded)
