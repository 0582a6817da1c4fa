"""Unstructured magnitude (L1) pruning of conv/linear weights, one-shot or gradual.

Masks are torch.nn.utils.prune reparametrisations (`weight = weight_orig * weight_mask`) while
fine-tuning, so masked weights stay zero; `make_permanent` removes them (prune.remove) before
export. Which layers are pruned, by default:
- every nn.Conv2d and nn.Linear weight, of any shape (also after structured pruning: the
  narrower layers are ordinary modules);
- except the output layer (the last Linear, or the last Conv2d when there is no Linear):
  `include_output=True` prunes it too;
- except depthwise convolutions (groups == in_channels > 1): they hold ~2-5 % of a MobileNet's
  weights, are the most sensitive per weight, and XNNPACK's sparse kernels only cover 1x1
  convolutions; `include_depthwise=True` prunes them too;
- except any module whose name is in `exclude` (or starts with `name.`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

from toolkit.core.errors import EdgeShrinkError

SCOPES = ("global", "layer")
SCHEDULES = ("oneshot", "gradual")


@dataclass(frozen=True)
class SparsityConfig:
    """What `sparsify` does; JSON round-trips through `asdict`/`SparsityConfig(**d)`."""

    sparsity: float
    scope: str = "global"
    schedule: str = "oneshot"
    steps: int = 1
    initial_sparsity: float = 0.0
    exclude: tuple[str, ...] = ()
    include_depthwise: bool = False
    include_output: bool = False

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise EdgeShrinkError(f"sparsity must be in [0, 1), got {self.sparsity}; e.g. sparsity=0.7 zeroes 70 % of the prunable weights")
        if self.scope not in SCOPES:
            raise EdgeShrinkError(f"unknown sparsity scope {self.scope!r}; use one of {', '.join(SCOPES)}")
        if self.schedule not in SCHEDULES:
            raise EdgeShrinkError(f"unknown sparsity schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.steps < 1 or (self.schedule == "oneshot" and self.steps != 1):
            raise EdgeShrinkError(f"steps={self.steps}: oneshot takes steps=1, gradual takes steps >= 1")
        if not 0.0 <= self.initial_sparsity <= self.sparsity:
            raise EdgeShrinkError("initial_sparsity must be in [0, sparsity]")
        object.__setattr__(self, "exclude", tuple(self.exclude))


def cubic_schedule(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - t/n)^3 for t = 1..n (ends at s_f)."""
    return [final + (initial - final) * (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def prunable_layers(model, *, exclude: Sequence[str] = (), include_depthwise: bool = False,
                    include_output: bool = False) -> dict:
    """name -> module of the conv/linear layers `sparsify` prunes (see the module docstring)."""
    import torch.nn as nn

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise EdgeShrinkError("the model has no Conv2d or Linear layer to prune")
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    output = linears[-1] if linears else layers[-1][0]
    chosen = {}
    for name, module in layers:
        if any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        if name == output and not include_output:
            continue
        if _is_depthwise(module) and not include_depthwise:
            continue
        chosen[name] = module
    return chosen


def _is_depthwise(module) -> bool:
    import torch.nn as nn

    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _magnitude_masks(layers: dict, sparsity: float, scope: str) -> dict:
    """name -> 0/1 mask keeping the largest |w| (global: one threshold over all layers)."""
    import torch

    weights = {n: current_weight(m).abs() for n, m in layers.items()}
    if scope == "layer":
        return {n: _keep_largest(w, round(sparsity * w.numel())) for n, w in weights.items()}
    flat = torch.cat([w.flatten() for w in weights.values()])
    mask = _keep_largest(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for n, w in weights.items():
        out[n] = mask[start:start + w.numel()].view_as(w)
        start += w.numel()
    return out


def current_weight(module):
    """The weight as the next forward pass will see it (mask applied to the latest weight_orig)."""
    if hasattr(module, "weight_orig"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def _keep_largest(values, prune_count: int):
    import torch

    mask = torch.ones_like(values)
    if prune_count > 0:
        idx = torch.topk(values.flatten(), prune_count, largest=False).indices
        mask.view(-1)[idx] = 0.0
    return mask


def apply_masks(layers: dict, masks: dict) -> None:
    """Attach (or tighten) prune masks; weights outside the mask read as zero from now on."""
    from torch.nn.utils import prune

    for name, module in layers.items():
        prune.custom_from_mask(module, "weight", masks[name])


def make_permanent(model) -> int:
    """prune.remove on every masked layer (weights keep their zeros, masks go); returns the count."""
    from torch.nn.utils import prune

    count = 0
    for module in model.modules():
        if hasattr(module, "weight_orig"):
            prune.remove(module, "weight")
            count += 1
    return count


def layer_sparsity(layers: dict) -> dict:
    """Per layer: params, zeros, sparsity; plus the total under key '__total__'."""
    out, params, zeros = {}, 0, 0
    for name, module in layers.items():
        w = current_weight(module)
        z = int((w == 0).sum())
        out[name] = {"params": w.numel(), "zeros": z, "sparsity": round(z / w.numel(), 6)}
        params, zeros = params + w.numel(), zeros + z
    out["__total__"] = {"params": params, "zeros": zeros, "sparsity": round(zeros / max(1, params), 6)}
    return out


def sparsify(model, *, sparsity: float, scope: str = "global", schedule: str = "oneshot", steps: int = 1,
             finetune: Optional[Callable[[object, int], dict]] = None, exclude: Sequence[str] = (),
             include_depthwise: bool = False, include_output: bool = False, initial_sparsity: float = 0.0,
             permanent: bool = True):
    """Zero the smallest-magnitude weights of the prunable layers to `sparsity` (fraction of
    their weights). `schedule="gradual"` reaches it in `steps` cubic steps (Zhu & Gupta 2017)
    with `finetune(model, step) -> dict` after each (masks stay on while it trains). With
    `permanent`, masks are removed (zeros baked in) before returning. Returns (model, record):
    the config, per-step targets and achieved sparsity, fine-tuning results and per-layer zeros."""
    cfg = SparsityConfig(sparsity, scope, schedule, steps, initial_sparsity, tuple(exclude), include_depthwise,
                         include_output)
    layers = prunable_layers(model, exclude=cfg.exclude, include_depthwise=include_depthwise,
                             include_output=include_output)
    targets = cubic_schedule(sparsity, steps, initial_sparsity) if schedule == "gradual" else [sparsity]
    history = []
    for step, target in enumerate(targets, start=1):
        apply_masks(layers, _magnitude_masks(layers, target, scope))
        achieved = layer_sparsity(layers)["__total__"]["sparsity"]
        entry = {"step": step, "target": round(target, 6), "achieved": achieved}
        if finetune is not None:
            entry["finetune"] = finetune(model, step)
        history.append(entry)
    if permanent:
        make_permanent(model)
    per_layer = layer_sparsity(layers)
    total = per_layer.pop("__total__")
    record = {"method": "magnitude-l1-unstructured", "config": asdict(cfg), "steps": history,
              "prunable_params": total["params"], "prunable_zero_fraction": total["sparsity"],
              "permanent": permanent, "layers": per_layer}
    return model, record
