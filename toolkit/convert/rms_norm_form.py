"""RMS norm in a form XNNPACK takes in litert-torch's INT8 files.

timm's RmsNorm / RmsNorm2d (MobileNetV5), torch's nn.RMSNorm and hand-written ones compute
x * rsqrt(mean(x * x) + eps) * weight: litert-torch emits RSQRT and an ADD of the tiny eps, which
XNNPACK does not take in INT8 (MobileNetV5-Base: 81 of each). The form here takes the mean and
adds eps in one convolution or FULLY_CONNECTED (eps as its bias), then SQRT and DIV, which
ai-edge-quantizer keeps float and XNNPACK runs inside its partition (runtime.tflite_check.
XNNPACK_FLOAT_ISLAND_OPS); the divisor is sqrt(..) * 2 and the quotient * 2 so the converter does not
fold it back into RSQRT.

Modules are recognised by what they compute, not by their class name: a module with `eps` and a
one-axis `normalized_shape` is probed on random inputs over the channel axis of N x C x H x W and
over the last axis, and replaced only where its output equals the RMS norm's, or the RMS norm followed
by the module's own `act` (timm's RmsNormAct2d); a norm with a bias is left alone."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

AXES = ("channels", "last")


class DelegateRmsNorm(nn.Module):
    """RMS norm over `axis` ("channels": dim 1 of N x C x H x W; "last": the last dim) in the form above."""

    def __init__(self, channels: int, eps: float, weight, axis: str):
        super().__init__()
        self.channels, self.eps, self.axis = int(channels), float(eps), axis
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channels
        if self.axis == "channels":
            mean_eps = F.conv2d(x * x, torch.full((1, c, 1, 1), 1.0 / c, dtype=x.dtype),
                                torch.full((1,), self.eps, dtype=x.dtype))
        else:
            mean_eps = F.linear(x * x, torch.full((1, c), 1.0 / c, dtype=x.dtype), torch.full((1,), self.eps, dtype=x.dtype))
        y = x / (torch.sqrt(mean_eps) * 2.0) * 2.0
        if self.weight is None:
            return y
        if self.axis == "channels":
            return F.conv2d(y, self.weight.reshape(c, 1, 1, 1).to(x.dtype), None, groups=c)
        return y * self.weight


def _shape_of(module) -> int | None:
    shape = getattr(module, "normalized_shape", None)
    shape = (shape,) if isinstance(shape, int) else tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else ()
    return int(shape[0]) if len(shape) == 1 else None


def _computes_rms_norm(module: nn.Module, *, channels: int, eps: float, weight, axis: str, then=None) -> bool:
    if weight is not None and weight.dtype != torch.float32:  # the form is float32 (what litert-torch converts)
        return False
    generator = torch.Generator().manual_seed(0)
    shape = (2, channels, 3, 3) if axis == "channels" else (2, 5, channels)
    x = torch.randn(*shape, generator=generator) * 3.0
    dim = 1 if axis == "channels" else -1
    was_training = module.training
    try:
        with torch.no_grad():
            expected = x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + eps)
            if weight is not None:
                expected = expected * (weight.reshape(1, -1, 1, 1) if axis == "channels" else weight)
            expected = then(expected) if then is not None else expected
            got = module.eval()(x)
            return (isinstance(got, torch.Tensor) and got.shape == expected.shape
                    and torch.allclose(got, expected, rtol=1e-4, atol=1e-5))
    except Exception:  # noqa: BLE001 - a module that cannot take this layout (or dtype) does not compute it
        return False
    finally:
        module.train(was_training)


def rms_norm_forms(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Replace (in place) every submodule that computes an RMS norm with DelegateRmsNorm; returns
    (model, changes) with "name: Old -> DelegateRmsNorm(axis)" per replacement."""
    changes: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            channels, eps = _shape_of(child), getattr(child, "eps", None)
            if eps is None and hasattr(child, "eps"):  # nn.RMSNorm's default: the dtype's machine epsilon
                eps = float(torch.finfo(torch.float32).eps)
            if channels is None or not isinstance(eps, float) or getattr(child, "bias", None) is not None:
                continue
            weight = getattr(child, "weight", None)
            if weight is not None and (not isinstance(weight, torch.Tensor) or weight.numel() != channels):
                continue
            act = getattr(child, "act", None)  # timm's norm + activation layers (RmsNormAct2d): the norm, then .act
            tries = [(a, None) for a in AXES] + ([(a, act) for a in AXES] if isinstance(act, nn.Module) else [])
            found = next(((a, then) for a, then in tries if _computes_rms_norm(child, channels=channels, eps=eps, weight=weight,
                                                             axis=a, then=then)),
                         None)
            if found is None:
                continue
            axis, then = found
            form = DelegateRmsNorm(channels, eps, weight, axis)
            form = form if then is None else nn.Sequential(form, then)
            setattr(parent, child_name, form.train(child.training))
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            changes.append(f"{full}: {type(child).__name__} -> DelegateRmsNorm({axis})" + (f" + {type(then).__name__}" if then else ""))
    return model, changes
