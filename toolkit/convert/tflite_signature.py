"""Give a TFLite file without a signature one: onnx2tf's concrete-function path (taken e.g. when it
cannot save a model as a SavedModel) writes files whose signature list is empty, and signature
runners (ai-edge-quantizer, the INT8 fallback) refuse them."""

from __future__ import annotations

from pathlib import Path


def onnx_io_names(onnx_path: Path) -> tuple[list, list]:
    """(graph input names without initialisers, graph output names) of an ONNX file."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initialisers], [o.name for o in graph.output]


def ensure_signature(path: Path, *, input_names: list, output_names: list) -> bool:
    """Add a `serving_default` signature (the subgraph's inputs and outputs under the given names)
    to a TFLite file that has none; returns whether the file changed. Graph and weights are untouched."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    if model.signatureDefs:
        return False
    graph = model.subgraphs[0]

    def maps(indices, names) -> list:
        out = []
        for index, name in zip(indices, names):
            tensor_map = schema.TensorMapT()
            tensor_map.name, tensor_map.tensorIndex = name.encode(), int(index)
            out.append(tensor_map)
        return out

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = b"serving_default", 0
    signature.inputs, signature.outputs = maps(graph.inputs, input_names), maps(graph.outputs, output_names)
    model.signatureDefs = [signature]
    flatbuffer_utils.write_model(model, str(path))
    return True


def ensure_signatures(onnx_path: Path, files) -> None:
    """`ensure_signature` on each TFLite file converted from `onnx_path` (None entries skipped)."""
    inputs, outputs = onnx_io_names(onnx_path)
    for path in files:
        if path is not None:
            ensure_signature(Path(path), input_names=inputs, output_names=outputs)
