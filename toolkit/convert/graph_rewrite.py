"""Torch-level rewrites that keep the maths and let LiteRT's XNNPACK delegate take the whole graph.

Measured with toolkit.runtime.delegate on onnx2tf 1.29.24 + TensorFlow 2.19 + ai-edge-litert 2.1.0:
- nn.Hardsigmoid exports as ONNX HardSigmoid, which the TFLite converter turns into RELU_0_TO_1;
  XNNPACK takes RELU_0_TO_1 neither in FP32 nor in INT8 (one partition break each).
- nn.Hardswish (and x * relu6(x + 3) / 6 written out) is fused by the TFLite converter into
  HARD_SWISH; XNNPACK takes it in FP32 but not in INT8.
- relu6(x + 3) * (1/6) stays ADD(+RELU6) and MUL (often folded into the neighbouring conv), and
  relu6(x + 3) * (x * (1/6)) is not matched by the converter's hard-swish pattern, so it stays
  ADD(+RELU6), MUL, MUL: all delegated in FP32 and full-integer INT8.
Measured the same way on litert-torch 0.10 + ai-edge-quantizer (the second converter): its INT8
files keep the ADD of the constant 3 outside XNNPACK (one partition break per activation, 17 on
MobileNetV3-Small); written as a 1x1 depthwise convolution with weight 1 and bias 3, the shift is
delegated (2 partitions: only the 2-D classifier head's ADD is left). `rewrite_for_delegates(...,
shift="conv")` gives that form.
The rewritten model's outputs equal the original's to float rounding (allclose, not bitwise)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_SIXTH = 1.0 / 6.0


class DelegateHardsigmoid(nn.Module):
    """hardsigmoid(x) = relu6(x + 3) * (1/6): ADD(+RELU6) and MUL in TFLite, not RELU_0_TO_1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) * _SIXTH


