"""Pruning inside the parts of a model Torch-Pruning can trace, when it cannot trace the whole.

Some graphs defeat Torch-Pruning's dependency analysis as a whole: ShuffleNetV2's channel shuffle
(view -> transpose -> view) makes it divide by zero. Such operations usually sit *between* blocks,
while the blocks themselves (a conv-bn-relu-dwconv-bn-conv branch) trace fine. `PiecewisePruner`
finds the largest submodules that trace on their own (with the inputs they receive in a real
forward pass), and prunes only the channels *inside* each of them: every submodule keeps its input
and output widths, so whatever joins the submodules (a shuffle, a split, a custom op) sees the
tensors it saw before. It offers the part of Torch-Pruning's BasePruner interface that
`toolkit.prune.prune` uses (`step`, `current_step`, `iterative_steps`, `root_modules`,
`pruning_history`); every part advances on the same ratio schedule."""

from __future__ import annotations

from typing import Callable

from toolkit.core.errors import EdgeShrinkError
from toolkit.prune.safety import BudgetSpent, PruningRefused, WorkBudget


_POINTS = 4  # points of the ratio schedule at which a part's output shapes are checked


def _captured_inputs(model, example_input) -> dict:
    """{module: input tensor of its only call} for modules called exactly once, with one tensor."""
    import torch

    calls: dict = {}

    def hook(module, args, kwargs):
        ok = not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor)
        calls.setdefault(module, []).append(args[0].detach().clone() if ok else None)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return {m: c[0] for m, c in calls.items() if len(c) == 1 and c[0] is not None}


def _has_prunable_layer(module) -> bool:
    import torch.nn as nn

    return any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


def traceable_parts(model, example_input, *, try_build: Callable[[object, tuple], object]) -> list[tuple[str, object, object]]:
    """[(name, submodule, pruner)]: the largest submodules (below the root) for which
    `try_build(submodule, inputs)` returns a pruner instead of raising."""
    inputs = _captured_inputs(model, example_input)
    parts = []

    def visit(prefix: str, module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if not _has_prunable_layer(child):
                continue
            pruner = None
            if child in inputs:
                try:
                    pruner = try_build(child, inputs[child])
                except BudgetSpent:
                    raise
                except Exception:  # noqa: BLE001 - any tracing failure means: look one level down
                    pruner = None
            if pruner is not None:
                parts.append((full, child, pruner))
            else:
                visit(full, child)

    visit("", model)
    return parts


def unsafe_groups(part, part_input, *, kept: list[str], build: Callable[..., object], budget: WorkBudget) -> list[str]:
    """Root names of the groups of `part` whose pruning (at the full ratio, on a copy) changes the
    part's output shapes, e.g. a branch that feeds a concat; found by bisection.
    `build(module, ignored=names, steps=n)` makes a Torch-Pruning pruner with `kept` and `names`
    ignored. Each trial spends one of `budget` (BudgetSpent when it runs out).
    Raises EdgeShrinkError when no group is safe."""
    import copy

    from toolkit.prune.macs import count_params
    from toolkit.prune.safety import check_forward, describe_failure, find_breaking_roots, output_shapes

    expected = output_shapes(part, part_input)
    names = {m: n for n, m in part.named_modules()}
    roots = [names[m] for m in root_modules(build(part, ignored=kept, steps=1)) if m in names]

    def trial(allowed: list[str]):
        trial_part = copy.deepcopy(part)
        try:  # rounding to round_to changes which layers are cut along the schedule: check several points
            pruner = build(trial_part, ignored=kept + [r for r in roots if r not in set(allowed)], steps=_POINTS)
            for _ in range(_POINTS):
                pruner.step()
                reason = check_forward(trial_part, part_input, expected)
                if reason is not None:
                    return reason
        except Exception as exc:  # noqa: BLE001 - a group Torch-Pruning cannot prune is a finding
            return describe_failure(exc)
        return None

    bad = [b["layer"] for b in find_breaking_roots(trial, roots, budget)] if roots else []
    trial_part = copy.deepcopy(part)
    if len(bad) < len(roots):
        build(trial_part, ignored=kept + bad, steps=_POINTS).step()  # at the full ratio, rounding may leave
                                                                    # narrow layers untouched
    if count_params(trial_part) == count_params(part):  # e.g. Torch-Pruning declines groups it maps through a view
        raise EdgeShrinkError("nothing in this part can be pruned without changing its output shapes")
    return bad


def root_modules(pruner) -> list:
    """The root layers of the groups a Torch-Pruning pruner would prune."""
    groups = pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)
    return [g[0][0].target.module for g in groups]


class PiecewisePruner:
    """Several Torch-Pruning pruners, one per traceable part, stepped together."""

    def __init__(self, parts: list[tuple[str, object, object]], *, iterative_steps: int):
        if not parts:
            raise PruningRefused("no part of the model can be traced for pruning")
        self.parts = parts
        self.iterative_steps = iterative_steps

    @property
    def current_step(self) -> int:
        return self.parts[0][2].current_step

    @current_step.setter
    def current_step(self, value: int) -> None:
        for _, _, pruner in self.parts:
            pruner.current_step = value

    def step(self) -> None:
        for _, _, pruner in self.parts:
            pruner.step()

    def root_modules(self) -> list:
        return [m for _, _, pruner in self.parts for m in root_modules(pruner)]

    def pruning_history(self) -> list:
        history = []
        for name, _, pruner in self.parts:
            history += [[f"{name}.{entry[0]}", *entry[1:]] for entry in pruner.pruning_history()]
        return history
