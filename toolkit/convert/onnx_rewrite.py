"""ONNX-level rewrites that keep the maths and let XNNPACK take the whole TFLite file, applied to
the copy of the graph that onnx2tf converts (the deployed ONNX file keeps the original ops).

Done on the ONNX graph rather than on torch modules, so that every way a model writes these ops
(nn.GELU, F.gelu, timm's own classes, Tensor.softmax, F.interpolate in a forward, GroupNorm's
export as InstanceNormalization) is caught. Measured on tiny conv nets with onnx2tf 1.29.24 +
TensorFlow 2.19 + ai-edge-litert 2.1.0 (tests/stages/test_onnx_rewrite.py; partitions FP32 / INT8):

| ONNX op | onnx2tf emits | before | rewritten as | after |
|---|---|---|---|---|
| Erf (exact GELU) | FlexErf: no runtime here loads the file | - | tanh of an odd polynomial of x clamped by RELU6 (GELU error < 4e-7 of |x|) | 1 / 1 |
| InstanceNormalization (and GroupNorm's export) | MEAN, SQUARED_DIFFERENCE, RSQRT | 1 / 3 | MEAN, SUB, MUL, MEAN, eps by a 1x1 depthwise conv's bias, SQRT, DIV | 1 / 1 |
| LayerNormalization | the same | 1 / 3 | the same | 1 / 1 |
| PRelu, one slope | PRELU | 1 / 2 | LeakyRelu | 1 / 1 |
| PRelu, a slope per channel | PRELU | 1 / 2 | relu(x + x) * (1 - a) / 2 + a * x: ADD(+RELU), MUL, MUL, ADD | 1 / 1 |
| Resize nearest, integer scale s | RESIZE_NEAREST_NEIGHBOR (not even in FP32) | 2 / 2 | s*s copies concatenated, DepthToSpace(s) | 1 / 1 |
| Softmax | SOFTMAX | 1 / 2 | exp(y) = sigmoid(y) / sigmoid(-y) of y = x - max, over its sum | 1 / 1 |
| ReduceL2 + Clip(min=eps) (F.normalize) | SQUARE (no INT8 kernel), SUM, SQRT, MAXIMUM | INT8 not full-integer | sqrt(sum(x * x) + eps^2) | 1 / 1 |
| Gather of a constant index (`qkv[0]`, `x[:, 0]`) | GATHER | 2 / 2 | Slice, Reshape without the axis | 1 / 1 |
| AveragePool (DenseNet transitions; padding not counted: ViTamin) | AVERAGE_POOL_2D (FP32 only) | 1 / 2 | depthwise conv, weights 1 / (kh * kw); uncounted padding: times a constant kh * kw / count | 1 / 1 |
| Concat of more than 5 inputs (DenseNet) | CONCATENATION (not even in FP32) | 2 / 2 | nested concats of at most 5 | 1 / 1 |
| ReduceMean + eps (a hand-written RMS norm: timm's RmsNorm2d) | ADD of eps | 1 / 4 | eps by a depthwise conv's bias | 1 / 1 |
| Div(1, Sqrt) or Reciprocal(Sqrt) (torch.rsqrt) | RSQRT | 1 / 3 | 1 / (sqrt * 2) * 2 | 1 / 1 |
| LeakyRelu, slope under 2^-8 (TResNet's 0.001) | LEAKY_RELU | 1 / 2 | relu(x + x) * (1 - a) / 2 + a * x | 1 / 1 |
| Pad, reflect or edge, of H and W (TResNet's blur pool) | MIRROR_PAD | 2 / 2 | one-row Slices concatenated around it | 1 / 1 |
| Pad of -inf read only by max pools whose windows each keep a real cell (timm's MaxPool2dSame) | PADV2 | 2 / 2 | the edge pad's slices: the same maxima | 1 / 1 |
| Split / Slice / Gather of a tensor with 6 or more axes (Twins' window qkv `unbind(0)`) | FlexStridedSlice: no runtime here loads the file | - | the same slices of a copy reshaped to at most 5 axes (the uncut axes merged), reshaped back | 1 / 1 |
| Relu of a tensor also read elsewhere (a residual sum kept and rectified) | a lone RELU | 1 / 2 | the fused ReLU of a depthwise 1x1 conv, weights 1 | 1 / 1 |

FP32 parity of every rewritten file against torch: < 1.1e-5 of the output scale. XNNPACK takes in
INT8 SQRT, LOGISTIC, LEAKY_RELU, ADD(+RELU/RELU6), MUL, REDUCE_MAX, SUM, MEAN and DEPTH_TO_SPACE,
but not RSQRT, SQUARED_DIFFERENCE, PRELU, SOFTMAX, EXP, MAXIMUM, MINIMUM, a lone RELU, nor an ADD of
a constant as small as eps. TFLite has no INT8 DIV: the normalisation and softmax forms keep DIV
(and the SQRT feeding it) in float between DEQUANTIZE and QUANTIZE, which XNNPACK runs in the same
partition ("keep them float in the INT8 file"); so those forms are used for XNNPACK targets only
(`rewrites_for`), and the INT8 check accepts exactly those float ops there
(runtime.tflite_check.XNNPACK_FLOAT_ISLAND_OPS).

The rewrites that move, copy or pick data (Pad, Resize, Concat, Gather) live in
toolkit.convert.onnx_rewrite_layout; this module holds the arithmetic ones and the driver.
"""

