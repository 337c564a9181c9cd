"""Starting from another experiment's trained weights: transfer learning and fine-tuning
after unsupervised pretraining (a pipeline's ``init:`` section).

- ``runyard.checks`` checks the section against both models, before any work (config time).
- ``source_state``: the weights to copy, from the source's ``models/<from>/`` (the
  train@<from> stage's output), with the source run for lineage.
- ``param_groups``: per-module learning rates (``lr_groups``) for the optimizer.
- ``layers``: the units ``freeze`` names, bottom to top, that
  ``execution.lightning.Freeze`` keeps fixed and unfreezes one at a time from the top
  every ``unfreeze_every`` epochs (so this module needs no Lightning: the CLI's
  config checks import it).

Frozen parameters stay in the optimizer; their gradients are dropped before each
optimizer step (an optimizer skips a parameter without a gradient, weight decay
included), and their modules run in eval mode (batch norm keeps its statistics).
Lightning's ``BaseFinetuning`` instead sets ``requires_grad=False`` and adds a param
group on unfreezing: under DDP a parameter frozen when the model is wrapped is never
all-reduced after it is unfrozen, and an LR schedule does not know the new group.
Here the optimizer, the schedule and DDP see every parameter from the start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from runyard.config import Experiment
from runyard.data import DatasetInfo
from runyard.errors import RunyardError
from runyard.models import build_model
from runyard.models import saved as saved_model

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)

# --------------------------------------------------------------------------- config time


def within(name: str, prefix: str) -> bool:
    """Whether parameter or module ``name`` lies in module ``prefix`` (``all``: everything)."""
    return prefix in ("all", "") or name == prefix or name.startswith(prefix + ".")


def module_names(net: nn.Module) -> list[str]:
    return [n for n, _ in net.named_modules() if n]


def allowed_modules(net: nn.Module) -> str:
    names = [n for n in module_names(net) if n.count(".") <= 1]
    return ", ".join(names[:24]) + (", ..." if len(names) > 24 else "")


def part_of(state: dict[str, Any], part: str) -> dict[str, Any]:
    return {k: v for k, v in state.items() if within(k, part)}


def mismatch_of(source: dict[str, Any], target: dict[str, Any]) -> str | None:
    """How two state dicts differ in keys or shapes (None: they fit)."""
    only_src, only_tgt = sorted(source.keys() - target.keys()), sorted(target.keys() - source.keys())
    if only_src or only_tgt:
        side, keys = ("only the source has", only_src) if only_src else ("only this model has", only_tgt)
        return f"{side} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
    for k in source:
        if tuple(source[k].shape) != tuple(target[k].shape):
            return f"{k} is {tuple(source[k].shape)} there and {tuple(target[k].shape)} here"
    return None


# --------------------------------------------------------------------------- train time


def source_state(exp: Experiment, info: DatasetInfo, model_dir: Path, where: str,
                 source_pipeline: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights ``exp`` starts from (``init.part`` of the source's trained model in
    ``model_dir``), and the source's record (its MLflow run and model URI, for lineage)."""
    init = exp.init
    record = saved_model.read_record(model_dir, where)
    if saved_model.is_classical(record):
        raise RunyardError(f"{where}: holds a scikit-learn model; init.from needs a deep one")
    state = torch.load(model_dir / saved_model.WEIGHTS, map_location="cpu", weights_only=True)
    target = build_model(exp.model, info.input_shape, info.num_outputs).state_dict()
    part = part_of(state, init.part)
    mismatch = mismatch_of(part, part_of(target, init.part))
    if mismatch:
        raise RunyardError(
            f"{where}: does not fit {exp.name}'s init.part {init.part!r} ({mismatch}); it was trained "
            f"from another version of {source_pipeline}: run `runyard train {init.source}` again"
        )
    return part, record


def lineage_tags(record: dict[str, Any]) -> dict[str, str]:
    """Where the initial weights came from, as tags of the run that starts from them."""
    return {"runyard.init.from": record["experiment"], "runyard.init.run_id": record["run_id"],
            "runyard.init.model_uri": record["model_uri"]}


def load_part(net: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Copy ``state`` (some of ``net``'s keys, shapes checked by ``source_state``) into ``net``."""
    missing = set(state) - set(net.state_dict())
    if missing:
        raise RunyardError(f"init: the model has no {', '.join(sorted(missing)[:3])}")
    net.load_state_dict(state, strict=False)
    return net


# --------------------------------------------------------------------------- optimisation


def param_groups(net: nn.Module, lr: float, lr_groups: dict[str, float]) -> list[dict[str, Any]]:
    """Optimizer param groups: each parameter at ``lr`` times the multiplier of the longest
    ``lr_groups`` prefix it lies in (1 if none). The recipe's own rate comes first, so
    ``train/lr`` (the first group's) stays the recipe's schedule."""
    by_mult: dict[float, list[nn.Parameter]] = {}
    for name, p in net.named_parameters():
        prefixes = [k for k in lr_groups if within(name, k)]
        mult = lr_groups[max(prefixes, key=len)] if prefixes else 1.0
        by_mult.setdefault(mult, []).append(p)
    order = sorted(by_mult, key=lambda m: m != 1.0)
    return [{"params": by_mult[m], "lr": lr * m} for m in order]


def layers(net: nn.Module, prefixes: list[str]) -> list[list[nn.Module]]:
    """The frozen modules as layers, bottom to top (the model's own order): each child with
    weights of a frozen module starts a layer, a normalisation and parameter-free children
    (ReLU, pooling) joining it (conv + batch norm + ReLU + pool); a frozen module without
    children is one layer."""
    order = {name: i for i, name in enumerate(module_names(net))}
    outermost = [p for p in prefixes if not any(q != p and within(p, q) for q in prefixes)]
    units: list[list[nn.Module]] = []
    for prefix in sorted(outermost, key=order.__getitem__):
        module = net.get_submodule(prefix)
        children = list(module.children()) or [module]
        current: list[nn.Module] = []
        weighted = False
        for child in children:
            starts = any(True for _ in child.parameters()) and not isinstance(child, NORMS)
            if starts and weighted:
                units.append(current)
                current, weighted = [], False
            current.append(child)
            weighted = weighted or starts
        units.append(current)
    return units
