"""Iterative structured pruning to a MAC budget (or a channel ratio), with fine-tuning between
steps. The result is an ordinary nn.Module whose layers are narrower; save it with
toolkit.models.checkpoint (architecture + channel spec + state_dict).

Before the model is touched: the output layers are protected, attention blocks are set aside,
and a dry run on a copy (pruned to the most the run may remove) finds layer groups whose pruning
breaks the forward pass; those are excluded and reported in `PruneResult.excluded`."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from toolkit.core.errors import EdgeShrinkError
from toolkit.config.pruning import PruneConfig
from toolkit.prune.macs import count_macs, count_params
from toolkit.prune.safety import (PruningRefused, WorkBudget, attention_layers, check_forward, describe_failure,
                                  find_breaking_roots, find_output_layers, output_shapes,
                                  refuse_foreign_attention)

MAC_TARGET_TOLERANCE = 0.05  # |kept - target_macs|, as a fraction of dense MACs
_FINE_STEPS = 160  # granularity of the ratio schedule when aiming at a MAC budget
_DRY_RUN_STEPS = 4  # points of the schedule at which a dry run checks the forward


class UnreachableTarget(PruningRefused):
    """The MAC target is below what the model's prunable groups allow; `reached` is the fraction
    of dense MACs the full schedule gets to."""

    def __init__(self, message: str, *, reached: float):
        super().__init__(message)
        self.reached = reached

    @property
    def reachable_target(self) -> float:
        """The MAC target to prune to instead: 1 % above the fraction reached (as far as the model allows)."""
        return min(0.99, self.reached + 0.01)


@dataclass(frozen=True)
class PruneResult:
    """A pruning run: the pruned model, one history record per step (step, macs, params,
    macs_fraction[, finetune]), the excluded layer groups ({"layer", "reason"}), the output layers
    kept whole, and Torch-Pruning's replayable `pruning_history()`."""

    model: object
    history: list
    excluded: list = field(default_factory=list)
    protected_outputs: list = field(default_factory=list)
    pruning_history: list = field(default_factory=list)


