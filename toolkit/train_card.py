"""`edgeshrink train`: train a model card's architecture on its dataset and record provenance."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

from toolkit.cards import ModelCard
from toolkit.train import TrainConfig


def train_card(card: ModelCard, cfg: TrainConfig, out_dir: Path, data: Optional[str] = None,
               synthetic: bool = False, progress: bool = True) -> dict:
    """Train from scratch with the card's task adapter; writes last.pt, best.pt, history.json and
    provenance.json (command, data, seed, epochs, best score, sha256, versions) in `out_dir`."""
    from toolkit.checkpoint import save_checkpoint, sha256_file
    from toolkit.provenance import library_versions
    from toolkit.tasks import DataRef, load_task
    from toolkit.weights import ModelSource
    from toolkit.train import fit, seed_everything

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = load_task(card, card.input_spec(), DataRef(data, synthetic), progress)
    seed_everything(cfg.seed)
    model = ModelSource(card.architecture, dict(card.arguments), str(card.base_dir)).build()
    batches, steps = task.batches(cfg.batch_size, cfg.seed)
    metric = task.primary_metric

    def evaluate(m):
        return task.metrics(task.torch_outputs(m), None)

    def save(path, m, record):
        save_checkpoint(path, m, card.architecture, card.arguments, {"card": card.name, **record})

    history = fit(model, cfg, batches, steps, task.train_loss(cfg), evaluate, metric, out_dir, save, progress=progress)
    final = out_dir / "last.pt"
    provenance = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "data": task.data_description(),
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "config": history["config"],
        f"held_out_{metric}_final_epoch": round(history["final"][metric], 4),
        f"held_out_{metric}_best_epoch": round(history["best"][metric], 4),
        "published_weights": "last.pt (final epoch; no selection on the held-out data)",
        "sha256": sha256_file(final),
        "versions": library_versions(),
    }
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return provenance
