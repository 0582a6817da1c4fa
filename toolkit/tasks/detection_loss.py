"""Training loss of anchor-free grid detectors, on the raw (N, A, 4 + C) head output the files hold.

Assignment (FCOS-style, per image): a grid prior is a candidate for a box when its centre lies in
the box and within `radius` strides of the box centre, and the box's largest side distance suits
the prior's level (level i takes distances up to 8 x stride_i, the last level all larger ones);
a box no candidate takes falls back to every prior inside it. A prior claimed by several boxes
takes the smallest. Loss: quality focal loss on the class scores (target: the IoU of the decoded
box with its box), GIoU on the decoded boxes, plus an L1 term on the raw box values (the linear
`ltrb` decoding has no gradient below zero). Decoding is the torch twin of
deploy/common/edgeshrink_detect.py (`decode_boxes_torch`); tests hold the two equal.

Distillation (fine-tuning after pruning): the pruned model's scores follow the dense teacher's
(BCE on sigmoid scores) and its boxes the teacher's where the teacher is confident."""

from __future__ import annotations

import numpy as np

from toolkit.core.errors import EdgeShrinkError

RADIUS = 2.5
BOX_WEIGHT, L1_WEIGHT = 2.0, 0.5


def trainable(decoding: dict) -> None:
    """Refuse decodings this loss cannot train (anchor-based or softmax/objectness scores)."""
    if decoding["decoder"] != "grid" or decoding["score_activation"] != "sigmoid" or decoding["objectness"]:
        raise EdgeShrinkError("training and fine-tuning here need an anchor-free grid detector with sigmoid class scores "
                              "and no objectness (detection.decoder: grid); train anchor-based models outside and give "
                              "their checkpoint, or run with finetune_epochs: 0")


def decode_boxes_torch(raw, priors, encoding: str):
    """(B, A, 4) boxes [x1, y1, x2, y2] in input pixels from raw (B, A, K) and grid priors (A, 4)."""
    import torch

    v, centre, stride = raw[..., :4], priors[:, :2], priors[:, 2:3]
    if encoding in ("ltrb", "ltrb_exp"):
        d = (v.clamp(min=0) if encoding == "ltrb" else v.clamp(max=float(np.log(1000 / 16))).exp()) * stride
        return torch.cat([centre - d[..., :2], centre + d[..., 2:]], -1)
    c = centre + v[..., :2] * stride
    size = v[..., 2:].clamp(max=float(np.log(1000 / 16))).exp() * stride
    return torch.cat([c - size / 2, c + size / 2], -1)


def _pair_iou(a, b, *, generalized: bool = False):
    """IoU (or GIoU) of matching rows of boxes a, b (..., 4)."""
    import torch

    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    if not generalized:
        return iou
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1) + 1e-7
    return iou - (hull - union) / hull


def level_ranges(priors) -> tuple:
    """(lo, hi) distance range of each prior's level: level i takes (8 s_{i-1}, 8 s_i], the last up to infinity."""
    import torch

    strides = priors[:, 2]
    levels = torch.unique(strides)
    hi = torch.where(strides == levels.max(), torch.full_like(strides, float("inf")), strides * 8)
    lo = torch.zeros_like(strides)
    for smaller, larger in zip(levels[:-1], levels[1:]):
        lo = torch.where(strides == larger, smaller * 8, lo)
    return lo, hi


def assign(priors, targets, ranges):
    """(gt index (B, A), positive mask (B, A)) for targets (B, M, 5) [label, x1, y1, x2, y2] (label -1: padding)."""
    import torch

    cx, cy, s = (priors[:, i][None, :, None] for i in range(3))
    boxes, valid = targets[..., 1:][:, None], (targets[..., 0] >= 0)[:, None]      # (B, 1, M, 4), (B, 1, M)
    d = torch.stack([cx - boxes[..., 0], cy - boxes[..., 1], boxes[..., 2] - cx, boxes[..., 3] - cy], -1)
    inside = (d.min(-1).values > 0) & valid
    gcx, gcy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    near = ((cx - gcx).abs() < RADIUS * s) & ((cy - gcy).abs() < RADIUS * s)
    reach = d.max(-1).values
    fits = (reach > ranges[0][None, :, None]) & (reach <= ranges[1][None, :, None])
    strict = inside & near & fits
    orphan = ~strict.any(1, keepdim=True)                                            # boxes no prior takes
    candidate = strict | (inside & orphan)
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).expand_as(reach)
    area = torch.where(candidate, area, torch.full_like(area, float("inf")))
    best_area, index = area.min(-1)
    return index, torch.isfinite(best_area)