from __future__ import annotations

from toolkit.convert.onnx_graph import Graph as _Graph
from toolkit.convert.onnx_graph import attr as _attr
from toolkit.convert.onnx_graph import reduce_axes as _reduce_axes
from toolkit.convert.onnx_rewrite_layout import concat as _concat
from toolkit.convert.onnx_rewrite_layout import edge_pad as _edge_pad
from toolkit.convert.onnx_rewrite_layout import gather as _gather
from toolkit.convert.onnx_rewrite_layout import high_rank_slice as _high_rank_slice
from toolkit.convert.onnx_rewrite_layout import high_rank_split as _high_rank_split
from toolkit.convert.onnx_rewrite_layout import resize_nearest as _resize_nearest

REWRITE_VERSION = "13"  # part of the conversion cache key: bump when a rewrite changes what onnx2tf gets
# erf(z) ~= tanh(z * (C1 + z^2 * (C3 + z^2 * (C5 + ...)))) for |z| <= ERF_CLAMP (minimax fit of the
# error in erf; |error| < 5.6e-7 evaluated in float32, also beyond the clamp, where erf(3.75) = 1 - 1.1e-7):
# GELU within 4e-7 of |x| in float32. (Three terms clamped at 3 were within 3.7e-5, GELU 1.9e-5 of |x|: over the
# 27 GELUs of CrossViT-Tiny that reached 1.7e-4 of the output scale, past parity's 1e-4.)
ERF_TANH = (1.12837635237, 0.102797006873, -0.000253503696338, -0.000569462265952, 6.99648674997e-05,
            -2.99055122543e-06)
ERF_CLAMP = 3.75  # the clamp as relu6(z * 3 / ERF_CLAMP + 3): an op XNNPACK takes in INT8 (MINIMUM/MAXIMUM it does not)


def _erf(g: _Graph, node) -> bool:
    """erf(x) as tanh of an odd polynomial (Horner form) of x clamped to [-ERF_CLAMP, ERF_CLAMP]."""
    unit = ERF_CLAMP / 3.0
    six = g.op("Clip", [g.op("Add", [g.op("Mul", [node.input[0], g.const(1.0 / unit)]), g.const(3.0)]),
                        g.const(0.0), g.const(6.0)])  # relu6
    z = g.op("Mul", [g.op("Sub", [six, g.const(3.0)]), g.const(unit)])
    z2 = g.op("Mul", [z, z])
    inner = g.const(ERF_TANH[-1])
    for coefficient in reversed(ERF_TANH[:-1]):
        inner = g.op("Add", [g.const(coefficient), g.op("Mul", [z2, inner])])
    g.op("Tanh", [g.op("Mul", [z, inner])], out=node.output[0])
    return True


def _plus_eps(g: _Graph, var: str, eps: float, shape, *, out: str = "") -> str:
    """var + eps. As a depthwise 1x1 convolution with bias eps where the shape allows (rank 3-4,
    a known axis 1): XNNPACK refuses an INT8 ADD of a constant this small (its scale ratio)."""
    import numpy as np

    if shape is None or len(shape) not in (3, 4) or not shape[1]:
        return g.op("Add", [var, g.const(eps)], out=out)
    c, rank = int(shape[1]), len(shape)
    weight = g.const(np.ones((c, 1) + (1,) * (rank - 2), np.float32))
    return g.op("Conv", [var, weight, g.const(np.full((c,), eps, np.float32))], out=out, group=c,
                kernel_shape=[1] * (rank - 2))


