"""Torch-Pruning's index bookkeeping through flattens is a counted limit (toolkit.prune.index_limit).

A small CNN with EfficientViT-style ReLU linear attention (a user's own card in a hostile round)
made Torch-Pruning's tracing grow past 21 GB until the OOM killer ended the run; later the memory
ceiling refused it after 6 minutes and 17 GB. The count of flattened indices refuses it in seconds,
with the one line a refused prune gives, and the model is left as it was."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolkit.config.pruning import PruneConfig
from toolkit.prune.prune import prune
from toolkit.prune.safety import PruningRefused

torch.set_num_threads(1)


class FoldedTokenNet(nn.Module):
    """EfficientViT's ReLU linear attention on a small CNN: tokens folded into channels and back."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim), nn.ReLU())
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, c, h * w)
        q, k, v = F.relu(qkv[:, 0]), F.relu(qkv[:, 1]), qkv[:, 2]
        v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)
        out = (v @ k.transpose(-1, -2)) @ q
        out = out[:, :-1] / (out[:, -1:] + 1e-5)
        x = x + self.proj(out.reshape(b, c, h, w))
        return self.head(x.mean((2, 3)))


def test_runaway_index_bookkeeping_is_refused_in_seconds():
    torch.manual_seed(0)
    model = FoldedTokenNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    started = time.process_time()
    with pytest.raises(PruningRefused, match=r"IndexGrowth: .*passed 2,000,000.*--no-structured"):
        prune(model, example_input=torch.randn(2, 3, 64, 64), cfg=PruneConfig(target_macs=0.6), progress=False)
    assert time.process_time() - started < 120  # CPU seconds, generous: it took 14 s here, and 6 min before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_limit_is_lifted_after_the_build():
    from torch_pruning.dependency import index_mapping

    from toolkit.prune.index_limit import IndexGrowth, flatten_index_limit

    original = index_mapping._FlattenIndexMapping.__call__
    with pytest.raises(IndexGrowth), flatten_index_limit(limit=10):
        index_mapping._FlattenIndexMapping(stride=64)([index_mapping._helpers._HybridIndex(idx=0, root_idx=0)])
    assert index_mapping._FlattenIndexMapping.__call__ is original
