"""Task adapters: what the pipeline needs to know about a model family's data and metrics.

A task gives the pipeline: calibration images, held-out evaluation inputs, a metric function
over model outputs, and a fine-tuning routine. Classification lives here; segmentation adds
its own adapter with the same methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from toolkit.cards import ModelCard
from toolkit.preprocess import InputSpec, normalize_nhwc_uint8


@dataclass
class ClassificationTask:
    card: ModelCard
    spec: InputSpec
    train: object  # ImageSplit
    val: object    # ImageSplit
    primary_metric: str = "top1"

    @classmethod
    def load(cls, card: ModelCard, spec: InputSpec, data: Optional[str], synthetic: bool, progress: bool = True):
        from toolkit.datasets import classification_splits

        train, val = classification_splits(card, data, synthetic, progress)
        return cls(card, spec, train, val)

    @property
    def synthetic(self) -> bool:
        return bool(self.train.synthetic)

    def data_description(self) -> dict:
        return {"source": self.train.source, "synthetic": self.synthetic, "train_images": len(self.train),
                "eval_images": len(self.val), "eval_split": "val", "classes": list(self.train.classes)}

    def calibration_nhwc(self, count: int, seed: int = 0) -> np.ndarray:
        """`count` real training images, NHWC float32 in [0, 1] (before mean/std)."""
        return self.train.subset(count, seed).images.astype(np.float32) / 255.0

    def eval_inputs(self) -> Iterator[np.ndarray]:
        """Held-out inputs one at a time, normalised NCHW float32 (1, C, H, W)."""
        for i in range(len(self.val)):
            yield normalize_nhwc_uint8(self.val.images[i:i + 1], self.spec)

    def eval_count(self) -> int:
        return len(self.val)

    def metrics(self, outputs: np.ndarray, reference: Optional[np.ndarray]) -> dict:
        """top1 vs labels, and top-1 agreement with the dense FP32 reference outputs."""
        pred = outputs.argmax(1)
        out = {"top1": float((pred == self.val.labels).mean())}
        if reference is not None:
            out["agreement_top1"] = float((pred == reference.argmax(1)).mean())
        return out

    def finetune(self, model, epochs: int, lr: float, distill: float, teacher, seed: int, progress: bool = True) -> dict:
        """Fine-tune a pruned model (AdamW, cosine, label smoothing, distillation from the dense model)."""
        from toolkit.classification import classification_loss, top1, torch_logits, train_batches
        from toolkit.train import TrainConfig, fit

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
        from toolkit.classification import train_batches

        return train_batches(self.train, self.spec, batch_size, seed)

    def train_loss(self, cfg):
        from toolkit.classification import classification_loss

        return classification_loss(cfg.label_smoothing, 0.0, 1.0)

    def torch_outputs(self, model) -> np.ndarray:
        from toolkit.classification import torch_logits

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


def load_task(card: ModelCard, spec: InputSpec, data: Optional[str], synthetic: bool, progress: bool = True):
    if card.task == "classification":
        return ClassificationTask.load(card, spec, data, synthetic, progress)
    from toolkit.segmentation.task import SegmentationTask

    return SegmentationTask.load(card, spec, data, synthetic, progress)
