"""`edgeshrink train`: train a model card's architecture on its dataset and record provenance."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

from toolkit.cards import ModelCard
from toolkit.train import TrainConfig


def train_classifier_card(card: ModelCard, cfg: TrainConfig, out_dir: Path, data: Optional[str] = None,
                          synthetic: bool = False, progress: bool = True) -> dict:
    """Train from scratch; writes best.pt/last.pt/history.json/provenance.json in `out_dir`."""
    import torch

    from toolkit.architectures import create_model
    from toolkit.checkpoint import save_checkpoint, sha256_file
    from toolkit.classification import classification_loss, top1, torch_logits, train_batches
    from toolkit.datasets import classification_splits
    from toolkit.provenance import library_versions
    from toolkit.train import fit, seed_everything

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = card.input_spec()
    train, val = classification_splits(card, data, synthetic, progress)
    seed_everything(cfg.seed)
    model = create_model(card.architecture, **card.arguments)
    batches, steps = train_batches(train, spec, cfg.batch_size, cfg.seed)

    def evaluate(m):
        return {"val_top1": top1(torch_logits(m, val, spec), val.labels)}

    def save(path, m, record):
        save_checkpoint(path, m, card.architecture, card.arguments, {"card": card.name, **record})

    history = fit(model, cfg, batches, steps, classification_loss(cfg.label_smoothing, 0.0, 1.0),
                  evaluate, "val_top1", out_dir, save, progress=progress)
    best = out_dir / "best.pt"
    provenance = {
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "data": {"root": train.source, "train_images": len(train), "val_images": len(val), "synthetic": train.synthetic},
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "config": history["config"],
        "val_top1": round(history["best"]["val_top1"], 4),
        "sha256": sha256_file(best),
        "versions": library_versions(),
    }
    (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return provenance
