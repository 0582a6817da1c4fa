"""Weight-only computations folded into constants before litert-torch converts
(toolkit.convert.constant_fold): a relative position bias gathered from a table by a fixed index and
one computed by an MLP over fixed coordinates and gathered likewise (timm's RelPosMlp) become buffers with the same outputs, random ops and
oversized values stay in the graph, and the litert-torch files of a net with both biases run in one
XNNPACK partition (without folding, GATHER_ND stays outside it)."""

from __future__ import annotations

import textwrap

import torch

from toolkit.convert.constant_fold import fold_constants, fold_module

RELPOS_NET = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class RelPosNet(nn.Module):
        """Attention over 4x4 patches with two relative position biases (timm's table and MLP forms)."""

        def __init__(self, dim=16, heads=2, side=4):
            super().__init__()
            self.heads, n = heads, side * side
            self.stem = nn.Conv2d(3, dim, 8, stride=8)
            self.qkv, self.proj, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 4)
            self.table = nn.Parameter(torch.randn((2 * side - 1) ** 2, heads) * 0.1)
            coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")).flatten(1)
            relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + side - 1
            self.register_buffer("index", relative[..., 0] * (2 * side - 1) + relative[..., 1], persistent=False)
            table = torch.stack(torch.meshgrid(*[torch.arange(1 - side, side).float()] * 2, indexing="ij"), -1)
            self.register_buffer("coords", torch.sign(table) * torch.log1p(table.abs()), persistent=False)
            self.mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, heads))

        def forward(self, x):
            t = self.stem(x).flatten(2).transpose(1, 2)
            b, n, c = t.shape
            q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            bias = self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1)
            bias = bias + self.mlp(self.coords).view(-1, self.heads)[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1)
            attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5 + bias).softmax(-1)
            t = t + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
            return self.head(t.mean(1))
''')


def _relpos_net():
    namespace: dict = {}
    exec(compile(RELPOS_NET, "relpos_net.py", "exec"), namespace)  # noqa: S102 - the test's own source
    torch.manual_seed(0)
    return namespace["RelPosNet"]().eval()


def test_weight_only_computations_fold_with_the_same_outputs():
    model = _relpos_net()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        program = torch.export.export(model, (x,))
        folded, count = fold_constants(program, x)
        reference, got = model(x), folded.module()(x)
    assert count >= 1  # both biases and their sum: one value the attention reads
    targets = {str(n.target) for n in folded.graph_module.graph.nodes if n.op == "call_function"}
    assert not any("index" in t or "relu" in t for t in targets), targets
    assert float((got - reference).abs().max()) <= 1e-6 * float(reference.abs().max())


def test_random_and_oversized_values_stay_in_the_graph():
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4, 4))

        def forward(self, x):
            return x + torch.rand(4, 4) * 0 + self.weight.repeat(64, 64).sum()

    with torch.no_grad():
        module = torch.export.export(Noisy(), (torch.zeros(4, 4),)).module()
    assert fold_module(module, max_elements=1000) == 0
    assert any("rand" in str(n.target) for n in module.graph.nodes)


def test_litert_relative_position_biases_are_one_xnnpack_partition(tmp_path):
    from tests.stages.litert_helpers import assert_litert_int8_one_partition

    assert_litert_int8_one_partition(tmp_path, RELPOS_NET, "relpos_net.py:RelPosNet")
