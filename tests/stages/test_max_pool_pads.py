"""Max pools behind a -inf pad (timm's MaxPool2dSame) read an edge-padded map in litert-torch's
program (toolkit.convert.max_pool_pads): the same maxima, pads other ops read or that could leave a
window without a real cell are kept, and a net with such pools converts to one XNNPACK partition in
FP32 and INT8 (litert-torch's PADV2 of -inf was left outside)."""

from __future__ import annotations

import textwrap

import torch
import torch.nn as nn
import torch.nn.functional as F


def _neg_inf(x, pads):
    return F.pad(x, pads, value=-float("inf"))


class Pools(nn.Module):
    def forward(self, x):
        kept_read_elsewhere = _neg_inf(x, (1, 1, 1, 1))
        return (F.max_pool2d(_neg_inf(x, (1, 1, 0, 2)), 3, 1).sum()  # replaced
                + nn.MaxPool2d(3, 2)(_neg_inf(x, (0, 1, 0, 1))).sum()  # replaced
                + F.max_pool2d(F.pad(x, (1, 0, 1, 0), "constant", float("-inf")), 2, 2).sum()  # mode given: replaced
                + kept_read_elsewhere.amax() + F.max_pool2d(kept_read_elsewhere, 3, 1).sum()
                + F.max_pool2d(_neg_inf(x, (2, 0, 0, 0)), 2, 1).sum()  # a window of padding only: kept
                + F.max_pool2d(_neg_inf(x, (1, 1, 1, 1)), 3, 2, ceil_mode=True).sum()  # kept
                + F.max_pool2d(_neg_inf(x, (1, 1, 1, 1)), 2, 1, dilation=2).sum())  # kept


def test_qualifying_pads_become_edge_pads_and_the_maxima_stay():
    from toolkit.convert.max_pool_pads import max_pools_on_edge_pads

    x = torch.randn(2, 3, 8, 9)
    model = Pools().eval()
    program = torch.export.export(model, (x,))
    edited, replaced = max_pools_on_edge_pads(program, x)
    assert replaced == 3
    pads = [n for n in edited.module().graph.nodes if "pad" in str(n.target)]
    assert len(pads) == 4, pads  # the four kept
    for sample in (x, torch.randn(2, 3, 8, 9) * 100 - 50):
        assert torch.equal(edited.module()(sample), model(sample))


def test_timm_same_max_pool_matches():
    from timm.layers import create_pool2d

    from toolkit.convert.max_pool_pads import max_pools_on_edge_pads

    pool = create_pool2d("max", 3, stride=2, padding="same").eval()
    x = torch.randn(1, 4, 11, 10)
    edited, replaced = max_pools_on_edge_pads(torch.export.export(pool, (x,)), x)
    assert replaced == 1 and torch.equal(edited.module()(x), pool(x))


SAME_POOL_NET = textwrap.dedent('''
    import torch.nn as nn
    from timm.layers import create_pool2d


    class SamePoolNet(nn.Module):  # a BiT / EfficientDet-style stem: conv, TF-SAME max pool
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.pool = create_pool2d("max", 3, stride=2, padding="same")
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.head(self.pool(self.stem(x).relu()))
''')


def test_litert_same_max_pool_net_is_one_xnnpack_partition(tmp_path):
    from tests.stages.litert_helpers import assert_litert_int8_one_partition

    assert_litert_int8_one_partition(tmp_path, SAME_POOL_NET, "same_pool.py:SamePoolNet")
