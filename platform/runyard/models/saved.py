"""A trained model on disk (models/<experiment>/): weights, how to rebuild it, its run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runyard.errors import RunyardError
from runyard.models import build_model

WEIGHTS, RECORD = "model.pt", "run.json"


def save(out: Path, state_dict: dict[str, torch.Tensor], record: dict[str, Any],
         extra_files: dict[str, str] | None = None) -> None:
    """Write atomically: models/<exp>/ is either complete or absent."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state_dict, tmp / WEIGHTS)
    (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def load(model_dir: Path, where: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from its record and load its weights (eval mode)."""
    if not (model_dir / RECORD).is_file() or not (model_dir / WEIGHTS).is_file():
        raise RunyardError(
            f"{where}: no trained model; run `dvc repro train@{model_dir.name}` "
            f"(or `runyard train {model_dir.name}`) first"
        )
    record = json.loads((model_dir / RECORD).read_text())
    net = build_model(record["model"], tuple(record["input_shape"]), record["num_outputs"])
    net.load_state_dict(torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval(), record
