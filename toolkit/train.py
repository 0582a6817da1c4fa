"""A small, standard training loop: AdamW/SGD, warmup + cosine, label smoothing, optional
knowledge distillation from a teacher, tqdm progress, fixed seeds, best/last checkpoints."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from toolkit.errors import EdgeShrinkError


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    distill_alpha: float = 0.0  # share of the loss from the teacher's soft targets
    distill_temperature: float = 2.0
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise EdgeShrinkError("train config: epochs must be >= 0, batch_size >= 1 and lr > 0")
        if self.optimizer not in ("adamw", "sgd"):
            raise EdgeShrinkError(f"train config: unknown optimizer {self.optimizer!r}; use adamw or sgd")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise EdgeShrinkError("train config: distill_alpha must be in [0, 1]")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; deterministic algorithms where cheap."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model, cfg: TrainConfig):
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warmup then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fit(
    model,
    cfg: TrainConfig,
    batches: Callable[[int], Iterable],
    steps_per_epoch: int,
    loss_fn: Callable,
    evaluate: Callable[[object], dict],
    score_key: str,
    out_dir: Optional[Path] = None,
    save: Optional[Callable[[Path, object, dict], None]] = None,
    teacher=None,
    progress: bool = True,
    keep_best: bool = False,
) -> dict:
    """Train `model` in place and return the history. `batches(epoch)` yields (x, y) tensors;
    `loss_fn(logits, y, teacher_logits)` returns the loss; `evaluate(model)` returns metrics with
    `score_key` (higher is better). With `out_dir`, writes last.pt, best.pt and history.json.
    The model ends holding the final weights (keep_best=True: the best-scoring epoch's; that
    selects on the evaluation data, so reported figures would be optimistic)."""
    import copy

    import torch
    from tqdm import tqdm

    seed_everything(cfg.seed)
    opt = make_optimizer(model, cfg)
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    history: dict = {"config": asdict(cfg), "epochs": []}
    best_score, best_state, step = -math.inf, None, 0
    if teacher is not None:
        teacher.eval()
    for epoch in range(cfg.epochs):
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(batches(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for x, y in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, cfg.lr)
            with torch.no_grad():
                t_out = teacher(x) if teacher is not None else None
            loss = loss_fn(model(x), y, t_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seen += len(x)
            loss_sum += float(loss.detach()) * len(x)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        train_time = time.perf_counter() - started
        model.eval()
        metrics = evaluate(model)
        record = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen), "img_per_s": seen / train_time,
                  "seconds": round(time.perf_counter() - started, 1), **metrics}
        history["epochs"].append(record)
        if progress:
            shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            tqdm.write(f"[train] {shown}")
        if metrics[score_key] > best_score:
            best_score, best_state = metrics[score_key], copy.deepcopy(model.state_dict())
            if out_dir and save:
                save(Path(out_dir) / "best.pt", model, record)
        if out_dir:
            if save:
                save(Path(out_dir) / "last.pt", model, record)
            (Path(out_dir) / "history.json").write_text(json.dumps(history, indent=2))
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    history["best"] = {score_key: best_score}
    history["final"] = {score_key: history["epochs"][-1][score_key] if history["epochs"] else None}
    return history
