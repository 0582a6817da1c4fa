"""`edgeshrink train`: train a model card's architecture on its dataset and record provenance."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

from toolkit.config.cards import ModelCard
from toolkit.train.loop import TrainConfig


def train_card(card: ModelCard, cfg: TrainConfig, out_dir: Path, *, data: Optional[str] = None,
               synthetic: bool = False, progress: bool = True, resume: bool = False,
               max_epochs_this_session: Optional[int] = None) -> dict:
    """Train from scratch with the card's task adapter; writes last.pt, best.pt, history.json,
    train_state.pt and provenance.json (command, data, seed, epochs, world size, best score,
    sha256, versions) in `out_dir`. Under torchrun every rank trains its shard of each global
    batch and rank 0 writes the files. A state for the same config in `out_dir` is resumed."""
    from toolkit.models.checkpoint import save_checkpoint
    from toolkit.train.distributed import barrier, init_from_env
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task
    from toolkit.models.weights import ModelSource
    from toolkit.train.loop import CheckpointPolicy, seed_everything, train_loop

    dist = init_from_env()
    out_dir = Path(out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        task = load_task(card, card_input_spec(card), DataRef(data, synthetic), progress)  # rank 0 fills the decode cache
    barrier(dist)
    if not dist.is_main:
        task = load_task(card, card_input_spec(card), DataRef(data, synthetic), False)
    seed_everything(cfg.seed)
    model = ModelSource(card.architecture, dict(card.arguments), str(card.base_dir)).build()
    initial = initial_weights(card, model) if card.train_init else None
    batches, steps = _task_batches(task, cfg, dist)
    metric = task.primary_metric

    def save(path, m, record):
        save_checkpoint(path, m, card.architecture, card.arguments, {"card": card.name, **record})

    history = train_loop(model, cfg, batches=batches, steps_per_epoch=steps, loss_fn=task.train_loss(cfg),
                         evaluate=lambda m: _scalars(task.metrics(task.torch_outputs(m), None)), score_key=metric,
                         checkpoints=CheckpointPolicy(out_dir, save), progress=progress, resume=resume,
                         max_epochs_this_session=max_epochs_this_session, dist=dist,
                         state_key={"card": card.name, "architecture": card.architecture,
                                    "arguments": card.arguments, "data": task.data_description(),
                                    **({"train_init": initial} if initial else {})})
    provenance = _provenance(task, cfg, history, out_dir, dist=dist, metric=metric, initial=initial) if dist.is_main else {}
    barrier(dist)
    return provenance


def _scalars(metrics: dict) -> dict:
    """A task's metrics without per-case detail (lists, dicts): what each epoch's log line shows."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


def _task_batches(task, cfg: TrainConfig, dist):
    """The task's batches; under torchrun this rank's shard of every global batch."""
    if not dist.enabled:
        return task.batches(cfg.batch_size, cfg.seed)
    from toolkit.tasks.classification import train_batches

    if getattr(task, "primary_metric", None) != "top1":
        from toolkit.core.errors import EdgeShrinkError

        raise EdgeShrinkError(f"--nproc > 1 supports classification cards only; train {task.card.name} with --nproc 1")
    return train_batches(task.train, task.spec, cfg.batch_size, cfg.seed, shard=dist.shard(cfg.batch_size))


def initial_weights(card: ModelCard, model) -> dict:
    """Copy the card's `train_init` weights into `model` where names (after renaming) and shapes match;
    returns what was loaded. A wrong sha256 or a file sharing no tensor with the model is an error."""
    from toolkit.core.errors import EdgeShrinkError
    from toolkit.models.checkpoint import read_checkpoint, sha256_file

    init = card.train_init
    path = card.resolve(init.path)
    digest = sha256_file(path) if path.is_file() else None
    if init.sha256 and digest != init.sha256:
        raise EdgeShrinkError(f"train_init {path} has sha256 {str(digest)[:12]}…, the card expects {init.sha256[:12]}…; "
                              "restore the file or update the card")
    stored = read_checkpoint(path)["state_dict"]
    own = model.state_dict()
    renamed = {}
    for name, tensor in stored.items():
        for old, new in init.rename.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        if name in own and tuple(own[name].shape) == tuple(tensor.shape):
            renamed[name] = tensor
    if not renamed:
        raise EdgeShrinkError(f"train_init {path} shares no tensor (name and shape) with {card.architecture}; fix "
                              "train_init.rename (checkpoint prefix: model prefix)")
    model.load_state_dict(renamed, strict=False)
    return {"path": init.path, "sha256": digest, "tensors_loaded": len(renamed), "tensors_in_model": len(own)}


def _provenance(task, cfg: TrainConfig, history: dict, out_dir: Path, *, dist, metric: str,
                initial: Optional[dict] = None) -> dict:
    from toolkit.models.checkpoint import sha256_file
    from toolkit.core.provenance import library_versions

    done = len(history["epochs"])
    provenance = {
        "command": " ".join(["edgeshrink", *(shlex.quote(a) for a in sys.argv[1:])]),  # no machine paths
        "data": task.data_description(),
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "epochs_completed": done,
        "world_size": dist.world_size,
        "backend": dist.backend,
        "global_batch": cfg.batch_size,
        "per_process_batch": cfg.batch_size // dist.world_size,
        "config": history["config"],
        "rank_weight_digests": history.get("rank_weight_digests"),
        f"held_out_{metric}_final_epoch": round(history["final"][metric], 4) if done else None,
        f"held_out_{metric}_best_epoch": round(history["best"][metric], 4) if done else None,
        "published_weights": "last.pt (final epoch; no selection on the held-out data)",
        "sha256": sha256_file(out_dir / "last.pt") if (out_dir / "last.pt").is_file() else None,
        "versions": library_versions(),
        **({"train_init": initial} if initial else {}),
    }
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return provenance