def _reciprocal_root(g: _Graph, node) -> bool:
    """1 / sqrt(y) (torch.rsqrt as exported: Div(1, Sqrt) or Reciprocal(Sqrt)) as 1 / (sqrt(y) * 2) * 2:
    onnx2tf otherwise emits RSQRT, which XNNPACK does not take in INT8; SQRT and DIV stay float inside
    its partition."""
    import numpy as np

    if node.op_type == "Div":
        one = g.inits.get(node.input[0])
        if one is None or np.asarray(one).size != 1 or float(np.asarray(one).reshape(-1)[0]) != 1.0:
            return False
    source = g.producers.get(node.input[-1])
    if source is None or source.op_type != "Sqrt":
        return False
    root = g.op("Mul", [node.input[-1], g.const(2.0)])
    g.op("Mul", [g.op("Div", [g.const(1.0), root]), g.const(2.0)], out=node.output[0])
    return True


def _eps_after_mean(g: _Graph, node) -> bool:
    """mean + eps (an RMS norm's mean(x * x) + eps, written by hand: timm's RmsNorm2d, nn.RMSNorm) with
    eps by a depthwise conv's bias, for a mean over the channels of an image or the last axis of
    tokens (other layouts make onnx2tf guess wrongly)."""
    import numpy as np

    consts = [i for i in node.input if i in g.inits and np.asarray(g.inits[i]).size == 1]
    others = [i for i in node.input if i not in consts]
    if len(consts) != 1 or len(others) != 1:
        return False
    source = g.producers.get(others[0])
    if source is None or source.op_type != "ReduceMean" or not _attr(source, "keepdims", 1):
        return False
    shape, axes = g.shapes.get(others[0]), _reduce_axes(g, source)
    if not shape or None in shape or len(shape) not in (3, 4) or axes != ([1] if len(shape) == 4 else [2]):
        return False
    _plus_eps(g, others[0], float(np.asarray(g.inits[consts[0]]).reshape(-1)[0]), shape, out=node.output[0])
    return True


def _normalise(g: _Graph, x: str, axes: list, eps: float) -> str:
    """(x - mean) / sqrt(mean((x - mean)^2) + eps) over `axes`: no SQUARED_DIFFERENCE, no RSQRT (the
    divisor is sqrt(..) * 2, then the quotient * 2: the converter turns x / sqrt(y) into x * rsqrt(y))."""
    shape = g.shapes.get(x)
    var_shape = tuple(1 if i in axes else n for i, n in enumerate(shape)) if shape else None
    d = g.op("Sub", [x, g.reduce("ReduceMean", x, axes)])
    var = g.reduce("ReduceMean", g.op("Mul", [d, d]), axes)
    root = g.op("Mul", [g.op("Sqrt", [_plus_eps(g, var, eps, var_shape)]), g.const(2.0)])
    return g.op("Mul", [g.op("Div", [d, root]), g.const(2.0)])


def _affine(g: _Graph, y: str, scale: str, bias, out: str) -> None:
    """y * scale + bias (LayerNormalization's, over the normalised trailing axes)."""
    if bias:
        g.op("Add", [g.op("Mul", [y, scale]), bias], out=out)
    else:
        g.op("Mul", [y, scale], out=out)


def _layer_norm(g: _Graph, node) -> bool:
    rank = g.rank(node.input[0])
    if rank is None or len(node.output) > 1 and any(node.output[1:]):
        return False
    axis = _attr(node, "axis", -1) % rank
    y = _normalise(g, node.input[0], list(range(axis, rank)), _attr(node, "epsilon", 1e-5))
    _affine(g, y, node.input[1], node.input[2] if len(node.input) > 2 else "", node.output[0])
    return True


def _instance_norm(g: _Graph, node) -> bool:
    rank = g.rank(node.input[0])
    if rank is None or rank < 3 or node.input[1] not in g.inits or node.input[2] not in g.inits:
        return False
    y = _normalise(g, node.input[0], list(range(2, rank)), _attr(node, "epsilon", 1e-5))
    _channel_scale(g, y, g.inits[node.input[1]], g.inits[node.input[2]], rank=rank, out=node.output[0])
    return True


