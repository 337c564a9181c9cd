"""runyard.tuning.adapter: the Ray Tune internals a resumed search relies on still hold.

These fail when a Ray upgrade moves what the adapter reaches into, before a user's
`runyard tune --resume` would."""

from __future__ import annotations

import importlib

import pytest
import ray
from ray import tune
from ray.train import Checkpoint, CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune.trainable.metadata import _TrainingRunMetadata

from runyard.errors import RunyardError
from runyard.tuning import adapter


def test_recorded_checkpoint_reads_what_tune_saved(tmp_path):
    meta = _TrainingRunMetadata()
    assert adapter.recorded_checkpoint(meta.get_json_state()) is None  # a trial Tune never started
    meta.checkpoint_manager = _CheckpointManager(CheckpointConfig(num_to_keep=1))
    assert adapter.recorded_checkpoint(meta.get_json_state()) is None  # started, no checkpoint yet
    (tmp_path / "checkpoint_000003").mkdir()
    result = _TrainingResult(Checkpoint.from_directory(str(tmp_path / "checkpoint_000003")), {"epoch": 3})
    meta.checkpoint_manager.register_checkpoint(result)
    meta.invalidate_cache()  # as Tune does after each checkpoint
    assert adapter.recorded_checkpoint(meta.get_json_state()) == "checkpoint_000003"


def test_set_callbacks_reaches_the_tuners_run_config(tmp_path):
    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(storage_path=str(tmp_path), name="x"))
    marker = tune.Callback()
    adapter.set_callbacks(tuner, [marker])
    assert tuner._local_tuner.get_run_config().callbacks == [marker]


def test_an_untested_ray_fails_loudly_at_import(monkeypatch):
    monkeypatch.setattr(ray, "__version__", "9.1.0")
    with pytest.raises(RunyardError, match=r"Ray 9\.1\.0 is untested .* pip install 'ray==2\.60\.\*'"):
        importlib.reload(adapter)
    monkeypatch.undo()
    importlib.reload(adapter)  # leave the module as the rest of the suite imports it
