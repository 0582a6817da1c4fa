"""The ONNX rewrites for onnx2tf that move, copy or pick data rather than compute (the table in
toolkit.convert.onnx_rewrite): reflect / edge Pad as slices and concatenations, nearest Resize by
an integer scale as copies and DepthToSpace, wide Concat as nested ones, constant-index Gather as
Slice, and Split / Slice / Gather of tensors with more than five axes on a reshaped copy with fewer. Each takes (graph, node) and returns whether it rewrote the node."""

from __future__ import annotations

from toolkit.convert.onnx_graph import Graph as _Graph
from toolkit.convert.onnx_graph import attr as _attr

XNNPACK_CONCAT_INPUTS = 5  # the most inputs of one CONCATENATION that XNNPACK takes (LiteRT 2.1.0, measured)


def _only_max_pooled(g: _Graph, node, pads: list) -> bool:
    """Every reader of `node`'s output is a MaxPool (no padding of its own, dilation 1, floor mode) whose
    windows each keep a cell of the unpadded map (padding under the kernel on each side): the nearest
    edge cell is then in every window a padded cell is in, so an edge pad gives the same maxima."""
    readers = g.readers.get(node.output[0], [])
    for reader in readers:
        if reader is None or reader.op_type != "MaxPool" or any(_attr(reader, "pads", [0])) \
                or any(d != 1 for d in _attr(reader, "dilations", [1])) or _attr(reader, "ceil_mode", 0) \
                or len(reader.output) > 1 and reader.output[1]:
            return False
        kernel = list(_attr(reader, "kernel_shape", []))
        if len(kernel) != 2 or any(max(pads[2 + i], pads[6 + i]) >= kernel[i] for i in (0, 1)):
            return False
    return bool(readers)


def edge_pad(g: _Graph, node) -> bool:
    """A reflect or edge Pad of the last two axes of a 4-D tensor as one-row Slices concatenated
    around it (the litert-torch form, toolkit.convert.delegate_functions): onnx2tf emits MIRROR_PAD,
    which XNNPACK takes in neither FP32 nor INT8 (TResNet's anti-aliased downsampling). A constant pad
    of -inf that only max pools read (timm's MaxPool2dSame, TF-SAME max pools) is an edge pad there:
    onnx2tf emits PADV2, which XNNPACK does not take."""
    import numpy as np

    mode = _attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads, shape = g.inits.get(node.input[1]) if len(node.input) > 1 else None, g.shapes.get(node.input[0])
    if pads is None or not shape or len(shape) != 4 or len(node.input) > 3:
        return False
    pads = [int(p) for p in pads.reshape(-1)]
    if len(pads) != 8 or any(pads[i] or pads[i + 4] for i in (0, 1)) or min(pads) < 0:
        return False
    if mode == "constant":
        value = g.inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if value is None or value.size != 1 or not float(value.reshape(-1)[0]) <= -np.finfo(np.float32).max \
                or not _only_max_pooled(g, node, pads):
            return False
        mode = "edge"
    if mode not in ("reflect", "edge"):
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
    if len(shape) > TFLITE_SLICE_RANK:  # one slice of a reshaped copy, reshaped to the output (a 6-D `qkv[0]`)
        kept = list(shape[:axis]) + ([] if index.ndim == 0 else [flat.size]) + list(shape[axis + 1:])
        return slice_low_rank(g, node.input[0], [{axis: (first, first + flat.size, 1)}], out_shapes=[kept],
                              outs=[node.output[0]])
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


TFLITE_SLICE_RANK = 5  # STRIDED_SLICE's most axes: onnx2tf sends a 6-D slice or split to FlexStridedSlice


def _merged_axes(shape, cut: set) -> list:
    """Groups of `shape`'s axes: each axis of `cut` alone, each run of the axes between merged."""
    groups, run = [], []
    for axis in range(len(shape)):
        if axis in cut:
            groups += [run, [axis]] if run else [[axis]]
            run = []
        else:
            run.append(axis)
    return groups + ([run] if run else [])


def slice_low_rank(g: _Graph, x: str, cuts: dict, *, out_shapes: list, outs: list) -> bool:
    """Slices of `x` by each of `cuts` ([{axis: (start, end, step)}], one per output) as STRIDED_SLICEs
    TFLite runs: above TFLITE_SLICE_RANK axes, on one copy of `x` with the uncut axes merged (a
    Reshape), each slice reshaped to its `out_shapes` entry. False when the merged form still has
    too many axes or a shape is not static."""
    import numpy as np

    shape = g.shapes.get(x)
    axes = sorted({axis for cut in cuts for axis in cut})
    if not shape or any(n is None for n in shape) or any(not s or any(n is None for n in s) for s in out_shapes):
        return False
    groups = _merged_axes(shape, set(axes))
    if len(groups) > TFLITE_SLICE_RANK:
        return False
    position = {group[0]: k for k, group in enumerate(groups)}
    merged = g.op("Reshape", [x, g.const([int(np.prod([shape[a] for a in group])) for group in groups], "int64")])
    for cut, out_shape, out in zip(cuts, out_shapes, outs):
        picked = sorted(cut)
        sliced = g.op("Slice", [merged, g.const([cut[a][0] for a in picked], "int64"),
                                g.const([cut[a][1] for a in picked], "int64"),
                                g.const([position[a] for a in picked], "int64"),
                                g.const([cut[a][2] for a in picked], "int64")])
        g.op("Reshape", [sliced, g.const(list(out_shape), "int64")], out=out)
    return True


def high_rank_split(g: _Graph, node) -> bool:
    """A Split of a tensor with more axes than TFLite slices (Twins' and CSATv2's 6-D window qkv,
    `unbind(0)`) as slices of a reshaped copy with at most TFLITE_SLICE_RANK axes."""
    shape = g.shapes.get(node.input[0])
    if not shape or len(shape) <= TFLITE_SLICE_RANK:
        return False
    axis = _attr(node, "axis", 0) % len(shape)
    out_shapes = [g.shapes.get(o) for o in node.output]
    if any(not s or s[axis] is None for s in out_shapes):
        return False
    cuts, start = [], 0
    for s in out_shapes:
        cuts.append({axis: (start, start + s[axis], 1)})
        start += s[axis]
    return slice_low_rank(g, node.input[0], cuts, out_shapes=out_shapes, outs=list(node.output))


def high_rank_slice(g: _Graph, node) -> bool:
    """A Slice of constant starts, ends, axes and steps of a tensor with more axes than TFLite slices,
    as one of a reshaped copy with the uncut axes merged."""
    shape = g.shapes.get(node.input[0])
    if not shape or len(shape) <= TFLITE_SLICE_RANK or len(node.input) < 3:
        return False
    values = [g.inits.get(name) if name else None for name in list(node.input[1:5]) + [""] * (5 - len(node.input))]
    starts, ends, axes, steps = values
    if starts is None or ends is None or len(node.input) > 3 and node.input[3] and axes is None \
            or len(node.input) > 4 and node.input[4] and steps is None:
        return False
    starts, ends = starts.reshape(-1).tolist(), ends.reshape(-1).tolist()
    axes = [a % len(shape) for a in (axes.reshape(-1).tolist() if axes is not None else range(len(starts)))]
    steps = steps.reshape(-1).tolist() if steps is not None else [1] * len(starts)
    cut = {axis: (int(b), int(e), int(s)) for axis, b, e, s in zip(axes, starts, ends, steps)}
    return slice_low_rank(g, node.input[0], [cut], out_shapes=[g.shapes.get(node.output[0])], outs=[node.output[0]])
