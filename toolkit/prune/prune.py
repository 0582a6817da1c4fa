"""Iterative structured pruning to a MAC budget (or a channel ratio), with fine-tuning between
steps. The result is an ordinary nn.Module whose layers are narrower; save it with
toolkit.checkpoint (architecture + channel spec + state_dict)."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from toolkit.errors import EdgeShrinkError
from toolkit.prune.config import PruneConfig

_FINE_STEPS = 160  # granularity of the ratio schedule when aiming at a MAC budget


def count_macs_params(model, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass at `input_shape`."""
    import torch
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(*input_shape))
    model.train(was_training)
    return int(macs), int(params)


def _importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def _ignored_modules(model, names: Iterable[str]) -> list:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise EdgeShrinkError(f"never_prune names {missing} are not layers of this model; fix the model card")
    return [modules[n] for n in names]


def prune_model(model, input_shape: tuple[int, ...], cfg: PruneConfig, never_prune: Iterable[str] = (),
                finetune: Optional[Callable[[object, int], dict]] = None,
                grad_batches: Optional[Callable[[], Iterable]] = None, progress: bool = True) -> tuple[object, list[dict]]:
    """Prune `model` in place over `cfg.steps` steps. After each step `finetune(model, step)` runs
    (if given). `grad_batches()` yields (x, y) for Taylor importance. Returns (model, history)."""
    import torch
    import torch.nn.functional as F
    import torch_pruning as tp
    from tqdm import tqdm

    if cfg.importance == "taylor" and grad_batches is None:
        raise EdgeShrinkError("taylor importance needs training batches for gradients; give data or choose l1/l2/bn_scale")
    model.eval()
    example = torch.zeros(*input_shape)
    dense_macs, dense_params = count_macs_params(model, input_shape)
    by_macs = cfg.target_macs is not None
    pruner = tp.pruner.MetaPruner(
        model, example, importance=_importance(cfg.importance), global_pruning=cfg.scope == "global",
        pruning_ratio=cfg.max_layer_ratio if by_macs else cfg.channel_ratio,
        max_pruning_ratio=cfg.max_layer_ratio if by_macs else max(cfg.channel_ratio, cfg.max_layer_ratio),
        iterative_steps=_FINE_STEPS if by_macs else cfg.steps,
        ignored_layers=_ignored_modules(model, never_prune), round_to=cfg.round_to,
    )
    history = [{"step": 0, "macs": dense_macs, "params": dense_params, "macs_fraction": 1.0}]
    fine_done = 0
    for step in range(1, cfg.steps + 1):
        goal = 1.0 - (1.0 - cfg.target_macs) * step / cfg.steps if by_macs else None
        bar = tqdm(desc=f"prune step {step}/{cfg.steps}", disable=not progress, leave=False)
        while True:
            if by_macs and fine_done >= _FINE_STEPS:
                raise EdgeShrinkError(
                    f"cannot reach {cfg.target_macs:.0%} of dense MACs within max_layer_ratio={cfg.max_layer_ratio}; raise max_layer_ratio or the MAC target"
                )
            if cfg.importance == "taylor":
                model.zero_grad()
                model.train()
                for x, y in grad_batches():
                    F.cross_entropy(model(x), y).backward()
                model.eval()
            pruner.step()
            fine_done += 1
            macs, params = count_macs_params(model, input_shape)
            bar.update(1)
            bar.set_postfix(macs=f"{macs / dense_macs:.3f}")
            if not by_macs or macs <= goal * dense_macs:
                break
        bar.close()
        record = {"step": step, "macs": macs, "params": params, "macs_fraction": macs / dense_macs}
        if finetune is not None:
            record["finetune"] = finetune(model, step)
        history.append(record)
    model.zero_grad(set_to_none=True)
    return model.eval(), history
