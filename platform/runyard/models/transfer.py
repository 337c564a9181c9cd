"""Starting from another experiment's trained weights: transfer learning and fine-tuning
after unsupervised pretraining (a pipeline's ``init:`` section).

- ``check_init``: the section against both models, before any work (config time).
- ``source_state``: the weights to copy, from the source's ``models/<from>/`` (the
  train@<from> stage's output), with the source run for lineage.
- ``param_groups``: per-module learning rates (``lr_groups``) for the optimizer.
- ``Freeze``: a Lightning callback keeping ``freeze`` modules fixed, and unfreezing them
  one layer at a time from the top every ``unfreeze_every`` epochs.

Frozen parameters stay in the optimizer; their gradients are dropped before each
optimizer step (an optimizer skips a parameter without a gradient, weight decay
included), and their modules run in eval mode (batch norm keeps its statistics).
Lightning's ``BaseFinetuning`` instead sets ``requires_grad=False`` and adds a param
group on unfreezing: under DDP a parameter frozen when the model is wrapped is never
all-reduced after it is unfrozen, and an LR schedule does not know the new group.
Here the optimizer, the schedule and DDP see every parameter from the start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from torch import nn

from runyard.errors import RunyardError

if TYPE_CHECKING:
    import torch

    from runyard.config import Experiment, Project
    from runyard.data import DatasetInfo

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)

_checking: list[str] = []
"""Experiments whose init: is being checked, outermost first (to catch cycles)."""


# --------------------------------------------------------------------------- config time


def within(name: str, prefix: str) -> bool:
    """Whether parameter or module ``name`` lies in module ``prefix`` (``all``: everything)."""
    return prefix in ("all", "") or name == prefix or name.startswith(prefix + ".")


def module_names(net: nn.Module) -> list[str]:
    return [n for n, _ in net.named_modules() if n]


def _allowed(net: nn.Module) -> str:
    names = [n for n in module_names(net) if n.count(".") <= 1]
    return ", ".join(names[:24]) + (", ..." if len(names) > 24 else "")


def check_init(project: Project, exp: Experiment, info: DatasetInfo, where: str) -> None:
    """Every key of ``exp.init`` against the source experiment and both models."""
    from runyard.data.view import view_info
    from runyard.models import build_model, is_classical

    init = exp.init
    for section in ("search", "cv"):
        if getattr(exp, section) is not None:
            raise RunyardError(
                f"{where}: init: not supported together with {section}: (it trains with runyard train only)"
            )
    if is_classical(exp.model_name):
        raise RunyardError(f"{where}: init: {exp.model_name} is a scikit-learn model; only deep models take weights")
    others = [n for n in project.experiment_names() if n != exp.name]
    if init.source not in others:
        raise RunyardError(f"{where}: init.from: unknown experiment {init.source!r}; allowed: {', '.join(others)}")
    if init.source in _checking:
        raise RunyardError(f"{where}: init.from: {init.source!r} starts from {exp.name!r} in turn (a cycle)")
    _checking.append(exp.name)
    try:
        src = project.experiment(init.source)
    finally:
        _checking.pop()
    src_where = project.rel(project.pipeline_file(src.name))
    if is_classical(src.model_name):
        raise RunyardError(f"{where}: init.from: {src.name} is a scikit-learn model; it has no weights to copy")

    net = build_model(exp.model, info.input_shape, info.num_outputs)
    src_info = view_info(project.dataset_info(src.dataset), src)
    src_net = build_model(src.model, src_info.input_shape, src_info.num_outputs)
    names = module_names(net)
    if init.part != "all":
        for model, label in ((net, "this model"), (src_net, f"{src.name} ({src_where})")):
            if init.part not in module_names(model):
                raise RunyardError(
                    f"{where}: init.part: {label} has no module {init.part!r}; allowed: all, {_allowed(model)}"
                )
    mismatch = _mismatch(part_of(src_net.state_dict(), init.part), part_of(net.state_dict(), init.part))
    if mismatch:
        raise RunyardError(
            f"{where}: init.part: {init.part!r} of {src.name} ({src_where}) does not fit this model: {mismatch}"
        )
    for key in ("freeze", "lr_groups"):
        for prefix in getattr(init, key):
            if prefix not in names:
                raise RunyardError(
                    f"{where}: init.{key}: no module {prefix!r} in model {exp.model_name}; allowed: {_allowed(net)}"
                )
            if key == "freeze" and not within(prefix, init.part):
                raise RunyardError(
                    f"{where}: init.freeze: {prefix!r} is not copied from {src.name} (init.part is "
                    f"{init.part!r}); freeze only modules within it"
                )


def part_of(state: dict[str, Any], part: str) -> dict[str, Any]:
    return {k: v for k, v in state.items() if within(k, part)}


def _mismatch(source: dict[str, Any], target: dict[str, Any]) -> str | None:
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


def source_state(project: Project, exp: Experiment) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights ``exp`` starts from (``init.part`` of the source's trained model), and
    the source's record (its MLflow run and model URI, for lineage)."""
    import torch

    from runyard.models import build_model
    from runyard.models import saved as saved_model

    init = exp.init
    model_dir = project.model_dir(init.source)
    where = project.rel(model_dir)
    record = saved_model.read_record(model_dir, where)
    if saved_model.is_classical(record):
        raise RunyardError(f"{where}: holds a scikit-learn model; init.from needs a deep one")
    state = torch.load(model_dir / saved_model.WEIGHTS, map_location="cpu", weights_only=True)
    info = project.experiment_info(exp)
    target = build_model(exp.model, info.input_shape, info.num_outputs).state_dict()
    part = part_of(state, init.part)
    mismatch = _mismatch(part, part_of(target, init.part))
    if mismatch:
        raise RunyardError(
            f"{where}: does not fit {exp.name}'s init.part {init.part!r} ({mismatch}); it was trained "
            f"from another version of {project.rel(project.pipeline_file(init.source))}: "
            f"run `runyard train {init.source}` again"
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


class Freeze(pl.Callback):
    """Keep the ``prefixes`` modules of the system's ``net`` fixed; with ``unfreeze_every``
    unfreeze one layer from the top every that many epochs (ULMFiT's gradual unfreezing).
    Logs ``train/frozen_layers`` per epoch."""

    def __init__(self, prefixes: list[str], unfreeze_every: int | None = None):
        self.prefixes, self.unfreeze_every = list(prefixes), unfreeze_every
        self.layers: list[list[nn.Module]] = []

    def setup(self, trainer, pl_module, stage):
        self.layers = layers(pl_module.net, self.prefixes)

    def n_frozen(self, epoch: int) -> int:
        """How many layers, from the bottom, are frozen in ``epoch``."""
        n = len(self.layers)
        return max(0, n - epoch // self.unfreeze_every) if self.unfreeze_every else n

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.log("train/frozen_layers", float(self.n_frozen(trainer.current_epoch)),
                      on_step=False, on_epoch=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # Lightning puts the whole model in train mode after each validation; a frozen
        # layer stays in eval mode (batch norm on its running statistics), an unfrozen one trains.
        n = self.n_frozen(trainer.current_epoch)
        for i, layer in enumerate(self.layers):
            for m in layer:
                m.train(i >= n)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for layer in self.layers[: self.n_frozen(trainer.current_epoch)]:
            for m in layer:
                for p in m.parameters():
                    p.grad = None