def quality_focal(logits, target, beta: float = 2.0):
    import torch.nn.functional as F

    weight = (logits.sigmoid() - target).abs().pow(beta)
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()


def _supervised(raw, targets, priors, ranges, encoding: str):
    """The loss against ground-truth boxes for one batch."""
    import torch

    index, positive = assign(priors, targets, ranges)
    matched = torch.gather(targets, 1, index[..., None].expand(-1, -1, 5))            # (B, A, 5)
    pred = decode_boxes_torch(raw, priors, encoding)
    num_pos = positive.sum().clamp(min=1).float()
    quality = torch.zeros_like(raw[..., 4:])
    iou = _pair_iou(pred[positive].detach(), matched[..., 1:][positive]).clamp(min=0.01)
    quality[positive, matched[..., 0][positive].long()] = iou
    cls = quality_focal(raw[..., 4:], quality) / num_pos
    if not positive.any():
        return cls
    giou = _pair_iou(pred[positive], matched[..., 1:][positive], generalized=True)
    box = (1 - giou).sum() / num_pos
    return cls + BOX_WEIGHT * box + L1_WEIGHT * _raw_l1(raw, matched, priors, positive, encoding) / num_pos


def _raw_l1(raw, matched, priors, positive, encoding: str):
    """L1 between the raw box values and the values that decode to the matched box exactly."""
    import torch

    p, b = priors[None].expand(raw.shape[0], -1, -1)[positive], matched[..., 1:][positive]
    if encoding in ("ltrb", "ltrb_exp"):
        d = torch.stack([p[:, 0] - b[:, 0], p[:, 1] - b[:, 1], b[:, 2] - p[:, 0], b[:, 3] - p[:, 1]], -1) / p[:, 2:3]
        want = d if encoding == "ltrb" else d.clamp(min=1e-3).log()
    else:
        centre, size = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]).clamp(min=1e-3)
        want = torch.cat([(centre - p[:, :2]) / p[:, 2:], (size / p[:, 2:]).log()], -1)
    return (raw[..., :4][positive] - want).abs().sum()


def _distilled(raw, teacher):
    """Follow the teacher: BCE towards its scores everywhere, its boxes where it is confident."""
    import torch.nn.functional as F

    t_scores = teacher[..., 4:].sigmoid()
    cls = F.binary_cross_entropy_with_logits(raw[..., 4:], t_scores, reduction="mean") * 10.0
    weight = t_scores.max(-1).values
    box = (raw[..., :4] - teacher[..., :4]).abs().sum(-1)
    return cls + (box * weight).sum() / weight.sum().clamp(min=1e-6)


def detection_loss(decoding: dict, input_hw: tuple, *, distill_alpha: float = 0.0):
    """loss_fn(raw (B, A, K), targets (B, M, 5), teacher_raw=None) for toolkit.train.loop."""
    import torch

    from toolkit.runtime.detect_common import device_detect

    trainable(decoding)
    priors = torch.from_numpy(device_detect().make_priors(decoding, *input_hw))
    ranges = level_ranges(priors)
    encoding = decoding["box_encoding"]

    def loss_fn(raw, targets, teacher_raw=None):
        loss = _supervised(raw, targets, priors, ranges, encoding)
        if teacher_raw is not None and distill_alpha > 0:
            loss = (1 - distill_alpha) * loss + distill_alpha * _distilled(raw, teacher_raw)
        return loss

    return loss_fn