def _channel_scale(g: _Graph, x: str, scale, bias=None, *, rank, out: str = "") -> str:
    """x * scale[c] (+ bias[c]) along axis 1, as a depthwise 1x1 convolution when x is 3-D or 4-D:
    onnx2tf places a broadcast constant by guessing its axis, wrongly when C equals H or W."""
    import numpy as np

    scale = np.asarray(scale, np.float32).reshape(-1)
    if rank in (3, 4):
        weight = g.const(scale.reshape((-1, 1) + (1,) * (rank - 2)))
        inputs = [x, weight] + ([g.const(np.asarray(bias, np.float32).reshape(-1))] if bias is not None else [])
        return g.op("Conv", inputs, out=out, group=int(scale.size), kernel_shape=[1] * (rank - 2))
    shape = (1, -1) + (1,) * ((rank or 2) - 2)
    if bias is None:
        return g.op("Mul", [x, g.const(scale.reshape(shape))], out=out)
    return g.op("Add", [g.op("Mul", [x, g.const(scale.reshape(shape))]), g.const(np.asarray(bias, np.float32).reshape(shape))],
                out=out)


def _prelu(g: _Graph, node) -> bool:
    """One slope: LeakyRelu. A slope per channel: relu(x + x) * ((1 - a) / 2) + a * x."""
    import numpy as np

    slope = g.inits.get(node.input[1])
    if slope is None:
        return False
    x = node.input[0]
    if slope.size == 1:
        g.op("LeakyRelu", [x], out=node.output[0], alpha=float(slope.reshape(-1)[0]))
        return True
    rank = g.rank(x)
    if rank is None or slope.size != (g.shapes.get(x) or (0, 0))[1]:
        return False
    slope = slope.astype(np.float32).reshape(-1)
    relu2 = g.op("Relu", [g.op("Add", [x, x])])
    g.op("Add", [_channel_scale(g, relu2, (1.0 - slope) / 2.0, rank=rank), _channel_scale(g, x, slope, rank=rank)],
         out=node.output[0])
    return True


XNNPACK_MIN_LEAKY_SLOPE = 2.0 ** -8  # INT8 LEAKY_RELU slopes XNNPACK takes: 0.004, 0.01, 0.1 yes, 0.001 (TResNet) no (measured)


def _leaky_relu(g: _Graph, node) -> bool:
    """A LeakyRelu with a slope under XNNPACK_MIN_LEAKY_SLOPE as the per-channel PRelu form with one
    slope a: relu(x + x) * ((1 - a) / 2) + a * x."""
    alpha = float(_attr(node, "alpha", 0.01))
    if not 0.0 <= alpha < XNNPACK_MIN_LEAKY_SLOPE:
        return False
    x = node.input[0]
    relu2 = g.op("Relu", [g.op("Add", [x, x])])
    g.op("Add", [g.op("Mul", [relu2, g.const((1.0 - alpha) / 2.0)]), g.op("Mul", [x, g.const(alpha)])],
         out=node.output[0])
    return True


def _average_pool(g: _Graph, node) -> bool:
    """A 2-D AveragePool as a depthwise convolution with weights 1 / (kh * kw): XNNPACK does not take
    INT8 AVERAGE_POOL_2D (DenseNet's transitions, ResNet-D shortcuts). Padding not counted
    (count_include_pad=0: ViTamin's, CoAtNet's downsampling) multiplies by the constant map
    (kh * kw) / count (toolkit.convert.pool_windows). ceil_mode only when it adds no window."""
    import numpy as np

    shape = g.shapes.get(node.input[0])
    kernel = list(_attr(node, "kernel_shape", []))
    if shape is None or len(shape) != 4 or not shape[1] or len(kernel) != 2 or len(node.output) > 1:
        return False
    strides = list(_attr(node, "strides", [1, 1]))
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    dilations = list(_attr(node, "dilations", [1, 1]))
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or dilations != [1, 1]:
        return False
    if _attr(node, "ceil_mode", 0):
        for i in (0, 1):
            span = (shape[2 + i] or 0) + pads[i] + pads[i + 2] - kernel[i]
            if not shape[2 + i] or span % strides[i]:
                return False  # ceil_mode adds a partial window: its divisor is not kh * kw
    c = int(shape[1])
    weight = g.const(np.full((c, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), np.float32))
    if not any(pads) or _attr(node, "count_include_pad", 0):
        g.op("Conv", [node.input[0], weight], out=node.output[0], group=c, kernel_shape=kernel, strides=strides, pads=pads)
        return True
    if not shape[2] or not shape[3]:
        return False
    from toolkit.convert.pool_windows import divisor_correction

    correction = divisor_correction((int(shape[2]), int(shape[3])), kernel=tuple(kernel), stride=tuple(strides),
                                    pads_before=tuple(pads[:2]), pads_after=tuple(pads[2:]))
    summed = g.op("Conv", [node.input[0], weight], group=c, kernel_shape=kernel, strides=strides, pads=pads)
    g.op("Mul", [summed, g.const(correction[None, None])], out=node.output[0])
    return True


