"""Models Torch-Pruning cannot trace as a whole (a channel shuffle between blocks) are pruned
inside the parts it can trace; every part keeps its input and output widths."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from toolkit.config.pruning import PruneConfig
from toolkit.prune.prune import UnreachableTarget, count_macs_params, prune

torch.set_num_threads(1)


def shuffle(x, groups: int = 2):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleBlock(nn.Module):
    """Split, a conv branch on one half, concat, channel shuffle (the ShuffleNetV2 unit)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(nn.Conv2d(half, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                                    nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                    nn.BatchNorm2d(hidden), nn.Conv2d(hidden, half, 1, bias=False),
                                    nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        keep, work = x.chunk(2, dim=1)
        return shuffle(torch.cat([keep, self.branch(work)], 1))


class ShuffleNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(*[ShuffleBlock(32, 64) for _ in range(3)])
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def test_channel_shuffle_model_is_pruned_inside_its_blocks():
    torch.manual_seed(0)
    model = ShuffleNetLike().eval()
    x = torch.randn(2, 3, 32, 32)
    dense_macs, _ = count_macs_params(model, (2, 3, 32, 32))
    result = prune(model, example_input=x, cfg=PruneConfig(target_macs=0.6, round_to=8), progress=False)
    macs, _ = count_macs_params(model, (2, 3, 32, 32))
    assert macs <= 0.6 * dense_macs
    assert model(x).shape == (2, 10)
    assert all(block.branch[0].out_channels < 64 for block in model.blocks)  # the hidden widths shrank
    assert all(block.branch[5].out_channels == 16 for block in model.blocks)  # the block outputs did not
    assert result.pruning_history and result.pruning_history[0][0].startswith("blocks.")


def test_torchvision_shufflenet_v2_prunes_and_says_how_far_it_could_go():
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    try:
        prune(model, example_input=x, cfg=PruneConfig(target_macs=0.3), progress=False)
        raise AssertionError("30 % of the MACs should be out of reach: the stage widths are fixed")
    except UnreachableTarget as exc:
        reached = exc.reached
        assert "the most this model allows is" in str(exc)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    dense = count_macs_params(model, (1, 3, 64, 64))[0]
    prune(model, example_input=x, cfg=PruneConfig(target_macs=min(0.99, reached + 0.02)), progress=False)
    assert count_macs_params(model, (1, 3, 64, 64))[0] < 0.9 * dense
    assert model(x).shape == (1, 10)


def test_the_search_inside_parts_spends_the_trial_budget():
    """The per-part search for unsafe groups counts against max_trials like the rest of the prune
    (it once ran unbounded: EfficientViM's parts took the zoo hours): a small budget refuses in one
    line naming the option to raise, and the model is left as it was."""
    import pytest

    from toolkit.prune.safety import BudgetSpent

    torch.manual_seed(0)
    model = ShuffleNetLike().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BudgetSpent, match=r"more than 3 trials .*pruning.max_trials"):
        prune(model, example_input=torch.randn(2, 3, 32, 32), cfg=PruneConfig(target_macs=0.6, round_to=8, max_trials=3),
              progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
