"""A small, standard training loop: AdamW/SGD, warmup + cosine, label smoothing, optional
knowledge distillation from a teacher, tqdm progress, fixed seeds, best/last checkpoints,
data-parallel under torchrun (toolkit.train.distributed) and resumable after every epoch
(toolkit.train_state)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from toolkit.train.distributed import SINGLE, DistContext

from toolkit.core.errors import EdgeShrinkError


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
    for _name, p in model.named_parameters():
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


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how `fit` saves: `save(path, model, record)` writes last.pt (and best.pt) in
    `out_dir` after each epoch; `keep_best` leaves the model holding the best-scoring epoch's
    weights (that selects on the evaluation data, so reported figures would be optimistic);
    `resumable` also writes train_state.pt (model, optimizer, step, epoch, RNG states)."""

    out_dir: Path
    save: Optional[Callable[[Path, object, dict], None]] = None
    keep_best: bool = False
    resumable: bool = True


_LEGACY_ORDER = ("batches", "steps_per_epoch", "loss_fn", "evaluate", "score_key", "out_dir", "save")


def fit(model, cfg: TrainConfig, *legacy, **options) -> dict:
    """Train `model` in place; returns the history. Keyword-only after `cfg` (see `train_loop`).
    Positional arguments in the old order (batches, steps_per_epoch, loss_fn, evaluate,
    score_key[, out_dir, save]) still work and are mapped onto the keywords."""
    if len(legacy) > len(_LEGACY_ORDER):
        raise TypeError(f"fit() takes at most {2 + len(_LEGACY_ORDER)} positional arguments")
    for name, value in zip(_LEGACY_ORDER, legacy):
        if name in options:
            raise TypeError(f"fit() got multiple values for {name!r}")
        options[name] = value
    out_dir, save = options.pop("out_dir", None), options.pop("save", None)
    keep_best = options.pop("keep_best", False)
    if out_dir is not None or keep_best:
        if options.get("checkpoints") is not None:
            raise TypeError("fit(): pass out_dir/save/keep_best or checkpoints=CheckpointPolicy, not both")
        options["checkpoints"] = CheckpointPolicy(Path(out_dir) if out_dir else None, save, keep_best,
                                                  resumable=out_dir is not None)
    return train_loop(model, cfg, **options)


def train_loop(model, cfg: TrainConfig, *, batches: Callable[[int], Iterable], steps_per_epoch: int,
               loss_fn: Callable, evaluate: Callable[[object], dict], score_key: str,
               checkpoints: Optional[CheckpointPolicy] = None, teacher=None, progress: bool = True,
               resume: bool = False, max_epochs_this_session: Optional[int] = None,
               dist: DistContext = SINGLE, step_callback: Optional[Callable[[int, object], None]] = None,
               state_key: Optional[dict] = None) -> dict:
    """Train `model` in place and return the history. `batches(epoch)` yields this process's
    (x, y) tensors; `loss_fn(logits, y, teacher_logits)` returns the loss; `evaluate(model)`
    returns metrics with `score_key` (higher is better; run on rank 0 and shared). With
    `checkpoints`, writes last.pt, best.pt, history.json and a resumable train_state.pt (rank 0
    only) after every epoch; `resume=True` (or a state for the same config already in out_dir)
    continues after the last completed epoch. `max_epochs_this_session` stops early (the state
    stays resumable). `step_callback(step, model)` runs after every optimizer step (masks,
    rewind snapshots). Under torchrun pass `dist` (toolkit.train.distributed.init_from_env())."""
    from toolkit.train import distributed as D

    seed_everything(cfg.seed + dist.rank)
    net = D.wrap_model(model, dist)
    opt = make_optimizer(model, cfg)
    state = TrainState(cfg, steps_per_epoch, dist, checkpoints, key_extra=state_key)
    start = state.restore(model, opt, resume) if checkpoints and checkpoints.resumable else state.fresh()
    if teacher is not None:
        teacher.eval().to(next(model.parameters()).device)  # NCCL: the model now lives on this rank's GPU
    stop = cfg.epochs if max_epochs_this_session is None else min(cfg.epochs, start + max_epochs_this_session)
    try:
        for epoch in range(start, stop):
            record = _train_epoch(net, model, opt, cfg, epoch=epoch, state=state, batches=batches, loss_fn=loss_fn,
                                  teacher=teacher, progress=progress and dist.is_main, step_callback=step_callback)
            metrics = D.broadcast_object(_evaluate_on_cpu(evaluate, model) if dist.is_main else None, dist)
            state.end_epoch(model, opt, {**record, **metrics}, score_key, progress=progress)
    finally:
        D.global_batchnorm(model, False)
    if dist.enabled:
        _check_ranks_agree(model, dist, state.history)
    return state.finish(model, score_key)


