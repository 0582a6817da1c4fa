"""The zeros actually present in an exported file, and what they buy in storage.

ONNX: conv/gemm/matmul weight initializers (through a DequantizeLinear for QDQ INT8 files).
TFLite: the filter tensors of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED read straight from
the flatbuffer with the schema shipped in ai_edge_litert (through DEQUANTIZE for FP16 weights
and DENSIFY for sparse-encoded weights). A quantized weight counts as zero when it equals its
zero point. Layers are keyed by weight tensor (a weight two ops share counts once); weights
that cannot be read are listed under "unread_layers", never silently dropped. "Prunable" layers
are the ones `sparsify` prunes by default: not depthwise and not
the layer producing a graph output.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from toolkit.core.errors import EdgeShrinkError

FORMATS = ("onnx", "tflite")


def sparsity_report(path: str | Path, fmt: str) -> dict:
    """{"prunable_zero_fraction", "all_weights_zero_fraction", "layers": {name: {...}},
    "raw_bytes", "gzip_bytes", "gzip_ratio"} for an .onnx or .tflite file."""
    path = Path(path)
    if fmt not in FORMATS:
        raise EdgeShrinkError(f"sparsity_report: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise EdgeShrinkError(f"sparsity_report: {path} does not exist; pass an exported .{fmt} file")
    layers, unread = _onnx_layers(path) if fmt == "onnx" else _tflite_layers(path)
    if not layers:
        raise EdgeShrinkError(f"{path.name} has no conv/fully-connected weights stored as constants; is it the exported model?")
    raw = path.read_bytes()
    packed = len(gzip.compress(raw, compresslevel=9))
    prunable = [v for v in layers.values() if not v["depthwise"] and not v["output_layer"]]
    return {"file": str(path), "format": fmt, "prunable_zero_fraction": _fraction(prunable),
            "all_weights_zero_fraction": _fraction(list(layers.values())),
            "prunable_params": sum(v["params"] for v in prunable),
            "raw_bytes": len(raw), "gzip_bytes": packed, "gzip_ratio": round(packed / len(raw), 4),
            "unread_layers": unread, "layers": layers}


def _fraction(rows: list) -> float:
    params = sum(r["params"] for r in rows)
    return round(sum(r["zeros"] for r in rows) / params, 6) if params else 0.0


def _row(op: str, values: np.ndarray, zero_point, *, depthwise: bool, output_layer: bool, encoding: str = "dense") -> dict:
    zeros = int(np.count_nonzero(values == zero_point)) if values.size else 0
    return {"op": op, "shape": list(values.shape), "params": int(values.size), "zeros": zeros,
            "zero_fraction": round(zeros / max(1, values.size), 6), "dtype": str(values.dtype),
            "depthwise": depthwise, "output_layer": output_layer, "encoding": encoding}


def _onnx_layers(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    layers, unread = {}, []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name, zero = node.input[1], 0
        dq = producers.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear":
            name = dq.input[0]
            if len(dq.input) > 2 and dq.input[2] in inits:
                zero = numpy_helper.to_array(inits[dq.input[2]]).reshape(-1)[0]
        if name not in inits:
            unread.append(node.name or name)
            continue
        w = numpy_helper.to_array(inits[name])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        depthwise = node.op_type == "Conv" and group > 1 and w.shape[1] == 1
        layers[node.name or name] = _row(node.op_type, w, zero, depthwise=depthwise,
                                         output_layer=bool(set(node.output) & outputs))
    return layers, unread


def _tflite_layers(path: Path) -> dict:
    from ai_edge_litert import schema_py_generated as fb

    raw = path.read_bytes()
    model = fb.Model.GetRootAs(raw, 0)
    graph = model.Subgraphs(0)
    ops = {fb.BuiltinOperator.CONV_2D: "CONV_2D", fb.BuiltinOperator.DEPTHWISE_CONV_2D: "DEPTHWISE_CONV_2D",
           fb.BuiltinOperator.FULLY_CONNECTED: "FULLY_CONNECTED"}
    producers, codes = {}, []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        codes.append(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        for out in op.OutputsAsNumpy():
            producers[int(out)] = i
    outputs = {int(o) for o in graph.OutputsAsNumpy()}
    layers, unread = {}, []
    for i in range(graph.OperatorsLength()):
        if codes[i] not in ops:
            continue
        op = graph.Operators(i)
        found = _tflite_weight(raw, model, graph, int(op.Inputs(1)), producers=producers, codes=codes, fb=fb)
        if found is None:  # e.g. a natively sparse FULLY_CONNECTED weight with no readable buffer
            unread.append(graph.Tensors(int(op.Inputs(1))).Name().decode())
            continue
        values, zero, encoding, name = found
        layers[name] = _row(ops[codes[i]], values, zero, depthwise=codes[i] == fb.BuiltinOperator.DEPTHWISE_CONV_2D,
                            output_layer=bool({int(o) for o in op.OutputsAsNumpy()} & outputs), encoding=encoding)
    return layers, unread


_NP = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 9: np.int8}


def _tflite_weight(raw: bytes, model, graph, index: int, *, producers: dict, codes: list, fb):
    """(values with the tensor's logical shape, zero point, encoding, name) or None when the
    filter is not a constant (or its type is not one we read)."""
    tensor = graph.Tensors(index)
    via = producers.get(index)
    if via is not None and codes[via] in (fb.BuiltinOperator.DEQUANTIZE, fb.BuiltinOperator.DENSIFY):
        source = int(graph.Operators(via).Inputs(0))
        src = graph.Tensors(source)
        data = _buffer(raw, model, src.Buffer())
        if data is None or src.Type() not in _NP:
            return None
        values = np.frombuffer(data, dtype=_NP[src.Type()])
        shape = tuple(int(s) for s in tensor.ShapeAsNumpy())
        if codes[via] == fb.BuiltinOperator.DENSIFY:  # sparse storage: only the kept values are stored
            dense = np.zeros(int(np.prod(shape)), values.dtype)
            dense[:values.size] = values  # positions do not matter for counting zeros
            return dense.reshape(shape), 0, "sparse(DENSIFY)", tensor.Name().decode()
        return values.reshape(shape), 0, "fp16(DEQUANTIZE)", tensor.Name().decode()
    data = _buffer(raw, model, tensor.Buffer())
    if data is None or tensor.Type() not in _NP:
        return None
    values = np.frombuffer(data, dtype=_NP[tensor.Type()])
    shape = tuple(int(s) for s in tensor.ShapeAsNumpy())
    q = tensor.Quantization()
    zero = int(q.ZeroPointAsNumpy()[0]) if q is not None and q.ZeroPointLength() else 0
    if tensor.Sparsity() is not None and values.size < int(np.prod(shape)):  # natively sparse (e.g. FC)
        dense = np.full(int(np.prod(shape)), zero, values.dtype)
        dense[:values.size] = values
        return dense.reshape(shape), zero, "sparse(native)", tensor.Name().decode()
    return values.reshape(shape), zero, "dense", tensor.Name().decode()


def _buffer(raw: bytes, model, index: int):
    buf = model.Buffers(index)
    if buf is None:
        return None
    if buf.Offset() > 1:  # stored after the flatbuffer (large models)
        return raw[buf.Offset():buf.Offset() + buf.Size()]
    if buf.DataLength() == 0:
        return None
    return buf.DataAsNumpy().tobytes()
