"""Where does a converted model first stop agreeing with its source?

- torch vs ONNX: every ONNX node output becomes a graph output; torch module outputs come from
  forward hooks. The TorchScript exporter names nodes by module scope
  ("/features/features.1/block/block.0/block.0.0/Conv"), so a module's output is the output of the
  last node in its scope. BatchNorm is folded into the preceding conv in a copy of the torch model,
  as the exporter does, so conv outputs compare like for like.
- ONNX vs TFLite: LiteRT keeps every intermediate tensor (experimental_preserve_all_tensors);
  onnx2tf renames tensors, so they are matched by shape and value (NCHW -> NHWC). Converters fuse
  ops (conv + relu), so a single unmatched ONNX tensor proves nothing: the first divergence is the
  first unmatched tensor from which no tensor within 4 ops downstream matches again.
Relative error: max |a - b| / (max |b| + 1e-12)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import numpy as np

OTHER_CONVERTER = ("convert with the other TFLite converter: `edgeshrink run --tflite-converter litert-torch` "
                   "(card `tflite_converter: litert-torch`; it reads the torch model, no ONNX layout guessing)")
_ONNX_HINTS = {
    "Resize": "the torch->ONNX export changes this interpolation: use size/scale_factor with align_corners=False "
              "(or mode='nearest') in the module's forward",
    "BatchNormalization": "the model was exported in training mode: call model.eval() before giving it to EdgeShrink",
}
_ONNX_DEFAULT = ("the torch->ONNX export changes this module: rewrite its forward with export-friendly ops "
                 "(no in-place slicing assignments, no data-dependent shapes), or list it in the card's never_prune "
                 "if pruning made it so; the TFLite files can still come from litert-torch (`--tflite-converter "
                 "litert-torch`)")
_TFLITE_HINTS = {op: OTHER_CONVERTER for op in ("Resize", "Transpose", "Reshape", "Softmax", "Pad", "Slice", "Concat")}
_TFLITE_DEFAULT = OTHER_CONVERTER + "; for INT8 files compare the FP32 file first"


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / (np.abs(b).max() + 1e-12))


def onnx_all_outputs(onnx_path: str | Path, sample: np.ndarray) -> tuple[list, dict[str, np.ndarray]]:
    """(nodes in graph order, {tensor name: value}) for every node output of the ONNX model."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in node.output if t and t not in known)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {sess.get_inputs()[0].name: np.ascontiguousarray(sample, np.float32)})
    return list(model.graph.node), dict(zip(names, values))


def _fold_batchnorm(model):
    """Copy of `model` with each BatchNorm2d folded into the Conv2d right before it."""
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        kids = list(parent.named_children())
        for (n1, m1), (n2, m2) in zip(kids, kids[1:]):
            if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d):
                setattr(parent, n1, fuse_conv_bn_eval(m1, m2))
                setattr(parent, n2, nn.Identity())
    return model


def torch_module_outputs(model, sample: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """[(module name, output)] in the order modules finish, BatchNorm folded into convs."""
    import torch

    model = _fold_batchnorm(model)
    seen: list[tuple[str, np.ndarray]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: seen.append((name, o.detach().numpy().copy())))
             for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(sample, np.float32)))
    finally:
        for h in hooks:
            h.remove()
    return [(n, o) for n, o in seen if isinstance(o, np.ndarray)]


def scope_modules(node_name: str) -> list[str]:
    """Torch module names enclosing an exported node: "/features/features.2/block/block.0/Conv"
    -> ["features", "features.2", "features.2.block", "features.2.block.0"] (the exporter writes
    each scope relative to the last non-Sequential parent)."""
    full, prev, names = "", "", []
    for seg in node_name.split("/")[1:-1]:
        if prev and seg.startswith(prev + "."):
            full = full + seg[len(prev):]
        else:
            full = f"{full}.{seg}" if full else seg
        prev = seg
        names.append(full)
    return names


def _torch_vs_onnx(nodes, values: dict, torch_model, sample, rtol: float) -> Optional[dict]:
    last_in_scope: dict[str, object] = {}
    for node in nodes:  # graph order: later nodes overwrite, so each scope keeps its last node
        for name in scope_modules(node.name):
            last_in_scope[name] = node
    compared = 0
    for name, out in torch_module_outputs(torch_model, sample):
        node = last_in_scope.get(name)
        if node is None or node.output[0] not in values or values[node.output[0]].shape != out.shape:
            continue
        compared += 1
        err = _rel_err(values[node.output[0]], out)
        if err > rtol:
            return {"stage": "torch->onnx", "module": name, "node": node.name, "op_type": node.op_type,
                    "tensor": node.output[0], "rel_error": err, "compared": compared,
                    "suggestion": _ONNX_HINTS.get(node.op_type, _ONNX_DEFAULT)}
    return None


