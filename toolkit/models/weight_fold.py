"""Convolutions that compute their weight in forward, folded to plain convolutions for deployment.

Weight standardisation (timm's StdConv2d/ScaledStdConv2d, used by ResNetV2-BiT, NFNets and ViT
hybrids), weight normalisation and other weight transforms are fixed once a model is in eval mode,
but exported as they are written they put the transform into the deployed graph: RSQRT,
BROADCAST_TO and a run-time filter that XNNPACK does not delegate, and an INT8 file that quantizes
the weight as an activation. Here each such module is replaced by a plain `nn.ConvNd` (or
`SamePadConv2d` for TF-style dynamic SAME padding) holding the weight its forward computes.

Which modules: an `nn.Conv1d/2d/3d` subclass that overrides `forward`, and any convolution whose
`weight` is a `torch.nn.utils.parametrize` parametrization. The weight is found by running the
module once on a probe input while `torch.nn.functional.convNd` records its arguments: exactly one
call, with the module's own stride, padding, dilation and groups, on the module's input (or on that
input padded TF-SAME style where the module says `same_pad`). Anything else is left as it is. The
replacement must give the module's outputs on the probe (max abs difference within `rtol` of the
output scale), else the module is kept. Folding depends only on the architecture, so a checkpoint
of a folded model reloads by folding a freshly built one and loading its state_dict."""

from __future__ import annotations

from typing import Optional

WEIGHTS_FOLDED_ATTR = "edgeshrink_weights_folded"  # set on a model folded here; checkpoints record it


def _conv_base(module):
    """The torch.nn convolution class `module` is an instance of (Conv1d/2d/3d), else None."""
    import torch.nn as nn

    for base in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(module, base):
            return base
    return None


def computes_weight(module) -> bool:
    """Whether `module` is a convolution whose forward computes the weight it convolves with."""
    from torch.nn.utils import parametrize

    base = _conv_base(module)
    if base is None:
        return False
    if parametrize.is_parametrized(module, "weight"):
        return True
    return (type(module) is not base and type(module).forward is not base.forward
            and not getattr(type(module), "convolves_its_weight", False))


def _plain_class(base, *, same_pad: bool):
    """The class a folded module becomes: its torch.nn base, or SamePadConv2d."""
    if not same_pad:
        return base
    from toolkit.models.same_pad_conv import SamePadConv2d

    return SamePadConv2d


def _probe(module):
    """A small seeded input for `module`: each spatial side covers the kernel twice plus a stride."""
    import torch

    spatial = [2 * (d * (k - 1) + 1) + s + 1 for k, s, d in zip(module.kernel_size, module.stride, module.dilation)]
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, module.in_channels, *spatial, generator=generator, dtype=module.weight.dtype)


def _recorded_call(module, x) -> Optional[tuple]:
    """(input, weight, bias, stride, padding, dilation, groups) of the one convNd call that
    `module(x)` makes, or None (no call, several, or not through torch.nn.functional)."""
    import torch
    import torch.nn.functional as F

    name = {1: "conv1d", 2: "conv2d", 3: "conv3d"}[len(module.kernel_size)]
    original = getattr(F, name)
    calls: list[tuple] = []

    def spy(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: PLR0917 - F.convNd's own signature
        calls.append((input, weight, bias, stride, padding, dilation, groups))
        return original(input, weight, bias, stride, padding, dilation, groups)

    setattr(F, name, spy)
    try:
        with torch.no_grad():
            out = module(x)
    finally:
        setattr(F, name, original)
    return (calls[0], out) if len(calls) == 1 else None


def _as_tuple(value, n: int):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def folded(module):
    """The plain convolution computing what `module` computes, or (None, reason)."""
    import torch

    base = _conv_base(module)
    x = _probe(module)
    recorded = _recorded_call(module, x)
    if recorded is None:
        return None, "its forward does not make exactly one convolution call"
    (inp, weight, bias, stride, padding, dilation, groups), out = recorded
    n = len(module.kernel_size)
    if (_as_tuple(stride, n) != tuple(module.stride) or _as_tuple(dilation, n) != tuple(module.dilation)
            or groups != module.groups or tuple(weight.shape) != tuple(module.weight.shape)):
        return None, "its convolution call differs from its own stride, dilation, groups or weight shape"
    same_pad = False
    if inp is not x:
        from toolkit.models.same_pad_conv import same_pads

        pads = same_pads(x.shape, kernel=module.kernel_size, stride=module.stride, dilation=module.dilation)
        same_pad = (n == 2 and bool(getattr(module, "same_pad", False)) and _as_tuple(padding, n) == (0,) * n
                    and torch.equal(inp, torch.nn.functional.pad(x, pads)))
        if not same_pad:
            return None, "it changes its input before the convolution"
    elif not (_as_tuple(padding, n) == tuple(module.padding) if not isinstance(padding, str) else padding == module.padding):
        return None, "its convolution call differs from its own padding"
    cls = _plain_class(base, same_pad=same_pad)
    plain = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                padding=0 if same_pad else module.padding, dilation=module.dilation, groups=module.groups,
                bias=bias is not None, device=module.weight.device, dtype=module.weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    plain.train(module.training)
    with torch.no_grad():
        got = plain(x)
    scale = float(out.abs().max())
    if got.shape != out.shape or not float((got - out).abs().max()) <= 1e-5 * max(scale, 1e-6):
        return None, "a plain convolution with its computed weight gives other outputs"
    return plain, ""


def fold_weights(model) -> tuple[object, list[str]]:
    """Replace every convolution that computes its weight by a plain one, in place (the root
    included). Returns (model, folded) with folded = ["path: Class.fold_weight", ...]; modules
    that cannot be folded are kept."""
    import torch.nn as nn

    holder = nn.Module()
    holder.add_module("model", model)
    done: list[str] = []
    for path, module in list(holder.named_modules()):
        if not path or not computes_weight(module):
            continue
        was_training = module.training
        module.eval()
        plain, _reason = folded(module)
        module.train(was_training)
        if plain is None:
            continue
        parent_path, _, child = path.rpartition(".")
        setattr(holder.get_submodule(parent_path), child, plain)
        done.append(f"{path.removeprefix('model.') if path != 'model' else '(root)'}: {type(module).__name__}.fold_weight")
    return holder.model, done


def has_weight_transforms(model) -> bool:
    """Whether any module of `model` is a convolution computing its weight in forward."""
    return any(computes_weight(m) for m in model.modules())