def _softmax(g: _Graph, node) -> bool:
    """softmax over one axis with exp(y) = sigmoid(y) / sigmoid(-y), y = x - max <= 0. (Over an axis of
    size 1 softmax is ones, but a constant there breaks onnx2tf's MatMul that follows: LeViT, MobileViT at 64 px.)"""
    rank = g.rank(node.input[0])
    if g.opset < 13 or rank is None:
        return False
    axis = _attr(node, "axis", -1) % rank
    x = node.input[0]
    top = g.reduce("ReduceMax", x, [axis])
    e = g.op("Div", [g.op("Sigmoid", [g.op("Sub", [x, top])]), g.op("Sigmoid", [g.op("Sub", [top, x])])])
    g.op("Div", [e, g.reduce("ReduceSum", e, [axis])], out=node.output[0])
    return True


def _l2_norm(g: _Graph, node) -> bool:
    """ReduceL2 (F.normalize's norm, followed by Clip(min=eps)): sqrt(sum(x * x)), or with the Clip
    after it (the ReduceL2's only consumer, then left unused) sqrt(sum(x * x) + eps^2), eps^2 by a
    depthwise conv's bias. onnx2tf emits SQUARE (no INT8 kernel) and MAXIMUM, which XNNPACK does not
    take in INT8; max(n, eps) and sqrt(n^2 + eps^2) differ only for norms below eps (1e-12 in torch)."""
    if node.op_type == "ReduceL2":
        axes = _reduce_axes(g, node)
        readers = g.readers.get(node.output[0], [])
        if axes is None or not _attr(node, "keepdims", 1) or len(readers) == 1 and _clip_of_norm(g, readers[0]):
            return False  # the Clip after it is rewritten with it
        x = node.input[0]
        g.op("Sqrt", [g.reduce("ReduceSum", g.op("Mul", [x, x]), axes)], out=node.output[0])
        return True
    if not _clip_of_norm(g, node):
        return False
    source, low = g.producers[node.input[0]], _clip_low(g, node)
    axes = _reduce_axes(g, source)
    x = source.input[0]
    total = g.reduce("ReduceSum", g.op("Mul", [x, x]), axes)
    # eps^2 by a conv's bias only for a norm over the channel axis of an image (axis 1): on other
    # 4-D tensors (attention's (B, heads, C, N)) a conv makes onnx2tf guess their layout wrongly
    shape = g.shapes.get(source.output[0]) if axes == [1] else None
    g.op("Sqrt", [_plus_eps(g, total, low ** 2, shape) if shape else g.op("Add", [total, g.const(low ** 2)])],
         out=node.output[0])
    return True


def _clip_low(g: _Graph, node):
    low = g.inits.get(node.input[1]) if len(node.input) > 1 and node.input[1] else _attr(node, "min")
    return None if low is None or getattr(low, "size", 1) != 1 else float(low.reshape(-1)[0] if hasattr(low, "reshape") else low)


def _clip_of_norm(g: _Graph, node) -> bool:
    """`node` is Clip(min=eps > 0, no max) of a keepdims ReduceL2 that nothing else reads."""
    if node is None or node.op_type != "Clip" or not node.input:
        return False
    source = g.producers.get(node.input[0])
    low = _clip_low(g, node)
    high = (len(node.input) > 2 and node.input[2]) or _attr(node, "max") is not None
    return (source is not None and source.op_type == "ReduceL2" and low is not None and low > 0 and not high
            and len(g.readers.get(source.output[0], [])) == 1 and _reduce_axes(g, source) is not None
            and bool(_attr(source, "keepdims", 1)))


# ops TFLite fuses a following ReLU into (onnx2tf folds BatchNormalization into the conv before it)
FUSES_RELU = ("Conv", "ConvTranspose", "Add", "Sub", "Mul", "Gemm", "MatMul", "BatchNormalization")


