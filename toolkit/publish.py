"""Publish a training run: checkpoint into models/checkpoints/, sha256 + provenance into the card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from toolkit.errors import EdgeShrinkError

MAX_COMMITTED_BYTES = 10 * 1024 * 1024


def publish_checkpoint(model: str, run: Path) -> Path:
    import yaml

    from toolkit.cards import load_card
    from toolkit.checkpoint import read_checkpoint, sha256_file
    from toolkit.paths import REPO_ROOT, models_dir

    card = load_card(model)
    best, prov_path = Path(run) / "last.pt", Path(run) / "provenance.json"
    if not best.is_file() or not prov_path.is_file():
        raise EdgeShrinkError(f"{run} has no last.pt and provenance.json; point --run at a finished `edgeshrink train` output")
    read_checkpoint(best)
    if best.stat().st_size > MAX_COMMITTED_BYTES:
        raise EdgeShrinkError(f"{best} is {best.stat().st_size / 2**20:.1f} MB, over the 10 MB limit for committed checkpoints")
    provenance = json.loads(prov_path.read_text())
    dest = REPO_ROOT / "models" / "checkpoints" / f"{card.name}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, dest)
    card_path = models_dir() / f"{card.name}.yaml"
    header = "".join(l for l in card_path.read_text().splitlines(keepends=True) if l.startswith("#"))
    data = yaml.safe_load(card_path.read_text())
    data["checkpoint"] = {"path": str(dest.relative_to(REPO_ROOT)), "sha256": sha256_file(dest)}
    history = json.loads((Path(run) / "history.json").read_text())
    last = history["epochs"][-1]
    metric = "dice" if card.task == "segmentation" else next(k for k in ("top1", "val_top1") if k in last)
    data["provenance"] = {
        "command": provenance.get("command"),
        "data": provenance.get("data"),
        "seed": provenance.get("seed"),
        "epochs": len(history["epochs"]),
        "train_config": history.get("config"),
        "published_weights": "final epoch (last.pt); no epoch selection on the held-out data",
        f"held_out_{'dice' if card.task == 'segmentation' else 'top1'}": round(float(last[metric]), 4),
        "train_seconds": round(sum(e["seconds"] for e in history["epochs"]), 1),
        "sha256": sha256_file(dest),
        "versions": provenance.get("versions"),
    }
    card_path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=110))
    load_card(card.name)
    return dest
