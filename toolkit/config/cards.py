"""Model cards say what a model is, how to feed it, where its weights and data are.

A card is `models/<name>.yaml` (looked up by name) or any YAML file (looked up by path). Relative
paths inside a card (architecture file, checkpoint, dataset root) are relative to the card's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import PrivateAttr, field_validator

from toolkit.core.errors import EdgeShrinkError, unknown_name
from toolkit.core.paths import models_dir
from toolkit.data.preprocess import InputSpec
from toolkit.core.schema import Strict, load_yaml, validate_data
from toolkit.config.targets import TfliteConverter

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_safe_name(kind: str, name: str) -> str:
    """Names that become folder and file names: letters, digits, `_ . -`, no path separators."""
    if not SAFE_NAME.match(name or "") or ".." in name:
        raise EdgeShrinkError(f"{kind} name {name!r} is not allowed; use letters, digits, '_', '.' or '-' "
                              "(at most 64, starting with a letter or digit)")
    return name


class CardInput(Strict):
    size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scaling: Literal["divide255", "zscore_volume"] = "divide255"
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if min(v) < 8 or max(v) > 4096:
            raise ValueError(f"must be two sizes between 8 and 4096 pixels, got {list(v)}")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v):
        if not 1 <= v <= 16:
            raise ValueError("must be 1 (grey) or 3 (RGB), or for a segmentation card the number of modalities (1 to 16)")
        return v

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, v, info):
        channels = info.data.get("channels")
        if channels is not None and len(v) != channels:
            raise ValueError(f"needs one value per channel (input.channels is {channels}), got {len(v)} values")
        if info.field_name == "std" and not all(x > 0 for x in v):
            raise ValueError("must be positive numbers (inputs are divided by them)")
        return v


class CardCheckpoint(Strict):
    """Weights: an EdgeShrink checkpoint or a plain PyTorch state_dict file (.pt/.pth/.th),
    optionally nested under `key` (e.g. "state_dict") with `strip_prefix` (e.g. "module.") removed."""

    path: str
    sha256: Optional[str] = None
    key: Optional[str] = None
    strip_prefix: Optional[str] = None


class CardInit(Strict):
    """Weights a fresh model starts from in `edgeshrink train` (e.g. a backbone trained here on another
    task): every tensor whose name (after renaming the `rename` prefixes, checkpoint -> model) and
    shape match is copied; the others keep their fresh initialisation."""

    path: str
    sha256: Optional[str] = None
    rename: dict[str, str] = {}


class CardDataset(Strict):
    """Where the data is: `root` (relative to the card, or a dataset name under the data folder)
    and the names of the training and evaluation split folders. Segmentation data also has a
    layout (detected when not given), label values and a case-level held-out split
    (docs/own-models-and-data.md)."""

    root: str
    train: str = "train"
    val: str = "val"
    format: Optional[Literal["coco", "yolo", "voc"]] = None  # detection annotations; detected from the files when not given
    layout: Optional[Literal["nifti", "msd", "nnunet", "pairs"]] = None
    list_file: Optional[str] = None  # 2-D pairs: `image mask [case]` lines, relative to root
    case_pattern: Optional[str] = None  # 2-D pairs: regex on the file name; group `case` (or 1) is the case key
    label_values: Optional[list[int]] = None  # the value of each label in the mask files, in label order
    held_out: Union[int, float, list[str], None] = None  # fraction, count or case names; None: 0.2 of the cases

    @field_validator("held_out", mode="before")  # before: `true` would otherwise arrive as the count 1
    @classmethod
    def _held_out(cls, v):
        if isinstance(v, bool) or (isinstance(v, float) and not 0 < v < 1) or (isinstance(v, int) and v < 1) \
                or (isinstance(v, list) and (not v or len(set(v)) != len(v))):
            raise ValueError(f"must be a fraction of the cases (0 < f < 1), a count of cases (>= 1) or a list of "
                             f"distinct case names, got {v!r}")
        return v

    @field_validator("label_values")
    @classmethod
    def _label_values(cls, v):
        if v is not None and (not v or len(set(v)) != len(v) or min(v) < 0):
            raise ValueError(f"must list distinct values >= 0, one per label in label order, got {v}")
        return v

    @field_validator("case_pattern")
    @classmethod
    def _case_pattern(cls, v):
        try:
            re.compile(v or "")
        except re.error as exc:
            raise ValueError(f"is not a regular expression ({exc})") from None
        return v


class CardPruned(Strict):
    """A published pruned + fine-tuned checkpoint. `key` is the prune-cache key of the exact
    settings it was made with; a run with the same key loads it instead of fine-tuning again."""

    path: str
    sha256: str
    key: str
    provenance: dict = {}


class ModelCard(Strict):
    name: str
    architecture: str
    arguments: dict = {}
    task: str = "classification"
    dataset: Union[str, CardDataset]
    input: CardInput
    metric: str = "top1"
    labels: list[str] = []
    class_folders: list[str] = []  # the dataset's class folders in label order, where they differ from labels (e.g. WordNet IDs)
    never_prune: list[str] = []
    pruning: dict = {}  # overrides of the target profile's pruning settings for this model
    detection: dict = {}  # detection cards: how raw head outputs decode (deploy/common/edgeshrink_detect.py, checked by the task)
    tflite_converter: Optional[TfliteConverter] = None  # overrides the profile's conversion.tflite
    checkpoint: Optional[CardCheckpoint] = None
    train_init: Optional[CardInit] = None  # `edgeshrink train` starts from these weights (where names and shapes match)
    provenance: dict = {}
    pruned: list[CardPruned] = []
    _base_dir: Optional[Path] = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        try:
            check_safe_name("model", v)
        except EdgeShrinkError as exc:  # a ValueError names the card file and the key
            raise ValueError(str(exc)) from None
        return v

    @field_validator("pruning")
    @classmethod
    def _pruning(cls, v):
        epochs, lr, distill = v.get("finetune_epochs", 0), v.get("finetune_lr", 1.0), v.get("distill", 0.0)
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (epochs, lr, distill))
        if not numbers or not isinstance(epochs, int) or epochs < 0 or not lr > 0 or not 0.0 <= distill <= 1.0:
            raise ValueError(f"needs finetune_epochs >= 0 (an integer), finetune_lr > 0 and distill in [0, 1], got {v}")
        return v

    @field_validator("input")
    @classmethod
    def _input_channels(cls, v, info):
        if v.channels not in (1, 3) and info.data.get("task") != "segmentation":
            raise ValueError(f"has input.channels {v.channels}, but input.channels must be 1 (grey) or 3 (RGB) for a "
                             f"{info.data.get('task')} card (other channel counts are for segmentation modalities)")
        return v

    @field_validator("class_folders")
    @classmethod
    def _class_folders(cls, v, info):
        labels = info.data.get("labels") or []
        if v and len(v) != len(labels):
            raise ValueError(f"needs one folder per label ({len(labels)} labels), got {len(v)} folders")
        return v

    def expected_class_folders(self) -> list[str]:
        """The class folder names the dataset must have, in label order (empty: the card has no labels)."""
        return list(self.class_folders or self.labels)

    @field_validator("task")
    @classmethod
    def _task(cls, v):
        from toolkit.config.task_names import task_names

        if v not in task_names():
            raise ValueError(f"unknown task {v!r}; choose one of {', '.join(task_names())}")
        return v

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in this card are resolved against."""
        return self._base_dir or models_dir()

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def data_spec(self) -> CardDataset:
        return self.dataset if isinstance(self.dataset, CardDataset) else CardDataset(root=self.dataset)

    def input_spec(self, *, resize: str) -> InputSpec:
        """The input the card describes, resized with `resize` (the task's mode for the card's
        interpolation: toolkit.tasks.registry.card_input_spec resolves it)."""
        h, w = self.input.size
        return InputSpec(height=h, width=w, channels=self.input.channels, mean=self.input.mean, std=self.input.std,
                         scaling=self.input.scaling, resize=resize)

    def checkpoint_path(self) -> Optional[Path]:
        return self.resolve(self.checkpoint.path) if self.checkpoint else None

    def pruned_path(self, entry: CardPruned) -> Path:
        return self.resolve(entry.path)


