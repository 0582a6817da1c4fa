"""Reuse a pruned + fine-tuned model when the same dense checkpoint is pruned with the same
settings on the same data (e.g. `make deploy` for host, then rpi4): fine-tuning is the slow
part. Entries are portable checkpoints. A card's published pruned checkpoints (`pruned:` in the
card, keyed the same way) are the fallback, so a fresh clone reuses committed fine-tuning.
EDGESHRINK_NO_CACHE=1 turns both off."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from toolkit.paths import cache_dir


def prune_cache_key(ckpt: Path, cfg, spec, data: dict, seed: int, never_prune) -> str:
    from toolkit.checkpoint import sha256_file

    described = {k: data.get(k) for k in ("source", "synthetic", "train_images", "train_slices")}
    described["source"] = Path(str(described["source"] or "")).name  # the dataset, not where this machine keeps it
    blob = json.dumps({"ckpt": sha256_file(ckpt), "cfg": cfg.model_dump(), "spec": spec.to_dict(), "data": described,
                       "seed": seed, "never_prune": list(never_prune)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_dir() / "pruned" / f"{key}.pt"


def find_pruned(card, key: str) -> Optional[tuple]:
    """(model, history, published path or None) made with exactly these settings: from the local
    cache, else from the card's published checkpoints (sha256 checked); None when there is none."""
    if os.environ.get("EDGESHRINK_NO_CACHE"):
        return None
    from toolkit.checkpoint import load_checkpoint

    if _path(key).is_file():
        model, payload = load_checkpoint(_path(key))
        return model, payload["meta"]["history"], None
    for entry in card.pruned:
        if entry.key == key:
            model, payload = load_checkpoint(entry.resolved_path(), expect_sha256=entry.sha256)
            return model, payload["meta"]["history"], entry.path
    return None


def store_pruned(key: str, model, dense_payload: dict, history: list) -> None:
    if os.environ.get("EDGESHRINK_NO_CACHE"):
        return
    from toolkit.checkpoint import save_checkpoint

    save_checkpoint(_path(key), model, dense_payload["architecture"], dense_payload["arguments"], {"history": history})

