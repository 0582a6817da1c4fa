"""Tasks: what the runner needs to know about a model family's data and metrics.

A task is a class registered under a name (`@register_task("classification")`); the card's
`task:` field picks it. The runner talks to every task through the same methods (the `Task`
protocol below), so adding a task needs no change in the runner. Built-in tasks are imported
lazily by module path, which keeps `import toolkit` fast."""

from __future__ import annotations

import importlib
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol

import numpy as np

from toolkit.config.task_names import BUILTIN_TASK_NAMES, add_task_name, task_names
from toolkit.core.errors import unknown_name
from toolkit.data.preprocess import InputSpec, normalize_nhwc_uint8

_BUILTIN = {
    "classification": "toolkit.tasks.registry:ClassificationTask",
    "segmentation": "toolkit.tasks.segmentation:SegmentationTask",
    "detection": "toolkit.tasks.detection:DetectionTask",
}
_TASKS: dict[str, type] = {}
assert set(_BUILTIN) == set(BUILTIN_TASK_NAMES), "toolkit.config.task_names lists the built-in tasks"


def register_task(name: str):
    """Class decorator adding a task under `name`; a duplicate name is an error."""

    def wrap(cls):
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} registered twice")
        _TASKS[name] = cls
        add_task_name(name)
        cls.name = name
        return cls

    return wrap


def get_task(name: str) -> type:
    """The task class registered under `name` (built-ins imported on first use)."""
    if name not in _TASKS and name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        _TASKS.setdefault(name, getattr(importlib.import_module(module), attr))
    if name not in _TASKS:
        raise unknown_name("task", name, task_names())
    return _TASKS[name]


def card_input_spec(card) -> InputSpec:
    """The card's input spec with the resize mode its task uses for the card's interpolation."""
    return card.input_spec(resize=get_task(card.task).resize_mode(card.input.interpolation))


@dataclass(frozen=True)
class DataRef:
    """Where a run reads its data: a folder (None = the card's), or generated synthetic data."""

    root: Optional[str] = None
    synthetic: bool = False
    eval_limit: Optional[int] = None  # a trial run: score only this many held-out items (cases for segmentation)


class Task(Protocol):
    """What every task gives the runner."""

    primary_metric: str

    @classmethod
    def load(cls, card, spec: InputSpec, data: DataRef, progress: bool = True) -> "Task": ...
    @classmethod
    def resize_mode(cls, interpolation: str) -> str: ...
    def data_description(self) -> dict: ...
    def calibration_nhwc(self, count: int, seed: int = 0) -> np.ndarray: ...
    def eval_inputs(self) -> Iterator[np.ndarray]: ...
    def eval_count(self) -> int: ...
    def metrics(self, outputs: np.ndarray, reference: Optional[np.ndarray]) -> dict: ...
    def finetune(self, model, *, epochs: int, lr: float, distill: float, teacher, seed: int, progress: bool) -> dict: ...
    def torch_outputs(self, model) -> np.ndarray: ...
    def grad_batches(self, count: int = 4, batch: int = 32): ...
    def extras(self, runner) -> dict: ...
    def extra_sizes(self) -> Optional[dict]: ...


def preflight_task(card, data: DataRef) -> None:
    """The card's task's cheap data checks at planning (a task without `preflight` has none)."""
    check = getattr(get_task(card.task), "preflight", None)
    if check is not None:
        check(card, data)


def load_task(card, spec: InputSpec, data: DataRef, progress: bool = True):
    """The card's task with its data loaded (the one place that dispatches on `card.task`). With
    `data.eval_limit` the held-out set is cut to that many items (`task.limit_eval`); the task then
    keeps the full set's description for cache keys (`key_description`) and says what was cut
    (`eval_limited`: {eval_limit, evaluated, of, unit}), which the manifest and report show."""
    task = get_task(card.task).load(card, spec, data, progress)
    task.key_description = task.data_description()
    task.eval_limited = task.limit_eval(data.eval_limit) if data.eval_limit else None
    return task