def list_cards() -> list[str]:
    return sorted(p.stem for p in models_dir().glob("*.yaml"))


def is_card_path(ref: str) -> bool:
    """A `--model` value naming a file rather than a card in models/."""
    return ref.endswith((".yaml", ".yml")) or "/" in ref or "\\" in ref


def load_card(ref: str) -> ModelCard:
    """A card by name (`models/<name>.yaml`, "did you mean" for typos) or by path to a YAML file."""
    if is_card_path(ref):
        path = Path(ref).expanduser()
        if not path.exists() and not path.is_symlink():  # a folder, FIFO or device: load_yaml says which
            raise EdgeShrinkError(f"model card {ref} does not exist; pass a card name ({', '.join(list_cards())}) "
                                  "or the path of a card .yaml file")
        card = validate_data(ModelCard, load_yaml(path, "model card"), str(path))
    else:
        check_safe_name("model", ref)
        path = models_dir() / f"{ref}.yaml"
        if not path.is_file():
            raise unknown_name("model", ref, list_cards())
        card = validate_data(ModelCard, load_yaml(path, "model card"), path.name)
        if card.name != ref:
            raise EdgeShrinkError(f"{path.name}: card says name '{card.name}' but the file is named '{ref}'; make them match")
    card._base_dir = path.resolve().parent
    return card


def card_from_dict(data: dict, base_dir: Path, source: str = "model card") -> ModelCard:
    """Validate a card given as data (the Python API, replayed plans)."""
    card = validate_data(ModelCard, data, source)
    card._base_dir = Path(base_dir)
    return card
