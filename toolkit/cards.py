"""Model cards: `models/<name>.yaml` says what a model is, how to feed it and where its weights are."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from toolkit.errors import unknown_name
from toolkit.paths import REPO_ROOT, models_dir
from toolkit.preprocess import InputSpec
from toolkit.schema import Strict, load_yaml, validate_data


class CardInput(Strict):
    size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scaling: Literal["divide255", "zscore_volume"] = "divide255"


class CardCheckpoint(Strict):
    path: str
    sha256: Optional[str] = None


def _repo_path(path: str) -> Path:
    """Card paths are relative to the repository root unless absolute."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


class CardPruned(Strict):
    """A published pruned + fine-tuned checkpoint. `key` is the prune-cache key of the exact
    settings it was made with (dense checkpoint, pruning config, input, data, seed); a run with
    the same key loads it instead of fine-tuning again."""

    path: str
    sha256: str
    key: str
    provenance: dict = {}

    def resolved_path(self) -> Path:
        return _repo_path(self.path)


class ModelCard(Strict):
    name: str
    architecture: str
    arguments: dict = {}
    task: Literal["classification", "segmentation"]
    dataset: str
    input: CardInput
    metric: Literal["top1", "dice"]
    labels: list[str]
    never_prune: list[str] = []
    pruning: dict = {}  # overrides of the target profile's pruning settings for this model
    checkpoint: Optional[CardCheckpoint] = None
    provenance: dict = {}
    pruned: list[CardPruned] = []

    def input_spec(self) -> InputSpec:
        h, w = self.input.size
        return InputSpec(height=h, width=w, channels=self.input.channels, mean=self.input.mean, std=self.input.std,
                         scaling=self.input.scaling, resize="bilinear" if self.task == "classification" else "pad")

    def checkpoint_path(self) -> Optional[Path]:
        if not self.checkpoint:
            return None
        return _repo_path(self.checkpoint.path)


def list_cards() -> list[str]:
    return sorted(p.stem for p in models_dir().glob("*.yaml"))


def load_card(name: str) -> ModelCard:
    """Read and validate `models/<name>.yaml`; unknown names get "did you mean"."""
    path = models_dir() / f"{name}.yaml"
    if not path.is_file():
        raise unknown_name("model", name, list_cards())
    card = validate_data(ModelCard, load_yaml(path, "model card"), path.name)
    if card.name != name:
        from toolkit.errors import EdgeShrinkError

        raise EdgeShrinkError(f"{path.name}: card says name '{card.name}' but the file is named '{name}'; make them match")
    return card
