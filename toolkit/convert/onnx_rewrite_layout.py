"""The ONNX rewrites for onnx2tf that move, copy or pick data rather than compute (the table in
toolkit.convert.onnx_rewrite): reflect / edge Pad as slices and concatenations, nearest Resize by
an integer scale as copies and DepthToSpace, wide Concat as nested ones, constant-index Gather as
Slice. Each takes (graph, node) and returns whether it rewrote the node."""

from __future__ import annotations

from toolkit.convert.onnx_graph import Graph as _Graph
from toolkit.convert.onnx_graph import attr as _attr

XNNPACK_CONCAT_INPUTS = 5  # the most inputs of one CONCATENATION that XNNPACK takes (LiteRT 2.1.0, measured)


def edge_pad(g: _Graph, node) -> bool:
    """A reflect or edge Pad of the last two axes of a 4-D tensor as one-row Slices concatenated
    around it (the litert-torch form, toolkit.convert.delegate_functions): onnx2tf emits MIRROR_PAD,
    which XNNPACK takes in neither FP32 nor INT8 (TResNet's anti-aliased downsampling)."""
    mode = _attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads, shape = g.inits.get(node.input[1]) if len(node.input) > 1 else None, g.shapes.get(node.input[0])
    if mode not in ("reflect", "edge") or pads is None or not shape or len(shape) != 4 or len(node.input) > 3:
        return False
    pads = [int(p) for p in pads.reshape(-1)]
    if len(pads) != 8 or any(pads[i] or pads[i + 4] for i in (0, 1)) or min(pads) < 0:
        return False
    axes = [axis for axis in (3, 2) if pads[axis] or pads[axis + 4]]
    if not axes or any(shape[a] is None or mode == "reflect" and max(pads[a], pads[a + 4]) >= shape[a] for a in axes):
        return False
    x = node.input[0]
    for axis in axes:
        before, after, n = pads[axis], pads[axis + 4], shape[axis]

        def row(i, axis=axis, source=x):
            return g.op("Slice", [source, g.const([i], "int64"), g.const([i + 1], "int64"), g.const([axis], "int64")])

        head = [row(i) for i in range(before, 0, -1)] if mode == "reflect" else [row(0)] * before
        tail = [row(n - 1 - i) for i in range(1, after + 1)] if mode == "reflect" else [row(n - 1)] * after
        x = _concat_tree(g, [*head, x, *tail], axis=axis, out=node.output[0] if axis == axes[-1] else "")
    return True


def _nearest_scale(g: _Graph, node):
    """The integer scale s of a 4-D nearest Resize scaling H and W by s (else None)."""
    transform = _attr(node, "coordinate_transformation_mode", b"half_pixel")
    floor = _attr(node, "nearest_mode", b"round_prefer_floor") == b"floor"
    # source index floor(i / s) for an integer s: half-pixel forms round to it, the others only floor to it
    if _attr(node, "mode", b"nearest") != b"nearest" or not (
            transform in (b"half_pixel", b"pytorch_half_pixel") or floor and transform in (b"asymmetric", b"tf_half_pixel_for_nn")):
        return None
    shape = g.shapes.get(node.input[0])
    scales = g.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = g.inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if scales is not None and scales.size == 4:
        factors = [float(v) for v in scales]
    elif sizes is not None and sizes.size == 4 and shape and len(shape) == 4 and all(shape):
        factors = [float(o) / float(i) for o, i in zip(sizes, shape)]
    else:
        return None
    s = factors[2]
    if factors[:2] != [1.0, 1.0] or factors[3] != s or s != int(s) or int(s) < 2:
        return None
    return int(s)


def resize_nearest(g: _Graph, node) -> bool:
    """Nearest upsampling by an integer s: s*s copies along the channels, then DepthToSpace (DCR)."""
    s = _nearest_scale(g, node)
    if s is None:
        return False
    x = node.input[0]
    g.op("DepthToSpace", [_concat_tree(g, [x] * (s * s), axis=1)], out=node.output[0], blocksize=s, mode="DCR")
    return True


def _concat_tree(g: _Graph, inputs: list, *, axis: int, out: str = "") -> str:
    """Concat of `inputs` along `axis` as nested concats of at most XNNPACK_CONCAT_INPUTS each (the
    delegate refuses a CONCATENATION of more, even in FP32: DenseNet's feature lists, an s > 2 resize)."""
    while len(inputs) > XNNPACK_CONCAT_INPUTS:
        step = XNNPACK_CONCAT_INPUTS
        inputs = [part[0] if len(part) == 1 else g.op("Concat", part, axis=axis)
                  for part in (inputs[i:i + step] for i in range(0, len(inputs), step))]
    return g.op("Concat", inputs, out=out, axis=axis)


def concat(g: _Graph, node) -> bool:
    if len(node.input) <= XNNPACK_CONCAT_INPUTS:
        return False
    _concat_tree(g, list(node.input), axis=_attr(node, "axis"), out=node.output[0])
    return True


def gather(g: _Graph, node) -> bool:
    """Gather of one constant index (timm's `qkv[0]`, a class token `x[:, 0]`) or of a constant run of
    consecutive indices: Slice (then Reshape without the axis for a scalar index). onnx2tf emits
    GATHER, which XNNPACK does not take; it takes the STRIDED_SLICE and RESHAPE."""
    import numpy as np

    index, shape = g.inits.get(node.input[1]), g.shapes.get(node.input[0])
    source = g.producers.get(node.input[0])
    if index is None or index.size == 0 or not shape or index.ndim > 1 or source is not None and source.op_type == "Shape":
        return False  # (a shape's entries are not tensor data: left to the converter's constant folding)
    axis = _attr(node, "axis", 0) % len(shape)
    size = shape[axis]
    flat = index.reshape(-1).astype(np.int64)
    if size is None and (flat < 0).any():
        return False
    first = int(flat[0] % size) if size else int(flat[0])
    if not np.array_equal(flat % size if size else flat, np.arange(first, first + flat.size)):
        return False
    sliced = g.op("Slice", [node.input[0], g.const([first], "int64"), g.const([first + flat.size], "int64"),
                            g.const([axis], "int64")], out="" if index.ndim == 0 else node.output[0])
    if index.ndim == 1:
        return True
    kept = [n for i, n in enumerate(shape) if i != axis]
    if all(n is not None for n in kept):  # RESHAPE to the static shape: XNNPACK takes it (SQUEEZE it may not)
        g.op("Reshape", [sliced, g.const(kept, "int64")], out=node.output[0])
    else:
        g.op("Squeeze", [sliced, g.const([axis], "int64")] if g.opset >= 13 else [sliced], out=node.output[0],
             **({} if g.opset >= 13 else {"axes": [axis]}))
    return True
