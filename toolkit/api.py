"""The public Python API (re-exported lazily by `toolkit`):

    import toolkit
    plan = toolkit.plan("path/to/card.yaml", target="rpi4", finetune_epochs=0)  # every check, no work
    bundle = toolkit.run(plan)                                                  # -> Bundle
    bundle = toolkit.shrink(my_module, target="host", data="imgs/", input_size=(96, 96),
                            mean=(0.5,), std=(0.5,), finetune_epochs=0)
    print(bundle.path, bundle.deployed)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from toolkit.core.errors import EdgeShrinkError


def plan(card, *, target: str = "host", **overrides):
    """Resolve and check a run of `card` (a card name, a card .yaml path or a ModelCard) for
    `target`, with CLI-style overrides: the run options (finetune_epochs=0, data=..., out=...,
    bench=False, ...: toolkit.pipeline.options.RunOptions, the same as `edgeshrink run`'s flags)
    and the keys of a card's `pruning:` block (target_macs=0.5, steps=2, ...).
    Returns a frozen RunPlan; refuses anything wrong in one line before any work."""
    from toolkit.pipeline.plan import make_plan

    return make_plan(card, target=target, **overrides)


def run(plan, *, model=None):
    """Execute a RunPlan; returns the Bundle (folder + manifest)."""
    from toolkit.pipeline.runner import run as run_plan

    return run_plan(plan, model=model)


def _library_architecture(model) -> Optional[tuple[str, dict]]:
    """(architecture, arguments) that rebuild `model` in any process when it is a timm model (its
    `pretrained_cfg` names the variant): the bundle then replays and re-benchmarks like a card's."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not type(model).__module__.startswith("timm.") or not isinstance(cfg, dict) or not cfg.get("architecture"):
        return None
    arguments = {"model_name": cfg["architecture"], "num_classes": int(getattr(model, "num_classes", 1000))}
    chans = getattr(model, "in_chans", None)
    if isinstance(chans, int) and chans != 3:
        arguments["in_chans"] = chans
    return "timm:create_model", arguments


def _card_for_module(model, *, name: str, task: str, data: str, input_size, mean, std, never_prune, labels,
                     class_folders=None) -> dict:
    from toolkit.models.architectures import register_instance

    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    data_path = Path(data).expanduser().resolve()
    architecture, arguments = _library_architecture(model) or (register_instance(model), {})
    return {"name": name, "architecture": architecture, "arguments": arguments, "task": task,
            "dataset": {"root": str(data_path)}, "metric": "top1" if task == "classification" else "dice",
            "input": {"size": list(size), "channels": len(mean), "mean": list(mean), "std": list(std)},
            "labels": list(labels or []), "class_folders": list(class_folders or []),
            "never_prune": list(never_prune or [])}


def shrink(model, *, target: str, data: str, task: str = "classification", input_size, mean: Sequence[float],
           std: Sequence[float], never_prune: Optional[Sequence[str]] = None, out: Optional[str] = None,
           name: Optional[str] = None, labels: Optional[Sequence[str]] = None,
           class_folders: Optional[Sequence[str]] = None, **overrides):
    """Prune, quantize, convert, verify and benchmark an in-memory nn.Module (trained weights as
    they are) for `target`. `data` is an ImageFolder root with `train/` and `val/`. Overrides as on
    the CLI (finetune_epochs=0, target_macs=0.5, calibration_size=64, bench=False, ...). `labels`
    name the outputs; the class folders under `data` must be those labels, or `class_folders` (the
    folder of each label, in label order). Returns the Bundle; `Bundle.path` is the bundle folder."""
    import torch

    from toolkit.config.cards import card_from_dict

    if not isinstance(model, torch.nn.Module):
        raise EdgeShrinkError(f"shrink() needs a torch nn.Module, got {type(model).__name__}")
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", type(model).__name__.lower())[:64]
    card_data = _card_for_module(model, name=name, task=task, data=data, input_size=input_size, mean=mean, std=std,
                                 never_prune=never_prune, labels=labels, class_folders=class_folders)
    card_data["checkpoint"] = {"path": str(_kept_weights(model, name=name, card_data=card_data))}
    card = card_from_dict(card_data, Path.cwd(), "shrink()")
    run_plan = plan(card, target=target, out=out, **overrides)
    return run(run_plan, model=model)


def _kept_weights(model, *, name: str, card_data: dict) -> Path:
    """The module's weights as a portable checkpoint in the cache, named by content, so that the
    bundle's config.json (which names this file and its sha256) replays after shrink() returns."""
    import os
    import tempfile

    from toolkit.core.paths import cache_dir
    from toolkit.models.checkpoint import save_checkpoint, sha256_file

    folder = cache_dir() / "shrink-weights"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeshrink-weights-", dir=folder) as tmp:
        staged = Path(tmp) / f"{name}.pt"
        save_checkpoint(staged, model.eval(), card_data["architecture"], card_data["arguments"])
        kept = folder / f"{name}-{sha256_file(staged)[:16]}.pt"
        os.replace(staged, kept)
    return kept