def count_macs_params(model, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass at `input_shape` (conv/linear/attention MACs)."""
    import torch

    return count_macs(model, torch.zeros(*input_shape)), count_params(model)


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def _modules_named(model, names: Iterable[str]) -> list:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise EdgeShrinkError(f"never_prune names {missing} are not layers of this model; fix the model card")
    return [modules[n] for n in names]


def _base_pruner(model, example_input, cfg: PruneConfig, *, ignored_modules: list, ratio: float, steps: int, importance):
    import torch_pruning as tp
    from torch_pruning import ops

    from toolkit.prune.index_limit import flatten_index_limit

    with flatten_index_limit():  # a runaway index bookkeeping raises IndexGrowth (refused by the caller)
        return tp.pruner.BasePruner(
            model, example_input, importance=importance, global_pruning=cfg.scope == "global",
            pruning_ratio=ratio, max_pruning_ratio=max(ratio, cfg.max_layer_ratio), iterative_steps=steps,
            ignored_layers=ignored_modules, round_to=cfg.round_to,
            pruning_ratio_dict={}, in_channel_groups={}, out_channel_groups={}, num_heads={},
            customized_pruners={}, root_module_types=[ops.TORCH_CONV, ops.TORCH_LINEAR])


def _build_pruner(model, example_input, cfg: PruneConfig, *, ignored: list[str], ratio: float,
                  steps: int, importance, budget: WorkBudget):
    """A Torch-Pruning BasePruner with explicit (fresh) group dictionaries. When Torch-Pruning
    cannot trace the whole graph (e.g. a channel shuffle), a PiecewisePruner over the parts it can
    trace, each keeping its input and output widths; the search for a part's unsafe groups spends
    `budget`. Failures become one-line EdgeShrinkErrors."""
    from toolkit.core.memory import memory_ceiling
    from toolkit.prune.piecewise import PiecewisePruner, traceable_parts, unsafe_groups

    ignored_modules = _modules_named(model, ignored)
    try:
        with memory_ceiling():  # a runaway trace raises MemoryError (refused below) instead of the OOM killer
            return _base_pruner(model, example_input, cfg, ignored_modules=ignored_modules, ratio=ratio, steps=steps,
                                importance=importance)
    except EdgeShrinkError:
        raise
    except Exception as exc:  # Torch-Pruning raises ZeroDivisionError, RuntimeError, ... on odd graphs
        whole_failure = describe_failure(exc)
    skip = set(ignored_modules)

    def part_pruner(part, part_input):
        budget.spend("tracing the parts of a model Torch-Pruning cannot trace whole")
        kept = [n for n, m in part.named_modules() if m in skip] + find_output_layers(part, part_input)

        def build(module, *, ignored: list[str], steps: int):
            return _base_pruner(module, part_input, cfg, ignored_modules=_modules_named(module, ignored), ratio=ratio,
                                steps=steps, importance=importance)

        unsafe = unsafe_groups(part, part_input, kept=kept, build=build, budget=budget)
        return build(part, ignored=kept + unsafe, steps=steps)

    with memory_ceiling():
        parts = traceable_parts(model, example_input, try_build=part_pruner)
    if not parts:
        raise PruningRefused(
            f"pruning refused: Torch-Pruning cannot trace {type(model).__name__} ({whole_failure}) nor any part of it; "
            "skip channel pruning for this model (CLI --no-structured, API structured=False)")
    return PiecewisePruner(parts, iterative_steps=steps)


def _root_names(pruner, model) -> list[str]:
    """Names of the root layers of the groups the pruner would prune."""
    from toolkit.prune.piecewise import PiecewisePruner, root_modules

    names = {m: n for n, m in model.named_modules()}
    modules = pruner.root_modules() if isinstance(pruner, PiecewisePruner) else root_modules(pruner)
    return [names[m] for m in modules if m in names]


def _dry_run_exclusions(model, example_input, cfg: PruneConfig, ignored: list[str], budget: WorkBudget) -> list[dict]:
    """Prune copies by the most this run may remove and return the groups to exclude."""
    ratio = cfg.max_layer_ratio if cfg.target_macs is not None else cfg.channel_ratio
    expected = output_shapes(model, example_input)
    roots = _root_names(_build_pruner(model, example_input, cfg, ignored=ignored, ratio=ratio, steps=1,
                                      importance=_importance("l2"), budget=budget), model)  # building a pruner does not modify

    def trial(allowed: list[str]) -> Optional[str]:
        trial_model = copy.deepcopy(model)
        skip = ignored + [r for r in roots if r not in set(allowed)]
        try:  # widths change along the way (rounding), so check at several points of the schedule
            pruner = _build_pruner(trial_model, example_input, cfg, ignored=skip, ratio=ratio, steps=_DRY_RUN_STEPS,
                                   importance=_importance("l2"), budget=budget)
            for _ in range(_DRY_RUN_STEPS):
                pruner.step()
                reason = check_forward(trial_model, example_input, expected)
                if reason is not None:
                    return reason
        except EdgeShrinkError as exc:
            return str(exc)
        except Exception as exc:  # a group Torch-Pruning cannot prune is a finding
            return f"Torch-Pruning fails to prune it ({describe_failure(exc)})"
        return None

    excluded = find_breaking_roots(trial, roots, budget)
    if roots and len(excluded) == len(roots):
        raise PruningRefused(
            f"pruning refused: none of the {len(roots)} layer groups of {type(model).__name__} can be pruned safely "
            f"(first: {excluded[0]['layer']}: {excluded[0]['reason']}); skip channel pruning for this model "
            "(CLI --no-structured, API structured=False)")
    return excluded


def _taylor_gradients(model, grad_batches) -> None:
    import torch.nn.functional as F

    model.zero_grad()
    model.train()
    for x, y in grad_batches():
        F.cross_entropy(model(x), y).backward()
    model.eval()


def _prune_one_step(model, pruner, example_input, cfg: PruneConfig, *, goal: Optional[float], dense_macs: int,
                    grad_batches, budget: WorkBudget, bar) -> int:
    """Advance the pruner until MACs <= goal * dense (MAC mode) or by one step (ratio mode).
    Returns the MACs reached. Far from the goal it skips ahead on the ratio schedule (relative to
    the dense widths, so one skip equals several small steps)."""
    macs = start_macs = count_macs(model, example_input)
    start_step, drop_per_step = pruner.current_step, None  # None: no fine step taken yet
    while True:
        if goal is not None and pruner.current_step >= pruner.iterative_steps:
            raise UnreachableTarget(
                f"cannot reach {cfg.target_macs:.0%} of dense MACs within max_layer_ratio={cfg.max_layer_ratio} "
                f"(the most this model allows is {macs / dense_macs:.0%}); raise max_layer_ratio or the MAC target",
                reached=macs / dense_macs)
        budget.spend("pruning")
        if cfg.importance == "taylor":
            _taylor_gradients(model, grad_batches)
        if goal is not None and drop_per_step is not None:  # at most double the progress: rounding makes MACs
            flat = drop_per_step <= 0                            # fall in jumps, or not at all for a while
            guess = (pruner.current_step - start_step) // 2 if flat else int(0.5 * (macs - goal * dense_macs) / drop_per_step)
            ahead = min(guess, pruner.current_step - start_step)  # at most double this call's progress
            pruner.current_step += max(0, min(ahead, pruner.iterative_steps - pruner.current_step - 1))
        pruner.step()
        try:
            macs = count_macs(model, example_input)
        except Exception as exc:  # widths the dry run did not visit broke the forward: refuse, in one line
            raise PruningRefused(
                f"pruning refused: the forward broke at schedule point {pruner.current_step}/{pruner.iterative_steps} "
                f"({describe_failure(exc)}) though the dry run passed; list the layers around it in never_prune") from None
        drop_per_step = (start_macs - macs) / max(pruner.current_step - start_step, 1)  # average: MACs fall in steps
        bar.update(1)
        bar.set_postfix(macs=f"{macs / dense_macs:.3f}")
        if goal is None or macs <= goal * dense_macs:
            return macs


def mac_target_note(cfg: PruneConfig, *, reached: float) -> dict:
    """Whether the MAC target was met within MAC_TARGET_TOLERANCE (fraction of dense MACs), and why not."""
    met = abs(reached - cfg.target_macs) <= MAC_TARGET_TOLERANCE
    note = {"target_macs": cfg.target_macs, "reached": round(reached, 4), "tolerance": MAC_TARGET_TOLERANCE, "met": met}
    if not met:
        finer = f"round_to: {max(1, cfg.round_to // 4)} or " if cfg.round_to > 1 else ""
        other = "global" if cfg.scope == "uniform" else "uniform"
        note["why"] = (f"MAC target {cfg.target_macs:.0%} not met within {MAC_TARGET_TOLERANCE:.0%}: {reached:.1%} of "
                       f"dense MACs kept; one pruning step of whole round_to={cfg.round_to} channel groups under the "
                       f"{cfg.scope} scope jumps past it for this model's widths (pruning settings: try {finer}"
                       f"scope: {other})")
    return note


def prune(model, *, example_input, cfg: PruneConfig, never_prune: Iterable[str] = (),
          finetune: Optional[Callable[[object, int], dict]] = None, grad_batches: Optional[Callable[[], Iterable]] = None,
          progress: bool = True) -> PruneResult:
    """Prune `model` in place over `cfg.steps` steps; `finetune(model, step)` runs after each step
    `grad_batches()` yields (x, y) for Taylor importance. Work is limited by `cfg.max_trials` (dry-run
    trials + pruning sub-steps; None = no limit), never by wall-clock time.
    Output layers are kept whole, groups that break the forward on a dry run are excluded.
    Refuses (EdgeShrinkError, one line): attention blocks Torch-Pruning cannot trace, graphs it cannot
    trace, models with nothing safe to prune, an unreachable MAC target, a spent work budget: all as
    PruningRefused, which a run answers by going on with the dense model."""
    from tqdm import tqdm

    if cfg.importance == "taylor" and grad_batches is None:
        raise EdgeShrinkError("taylor importance needs training batches for gradients; give data or choose l1/l2/bn_scale")
    budget = WorkBudget(cfg.max_trials)
    model.eval()
    refuse_foreign_attention(model)
    expected = output_shapes(model, example_input)
    protected = [n for n in find_output_layers(model, example_input) if n not in set(never_prune)]
    attention, _ = attention_layers(model)
    ignored = list(dict.fromkeys([*never_prune, *protected, *attention]))
    _modules_named(model, ignored)
    excluded = _dry_run_exclusions(model, example_input, cfg, ignored, budget)
    excluded = [{"layer": a, "reason": "attention block: heads and token reshapes are left whole"} for a in attention] + excluded
    by_macs = cfg.target_macs is not None
    dense_macs, dense_params = count_macs(model, example_input), count_params(model)
    budget.spend("building the dependency graph")
    pruner = _build_pruner(model, example_input, cfg, ignored=ignored + [e["layer"] for e in excluded if e["layer"] not in ignored],
                           ratio=cfg.max_layer_ratio if by_macs else cfg.channel_ratio,
                           steps=_FINE_STEPS if by_macs else cfg.steps, importance=_importance(cfg.importance),
                           budget=budget)
    history = [{"step": 0, "macs": dense_macs, "params": dense_params, "macs_fraction": 1.0}]
    for step in range(1, cfg.steps + 1):
        goal = 1.0 - (1.0 - cfg.target_macs) * step / cfg.steps if by_macs else None
        with tqdm(desc=f"prune step {step}/{cfg.steps}", disable=not progress, leave=False) as bar:
            macs = _prune_one_step(model, pruner, example_input, cfg, goal=goal, dense_macs=dense_macs,
                                   grad_batches=grad_batches, budget=budget, bar=bar)
        reason = check_forward(model, example_input, expected)
        if reason is not None:
            raise PruningRefused(f"pruning step {step} broke the model ({reason}); list the layer in never_prune "
                                 "or skip channel pruning (CLI --no-structured, API structured=False)")
        record = {"step": step, "macs": macs, "params": count_params(model), "macs_fraction": macs / dense_macs}
        if finetune is not None:
            record["finetune"] = finetune(model, step)
        history.append(record)
    if by_macs:
        history[-1]["target"] = mac_target_note(cfg, reached=history[-1]["macs_fraction"])
        if progress and not history[-1]["target"]["met"]:
            print(f"[edgeshrink] {history[-1]['target']['why']}", flush=True)
    model.zero_grad(set_to_none=True)
    return PruneResult(model=model.eval(), history=history, excluded=excluded, protected_outputs=protected,
                       pruning_history=pruner.pruning_history())


def prune_model(model, *, input_shape: tuple[int, ...], cfg: PruneConfig, never_prune: Iterable[str] = (),
                finetune: Optional[Callable[[object, int], dict]] = None,
                grad_batches: Optional[Callable[[], Iterable]] = None, progress: bool = True) -> tuple[object, list[dict]]:
    """Compatibility wrapper around `prune` (zero input of `input_shape`, no time budget); every
    argument after the model is keyword-only. Returns (model, history)."""
    import torch

    result = prune(model, example_input=torch.zeros(*input_shape), cfg=cfg, never_prune=tuple(never_prune),
                   finetune=finetune, grad_batches=grad_batches, progress=progress)
    return result.model, result.history
