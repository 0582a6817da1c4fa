"""Deploy-time forms: fuse re-parameterisable blocks (MobileOne, RepVGG, FastViT, RepViT, LeViT,
EfficientViT-MSRA, GhostNetV2/RepGhost, ...) before pruning and export.

The convention is timm's `reparameterize_model`: walking the module tree, a child with `fuse()` is
replaced by what it returns, a child with `reparameterize()` or `switch_to_deploy()` fuses itself
in place. Any module (timm's or a user's) offering one of those methods is fused the same way. The
fused form is accepted only when it computes what the original computes (eval mode, a seeded random
input, max abs difference within `rtol` of the output scale); otherwise the original is kept and the
report says why. Convolutions that compute their weight in forward (weight standardisation,
parametrizations) are folded to plain ones as well (`toolkit.models.weight_fold`). A model fused
here carries `REPARAMETERIZED_ATTR` (and `WEIGHTS_FOLDED_ATTR` when weights were folded), which
checkpoints record, so loading rebuilds the architecture, puts it in the same form
(`rebuild_deploy_form`) and then loads the fused state_dict."""

from __future__ import annotations

import copy
from typing import Callable, Optional

FUSE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")
REPARAMETERIZED_ATTR = "edgeshrink_reparameterized"  # set on a fused model; save_checkpoint records it


def _method(module) -> Optional[str]:
    """The fusing method `module` offers (timm's order: fuse, reparameterize, switch_to_deploy)."""
    for name in FUSE_METHODS:
        if callable(getattr(module, name, None)):
            return name
    return None


def fuse_blocks(model):
    """Fuse every block offering a fusing method, in place (the root included), without checking
    outputs. Returns (model, fused) with fused = ["path: Class.method", ...]. A `fuse()` that does
    not return a module raises TypeError."""
    import torch.nn as nn

    holder = nn.Module()
    holder.add_module("model", model)
    fused: list[str] = []

    def walk(parent, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            path = f"{prefix}.{child_name}" if prefix else child_name
            method = _method(child)
            if method == "fuse":
                new = child.fuse()
                if not isinstance(new, nn.Module):
                    raise TypeError(f"{path}.fuse() returned {type(new).__name__}, not a module")
                setattr(parent, child_name, new)
                child = new
            elif method is not None:
                getattr(child, method)()
            if method is not None:
                fused.append(f"{path.removeprefix('model.') if path != 'model' else '(root)'}: "
                             f"{type(child).__name__}.{method}")
            walk(child, path)

    walk(holder, "")
    return holder.model, fused


def _max_difference(original, fused, example) -> tuple[float, float]:
    """(max abs difference of the first outputs, max abs value of the original's) on `example`."""
    import torch

    def first(out):
        while isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()

    with torch.no_grad():
        ref, got = first(original(example)), first(fused(example))
    if ref.shape != got.shape:
        return float("inf"), float(ref.abs().max())
    return float((ref - got).abs().max()), float(ref.abs().max())


def reparameterize(model, *, input_shape: tuple[int, ...], count_macs: Optional[Callable] = None,
                   rtol: float = 1e-4, seed: int = 0):
    """The deploy-time fused form of `model` when it has one and it computes the same outputs.
    Returns (model, report). The report is {} when nothing offers a fusing method; else
    {"fused": bool, "blocks": n, "methods": [...], "max_abs_diff", "output_scale", "reason"?,
    "macs_before", "macs_after" (with `count_macs(model, example)`)}. Never raises for the model's
    sake: a method that fails or changes the outputs keeps the original, and `reason` says why."""
    import torch

    from toolkit.models.weight_fold import WEIGHTS_FOLDED_ATTR, fold_weights, has_weight_transforms

    if not any(_method(m) for m in model.modules()) and not has_weight_transforms(model):
        return model, {}
    was_training = model.training
    model.eval()
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed))
    report: dict = {"fused": False}
    try:
        fused, blocks = fuse_blocks(copy.deepcopy(model))
        fused, folds = fold_weights(fused)
        if not blocks and not folds:
            return model.train(was_training), {}
        fused.eval()
        diff, scale = _max_difference(model, fused, example)
    except Exception as exc:  # noqa: BLE001 - a user's fusing method may fail in any way; keep the original
        report["reason"] = f"fusing failed ({type(exc).__name__}: {str(exc)[:120]}); kept the unfused model"
        return model.train(was_training), report
    report["weights_folded"] = len(folds)
    blocks += folds
    report.update(blocks=len(blocks), methods=sorted({b.split(": ", 1)[1] for b in blocks}),
                  max_abs_diff=diff, output_scale=scale)
    if count_macs is not None:
        report["macs_before"] = int(count_macs(model, example))
    if not diff <= rtol * max(scale, 1e-6):
        report["reason"] = (f"the fused form changes the outputs (max abs difference {diff:.3g} > {rtol:g} of the output "
                            f"scale {scale:.3g}); kept the unfused model")
        return model.train(was_training), report
    if count_macs is not None:
        report["macs_after"] = int(count_macs(fused, example))
    setattr(fused, REPARAMETERIZED_ATTR, True)
    if folds:
        setattr(fused, WEIGHTS_FOLDED_ATTR, True)
    report["fused"] = True
    return fused.train(was_training), report


def is_reparameterized(model) -> bool:
    """Whether `model` is a fused form made by `reparameterize` (checkpoints record this)."""
    return bool(getattr(model, REPARAMETERIZED_ATTR, False))


def weights_folded(model) -> bool:
    """Whether `reparameterize` folded computed convolution weights of `model` (checkpoints record this)."""
    from toolkit.models.weight_fold import WEIGHTS_FOLDED_ATTR

    return bool(getattr(model, WEIGHTS_FOLDED_ATTR, False))


def deploy_form_record(model) -> dict:
    """What a checkpoint records so that loading can rebuild `model`'s structure."""
    return {"reparameterized": is_reparameterized(model), "weights_folded": weights_folded(model)}


def rebuild_deploy_form(model, payload: dict):
    """A freshly built model put into the structure a checkpoint `payload` was saved in (its
    weights are loaded afterwards): fused blocks, and folded weights where the payload says so
    (checkpoints older than weight folding do not). Marks it like `reparameterize` does."""
    if not payload.get("reparameterized"):
        return model
    from toolkit.models.weight_fold import WEIGHTS_FOLDED_ATTR, fold_weights

    model.eval()
    fused, _ = fuse_blocks(model)
    setattr(fused, REPARAMETERIZED_ATTR, True)
    if payload.get("weights_folded"):
        fused, _ = fold_weights(fused)
        setattr(fused, WEIGHTS_FOLDED_ATTR, True)
    return fused


def summary(report: dict) -> str:
    """One line for the report: what was fused and the MACs before and after, or why not."""
    if not report:
        return ""
    if not report.get("fused"):
        return f"reparameterisation: {report.get('reason', 'not applied')}"
    macs = ""
    if report.get("macs_before") and report.get("macs_after") is not None:
        macs = f", MACs {report['macs_before'] / 1e6:.1f} M -> {report['macs_after'] / 1e6:.1f} M"
    folds = report.get("weights_folded", 0)
    done = (f"reparameterised {report['blocks']} block(s) ({', '.join(report['methods'])}) to the deploy-time form"
            if folds < report["blocks"] else
            f"folded {folds} convolution weight(s) computed in forward ({', '.join(report['methods'])}) into plain convolutions")
    return (f"{done}{macs}, "
            f"outputs unchanged (max abs difference {report['max_abs_diff']:.2g})")