def _lone_relu(g: _Graph, node) -> bool:
    """A ReLU that no op can take as its fused activation (its input is also read elsewhere, e.g. a
    residual sum that is both kept and rectified, or comes from an op without one) as the fused
    ReLU of a depthwise 1x1 convolution with weights 1: XNNPACK takes no lone INT8 RELU (its
    output range is not its input's)."""
    import numpy as np

    x = node.input[0]
    shape = g.shapes.get(x)
    producer = g.producers.get(x)
    if shape is None or len(shape) != 4 or not shape[1] or producer is None:
        return False
    if producer.op_type in FUSES_RELU and len(g.readers.get(x, [])) == 1:
        return False
    g.op("Relu", [_channel_scale(g, x, np.ones(shape[1], np.float32), rank=len(shape))], out=node.output[0])
    return True


REWRITES = {"Erf": _erf, "LayerNormalization": _layer_norm, "InstanceNormalization": _instance_norm,
            "PRelu": _prelu, "Resize": _resize_nearest, "Softmax": _softmax, "Clip": _l2_norm, "ReduceL2": _l2_norm,
            "Gather": _gather, "AveragePool": _average_pool, "Concat": _concat, "Add": _eps_after_mean,
            "Reciprocal": _reciprocal_root, "Div": _reciprocal_root, "Relu": _lone_relu, "LeakyRelu": _leaky_relu,
            "Pad": _edge_pad, "Split": _high_rank_split, "Slice": _high_rank_slice}
FULL_INTEGER_REWRITES = ("Erf", "PRelu", "Resize", "Gather", "AveragePool", "Concat", "Add", "Pad", "Split", "Slice")  # INT8 files stay full-integer: for every runtime
FLOAT_ISLAND_REWRITES = ("LayerNormalization", "InstanceNormalization", "Softmax", "Clip", "ReduceL2", "Reciprocal", "Div")  # INT8: DIV/SQRT run in float


XNNPACK_REWRITES = ("Relu", "LeakyRelu")  # a conv more, for a delegate that takes no lone INT8 RELU; small slopes


def rewrites_for(delegate) -> tuple[str, ...]:
    """The ONNX ops to rewrite for a target's delegate: FlexErf never loads anywhere, so Erf always;
    the float-island forms and the lone-ReLU conv only for XNNPACK (which runs the float DIV/SQRT
    inside its partition; an NPU delegate wants full-integer files)."""
    return FULL_INTEGER_REWRITES + ((*FLOAT_ISLAND_REWRITES, *XNNPACK_REWRITES) if delegate == "xnnpack" else ())


def rewrite_onnx_for_xnnpack(proto, *, ops=tuple(REWRITES)) -> tuple[object, dict]:
    """The graph with every op of `ops` that has a rewrite (see the table above) rewritten, in
    place. Returns (proto, {op_type: count rewritten}). Nodes a rewrite does not match (e.g. a
    bilinear Resize, a slope that is not a constant) are kept as they are."""
    g = _Graph(proto)
    done: dict = {}
    kept = []
    for node in list(g.graph.node):
        rewrite = REWRITES.get(node.op_type) if node.op_type in ops and node.domain in ("", "ai.onnx") else None
        start = len(g.nodes)
        if rewrite is not None and rewrite(g, node):
            done[node.op_type] = done.get(node.op_type, 0) + 1
            kept.extend(g.nodes[start:])
        else:
            del g.nodes[start:]
            kept.append(node)
    del g.graph.node[:]
    g.graph.node.extend(_live(kept, {v.name for v in g.graph.output}))
    return proto, done


def _live(nodes: list, outputs: set) -> list:
    """`nodes` without those whose outputs nothing reads (a ReduceL2 whose Clip was rewritten)."""
    while True:
        read = set(outputs).union(*(set(n.input) for n in nodes))
        alive = [n for n in nodes if any(o in read for o in n.output if o)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


def rewrite_onnx_file(src, dst, *, ops=tuple(REWRITES)) -> dict:
    """Write `src` with the ops `ops` rewritten (`rewrite_onnx_for_xnnpack`) to `dst`, checked with
    onnx.checker. Returns the counts of rewritten ops ({}: `dst` is a plain copy; so is a graph
    whose weights are stored beside it)."""
    import shutil

    import onnx

    proto = onnx.load(str(src), load_external_data=False)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    done = {} if external or not ops else rewrite_onnx_for_xnnpack(proto, ops=tuple(ops))[1]  # weights beside the graph: left as they are
    if not done:
        shutil.copyfile(src, dst)
        return {}
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst))
    return done