@register_task("classification")
@dataclass
class ClassificationTask:
    card: object
    spec: InputSpec
    train: object  # ImageSplit
    val: object    # ImageSplit
    primary_metric: str = "top1"
    eval_split: str = "val"
    labels: list = field(default_factory=list)

    @classmethod
    def resize_mode(cls, interpolation: str) -> str:
        return interpolation

    @classmethod
    def preflight(cls, card, data: DataRef) -> None:
        """Planning-time data checks that read no image: the class folders are the card's labels."""
        from toolkit.data.datasets import preflight_classification

        preflight_classification(card, data)

    @classmethod
    def load(cls, card, spec: InputSpec, data: DataRef, progress: bool = True):
        from toolkit.data.datasets import classification_splits

        train, val = classification_splits(card, spec, data, progress)
        return cls(card, spec, train, val, eval_split=card.data_spec().val,
                   labels=list(card.labels) or list(train.classes))

    @property
    def synthetic(self) -> bool:
        return bool(self.train.synthetic)

    def data_description(self) -> dict:
        return {"source": Path(self.train.source).name, "synthetic": self.synthetic, "train_images": len(self.train),
                "eval_images": len(self.val), "eval_split": self.eval_split, "classes": list(self.train.classes)}

    def calibration_nhwc(self, count: int, seed: int = 0) -> np.ndarray:
        """`count` real training images, NHWC float32 in [0, 1] (before mean/std)."""
        return self.train.subset(count, seed).images.astype(np.float32) / 255.0

    def eval_inputs(self) -> Iterator[np.ndarray]:
        """Held-out inputs one at a time, normalised NCHW float32 (1, C, H, W)."""
        for i in range(len(self.val)):
            yield normalize_nhwc_uint8(self.val.images[i:i + 1], self.spec)

    def eval_count(self) -> int:
        return len(self.val)

    def limit_eval(self, limit: int) -> dict:
        """Keep `limit` held-out images, a seeded random subset (the split is sorted by class)."""
        total = len(self.val)
        self.val = self.val.subset(limit, seed=0)
        return {"eval_limit": limit, "evaluated": len(self.val), "of": total, "unit": "images"}

    def metrics(self, outputs: np.ndarray, reference: Optional[np.ndarray]) -> dict:
        """top1 vs labels, and top-1 agreement with the dense FP32 reference outputs."""
        pred = outputs.reshape(len(outputs), -1).argmax(1)
        out = {"top1": float((pred == self.val.labels).mean())}
        if reference is not None:
            out["agreement_top1"] = float((pred == reference.reshape(len(reference), -1).argmax(1)).mean())
        return out

    def finetune(self, model, *, epochs: int, lr: float, distill: float, teacher, seed: int, progress: bool = True) -> dict:
        """Fine-tune a pruned model (AdamW, cosine, label smoothing, distillation from the dense model)."""
        from toolkit.tasks.classification import classification_loss, top1, torch_logits, train_batches
        from toolkit.train.loop import TrainConfig, fit

        if epochs == 0:
            return {"epochs": 0}
        cfg = TrainConfig(epochs=epochs, lr=lr, weight_decay=0.01, warmup_epochs=0.3, distill_alpha=distill, seed=seed)
        batches, steps = train_batches(self.train, self.spec, cfg.batch_size, seed)
        history = fit(model, cfg, batches, steps, classification_loss(cfg.label_smoothing, distill, cfg.distill_temperature),
                      lambda m: {"val_top1": top1(torch_logits(m, self.val, self.spec), self.val.labels)}, "val_top1",
                      teacher=teacher if distill > 0 else None, progress=progress)
        return {"epochs": epochs, "final_val_top1": history["final"]["val_top1"],
                "per_epoch": [{k: e[k] for k in ("epoch", "loss", "val_top1", "seconds")} for e in history["epochs"]]}

    def batches(self, batch_size: int, seed: int):
        from toolkit.tasks.classification import train_batches

        return train_batches(self.train, self.spec, batch_size, seed)

    def train_loss(self, cfg):
        from toolkit.tasks.classification import classification_loss

        return classification_loss(cfg.label_smoothing, 0.0, 1.0)

    def torch_outputs(self, model) -> np.ndarray:
        from toolkit.tasks.classification import torch_logits

        return torch_logits(model, self.val, self.spec)

    def grad_batches(self, count: int = 4, batch: int = 32):
        """A few training batches for Taylor importance."""
        import torch

        def gen():
            sub = self.train.subset(count * batch, seed=123)
            for s in range(0, len(sub), batch):
                yield (torch.from_numpy(normalize_nhwc_uint8(sub.images[s:s + batch], self.spec)),
                       torch.from_numpy(sub.labels[s:s + batch]))

        return gen

    def extras(self, runner) -> dict:
        """Classification adds nothing beyond the common bundle."""
        return {}

    def extra_sizes(self) -> Optional[dict]:
        """No files at other input sizes."""
        return None

    def example_batch(self, count: int = 8) -> np.ndarray:
        """A few real held-out inputs (normalised NCHW) for shape checks and diagnostics."""
        return normalize_nhwc_uint8(self.val.images[:count], self.spec)