def weights_digest(model) -> str:
    """sha256 over every parameter and buffer (names and bytes) of `model`."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_ranks_agree(model, dist: DistContext, history: dict) -> None:
    """Every rank must end with bit-identical weights; records the digests in the history."""
    from toolkit.train.distributed import gather_objects

    digests = gather_objects(weights_digest(model), dist)
    history["rank_weight_digests"] = digests
    if len(set(digests)) != 1:
        raise EdgeShrinkError(f"data-parallel ranks ended with different weights ({digests}); report this with the command line, or train with --nproc 1")


def _evaluate_on_cpu(evaluate, model) -> dict:
    """Task evaluations feed CPU tensors; a model on a GPU (NCCL runs) is evaluated as a CPU copy."""
    import copy

    device = next(model.parameters()).device
    return evaluate(model if device.type == "cpu" else copy.deepcopy(model).cpu())


def _train_epoch(net, model, opt, cfg: TrainConfig, *, epoch: int, state, batches, loss_fn, teacher,
                 progress: bool, step_callback) -> dict:
    """One pass over this process's batches; returns the epoch's training record."""
    import torch
    from tqdm import tqdm

    net.train()
    total, warmup = cfg.epochs * state.steps_per_epoch, int(cfg.warmup_epochs * state.steps_per_epoch)
    started, seen, loss_sum = time.perf_counter(), 0, 0.0
    bar = tqdm(batches(epoch), total=state.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not progress, leave=False)
    device = next(model.parameters()).device
    for x, y in bar:
        if device.type != "cpu":  # NCCL: batches are built on the CPU
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = lr_at(state.step, total, warmup, cfg.lr)
        with torch.no_grad():
            t_out = teacher(x) if teacher is not None else None
        loss = loss_fn(net(x), y, t_out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state.step += 1
        if step_callback is not None:
            step_callback(state.step, model)
        seen += len(x)
        loss_sum += float(loss.detach()) * len(x)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
    train_time = time.perf_counter() - started
    seen_all = seen * state.dist.world_size
    model.eval()
    return {"epoch": epoch + 1, "loss": loss_sum / max(1, seen), "img_per_s": seen_all / max(train_time, 1e-9),
            "seconds": round(time.perf_counter() - started, 1)}


STATE_FILE = "train_state.pt"
STATE_FORMAT = "edgeshrink-train-state/1"


class TrainState:
    """The loop's progress (step, history, best score) and its resumable file in out_dir."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, dist: DistContext,
                 policy: Optional[CheckpointPolicy], *, key_extra: Optional[dict] = None):
        import hashlib

        self.cfg, self.steps_per_epoch, self.dist, self.policy = cfg, steps_per_epoch, dist, policy
        self.step, self.best_score, self.best_state = 0, -math.inf, None
        self.history: dict = {"config": asdict(cfg), "world_size": dist.world_size, "epochs": []}
        described = {"config": asdict(cfg), "steps_per_epoch": steps_per_epoch, "world_size": dist.world_size,
                     **(key_extra or {})}
        self.key = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def path(self) -> Optional[Path]:
        return Path(self.policy.out_dir) / STATE_FILE if self.policy and self.policy.out_dir else None

    def fresh(self) -> int:
        return 0

    def restore(self, model, opt, resume: bool) -> int:
        """Load out_dir's state when it exists (it must match this config); returns the epoch to start at."""
        import torch

        path = self.path
        if path is None or not path.is_file():
            if resume:
                raise EdgeShrinkError(f"--resume: no {STATE_FILE} in {path.parent if path else 'the output folder'}; drop --resume to start fresh")
            return 0
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != STATE_FORMAT or payload.get("key") != self.key:
            raise EdgeShrinkError(
                f"{path} was written by a run with another configuration (epochs, batch, lr, seed, model, data or process count); pass another --out or delete {path.name} to start fresh")
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        self.step, self.history, self.best_score = payload["step"], payload["history"], payload["best_score"]
        self.best_state = payload.get("best_state")
        _set_rng_state(payload["rng"][self.dist.rank])
        if self.dist.is_main:
            print(f"[train] resuming {path.parent} after epoch {payload['epoch']}/{self.cfg.epochs}", flush=True)
        return int(payload["epoch"])

    def end_epoch(self, model, opt, record: dict, score_key: str, *, progress: bool) -> None:
        """Record the epoch; rank 0 writes best/last checkpoints, history.json and the state."""
        import copy

        from toolkit.train.distributed import barrier, gather_objects

        self.history["epochs"].append(record)
        if progress and self.dist.is_main:
            from tqdm import tqdm

            shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            tqdm.write(f"[train] {shown}")
        better = record[score_key] > self.best_score
        if better:
            self.best_score = record[score_key]
            if self.policy and self.policy.keep_best:
                self.best_state = copy.deepcopy(model.state_dict())
        rngs = gather_objects(_rng_state(), self.dist)
        if self.path is not None and self.dist.is_main:
            self._write_outputs(model, opt, record, better=better, rngs=rngs)
        barrier(self.dist)

    def _write_outputs(self, model, opt, record: dict, *, better: bool, rngs: list) -> None:
        import os

        from toolkit.core.atomic import save_torch

        out = Path(self.policy.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.policy.save:
            if better:
                self.policy.save(out / "best.pt", model, record)
            self.policy.save(out / "last.pt", model, record)
        tmp = out / f"history.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(self.history, indent=2))
        os.replace(tmp, out / "history.json")
        if self.policy.resumable:
            payload = {"format": STATE_FORMAT, "key": self.key, "epoch": record["epoch"], "step": self.step,
                       "model": model.state_dict(), "optimizer": opt.state_dict(), "history": self.history,
                       "best_score": self.best_score, "best_state": self.best_state, "rng": rngs}
            save_torch(payload, self.path)

    def finish(self, model, score_key: str) -> dict:
        if self.policy and self.policy.keep_best and self.best_state is not None:
            model.load_state_dict(self.best_state)
        epochs = self.history["epochs"]
        self.history["best"] = {score_key: self.best_score}
        self.history["final"] = {score_key: epochs[-1][score_key] if epochs else None}
        return self.history


def _rng_state() -> dict:
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
