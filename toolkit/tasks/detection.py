"""Detection task adapter: images in, raw head outputs (N, A, 4 + C) out, COCO mAP per file.

Every produced file is run in its own runtime by the runner; its raw outputs are decoded and
suppressed here by the one numpy implementation the device scripts run too
(deploy/common/edgeshrink_detect.py, parameters from the card's `detection:` block, written into
the manifest), then scored with pycocotools against the held-out boxes in original-image pixels.
Parity of float files is checked on the raw outputs, before any decoding."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.data.preprocess import InputSpec, normalize_nhwc_uint8
from toolkit.tasks.registry import register_task


def card_decoding(card, classes: Optional[list] = None) -> dict:
    """The card's detection block, checked, with num_classes filled in from the labels (or `classes`)."""
    from toolkit.runtime.detect_common import checked_decoding

    names = list(card.labels) or list(classes or [])
    block = dict(card.detection or {})
    if not block:
        raise EdgeShrinkError(f"model card '{card.name}' (task detection) has no detection block; add one saying how "
                              "its raw outputs decode (decoder, strides or anchors, box_encoding; docs/tasks.md)")
    if names:
        block.setdefault("num_classes", len(names))
        if block["num_classes"] != len(names):
            raise EdgeShrinkError(f"model card '{card.name}': detection.num_classes is {block['num_classes']} but there "
                                  f"are {len(names)} labels; make them agree")
    return checked_decoding(block, f"model card '{card.name}'")


def _decoding_for_checks(card) -> dict:
    """The card's decoding before any data is read (a card without labels counts detection.num_classes)."""
    stated = (card.detection or {}).get("num_classes")
    return card_decoding(card, None if card.labels else ["?"] * (stated if isinstance(stated, int) and stated > 0 else 1))


