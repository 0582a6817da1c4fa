"""Classification task pieces: augmented batches, loss (with distillation), top-1 evaluation."""

from __future__ import annotations

import math

import numpy as np

from toolkit.data.imagefolder import ImageSplit
from toolkit.data.preprocess import InputSpec


def _to_tensor(images_u8: np.ndarray, spec: InputSpec):
    """uint8 NHWC numpy -> normalised float NCHW torch tensor."""
    import torch

    from toolkit.data.preprocess import normalize_nhwc_uint8

    return torch.from_numpy(normalize_nhwc_uint8(images_u8, spec))


def _crop_params(rng: np.random.Generator, n: int, h: int, w: int, *, scale, ratio) -> list[tuple]:
    """(top, left, crop_h, crop_w, flip) for n images; draws from `rng` in a fixed order, so
    every rank of a distributed run draws the same parameters for the whole global batch."""
    params = []
    for _ in range(n):
        for _ in range(10):
            area = h * w * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                break
        else:
            cw, ch = w, h
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        params.append((top, left, ch, cw, rng.random() < 0.5))
    return params


def augment_batch(images_u8: np.ndarray, rng: np.random.Generator, out_hw: tuple[int, int],
                  scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), *, keep: slice = slice(None)) -> np.ndarray:
    """RandomResizedCrop + horizontal flip on a uint8 NHWC batch (torch bilinear resize).
    Crop parameters are drawn for the whole batch; only the images in `keep` are produced."""
    import torch
    import torch.nn.functional as F

    n, h, w, _ = images_u8.shape
    params = _crop_params(rng, n, h, w, scale=scale, ratio=ratio)[keep]
    chosen = images_u8[keep]
    out = np.empty((len(chosen), out_hw[0], out_hw[1], 3), np.uint8)
    for i, (top, left, ch, cw, flip) in enumerate(params):
        crop = torch.from_numpy(np.ascontiguousarray(chosen[i, top:top + ch, left:left + cw])).permute(2, 0, 1)
        crop = F.interpolate(crop[None].float(), size=out_hw, mode="bilinear", align_corners=False)[0]
        if flip:
            crop = crop.flip(-1)
        out[i] = crop.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return out


def train_batches(split: ImageSplit, spec: InputSpec, batch_size: int, seed: int, augment: bool = True, *,
                  shard: slice = slice(None)):
    """Return (batches(epoch) -> iterator of (x, y), steps_per_epoch). Drops the last partial batch.
    `batch_size` is the global batch; `shard` (DistContext.shard) keeps one process's slice of it,
    with the same sample order and augmentation as a single process would draw."""
    import torch

    steps = len(split) // batch_size

    def batches(epoch: int):
        rng = np.random.default_rng(seed * 1000 + epoch)
        order = rng.permutation(len(split))
        for s in range(steps):
            idx = np.sort(order[s * batch_size:(s + 1) * batch_size])
            if augment:
                imgs = augment_batch(split.images[idx], rng, (spec.height, spec.width), keep=shard)
            else:
                imgs = split.images[idx[shard]]
            yield _to_tensor(imgs, spec), torch.from_numpy(split.labels[idx[shard]])

    return batches, steps


def classification_loss(label_smoothing: float, distill_alpha: float, temperature: float):
    """Cross-entropy with label smoothing, blended with KL to a teacher's soft targets."""
    import torch.nn.functional as F

    def loss_fn(logits, y, teacher_logits=None):
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        if teacher_logits is not None and distill_alpha > 0:
            t = temperature
            kd = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean") * t * t
            loss = (1 - distill_alpha) * loss + distill_alpha * kd
        return loss

    return loss_fn


def torch_logits(model, split: ImageSplit, spec: InputSpec, batch_size: int = 256) -> np.ndarray:
    """Logits of a torch model over a whole split (eval mode, no grad)."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(split), batch_size):
            outs.append(model(_to_tensor(split.images[s:s + batch_size], spec)).numpy())
    return np.concatenate(outs)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())
