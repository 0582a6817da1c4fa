"""Softmax, scaled-dot-product attention, layer norm, GELU, nearest upsampling, average pooling,
padded max pooling, reflect / replicate padding and L2 normalisation in the forms XNNPACK takes, for litert-torch's files.

litert-torch lowers `F.scaled_dot_product_attention` (timm's fused attention) into EXP and
REDUCE_MAX that ai-edge-quantizer leaves float, so the INT8 file is not full-integer (MobileViT-XXS,
EfficientFormerV2-S0), and a plain SOFTMAX is an INT8 op XNNPACK does not take. While
`delegate_functions()` is active (around torch.export of a model bound for an XNNPACK target),
softmax is computed as exp(y) = sigmoid(y) / sigmoid(-y) of y = x - max over its sum, as the ONNX
rewrite does for onnx2tf (toolkit.convert.onnx_rewrite), and attention is written out as matmuls
around that softmax. The DIVs stay float in the INT8 file (XNNPACK runs them inside its partition:
runtime.tflite_check.XNNPACK_FLOAT_ISLAND_OPS). Functions, not modules, because models call them
inside their forwards (`attn.softmax(-1)`, `F.scaled_dot_product_attention(q, k, v)`)."""

from __future__ import annotations

import contextlib
import math


def _max_keepdim(x, dim: int):
    """max over `dim`, kept as size 1, as a 2-D max pool over a (1, rest, 1, n) view: litert-torch's
    REDUCE_MAX stays float in the INT8 file (ai-edge-quantizer does not quantize it); MAX_POOL_2D is
    INT8 and XNNPACK takes it."""
    import torch.nn.functional as F

    last = x.movedim(dim, -1)
    n = last.shape[-1]
    top = F.max_pool2d(last.reshape(1, -1, 1, n), kernel_size=(1, n))
    return top.reshape(*last.shape[:-1], 1).movedim(-1, dim)


def _sigmoid_softmax(x, dim: int):
    import torch

    if x.shape[dim] == 1:  # one token: softmax is 1 (x - max is 0 and its INT8 SUB gets a scale XNNPACK refuses)
        return torch.ones_like(x)
    top = _max_keepdim(x, dim)
    e = torch.sigmoid(x - top) / torch.sigmoid(top - x)
    return e / e.sum(dim=dim, keepdim=True)


def _repeat_to(x, lead: tuple):
    """`x` with its leading (batch, head) dims repeated up to `lead` by two-input concatenations: a
    key or value shared by all heads (multi-query attention) otherwise becomes the filter of a
    FULLY_CONNECTED computed at run time, which XNNPACK refuses; BROADCAST_TO is no better."""
    import torch

    x = x.reshape(*(1,) * (len(lead) + 2 - x.dim()), *x.shape)
    for axis, want in enumerate(lead):
        while x.shape[axis] < want:
            x = torch.cat([x, x.narrow(axis, 0, min(x.shape[axis], want - x.shape[axis]))], axis)
    return x


def _copies(x, count: int, axis: int):
    """`count` copies of `x` along a new axis at `axis`, by two-input concatenations."""
    import torch

    x = x.unsqueeze(axis)
    while x.shape[axis] < count:
        x = torch.cat([x, x.narrow(axis, 0, min(x.shape[axis], count - x.shape[axis]))], axis)
    return x


def _nearest_factors(x, size, scale_factor) -> tuple[int, int] | None:
    """Whole-number (height, width) upsampling factors of a 4-D nearest resize, else None."""
    if x.dim() != 4:
        return None
    h, w = x.shape[-2:]
    if size is not None:
        sh, sw = (size, size) if isinstance(size, int) else tuple(size)
        factors = (sh / h, sw / w)
    elif scale_factor is not None:
        factors = (scale_factor, scale_factor) if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
    else:
        return None
    if any(float(f) != int(f) or int(f) < 1 for f in factors) or factors == (1, 1):
        return None
    return int(factors[0]), int(factors[1])


