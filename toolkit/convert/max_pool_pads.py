"""Max pools behind a -inf pad (timm's MaxPool2dSame, TF-SAME pooling) read an edge-padded map
instead, for litert-torch.

A TF-SAME max pool pads its input with -inf, then pools without padding. litert-torch turns that pad
into PADV2, which XNNPACK takes in neither FP32 nor INT8 (vit_tiny_r_s16_p8: one PADV2 outside the
partition). When each window of the pool keeps at least one cell of the unpadded map (the padding is
under the kernel on each side, dilation 1, floor mode), the nearest edge cell lies in every window a
padded cell lies in, so padding with the edge values (slices and concatenations,
toolkit.convert.delegate_functions) gives the same maxima. `max_pools_on_edge_pads(program, example)`
finds such pads in the exported graph (every reader a max pool that qualifies) and exports the edited
module again; the ONNX rewrite does the same for onnx2tf (toolkit.convert.onnx_rewrite_layout)."""

from __future__ import annotations

import math

MAX_POOLS = ("aten.max_pool2d.default", "aten.max_pool2d_with_indices.default")


def _pair(value, default) -> tuple:
    value = default if value is None or value == [] else value
    return tuple(value) * (2 // len(value)) if isinstance(value, (list, tuple)) else (value, value)


def _negative_infinity_pad(node):
    """(input node, F.pad-order pads) of a constant pad of -inf of the last two axes of a 4-D map, else None."""
    target = str(node.target)
    if node.op != "call_function" or target not in ("aten.pad.default", "aten.constant_pad_nd.default"):
        return None
    names = ("input", "pad", "mode", "value") if target == "aten.pad.default" else ("input", "pad", "value")
    defaults = {"mode": "constant", "value": None if target == "aten.pad.default" else 0.0}
    given = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
    x, pads, value = given.get("input"), given.get("pad"), given.get("value")
    if given.get("mode", "constant") != "constant" or x is None or pads is None:
        return None
    meta = getattr(x, "meta", {}).get("val")
    if value is None or not (float(value) == -math.inf) or meta is None or meta.dim() != 4 or len(pads) not in (2, 4):
        return None
    return x, tuple(int(p) for p in pads) + (0,) * (4 - len(pads))


def _pools_keep_a_cell(node, pads: tuple) -> bool:
    """Every reader of `node` is a max pool with no padding, dilation 1, floor mode and each window
    holding a real cell (pads under the kernel), read for its values only."""
    if not node.users:
        return False
    for user in node.users:
        if user.op != "call_function" or str(user.target) not in MAX_POOLS or user.args[0] is not node:
            return False
        args = list(user.args) + [None] * 6
        kernel, padding, dilation = _pair(args[1], None), _pair(args[3], [0]), _pair(args[4], [1])
        ceil = bool(args[5] or user.kwargs.get("ceil_mode", False))
        if any(padding) or dilation != (1, 1) or ceil:
            return False
        if str(user.target) == "aten.max_pool2d_with_indices.default" and any(
                r.op != "call_function" or r.args[1] != 0 for r in user.users):
            return False  # the indices would count padded cells
        (kh, kw), (left, right, top, bottom) = kernel, pads
        if max(left, right) >= kw or max(top, bottom) >= kh:
            return False
    return True


def edge_pads_for_max_pools(graph_module) -> int:
    """Replace, in place, each qualifying -inf pad of `graph_module` (an unlifted exported module) by an
    edge pad. Returns how many were replaced."""
    from toolkit.convert.delegate_functions import edge_padded

    replaced = 0
    for node in list(graph_module.graph.nodes):
        found = _negative_infinity_pad(node)
        if found is None or not _pools_keep_a_cell(node, found[1]):
            continue
        with graph_module.graph.inserting_before(node):
            edge = graph_module.graph.call_function(edge_padded, (found[0], found[1]))
        node.replace_all_uses_with(edge)
        graph_module.graph.erase_node(node)
        replaced += 1
    if replaced:
        graph_module.recompile()
    return replaced


def max_pools_on_edge_pads(program, example) -> tuple[object, int]:
    """(program with its qualifying -inf pads as edge pads, how many); the program itself when none."""
    from toolkit.convert.constant_fold import edited_program

    return edited_program(program, example, edge_pads_for_max_pools)