class DelegateHardswish(nn.Module):
    """hardswish(x) = relu6(x + 3) * (x * (1/6)): this operand order escapes the TFLite
    converter's HARD_SWISH fusion (which XNNPACK does not take in INT8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) * (x * _SIXTH)


def _plus_three_by_conv(x: torch.Tensor) -> torch.Tensor:
    """x + 3 as a 1x1 depthwise convolution (weight 1, bias 3) for N x C x H x W inputs: the form
    litert-torch's INT8 files keep inside XNNPACK. Other ranks add the constant (litert-torch
    lowers a 1x1 conv of an N x C x 1 x 1 view to a BATCH_MATMUL it then rejects)."""
    if x.dim() != 4:
        return x + 3.0
    channels = x.shape[1]
    return F.conv2d(x, torch.ones(channels, 1, 1, 1, dtype=x.dtype, device=x.device),
                    torch.full((channels,), 3.0, dtype=x.dtype, device=x.device), groups=channels)


class ConvShiftHardsigmoid(nn.Module):
    """hardsigmoid(x) = relu6(x + 3) * (1/6) with the shift as a depthwise conv (litert-torch INT8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(_plus_three_by_conv(x)) * _SIXTH


class ConvShiftHardswish(nn.Module):
    """hardswish(x) = relu6(x + 3) * (x * (1/6)) with the shift as a depthwise conv (litert-torch INT8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(_plus_three_by_conv(x)) * (x * _SIXTH)


def _depthwise_affine(x: torch.Tensor, scale: torch.Tensor, bias=None) -> torch.Tensor:
    """x * scale[c] (+ bias[c]) for N x C x H x W as a 1x1 depthwise convolution."""
    channels = x.shape[1]
    return F.conv2d(x, scale.reshape(channels, 1, 1, 1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                    groups=channels)


class ConvInstanceNorm2d(nn.Module):
    """nn.InstanceNorm2d (no running statistics) as MEAN, SUB, MUL, MEAN, eps by a depthwise conv's
    bias, SQRT, DIV and the affine by a depthwise conv (litert-torch INT8): its own form has RSQRT and
    an ADD of eps, which XNNPACK does not take in INT8. The divisor is sqrt(..) * 2 and the quotient
    * 2 so the converter does not fold x / sqrt(v) into x * rsqrt(v)."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        self.eps = float(norm.eps)
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        channels = x.shape[1]
        d = x - x.mean((2, 3), keepdim=True)
        var = (d * d).mean((2, 3), keepdim=True)
        var = F.conv2d(var, torch.ones(channels, 1, 1, 1, dtype=x.dtype), torch.full((channels,), self.eps, dtype=x.dtype),
                       groups=channels)
        y = d / (torch.sqrt(var) * 2.0) * 2.0
        if self.weight is None:
            return y
        return _depthwise_affine(y, self.weight, self.bias)


class ConvGroupNorm(nn.Module):
    """nn.GroupNorm (and subclasses computing it, timm's GroupNorm / GroupNorm1) on 4-D maps in the
    form of ConvInstanceNorm2d, the per-channel means averaged over each group by a 1x1 convolution
    with block-diagonal weights 1 / (C / G) (eps as its bias for the variance): litert-torch's own
    form reshapes to groups and back with BROADCAST_TO, which XNNPACK takes in neither FP32 nor INT8,
    and has RSQRT and an ADD of eps."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.groups, self.eps = int(norm.num_groups), float(norm.eps)
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
        channels = x.shape[1]
        per = channels // self.groups
        average = torch.block_diag(*[torch.full((per, per), 1.0 / per, dtype=x.dtype)] * self.groups)
        average = average.reshape(channels, channels, 1, 1)
        d = x - F.conv2d(x.mean((2, 3), keepdim=True), average)
        var = F.conv2d((d * d).mean((2, 3), keepdim=True), average, torch.full((channels,), self.eps, dtype=x.dtype))
        y = d / (torch.sqrt(var) * 2.0) * 2.0
        if self.weight is None:
            return y
        return _depthwise_affine(y, self.weight, self.bias)


class ConvPReLU(nn.Module):
    """PReLU as relu(x + x) * ((1 - a) / 2) + a * x, the per-channel scales as depthwise convs
    (litert-torch INT8: its PRELU is not taken by XNNPACK in INT8)."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.weight = prelu.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return F.prelu(x, self.weight)
        slope = self.weight.reshape(-1).expand(x.shape[1]) if self.weight.numel() == 1 else self.weight.reshape(-1)
        return _depthwise_affine(F.relu(x + x), (1.0 - slope) / 2.0) + _depthwise_affine(x, slope)


_REPLACEMENTS = {nn.Hardsigmoid: DelegateHardsigmoid, nn.Hardswish: DelegateHardswish}
_CONV_SHIFT = {DelegateHardsigmoid: ConvShiftHardsigmoid, DelegateHardswish: ConvShiftHardswish}
# litert-torch INT8 only (shift="conv"): onnx2tf's files get the same forms from toolkit.convert.onnx_rewrite
_CONV_ONLY = {nn.InstanceNorm2d: ConvInstanceNorm2d, nn.PReLU: ConvPReLU}


def _conv_only_form(module: nn.Module):
    """The litert-torch INT8 form replacing `module`, or None (InstanceNorm with running statistics
    keeps its own; a GroupNorm subclass only when it computes group norm)."""
    if isinstance(module, nn.InstanceNorm2d) and module.track_running_stats:
        return None
    if isinstance(module, nn.GroupNorm):
        return ConvGroupNorm if _computes_group_norm(module) else None
    return _CONV_ONLY.get(type(module))


def _computes_group_norm(norm: nn.GroupNorm) -> bool:
    """Whether `norm` (a GroupNorm subclass may change its forward) gives F.group_norm's output on a
    random 4-D map."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, norm.num_channels, 5, 6, generator=generator)
    try:
        with torch.no_grad():
            got, want = norm(x), F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    except Exception:  # noqa: BLE001 - a subclass that takes other inputs: keep it as it is
        return False
    return got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def delegate_hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return F.relu6(x + 3.0) * _SIXTH


def delegate_hardswish(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return F.relu6(x + 3.0) * (x * _SIXTH)


def conv_shift_hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return F.relu6(_plus_three_by_conv(x)) * _SIXTH


def conv_shift_hardswish(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return F.relu6(_plus_three_by_conv(x)) * (x * _SIXTH)


def _rewrite_functional(model: nn.Module, hardswish: bool, shift: str) -> tuple[nn.Module, list[str]]:
    """F.hardswish / F.hardsigmoid calls inside forwards, rewritten with torch.fx. Returns the
    model unchanged when there are none, or when it cannot be traced (changes then say so)."""
    import torch.fx

    conv = shift == "conv"
    targets = {F.hardsigmoid: conv_shift_hardsigmoid if conv else delegate_hardsigmoid}
    if hardswish:
        targets[F.hardswish] = conv_shift_hardswish if conv else delegate_hardswish
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - data-dependent control flow etc.; modules are still rewritten
        return model, [f"functional calls not checked: torch.fx cannot trace the model ({type(exc).__name__})"]
    changes = []
    for node in traced.graph.nodes:
        if node.op == "call_function" and node.target in targets:
            changes.append(f"{node.name}: F.{node.target.__name__} -> {targets[node.target].__name__}")
            node.target = targets[node.target]
    if not changes:
        return model, []
    traced.recompile()
    return traced, changes


def rewrite_for_delegates(model: nn.Module, *, hardswish: bool = True, shift: str = "add") -> tuple[nn.Module, list[str]]:
    """Replace nn.Hardswish / nn.Hardsigmoid modules (in place) with delegate-friendly forms.
    `hardswish=False` keeps nn.Hardswish (FP32 HARD_SWISH is one delegated XNNPACK op, a little
    faster than ADD+MUL+MUL) for files that will only be deployed in FP32. `shift="conv"` writes the
    `+ 3` as a depthwise convolution (for litert-torch's INT8 files; "add" suits onnx2tf's).
    Returns (model, changes) where changes lists "name: Old -> New" for every replacement.
    F.hardswish / F.hardsigmoid calls inside a forward are rewritten with torch.fx when there are
    any (the model then comes back as an fx.GraphModule with the same state_dict keys);
    `functional_activations` checks that none are left."""
    model, functional = _rewrite_functional(model, hardswish, shift)  # first: fx treats torch.nn's own modules as leaves
    changes: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            conv_only = _conv_only_form(child) if shift == "conv" else None
            if conv_only is not None:
                setattr(parent, child_name, conv_only(child))
                full = f"{parent_name}.{child_name}" if parent_name else child_name
                changes.append(f"{full}: {type(child).__name__} -> {conv_only.__name__}")
                continue
            new = _REPLACEMENTS.get(type(child))
            if new is None or (new is DelegateHardswish and not hardswish):
                continue
            if shift == "conv":
                new = _CONV_SHIFT[new]
            setattr(parent, child_name, new())
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            changes.append(f"{full}: {type(child).__name__} -> {new.__name__}")
    return model, changes + functional


def functional_activations(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of hardswish/hardsigmoid ops the model still calls after rewriting (e.g. F.hardswish
    in a forward), found by tracing one forward pass with TorchScript. Empty means none left."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.jit.trace(model.eval(), example, check_trace=False).inlined_graph
    return sorted({n.kind() for n in graph.nodes() if n.kind() in ("aten::hardswish", "aten::hardswish_",
                                                                       "aten::hardsigmoid", "aten::hardsigmoid_")})
