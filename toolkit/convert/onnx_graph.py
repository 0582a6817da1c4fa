"""The ONNX graph the rewrites of toolkit.convert.onnx_rewrite edit: inferred shapes, producers and
readers of every tensor, constants as arrays, and helpers that emit replacement nodes."""

from __future__ import annotations


class Graph:
    """Emits replacement nodes with unique names; constants become initializers."""

    def __init__(self, proto):
        from onnx import numpy_helper, shape_inference

        self.proto, self.graph, self.count = proto, proto.graph, 0
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
        self.inits = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        try:
            inferred = shape_inference.infer_shapes(proto).graph
        except Exception:  # noqa: BLE001 - shapes are only needed to match some rewrites
            inferred = self.graph
        self.shapes = {}
        for v in [*inferred.value_info, *inferred.input, *inferred.output]:
            dims = v.type.tensor_type.shape.dim
            self.shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        self.nodes: list = []
        self.producers = {out: n for n in self.graph.node for out in n.output}
        self.readers: dict = {}  # tensor name -> the nodes reading it (a graph output counts as None)
        for n in self.graph.node:
            for name in n.input:
                self.readers.setdefault(name, []).append(n)
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.inits.setdefault(n.output[0], numpy_helper.to_array(n.attribute[0].t))
        for v in self.graph.output:
            self.readers.setdefault(v.name, []).append(None)

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"es_rw_{base}_{self.count}"

    def const(self, value, dtype="float32") -> str:
        import numpy as np
        from onnx import numpy_helper

        name = self.fresh("c")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list, *, out: str = "", **attrs) -> str:
        from onnx import helper

        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh(op_type), **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: list, *, out: str = "") -> str:
        """ReduceMean/ReduceMax/ReduceSum over `axes`, keepdims, in this opset's form."""
        as_input = op_type == "ReduceSum" and self.opset >= 13 or self.opset >= 18
        if as_input:
            return self.op(op_type, [x, self.const(axes, "int64")], out=out, keepdims=1)
        return self.op(op_type, [x], out=out, axes=list(axes), keepdims=1)

    def rank(self, name: str):
        shape = self.shapes.get(name)
        return len(shape) if shape is not None else None


def attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def reduce_axes(g: Graph, node):
    """A reduction's axes (attribute or constant input), non-negative; None when not known."""
    rank = g.rank(node.input[0])
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1] in g.inits:
        axes = g.inits[node.input[1]].reshape(-1).tolist()
    if axes is None or rank is None:
        return None
    return sorted(int(a) % rank for a in axes)
