"""Publish into models/: a dense training run (checkpoint, sha256 + provenance in the card) or a
run's pruned, fine-tuned model (listed in the card under `pruned`, keyed by its settings)."""

from __future__ import annotations

import shutil
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

MAX_COMMITTED_BYTES = 10 * 1024 * 1024


def _check_committable(path: Path) -> None:
    from toolkit.models.checkpoint import read_checkpoint

    read_checkpoint(path)
    if path.stat().st_size > MAX_COMMITTED_BYTES:
        raise EdgeShrinkError(f"{path} is {path.stat().st_size / 2**20:.1f} MB, over the 10 MB limit for committed checkpoints")


def _update_card(name: str, update) -> None:
    """Rewrite models/<name>.yaml with `update(data)` applied, keeping its header comment, and
    check that the result still loads."""
    import yaml

    from toolkit.config.cards import load_card
    from toolkit.core.paths import models_dir
    from toolkit.core.schema import load_yaml

    card_path = models_dir() / f"{name}.yaml"
    data = load_yaml(card_path, "model card")  # a regular file of at most 1 MB, YAML aliases refused
    header = "".join(l for l in card_path.read_text().splitlines(keepends=True) if l.startswith("#"))
    update(data)
    card_path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=110))
    load_card(name)


def publish_checkpoint(model: str, run: Path) -> Path:
    from toolkit.config.cards import load_card
    from toolkit.models.checkpoint import sha256_file

    card = load_card(model)
    best, prov_path = Path(run) / "last.pt", Path(run) / "provenance.json"
    if not best.is_file() or not prov_path.is_file():
        raise EdgeShrinkError(f"{run} has no last.pt and provenance.json; point --run at a finished `edgeshrink train` output")
    _check_committable(best)
    from toolkit.delivery.compare import read_json_file

    provenance = read_json_file(prov_path, "point --run at a finished `edgeshrink train` output")
    history = read_json_file(Path(run) / "history.json", "point --run at a finished `edgeshrink train` output")
    if not isinstance(history.get("epochs"), list) or not history["epochs"]:
        raise EdgeShrinkError(f"{run}/history.json lists no epochs; point --run at a finished `edgeshrink train` output")
    dest = card.base_dir / "checkpoints" / f"{card.name}.pt"  # paths in a card are relative to the card
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, dest)
    checkpoint = {"path": str(dest.relative_to(card.base_dir)), "sha256": sha256_file(dest)}
    last = history["epochs"][-1]
    metric = {"segmentation": "dice", "detection": "map50"}.get(card.task) or next(k for k in ("top1", "val_top1") if k in last)
    held_out = {f"held_out_{name}": round(float(last[name]), 4) for name in ("map", "map75") if card.task == "detection"}
    card_provenance = {
        "command": provenance.get("command"),
        "data": provenance.get("data"),
        "seed": provenance.get("seed"),
        "epochs": len(history["epochs"]),
        "train_config": history.get("config"),
        "published_weights": "final epoch (last.pt); no epoch selection on the held-out data",
        f"held_out_{metric.removeprefix('val_')}": round(float(last[metric]), 4),
        **held_out,
        **({"train_init": provenance["train_init"]} if provenance.get("train_init") else {}),
        "train_seconds": round(sum(e["seconds"] for e in history["epochs"]), 1),
        "sha256": sha256_file(dest),
        "versions": provenance.get("versions"),
    }
    _update_card(card.name, lambda data: data.update(checkpoint=checkpoint, provenance=card_provenance))
    return dest


def publish_pruned(bundle: Path) -> Path:
    """Commit a bundle's pruned + fine-tuned checkpoint to models/checkpoints/ and list it in the
    card under `pruned`, keyed by the exact settings it was made with, so a fresh clone deploying
    with those settings skips the fine-tuning."""
    from toolkit.config.cards import load_card
    from toolkit.models.checkpoint import sha256_file

    bundle = Path(bundle)
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise EdgeShrinkError(f"{bundle} has no manifest.json; point --bundle at a finished `edgeshrink run` output")
    from toolkit.delivery.compare import read_manifest

    manifest = read_manifest(bundle, "rerun `edgeshrink run` to rebuild the bundle")
    if not isinstance(manifest.get("model"), str) or not isinstance(manifest.get("data"), dict):
        raise EdgeShrinkError(f"{manifest_path} lacks 'model' or 'data' (edited or truncated); rerun `edgeshrink run`")
    card = load_card(manifest["model"])
    key = (manifest.get("pruning", {}).get("cache") or {}).get("key")
    source = bundle / f"{card.name}_pruned.pt"
    if not key or not source.is_file():
        raise EdgeShrinkError(f"{bundle} holds no pruned checkpoint with a settings key; rerun `edgeshrink run` to make one")
    if manifest["data"].get("synthetic"):
        raise EdgeShrinkError(f"{bundle} was made on synthetic data; publish only models fine-tuned on real data")
    if manifest["data"].get("eval_limited"):
        raise EdgeShrinkError(f"{bundle} was a trial run (eval_limit): its held-out figures cover part of the data; "
                              "rerun without --eval-limit and publish that bundle")
    _check_committable(source)
    dest = card.base_dir / "checkpoints" / f"{card.name}_pruned_{key[:8]}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    arts = {a["name"]: a for a in manifest["artifacts"]}
    history = manifest["pruning"]["history"]
    entry = {
        "path": str(dest.relative_to(card.base_dir)),
        "sha256": sha256_file(dest),
        "key": key,
        "provenance": {
            "command": f"edgeshrink run --model {manifest['model']} --target {manifest['target']}",
            "bundle": manifest["model"] + "-" + manifest["target"],
            "pruning": manifest["pruning"]["config"],
            "macs_fraction": round(history[-1]["macs_fraction"], 4),
            "held_out_metrics": {name: {k: v for k, v in arts[name]["metrics"].items() if not isinstance(v, (list, dict))}
                                 for name in ("pruned-torch-fp32", "pruned-tflite-int8") if name in arts},  # per-case detail stays in the manifest
            "fine_tune_seconds": round(sum(e["seconds"] for h in history for e in (h.get("finetune") or {}).get("per_epoch", [])), 1),
            "data": {k: manifest["data"].get(k) for k in ("source", "train_images", "eval_images")},
            "versions": manifest.get("versions"),
        },
    }

    def add_entry(data: dict) -> None:
        data["pruned"] = [e for e in data.get("pruned", []) if e.get("key") != key] + [entry]

    _update_card(card.name, add_entry)
    return dest
