"""Reuse a pruned + fine-tuned model when the same dense checkpoint is pruned with the same
settings on the same data (e.g. `make deploy` for host, then rpi4): fine-tuning is the slow
part. Entries are portable checkpoints stored with their sha256, checked on every hit (a bad
entry is ignored with a warning and rebuilt). A card's published pruned checkpoints (`pruned:` in
the card, keyed the same way) are the fallback, so a fresh clone reuses committed fine-tuning."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from toolkit.core.paths import cache_dir


def prune_cache_key(ckpt_sha256: str, cfg, spec, data: dict, *, seed: int, never_prune) -> str:
    """Key of the exact settings: dense weights, pruning config, input, dataset (by name), seed. The
    work budget (max_trials) is left out: it decides whether pruning finishes, not what it makes."""
    described = {k: data.get(k) for k in ("source", "synthetic", "train_images", "train_slices")}
    described["source"] = Path(str(described["source"] or "")).name  # the dataset, not where this machine keeps it
    blob = json.dumps({"ckpt": ckpt_sha256, "cfg": cfg.model_dump(exclude={"max_trials"}), "spec": spec.to_dict(), "data": described,
                       "seed": seed, "never_prune": list(never_prune)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_dir() / "pruned" / f"{key}.pt"


def find_pruned(card, key: str, *, source) -> Optional[tuple]:
    """(model, history, published path or None) made with exactly these settings: from the local
    cache (sha256 checked), else from the card's published checkpoints (sha256 checked); None when
    there is none."""
    from toolkit.models.checkpoint import sha256_file
    from toolkit.models.weights import load_weights

    entry_path = _path(key)
    if entry_path.is_file():
        sidecar = entry_path.with_suffix(".sha256")
        if sidecar.is_file() and sidecar.read_text().strip() == sha256_file(entry_path):
            model, meta = load_weights(source, entry_path)
            return model, meta["history"], None
        print(f"[edgeshrink] warning: cached pruned model {entry_path.name} failed its sha256 check; rebuilding it")
        entry_path.unlink(missing_ok=True)
    for published in card.pruned:
        if published.key == key:
            path = card.pruned_path(published)
            if not path.is_file() or sha256_file(path) != published.sha256:
                from toolkit.core.errors import EdgeShrinkError

                raise EdgeShrinkError(f"published pruned checkpoint {published.path} is missing or does not match the "
                                      "card's sha256; restore it (git checkout) or run with --no-cache")
            model, meta = load_weights(source, path)
            return model, meta["history"], published.path
    return None


def store_pruned(key: str, model, source, history: list) -> None:
    """Keep a pruned model under its key, with its sha256 beside it."""
    from toolkit.models.checkpoint import save_checkpoint

    digest = save_checkpoint(_path(key), model, source.architecture, source.arguments, {"history": history})
    _path(key).with_suffix(".sha256").write_text(digest + "\n")