def tflite_all_tensors(tflite_path: str | Path, sample_nchw: np.ndarray) -> list[np.ndarray]:
    """Every float (or dequantised) tensor LiteRT computed for one input, in tensor-index order."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # LiteRT warns that keeping every tensor is for debugging: it is
        warnings.simplefilter("ignore")
        interp = Interpreter(model_path=str(tflite_path), num_threads=1, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = sample_nchw.transpose(0, 2, 3, 1) if sample_nchw.ndim == 4 else sample_nchw
    if inp["dtype"] in (np.int8, np.uint8):
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max)
    interp.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]))
    interp.invoke()
    out = []
    for t in interp.get_tensor_details():
        try:
            v = interp.get_tensor(t["index"])
        except ValueError:
            continue
        if v.dtype in (np.int8, np.uint8) and t["quantization"][0] > 0:
            v = (v.astype(np.float32) - t["quantization"][1]) * t["quantization"][0]
        if v.dtype == np.float32 and v.size > 1:
            out.append(v)
    return out


def _onnx_vs_tflite(nodes, values: dict, tflite_path, sample, rtol: float) -> Optional[dict]:
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for v in tflite_all_tensors(tflite_path, sample):
        by_shape.setdefault(tuple(v.shape), []).append(v)
    matched: dict[str, bool] = {}
    for node in nodes:
        v = values.get(node.output[0])
        if v is not None and v.dtype == np.float32 and v.size > 1:
            v = v.transpose(0, 2, 3, 1) if v.ndim == 4 else v
            matched[node.output[0]] = any(_rel_err(c, v) <= rtol for c in by_shape.get(tuple(v.shape), []))
    consumers: dict[str, list] = {}
    for node in nodes:
        for t in node.input:
            consumers.setdefault(t, []).append(node)

    def recovers(tensor: str, depth: int) -> bool:
        """A fused-away intermediate (conv before its fused relu) is unmatched but a tensor a few
        ops later matches again; a real divergence never recovers."""
        for c in consumers.get(tensor, []) if depth else []:
            if matched.get(c.output[0]) or recovers(c.output[0], depth - 1):
                return True
        return False

    node = next((n for n in nodes if matched.get(n.output[0]) is False and not recovers(n.output[0], 4)), None)
    if node is None:
        return None
    v = values[node.output[0]]
    v = v.transpose(0, 2, 3, 1) if v.ndim == 4 else v
    best = min((_rel_err(c, v) for c in by_shape.get(tuple(v.shape), [])), default=float("inf"))
    return {"stage": "onnx->tflite", "node": node.name, "op_type": node.op_type, "tensor": node.output[0],
            "rel_error": best, "compared": len(matched),
            "suggestion": _TFLITE_HINTS.get(node.op_type, _TFLITE_DEFAULT)}


def first_divergence(onnx_path: str | Path, tflite_path: Optional[str | Path], torch_model, sample: np.ndarray, *,
                     rtol: float = 1e-3) -> dict:
    """First layer where ONNX disagrees with torch (when `torch_model` is given) and, when they
    agree and `tflite_path` is given, first where TFLite disagrees with ONNX. `sample` is one
    normalised NCHW input (1, C, H, W). Returns {"diverged": False, ...} or {"diverged": True,
    stage, node, op_type, tensor, rel_error, suggestion, (module)}."""
    nodes, values = onnx_all_outputs(onnx_path, sample)
    if torch_model is not None:
        found = _torch_vs_onnx(nodes, values, torch_model, sample, rtol)
        if found:
            return {"diverged": True, **found}
    if tflite_path is not None:
        found = _onnx_vs_tflite(nodes, values, tflite_path, sample, rtol)
        if found:
            return {"diverged": True, **found}
    return {"diverged": False, "rtol": rtol, "checked": [s for s, on in (("torch->onnx", torch_model is not None),
                                                                       ("onnx->tflite", tflite_path is not None)) if on]}
