"""A trained model on disk (models/<experiment>/): weights or estimator, how to rebuild it, its run.

Deep models keep their weights (``model.pt``) and are rebuilt from ``run.json``;
classical ones keep the fitted scikit-learn estimator in the skops format
(``model.skops``: loading it runs no pickled code). ``run.json`` says which
(``family``; a record without it is a deep model).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from runyard.errors import RunyardError
from runyard.models import build_model, model_inputs
from runyard.models.classical import SKOPS_TRUSTED, flatten, one_hot

WEIGHTS, ESTIMATOR, RECORD = "model.pt", "model.skops", "run.json"


def save(out: Path, state_dict: dict[str, torch.Tensor], record: dict[str, Any],
         extra_files: dict[str, str] | None = None) -> None:
    """Write a deep model atomically: models/<exp>/ is either complete or absent."""
    _write(out, lambda tmp: torch.save(state_dict, tmp / WEIGHTS), record, extra_files)


def save_estimator(out: Path, estimator, record: dict[str, Any],
                   extra_files: dict[str, str] | None = None) -> None:
    """Write a fitted scikit-learn estimator atomically, as ``save`` does for weights."""
    import skops.io  # scikit-learn's model code: only a classical model loads it

    _write(out, lambda tmp: skops.io.dump(estimator, tmp / ESTIMATOR),
           {**record, "family": "classical"}, extra_files)


def _write(out: Path, write_model: Callable[[Path], None], record: dict[str, Any],
           extra_files: dict[str, str] | None) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model(tmp)
    (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def read_record(model_dir: Path, where: str) -> dict[str, Any]:
    record_file = model_dir / RECORD
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if (model_dir / (ESTIMATOR if is_classical(record) else WEIGHTS)).is_file():
            return record
    raise RunyardError(
        f"{where}: no trained model; run `dvc repro train@{model_dir.name}` "
        f"(or `runyard train {model_dir.name}`) first"
    )


def is_classical(record: dict[str, Any]) -> bool:
    return record.get("family") == "classical"


def load(model_dir: Path, where: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from its record and load its weights (eval mode)."""
    record = read_record(model_dir, where)
    if is_classical(record):
        raise RunyardError(f"{where}: holds a scikit-learn model; use load_estimator")
    net = build_model(record["model"], tuple(record["input_shape"]), record["num_outputs"])
    net.load_state_dict(torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval(), record


def load_estimator(model_dir: Path, where: str):
    """The fitted scikit-learn estimator and its record.

    skops loads only the types it trusts, plus ``SKOPS_TRUSTED`` (scikit-learn's trees
    and neighbour indexes): a file holding anything else is refused, never executed."""
    import skops.io  # scikit-learn's model code: only a classical model loads it

    record = read_record(model_dir, where)
    if not is_classical(record):
        raise RunyardError(f"{where}: holds a deep model; use load")
    path = model_dir / ESTIMATOR
    untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(SKOPS_TRUSTED))
    if untrusted:
        raise RunyardError(f"{where}/{ESTIMATOR}: refusing to load untrusted types: {', '.join(untrusted)}")
    return skops.io.load(path, trusted=SKOPS_TRUSTED), record


def load_predictor(model_dir: Path, where: str) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """A function from inputs to outputs (logits, or one-hot predictions of a classical
    model), whatever the family, and the record: what the evaluate stage needs."""
    record = read_record(model_dir, where)
    if is_classical(record):
        estimator, _ = load_estimator(model_dir, where)
        return lambda x: one_hot(estimator.predict(flatten(x)), record["num_outputs"]), record

    net, _ = load(model_dir, where)

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(model_inputs(net, x))).numpy()

    return predict, record
