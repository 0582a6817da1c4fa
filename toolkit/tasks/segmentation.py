"""Segmentation task adapter: slices in, 3-D Dice per held-out volume out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from toolkit.config.cards import ModelCard
from toolkit.tasks.registry import register_task
from toolkit.data.preprocess import InputSpec
from toolkit.tasks.segmentation_metrics import case_scores, summarise
from toolkit.data.nifti import VolumeSet, restack, slices_of, synthetic_volumes


def seg_loss(distill_alpha: float = 0.0, temperature: float = 2.0, dice_weight: float = 1.0):
    """Cross-entropy + soft Dice over foreground classes, optionally blended with pixel-wise KD."""
    import torch.nn.functional as F

    def loss_fn(logits, y, teacher_logits=None):
        ce = F.cross_entropy(logits, y)
        probs = logits.softmax(1)
        onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).float()
        inter = (probs * onehot).sum((0, 2, 3))
        denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
        dice = (2 * inter + 1.0) / (denom + 1.0)
        loss = ce + dice_weight * (1 - dice[1:].mean())
        if teacher_logits is not None and distill_alpha > 0:
            t = temperature
            kd = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean")
            kd = kd / (logits.shape[2] * logits.shape[3]) * t * t
            loss = (1 - distill_alpha) * loss + distill_alpha * kd * 10.0
        return loss

    return loss_fn


def scalar_metrics(metrics: dict) -> dict:
    """The metrics without their per-case detail (what a training log shows per epoch)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}