def _nearest_upsample(x, sh: int, sw: int):
    """Nearest upsampling by whole factors as copies and reshapes: litert-torch's RESIZE_NEAREST_NEIGHBOR
    is not taken by XNNPACK (FP32 or INT8), CONCATENATION and RESHAPE are."""
    b, c, h, w = x.shape
    x = _copies(x, sw, 4).reshape(b, c, h, w * sw) if sw > 1 else x
    return _copies(x, sh, 3).reshape(b, c, h * sh, w * sw) if sh > 1 else x


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Layer norm over the last axis as MEAN, SUB, MUL, a FULLY_CONNECTED that averages with eps as its
    bias (XNNPACK refuses an INT8 ADD of a constant this small), SQRT, DIV, then the affine; the
    divisor is sqrt(..) * 2 and the quotient * 2, so the converter keeps the DIV instead of RSQRT."""
    import torch
    import torch.nn.functional as F

    n = x.shape[-1]
    d = x - x.mean(-1, keepdim=True)
    average = torch.full((1, n), 1.0 / n, dtype=x.dtype)
    # over 2-D rows: on a 4-D input (ConvNeXt's channels-last LayerNorm2d) the FULLY_CONNECTED became a
    # BATCH_MATMUL the converter rejects ("invalid output rank")
    var = F.linear((d * d).reshape(-1, n), average, torch.full((1,), float(eps), dtype=x.dtype)).reshape(*x.shape[:-1], 1)
    y = d / (torch.sqrt(var) * 2.0) * 2.0
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def _l2_normalize(x, dim: int, eps: float):
    """F.normalize (p = 2) as x / (sqrt(sum(x * x) + eps^2) * 2) * 2, the sum and eps^2 by a FULLY_CONNECTED of
    ones with eps^2 as its bias (over the last axis) or a 1x1 convolution (over the channels of a 4-D map):
    litert-torch emits L2_NORMALIZATION, which XNNPACK takes in neither FP32 nor INT8 and ai-edge-quantizer
    leaves float (EdgeNeXt's cross-covariance attention). The ONNX rewrite's form (toolkit.convert.onnx_rewrite);
    max(norm, eps) and sqrt(norm^2 + eps^2) differ only for norms below eps (1e-12 in torch)."""
    import torch
    import torch.nn.functional as F

    n = x.shape[dim]
    square, bias = x * x, torch.full((1,), float(eps) ** 2, dtype=x.dtype)
    if dim == x.dim() - 1:
        total = F.linear(square.reshape(-1, n), torch.ones((1, n), dtype=x.dtype), bias).reshape(*x.shape[:-1], 1)
    else:
        total = F.conv2d(square, torch.ones((1, n, 1, 1), dtype=x.dtype), bias)
    return x / (torch.sqrt(total) * 2.0) * 2.0


def _gelu(x, approximate: str = "none"):
    """GELU from MUL, ADD and TANH: exact GELU with erf(z) as tanh of an odd polynomial of z clamped
    to [-ERF_CLAMP, ERF_CLAMP] (the ONNX rewrite's fit, toolkit.convert.onnx_rewrite; within 4e-7 of |x|), the clamp
    as hardtanh(z / ERF_CLAMP) * ERF_CLAMP, which the converter fuses into a MUL; the tanh form as x * sigmoid(2u) (its
    textbook form, x * 0.5 * (1 + tanh(u)), is fused back into GELU: MobileNetV5, 31 INT8 GELUs).
    XNNPACK does not take INT8 GELU."""
    import torch
    import torch.nn.functional as F

    from toolkit.convert.onnx_rewrite import ERF_CLAMP, ERF_TANH

    if approximate == "tanh":  # 0.5 (1 + tanh(u)) = sigmoid(2u); the converter fuses the textbook form back into GELU
        return x * torch.sigmoid((x + x * x * x * 0.044715) * (2.0 * math.sqrt(2.0 / math.pi)))
    z = F.hardtanh(x * (1.0 / (math.sqrt(2.0) * ERF_CLAMP))) * ERF_CLAMP
    z2 = z * z
    inner = ERF_TANH[-1]
    for coefficient in reversed(ERF_TANH[:-1]):
        inner = coefficient + z2 * inner
    return x * 0.5 * (1.0 + torch.tanh(z * inner))


XNNPACK_CONCAT_INPUTS = 4  # at most this many inputs per CONCATENATION (XNNPACK takes up to 5)


def _concat(parts: list, axis: int):
    """torch.cat of `parts` as nested concatenations of at most XNNPACK_CONCAT_INPUTS inputs."""
    import torch

    while len(parts) > 1:
        parts = [torch.cat(parts[i:i + XNNPACK_CONCAT_INPUTS], axis) if len(parts[i:i + XNNPACK_CONCAT_INPUTS]) > 1
                 else parts[i] for i in range(0, len(parts), XNNPACK_CONCAT_INPUTS)]
    return parts[0]


def _edge_pad(x, pads: tuple, mode: str):
    """Reflect or replicate padding of the last two axes of a 4-D map (pads: left, right, top,
    bottom) as one-row slices concatenated around it: litert-torch's MIRROR_PAD (a reflect-padded
    conv, MONAI's FlexibleUNet) is not taken by XNNPACK in FP32 or INT8; SLICE and CONCATENATION are."""
    pads = tuple(pads) + (0,) * (4 - len(pads))
    for axis, before, after in ((3, pads[0], pads[1]), (2, pads[2], pads[3])):
        n = x.shape[axis]
        if mode == "reflect":
            head = [x.narrow(axis, i, 1) for i in range(before, 0, -1)]
            tail = [x.narrow(axis, n - 1 - i, 1) for i in range(1, after + 1)]
        else:
            head, tail = [x.narrow(axis, 0, 1)] * before, [x.narrow(axis, n - 1, 1)] * after
        if head or tail:
            x = _concat([*head, x, *tail], axis)
    return x


def edge_padded(x, pads: tuple):
    """Replicate padding of a 4-D map's last two axes in the form above (pads: left, right, top, bottom):
    what toolkit.convert.max_pool_pads puts in place of a max pool's -inf pad."""
    return _edge_pad(x, pads, "replicate")


def _pair(value) -> tuple:
    """A 2-D pool argument (an int, or a sequence of one or two) as a pair."""
    return tuple(value) * (2 // len(value)) if isinstance(value, (tuple, list)) else (value, value)


def _pool_pairs(kernel, stride, padding) -> tuple:
    """(kernel, stride, padding) of a 2-D pool as pairs (stride defaults to the kernel, as in torch)."""
    kernel = _pair(kernel)
    return kernel, _pair(stride if stride not in (None, [], ()) else kernel), _pair(padding)


def _ceil_adds_window(x, kernel: tuple, stride: tuple, padding: tuple) -> bool:
    """Whether ceil mode gives a pool over `x` a last window past the padded edge."""
    return any((n + 2 * p - k) % s for n, k, s, p in zip(x.shape[-2:], kernel, stride, padding))


def _pool_windows(x, *, kernel, stride, padding, ceil_mode: bool, divisor_override) -> tuple | None:
    """(kernel, stride, padding) as pairs of a 4-D average pool a depthwise convolution can compute
    (ceil mode only where it adds no window), else None."""
    kernel, stride, padding = _pool_pairs(kernel, stride, padding)
    if x.dim() != 4 or divisor_override is not None:
        return None
    if ceil_mode and _ceil_adds_window(x, kernel, stride, padding):
        return None
    return kernel, stride, padding


def _depthwise_average(x, kernel: tuple, stride: tuple, padding: tuple, *, count_include_pad: bool):
    """An average pool as a depthwise convolution with weights 1 / (kh * kw), as the ONNX rewrite
    does for onnx2tf: XNNPACK does not take litert-torch's INT8 AVERAGE_POOL_2D, and ai-edge-quantizer
    cannot quantize its padded pool (ViTamin). Padding not counted multiplies by the constant map
    (kh * kw) / count (toolkit.convert.pool_windows)."""
    import torch
    import torch.nn.functional as F

    c = x.shape[1]
    weight = torch.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=x.dtype)
    out = F.conv2d(x, weight, None, stride, padding, 1, c)
    if count_include_pad or not any(padding):
        return out
    from toolkit.convert.pool_windows import divisor_correction

    correction = divisor_correction(tuple(x.shape[-2:]), kernel=kernel, stride=stride, pads_before=padding,
                                    pads_after=padding)
    return out * torch.from_numpy(correction).to(x.dtype)


def _padded_max_pool(x, *, kernel, stride, padding, dilation, ceil_mode: bool) -> tuple | None:
    """(kernel, stride, (pad_h, pad_w)) of a 4-D max pool with padding that replicate padding can
    stand in for, else None. torch pads a max pool with -inf, which litert-torch writes as PADV2,
    which XNNPACK does not take. With dilation 1 and padding at most half the kernel (torch's own
    rule) every window touching the padding also holds the edge value a replicated row copies, so
    the maximum is unchanged. Ceil mode only where it adds no window."""
    kernel, stride, padding = _pool_pairs(kernel, stride, padding)
    dilation = _pair(dilation)
    if x.dim() != 4 or not x.is_floating_point() or not any(padding) or dilation != (1, 1):
        return None
    if any(2 * p > k for p, k in zip(padding, kernel)):
        return None
    if ceil_mode and _ceil_adds_window(x, kernel, stride, padding):
        return None
    return kernel, stride, padding


_MISSING = object()


def _written_out_attention(query, key, value, options: dict):
    """Scaled-dot-product attention as matmuls around the sigmoid-form softmax; key and value
    repeated to the query's heads (see _repeat_to), one batch and head computed on two copies; a
    boolean or additive mask, or causal."""
    import torch

    scale = options.get("scale")
    lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    # one batch and one head: litert-torch makes each matmul a FULLY_CONNECTED whose filter is computed
    # at run time, which XNNPACK refuses (timm's CPUBone); on two copies it is a BATCH_MATMUL
    single = math.prod(lead) == 1
    query, key, value = (_repeat_to(t, (2, *lead[1:]) if single else lead) for t in (query, key, value))
    scores = (query * (scale if scale is not None else 1.0 / math.sqrt(query.shape[-1]))) @ key.transpose(-2, -1)
    mask = options.get("attn_mask")
    if options.get("is_causal"):
        mask = torch.ones(scores.shape[-2], scores.shape[-1], dtype=torch.bool, device=scores.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    out = _sigmoid_softmax(scores, -1) @ value
    return out.narrow(0, 0, 1).reshape(*lead, *out.shape[-2:]) if single else out


@contextlib.contextmanager
def delegate_functions():
    """Inside the block, torch's softmax (function, method, F.softmax), F.scaled_dot_product_attention,
    F.layer_norm, F.gelu, nearest F.interpolate by whole factors, F.avg_pool2d (ceil mode adding no window)
    (nn.AvgPool2d calls it), padded F.max_pool2d (nn.MaxPool2d calls it), reflect / replicate F.pad (so do convs with such a padding_mode)
    and F.normalize (p = 2, over the last axis or a 4-D map's channels)
    compute the forms above; restored after."""
    patches = _patches()
    saved = [(owner, name, vars(owner).get(name, _MISSING)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, before in saved:  # Tensor.softmax lives on a base class: delete the patch to uncover it
            if before is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, before)


def _patches() -> list:
    """(owner, attribute, replacement) for each torch function delegate_functions replaces; each
    replacement computes the form above where it applies and calls torch's own function otherwise."""
    import torch
    import torch.nn.functional as F

    originals = {"torch": torch.softmax, "F": F.softmax,
                 "sdpa": F.scaled_dot_product_attention, "layer_norm": F.layer_norm, "gelu": F.gelu,
                 "interpolate": F.interpolate, "avg_pool2d": F.avg_pool2d, "pad": F.pad, "max_pool2d": F.max_pool2d,
                 "normalize": F.normalize}

    def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,  # noqa: PLR0917 - torch's signature
                    recompute_scale_factor=None, antialias=False):
        plain = mode == "nearest" and not align_corners and not antialias and (size is None or scale_factor is None)
        factors = _nearest_factors(input, size, scale_factor) if plain and input.is_floating_point() else None
        if factors is None:
            return originals["interpolate"](input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
        return _nearest_upsample(input, *factors)

    def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,  # noqa: PLR0917 - torch's signature
                   divisor_override=None):
        windows = (_pool_windows(input, kernel=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                                 divisor_override=divisor_override) if input.is_floating_point() else None)
        if windows is None:
            return originals["avg_pool2d"](input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                           divisor_override)
        return _depthwise_average(input, *windows, count_include_pad=count_include_pad)

    def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,  # noqa: PLR0917 - torch's signature
                   return_indices=False):
        windows = None if return_indices else _padded_max_pool(input, kernel=kernel_size, stride=stride, padding=padding,
                                                                  dilation=dilation, ceil_mode=ceil_mode)
        if windows is None:
            return originals["max_pool2d"](input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                                           return_indices=return_indices)
        kernel, stride, (pad_h, pad_w) = windows
        return originals["max_pool2d"](_edge_pad(input, (pad_w, pad_w, pad_h, pad_h), "replicate"), kernel, stride, 0)

    def pad(input, pad, mode="constant", value=None):
        edge = (mode in ("reflect", "replicate") and input.dim() == 4 and len(pad) in (2, 4) and input.is_floating_point()
                and all(0 <= p < (input.shape[3 - i // 2] if mode == "reflect" else 1 << 30) for i, p in enumerate(pad)))
        if not edge:
            return originals["pad"](input, pad, mode, value)
        return _edge_pad(input, tuple(pad), mode)

    def normalize(input, p=2.0, dim=1, eps=1e-12, out=None):  # noqa: PLR0917 - torch's signature
        axis = dim % input.dim() if input.dim() else None
        if p != 2 or out is not None or not input.is_floating_point() or not (
                axis == input.dim() - 1 or axis == 1 and input.dim() == 4):
            return originals["normalize"](input, p, dim, eps, out)
        return _l2_normalize(input, axis, eps)

    def gelu(x, approximate="none"):
        return _gelu(x, approximate) if x.is_floating_point() else originals["gelu"](x, approximate=approximate)

    def layer_norm(x, normalized_shape, *args, **kwargs):
        if len(tuple(normalized_shape)) != 1 or not x.is_floating_point():
            return originals["layer_norm"](x, normalized_shape, *args, **kwargs)
        return _layer_norm(x, normalized_shape, *args, **kwargs)

    def softmax(input, dim=None, *args, dtype=None, **kwargs):  # torch's signature
        if dim is None or dtype is not None or not input.is_floating_point() or input.dim() == 0:
            if dim is not None:
                return originals["torch"](input, dim, dtype=dtype)
            return originals["F"](input, dim, *args, **kwargs)
        return _sigmoid_softmax(input, dim)

    def attention(query, key, value, *args, **kwargs):
        options = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"), args), **kwargs)
        if options.get("dropout_p") or options.get("enable_gqa"):
            return originals["sdpa"](query, key, value, *args, **kwargs)
        return _written_out_attention(query, key, value, options)

    return [(torch.Tensor, "softmax", softmax), (torch, "softmax", softmax), (F, "softmax", softmax),
            (F, "scaled_dot_product_attention", attention), (F, "layer_norm", layer_norm), (F, "gelu", gelu),
            (F, "interpolate", interpolate), (F, "avg_pool2d", avg_pool2d), (F, "pad", pad), (F, "max_pool2d", max_pool2d),
            (F, "normalize", normalize)]