@register_task("detection")
@dataclass
class DetectionTask:
    card: object
    spec: InputSpec
    train: object  # DetectionSplit
    val: object    # DetectionSplit
    decoding: dict
    eval_images: np.ndarray  # N x H x W x 3 uint8, stretched to the input
    primary_metric: str = "map50"
    eval_split: str = "val"
    labels: list = field(default_factory=list)
    _train_pixels: Optional[tuple] = field(default=None, repr=False)

    @classmethod
    def resize_mode(cls, interpolation: str) -> str:
        return interpolation

    @classmethod
    def preflight(cls, card, data) -> None:
        """Planning-time checks that decode no image: the detection block, and the data's format."""
        from toolkit.data.datasets import dataset_root
        from toolkit.data.detection_datasets import detect_format

        _decoding_for_checks(card)
        root = None if data.synthetic else dataset_root(card, data.root)
        if root is not None and root.is_dir() and not card.data_spec().format:
            detect_format(root, card.data_spec().train)

    @classmethod
    def output_classes(cls, card, output_shape: tuple, input_shape: tuple) -> int:
        """The classes a raw output (N, A, K) encodes; planning refuses a shape the card's decoding
        cannot read (wrong prior count for the input size, or wrong K), in one line."""
        from toolkit.runtime.detect_common import device_detect

        decoding = _decoding_for_checks(card)
        try:
            device_detect().check_raw(np.zeros(output_shape, np.float32), decoding, *input_shape[-2:])
        except ValueError as exc:
            raise EdgeShrinkError(f"model card '{card.name}': {exc}") from None
        return decoding["num_classes"]

    @classmethod
    def load(cls, card, spec: InputSpec, data, progress: bool = True):
        from toolkit.data.detection_datasets import decode_resized, detection_splits

        train, val = detection_splits(card, root=data.root, synthetic=data.synthetic)
        decoding = card_decoding(card, train.classes)
        pixels = decode_resized(val, spec.height, spec.width, interpolation=card.input.interpolation, progress=progress)
        return cls(card, spec, train, val, decoding, pixels, eval_split=card.data_spec().val, labels=list(train.classes))

    @property
    def synthetic(self) -> bool:
        return bool(self.train.synthetic)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.spec.height, self.spec.width

    def data_description(self) -> dict:
        return {"source": Path(self.train.source).name, "synthetic": self.synthetic, "format": self.train.format,
                "train_images": len(self.train), "eval_images": len(self.val), "eval_split": self.eval_split,
                "classes": list(self.labels), "train_boxes": self.train.report["boxes"],
                "eval_boxes": self.val.report["boxes"], "annotations": {"train": self.train.report, "eval": self.val.report},
                "resize": "stretched to the input (boxes scale back per axis)"}

    def training_pixels(self) -> tuple[list, list, list]:
        """(images, boxes, labels) of the training split, shrunk to at most 1.5x the input side (decoded once)."""
        from toolkit.data.detection_datasets import decode_for_training

        if self._train_pixels is None:
            self._train_pixels = decode_for_training(self.train, int(1.5 * max(self.input_hw)),
                                                     interpolation=self.card.input.interpolation)
        return self._train_pixels

    def calibration_nhwc(self, count: int, seed: int = 0) -> np.ndarray:
        """`count` real training images stretched to the input, NHWC float32 in [0, 1] (before mean/std)."""
        from toolkit.data.detection_datasets import decode_resized
        from toolkit.data.detection_records import DetectionSplit

        rng = np.random.default_rng(seed)
        picked = sorted(rng.permutation(len(self.train))[:count])
        subset = DetectionSplit([self.train.samples[i] for i in picked], self.train.classes, self.train.source,
                                self.train.format, synthetic=self.train.synthetic)
        return decode_resized(subset, *self.input_hw, interpolation=self.card.input.interpolation).astype(np.float32) / 255.0

    def eval_inputs(self) -> Iterator[np.ndarray]:
        for i in range(len(self.eval_images)):
            yield normalize_nhwc_uint8(self.eval_images[i:i + 1], self.spec)

    def eval_count(self) -> int:
        return len(self.eval_images)

    def limit_eval(self, limit: int) -> dict:
        """Keep the first `limit` held-out images (annotation order) and their boxes."""
        from toolkit.data.detection_records import DetectionSplit

        total, keep = len(self.val.samples), self.val.samples[:limit]
        self.val = DetectionSplit(keep, self.val.classes, self.val.source, self.val.format, report=self.val.report,
                                  synthetic=self.val.synthetic)
        self.eval_images = self.eval_images[:limit]
        return {"eval_limit": limit, "evaluated": len(keep), "of": total, "unit": "images"}

    def end_to_end_inputs(self, count: int) -> list:
        """Up to `count` held-out image files as they are on disk (generated data has none), for the
        end-to-end FPS of the bundle's device script (toolkit.pipeline.end_to_end)."""
        return [s.path for s in self.val.samples if s.path is not None][:count]

    def example_batch(self, count: int = 8) -> np.ndarray:
        return normalize_nhwc_uint8(self.eval_images[:count], self.spec)

    def detections(self, outputs: np.ndarray, score_threshold: Optional[float] = None) -> list:
        """Decoded, suppressed detections per held-out image, boxes in the image's own pixels."""
        from toolkit.runtime.detect_common import device_detect

        common = device_detect()
        common.check_raw(outputs, self.decoding, *self.input_hw)
        sizes = [(s.height, s.width) for s in self.val.samples]
        return common.postprocess_batch(np.asarray(outputs), self.decoding, input_hw=self.input_hw, image_sizes=sizes,
                                        score_threshold=score_threshold)

    def metrics(self, outputs: np.ndarray, reference: Optional[np.ndarray]) -> dict:
        """COCO map50 (primary), map (0.5:0.95), map75 on the held-out split; agreement_map50: mAP@0.5
        against the dense FP32 model's confident detections (>= draw_threshold) as the truth."""
        from toolkit.tasks.detection_metrics import coco_map, detections_as_truth

        found = self.detections(outputs)
        out = coco_map(self.val.samples, self.labels, found)
        if reference is not None:
            dense = found if reference is outputs else self.detections(reference)
            truth = detections_as_truth(dense, self.val.samples, self.decoding["draw_threshold"])
            if any(len(t.boxes) for t in truth):
                out["agreement_map50"] = coco_map(truth, self.labels, found)["map50"]
        return out

    def torch_outputs(self, model) -> np.ndarray:
        """Raw outputs of a torch model on the held-out inputs; a shape the decoding cannot read is a one-line error."""
        import torch

        from toolkit.runtime.detect_common import device_detect

        model.eval()
        with torch.inference_mode():
            out = np.concatenate([model(torch.from_numpy(normalize_nhwc_uint8(self.eval_images[i:i + 16], self.spec))).numpy()
                                  for i in range(0, len(self.eval_images), 16)])
        try:
            device_detect().check_raw(out, self.decoding, *self.input_hw)
        except ValueError as exc:
            raise EdgeShrinkError(f"model card '{self.card.name}': {exc}") from None
        return out.astype(np.float32)

    def batches(self, batch_size: int, seed: int):
        from toolkit.tasks.detection_batches import detection_batches

        images, boxes, labels = self.training_pixels()
        return detection_batches(images, boxes, labels, self.spec, batch_size=batch_size, seed=seed)

    def train_loss(self, cfg):
        from toolkit.tasks.detection_loss import detection_loss

        return detection_loss(self.decoding, self.input_hw)

    def finetune(self, model, *, epochs: int, lr: float, distill: float, teacher, seed: int, progress: bool = True) -> dict:
        """Fine-tune a pruned detector (AdamW, cosine; detection loss blended with distillation from the dense model)."""
        from toolkit.tasks.detection_loss import detection_loss, trainable
        from toolkit.train.loop import TrainConfig, fit

        if epochs == 0:
            return {"epochs": 0}
        trainable(self.decoding)
        cfg = TrainConfig(epochs=epochs, batch_size=16, lr=lr, weight_decay=1e-4, warmup_epochs=0.3,
                          label_smoothing=0.0, distill_alpha=distill, seed=seed)
        batches, steps = self.batches(cfg.batch_size, seed)
        history = fit(model, cfg, batches, steps, detection_loss(self.decoding, self.input_hw, distill_alpha=distill),
                      lambda m: self.metrics(self.torch_outputs(m), None), "map50",
                      teacher=teacher if distill > 0 else None, progress=progress)
        return {"epochs": epochs, "final_map50": history["final"]["map50"],
                "per_epoch": [{k: e[k] for k in ("epoch", "loss", "map50", "seconds")} for e in history["epochs"]]}

    def grad_batches(self, count: int = 4, batch: int = 16):
        raise EdgeShrinkError("taylor importance needs a classification or segmentation loss; prune detectors with "
                              "importance l1, l2 or bn_scale (the card's or profile's pruning.importance)")

    def extra_sizes(self) -> Optional[dict]:
        return None

    def extras(self, runner) -> dict:
        """The decoding parameters devices read (manifest `detection`), and detections.png: held-out
        images with the truth (green) and the pruned INT8 TFLite file's detections (red)."""
        from toolkit.tasks.detection_extras import draw_examples

        out = {"detection": {**self.decoding, "input_hw": list(self.input_hw), "labels": list(self.labels),
                             "raw_output": "(1, priors, 4 box values + scores); no decoding or NMS in the file"}}
        name = next((n for n in ("pruned-tflite-int8", "pruned-tflite-fp32", "dense-torch-fp32") if n in runner.outputs), None)
        if name is not None:
            with runner.clock("report"):
                draw_examples(runner.work / "detections.png", self, runner.outputs[name], title=f"{runner.name}: {name}")
            out["detection"]["examples_image"] = {"file": "detections.png", "artifact": name}
        return out