@register_task("segmentation")
@dataclass
class SegmentationTask:
    card: ModelCard
    spec: InputSpec
    volumes: VolumeSet
    train_images: np.ndarray
    train_labels: np.ndarray
    primary_metric: str = "dice"

    @classmethod
    def resize_mode(cls, interpolation: str) -> str:
        return "pad"

    @classmethod
    def load(cls, card: ModelCard, spec: InputSpec, data, progress: bool = True):
        from toolkit.data.datasets import dataset_root
        from toolkit.core.errors import EdgeShrinkError

        from toolkit.data.segmentation_data import load_segmentation, source_from_card

        if data.synthetic:
            vols = synthetic_volumes(30, seed=1)
            vs = VolumeSet(vols[:24], vols[24:], [], "synthetic", synthetic=True, labels=list(card.labels),
                           split="generated: the last 6 of 30 volumes held out")
        else:
            root = dataset_root(card, data.root)
            if not root.is_dir():
                raise EdgeShrinkError(f"data folder {root} does not exist; pass --data PATH, set EDGESHRINK_DATA_DIR, or use --synthetic-data")
            vs = load_segmentation(source_from_card(card, root), progress=progress)
            if progress and vs.problems:
                for p in vs.problems:
                    print(f"[edgeshrink] skipped bad volume: {p}")
        size = (spec.height, spec.width)
        pairs = [slices_of(v, size) for v in vs.train]
        images = np.concatenate([p[0] for p in pairs])
        labels = np.concatenate([p[1] for p in pairs])
        return cls(card, spec, vs, images, labels)

    @property
    def synthetic(self) -> bool:
        return self.volumes.synthetic

    @property
    def labels(self) -> list[str]:
        """Label names by index: the card's, else the dataset's (dataset.json)."""
        return list(self.card.labels) or list(self.volumes.labels)

    def class_names(self) -> dict[int, str]:
        """Foreground classes by index: the first word of each label, lower case (metric keys)."""
        return {i: (n.split() or [str(i)])[0].lower() for i, n in enumerate(self.labels) if i > 0}

    def held_out_cases(self) -> list[str]:
        return sorted({v.case for v in self.volumes.held_out})

    def data_description(self) -> dict:
        """The data and its case-level split, as recorded in the manifest and the card's provenance."""
        vs, held = self.volumes, self.held_out_cases()
        unit = "slices" if vs.layout != "pairs" else "images"
        return {"source": Path(vs.source).name, "synthetic": self.synthetic, "layout": vs.layout,
                "train_volumes": len(vs.train), "train_slices": int(len(self.train_images)), "eval_images": self.eval_count(),
                "eval_unit": f"{unit} of {len(held)} cases", "eval_split": "held-out cases",
                "cases": {"train": len({v.case for v in vs.train}), "held_out": len(held)},
                "held_out_cases": held, "problems": vs.problems, "split": vs.split, "slice_axis": 0,
                "modalities": vs.modalities, "hd95_unit": vs.spacing_unit}

    def calibration_nhwc(self, count: int, seed: int = 0) -> np.ndarray:
        """`count` real training slices (foreground slices first), NHWC, model scaling."""
        rng = np.random.default_rng(seed)
        fg = np.flatnonzero(self.train_labels.reshape(len(self.train_labels), -1).max(1) > 0)
        rest = np.setdiff1d(np.arange(len(self.train_labels)), fg)
        pick = np.concatenate([rng.permutation(fg), rng.permutation(rest)])[:count]
        return self.train_images[np.sort(pick)].transpose(0, 2, 3, 1).copy()

    def eval_inputs(self) -> Iterator[np.ndarray]:
        size = (self.spec.height, self.spec.width)
        for v in self.volumes.held_out:
            images, _ = slices_of(v, size)
            for s in range(len(images)):
                yield images[s:s + 1]

    def eval_count(self) -> int:
        return int(sum(v.shape[0] for v in self.volumes.held_out))

    def limit_eval(self, limit: int) -> dict:
        """Keep the first `limit` held-out cases (name order) with all their volumes or images."""
        cases = self.held_out_cases()
        kept = set(cases[:limit])
        self.volumes.held_out = [v for v in self.volumes.held_out if v.case in kept]
        return {"eval_limit": limit, "evaluated": len(kept), "of": len(cases), "unit": "cases"}

    def predicted_volumes(self, outputs: np.ndarray) -> list[np.ndarray]:
        """Each held-out volume's predicted label map, on the volume's own grid."""
        size, pred, out, start = (self.spec.height, self.spec.width), outputs.argmax(1), [], 0
        for v in self.volumes.held_out:
            n = v.shape[0]
            out.append(restack(pred[start:start + n], v.shape, size))
            start += n
        return out

    def metrics(self, outputs: np.ndarray, reference: Optional[np.ndarray]) -> dict:
        """Dice and HD95 per class per held-out case (`per_case`), their means over cases (`dice_<class>`,
        `hd95_<class>`), `dice` and `hd95` (means of the classes), pixel agreement with dense."""
        names = self.class_names()
        units: dict[str, list] = {}
        for v, pred in zip(self.volumes.held_out, self.predicted_volumes(outputs)):
            units.setdefault(v.case, []).append((pred, v.label, v.spacing))
        per_case = [{"case": case, **case_scores(u, names)} for case, u in units.items()]
        out = summarise(per_case, names)
        if reference is not None:
            out["agreement_pixels"] = float((outputs.argmax(1) == reference.argmax(1)).mean())
        out["per_case"] = per_case
        return out

    def batches(self, batch_size: int, seed: int, fg_fraction: float = 0.7):
        """Foreground-weighted slice sampling: ~fg_fraction of each epoch's slices hold foreground."""
        import torch

        fg = np.flatnonzero(self.train_labels.reshape(len(self.train_labels), -1).max(1) > 0)
        bg = np.setdiff1d(np.arange(len(self.train_labels)), fg)
        n_bg = min(len(bg), int(len(fg) * (1 - fg_fraction) / max(fg_fraction, 1e-6)))
        per_epoch = len(fg) + n_bg
        steps = max(1, per_epoch // batch_size)

        def gen(epoch: int):
            rng = np.random.default_rng(seed * 1000 + epoch)
            idx = rng.permutation(np.concatenate([fg, rng.choice(bg, n_bg, replace=False) if n_bg else bg[:0]]))
            for s in range(steps):
                b = np.sort(idx[s * batch_size:(s + 1) * batch_size])
                x = self.train_images[b] * rng.uniform(0.9, 1.1, (len(b), 1, 1, 1)) + rng.uniform(-0.1, 0.1, (len(b), 1, 1, 1))
                yield torch.from_numpy(x.astype(np.float32)), torch.from_numpy(self.train_labels[b])

        return gen, steps

    def train_loss(self, cfg):
        return seg_loss(0.0)

    def torch_outputs(self, model) -> np.ndarray:
        import torch

        model.eval()
        with torch.inference_mode():
            return np.concatenate([model(torch.from_numpy(x)).numpy() for x in self._eval_batches()])

    def _eval_batches(self, batch: int = 64):
        buf = []
        for x in self.eval_inputs():
            buf.append(x)
            if len(buf) == batch:
                yield np.concatenate(buf)
                buf = []
        if buf:
            yield np.concatenate(buf)

    def finetune(self, model, *, epochs: int, lr: float, distill: float, teacher, seed: int, progress: bool = True) -> dict:
        from toolkit.train.loop import TrainConfig, fit

        if epochs == 0:
            return {"epochs": 0}
        cfg = TrainConfig(epochs=epochs, batch_size=32, lr=lr, weight_decay=1e-4, warmup_epochs=0.2,
                          label_smoothing=0.0, distill_alpha=distill, seed=seed)
        gen, steps = self.batches(cfg.batch_size, seed)
        history = fit(model, cfg, gen, steps, seg_loss(distill), lambda m: scalar_metrics(self.metrics(self.torch_outputs(m), None)),
                      "dice", teacher=teacher if distill > 0 else None, progress=progress)
        return {"epochs": epochs, "final_dice": history["final"]["dice"],
                "per_epoch": [{k: e[k] for k in ("epoch", "loss", "dice", "seconds")} for e in history["epochs"]]}

    def grad_batches(self, count: int = 4, batch: int = 16):

        def gen():
            g, _ = self.batches(batch, seed=123)
            for i, (x, y) in enumerate(g(0)):
                if i >= count:
                    break
                yield x, y

        return gen

    def example_batch(self, count: int = 8) -> np.ndarray:
        """A few real held-out slices for shape checks and diagnostics."""
        return np.concatenate([x for _, x in zip(range(count), self.eval_inputs())])

    def extra_sizes(self) -> dict:
        """Whole 256x256 slices: the pipeline converts and benchmarks the families at this size too
        and estimates the time per held-out volume."""
        return {"size": 256, "per_unit": self.eval_count() / max(1, len(self.volumes.held_out)), "unit": "volume"}

    def extras(self, runner) -> dict:
        """A PNG grid of held-out examples, and one held-out volume's predicted mask as NIfTI
        (`held_out_mask`: which case, file and model; NIfTI data only)."""
        from toolkit.tasks.segmentation_extras import example_grid, write_typical_mask

        out = {}
        int8 = runner.outputs.get("pruned-tflite-int8")
        with runner.clock("report"):
            if int8 is not None:
                example_grid(runner.work / "examples.png", self, runner.outputs["dense-torch-fp32"], int8,
                             title=f"{runner.name}: held-out cases")
            name = "pruned-tflite-int8" if int8 is not None else "dense-torch-fp32"
            if name in runner.outputs:
                mask = write_typical_mask(runner.work, self, runner.outputs[name], artifact=name)
                out.update({"held_out_mask": mask} if mask else {})
        return out
