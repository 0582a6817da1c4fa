"""A work limit on Torch-Pruning's index bookkeeping through flattens.

When a pruning group crosses a reshape that flattens channels with space, Torch-Pruning maps every
channel index to the H*W indices it becomes (`_FlattenIndexMapping`), one Python object each. Graphs
that fold tokens back into channels and flatten again (ReLU linear attention, EfficientViM's
state-space mixer) multiply those lists along the way: EfficientViM-M1 at 64 px made 50 million of
them in 144 s on its way to the 21 GB that the OOM killer ended. Measured at 64-224 px, DeiT,
ConvNeXt, ResNet, MobileNetV3, FastViT, MobileViT, MixNet and GhostNetV2 need none, EfficientViT-B0
65 thousand. Past MAX_FLATTENED_INDICES one pruner build stops with IndexGrowth: a count of work,
not of seconds or bytes, so the refusal is the same on a busy machine and comes in seconds."""

from __future__ import annotations

import contextlib

MAX_FLATTENED_INDICES = 2_000_000


class IndexGrowth(RuntimeError):
    """Torch-Pruning's flatten index lists grew past the limit while building one pruner."""


@contextlib.contextmanager
def flatten_index_limit(limit: int = MAX_FLATTENED_INDICES):
    """Inside the block, Torch-Pruning raises IndexGrowth once its flatten mappings have produced
    more than `limit` indices in total. Without Torch-Pruning's private mapping class (another
    version), nothing is limited."""
    try:
        from torch_pruning.dependency import index_mapping

        mapping = index_mapping._FlattenIndexMapping
        original = mapping.__call__
    except (ImportError, AttributeError):
        yield
        return
    produced = 0

    def counted(self, idxs):
        nonlocal produced
        if not self.reverse:
            produced += len(idxs) * self._stride
            if produced > limit:
                raise IndexGrowth(f"Torch-Pruning's channel indices through flattens passed {limit:,} (the model folds "
                                  "tokens into channels and flattens them again)")
        return original(self, idxs)

    mapping.__call__ = counted
    try:
        yield
    finally:
        mapping.__call__ = original
