"""INT8 ADD/SUB/MUL inputs quantized finer than XNNPACK takes, requantized to a scale it takes.

XNNPACK delegates an INT8 ADD or SUB only when each input's scale is at least 1/1024 of the
output's, and a MUL only when its input scales' product is at least 1/65536 of the output's
(tflite/delegates/xnnpack, CheckTensorsInputOutputScale; the MUL bound measured here). Calibration
breaks that where a branch is tiny beside the sum it joins: a residual branch behind a small layer
scale (CaiT, CoaT), the decoder sums of a randomly initialised U-Net whose output range is shared
with a concatenation (MONAI FlexibleUNet, onnx2tf: inputs at 3.6e-7 and 7.9e-9 into sums at 5.0e-4
and 4.4e-4), and the MULs of the exact-GELU form on small activations (ViT, Visformer). Each such op
runs outside XNNPACK and splits the graph.

Such an input carries less than a quarter of one output step over its whole int8 range, so the op
may read it on a coarser grid without changing what it computes: an ADD input at 1/1000 of the
output's scale (its rounding error is then at most about 1/2000 of an output step), a MUL input so
that the product of the scales is 1/60000 of the output's (error under 1/900 of an output step):
- an activation is read through a QUANTIZE op (int8 -> int8, which XNNPACK delegates up to 256x
  coarser, so a chain of them when the gap is wider); its other readers keep its fine grid;
- a constant (an eps added to a sum of squares: XCiT's L2 norms, 24 ADDs in onnx2tf's file; a MUL's
  coefficient) is read as a copy with its values on the coarse grid; a MUL prefers its constant.
No other op changes. `requantize_add_inputs` keeps the edited file only when XNNPACK runs it in
fewer partitions, and says what it changed. Measured (random weights, this VM): MONAI FlexibleUNet
onnx2tf INT8 3 partitions -> 1 with int8 outputs identical on a random input; CaiT-XXS24
litert-torch INT8 22 -> 1; XCiT-Nano onnx2tf INT8 13 -> 1; exact GELU on activations of
|x| < 0.03 (onnx2tf) 5 -> 1, outputs identical.

XNNPACK also refuses an ADD or SUB whose output grid is 256x or more finer than an input's: the
erf form's relu6(z) - 3 on tiny activations (inputs at 1.2e-2, output at 1.8e-6, SwiftFormer-XS
with random weights). Its values are multiples of its inputs' grids, so it writes them on a grid
200x finer than its coarsest input and a chain of QUANTIZE ops (each at most 100x finer: XNNPACK
takes 128x) requantizes them onto the original tensor, which its readers keep. SwiftFormer-XS
onnx2tf INT8 at 64 px: 145 partitions -> 1, int8 outputs identical."""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path
from typing import Optional

MIN_RATIO = 1.0 / 1024.0  # XNNPACK: input scale / output scale of INT8 ADD, SUB
MAX_RATIO = 256.0  # ... and below this (XNNPACK's CheckTensorsInputOutputScale)
OUTPUT_RATIO = 200.0  # what a coarsened output gets: the coarsest input's scale / this
UP_STEP = 100.0  # XNNPACK takes an int8 -> int8 QUANTIZE onto a grid up to 128x finer (xnn convert qs8: 2^-8 .. 2^7)
TARGET_RATIO = 1.0 / 1000.0  # what a requantized input gets: inside the range with a margin
QUANTIZE_STEP = 200.0  # XNNPACK takes an int8 -> int8 QUANTIZE up to 256x coarser (measured: 255x yes, 257x no)
SUMS = ("ADD", "SUB")
MIN_PRODUCT = 1.0 / 65536.0  # XNNPACK: input scales' product / output scale of INT8 MUL (measured: 1/65536 x 1.01 yes, 1/70000 no)
TARGET_PRODUCT = 1.0 / 60000.0


def _op_names(model) -> list[str]:
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM") for code in model.operatorCodes]


def _scale(graph, index: int) -> Optional[float]:
    """The per-tensor int8 scale of tensor `index`, or None (float, per-channel, unquantized)."""
    from tensorflow.lite.python import schema_py_generated as schema

    tensor = graph.tensors[index]
    q = tensor.quantization
    if tensor.type != schema.TensorType.INT8 or q is None or q.scale is None or len(q.scale) != 1:
        return None
    return float(q.scale[0])


def _opcode_index(model, code: int) -> int:
    """The index of builtin `code` in the model's operator codes, added when missing."""
    from tensorflow.lite.python import schema_py_generated as schema

    for index, known in enumerate(model.operatorCodes):
        if max(known.builtinCode, known.deprecatedBuiltinCode) == code:
            return index
    entry = schema.OperatorCodeT()
    entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 1
    model.operatorCodes.append(entry)
    return len(model.operatorCodes) - 1


def _requantized_copy(model, graph, tensor: int, *, scale: float, data=None) -> int:
    """A new tensor like `tensor` at `scale` (same zero point), holding `data` (int8 values of a
    constant) or none (an activation); returns its index."""
    import numpy as np

    from tensorflow.lite.python import schema_py_generated as schema

    new = copy.deepcopy(graph.tensors[tensor])
    new.name = (graph.tensors[tensor].name or b"") + f"/requantized_{len(graph.tensors)}".encode()
    new.quantization.scale = [scale]
    buffer = schema.BufferT()
    if data is not None:
        buffer.data = np.asarray(data, dtype=np.int8).view(np.uint8)
    model.buffers.append(buffer)
    new.buffer = len(model.buffers) - 1
    graph.tensors.append(new)
    return len(graph.tensors) - 1


def _constant_values(model, graph, tensor: int):
    """The int8 values of a constant tensor held in the file, None for an activation, False for a
    constant stored outside the flatbuffer (left alone)."""
    import numpy as np

    buffer = model.buffers[graph.tensors[tensor].buffer]
    if buffer.data is not None and len(buffer.data):
        return np.asarray(buffer.data, dtype=np.uint8).view(np.int8)
    return False if getattr(buffer, "offset", 0) else None


def _sum_inputs(model, graph, op, out_scale: float) -> list[tuple[int, float]]:
    """(input, coarser scale) for each input of an ADD/SUB XNNPACK refuses for its scale."""
    fine = []
    for t in dict.fromkeys(int(i) for i in op.inputs if i >= 0):
        scale = _scale(graph, t)
        if scale is not None and _constant_values(model, graph, t) is not False and scale / out_scale < MIN_RATIO:
            fine.append((t, out_scale * TARGET_RATIO))
    return fine


def _product_input(model, graph, op, out_scale: float) -> list[tuple[int, float]]:
    """(input, coarser scale) for a MUL whose input scales' product is too fine for its output:
    its constant input when it has one (no op added), else its first input; one input of a square
    (both inputs the same tensor) coarsens both factors."""
    inputs = [int(i) for i in op.inputs if i >= 0]
    scales = [_scale(graph, t) for t in inputs]
    if len(inputs) != 2 or None in scales or scales[0] * scales[1] / out_scale >= MIN_PRODUCT:
        return []
    short = TARGET_PRODUCT / (scales[0] * scales[1] / out_scale)
    if inputs[0] == inputs[1]:
        return [(inputs[0], scales[0] * math.sqrt(short))]
    kinds = [_constant_values(model, graph, t) for t in inputs]
    if any(values is False for values in kinds):  # (`False in kinds` compares arrays elementwise)
        return []
    pick = next((i for i, values in enumerate(kinds) if values is not None), 0)
    return [(inputs[pick], scales[pick] * short)]


def _coarser_inputs(model, graph, op_names: list[str], op) -> list[tuple[int, float]]:
    """(input, coarser scale) for each input of `op` that XNNPACK's INT8 scale limits refuse."""
    name = op_names[op.opcodeIndex]
    out_scale = _scale(graph, int(op.outputs[0])) if op.outputs is not None and len(op.outputs) else None
    if out_scale is None:
        return []
    if name in SUMS:
        return _sum_inputs(model, graph, op, out_scale)
    return _product_input(model, graph, op, out_scale) if name == "MUL" else []


def _requantized_constant(model, graph, tensor: int, *, scale: float) -> int:
    """A new constant like `tensor` with its values on the grid `scale` (same zero point): the ADD's
    own output grid would round away what the finer grid held."""
    import numpy as np

    q = graph.tensors[tensor].quantization
    zero = int(q.zeroPoint[0]) if q.zeroPoint is not None else 0
    real = (_constant_values(model, graph, tensor).astype(np.float64) - zero) * _scale(graph, tensor)
    values = np.clip(np.round(real / scale) + zero, -128, 127).astype(np.int8)
    return _requantized_copy(model, graph, tensor, scale=scale, data=values)


def _chain_scales(start: float, end: float, *, step: float = QUANTIZE_STEP) -> list[float]:
    """Scales from `start` to `end` (the last one), coarser or finer, each at most `step` times the one before."""
    steps = max(1, math.ceil(abs(math.log(end / start)) / math.log(step)))
    return [start * (end / start) ** (i / steps) for i in range(1, steps + 1)]


def _coarser_output(model, graph, op_names: list[str], op) -> Optional[float]:
    """A coarser output scale for an ADD/SUB whose output grid is more than MAX_RATIO times finer than
    an input's (the erf form's relu6(z) - 3 on tiny activations: inputs at 1.2e-2, output at 1.8e-6 in
    SwiftFormer's INT8 file); None when XNNPACK takes its scales."""
    out = int(op.outputs[0]) if op.outputs is not None and len(op.outputs) == 1 else None
    if op_names[op.opcodeIndex] not in SUMS or out is None or _scale(graph, out) is None:
        return None
    scales = [_scale(graph, int(t)) for t in op.inputs if t >= 0]
    if None in scales or max(scales) / _scale(graph, out) < MAX_RATIO:
        return None
    return max(scales) / OUTPUT_RATIO


def _requantized_output(model, graph, at: int, *, scale: float, quantize: int) -> int:
    """Let operator `at` write its output on the grid `scale` and requantize it onto the original
    tensor's (finer) grid by a chain of QUANTIZE ops after it, each at most UP_STEP times finer: its
    values are multiples of its inputs' grids, so the coarse grid loses nothing the output had, and
    the final QUANTIZE clips to the original range as before. Returns the number of ops added."""
    from tensorflow.lite.python import schema_py_generated as schema

    op = graph.operators[at]
    target = int(op.outputs[0])
    fine = _scale(graph, target)
    source = _requantized_copy(model, graph, target, scale=scale)
    op.outputs = [source]
    scales = _chain_scales(scale, fine, step=UP_STEP)
    for i, step_scale in enumerate(scales):
        step = schema.OperatorT()
        step.opcodeIndex, step.inputs = quantize, [source]
        source = target if i == len(scales) - 1 else _requantized_copy(model, graph, target, scale=step_scale)
        step.outputs = [source]
        graph.operators.insert(at + 1 + i, step)
    return len(scales)


def requantize_in_model(model) -> int:
    """Give every INT8 ADD/SUB/MUL input XNNPACK would refuse for its scale a coarser grid, in the
    flatbuffer object `model` (tflite schema ModelT): a chain of QUANTIZE ops in front of the op, or
    a requantized copy of a constant; and every ADD/SUB output far finer than its inputs a coarser one,
    requantized back after it. Returns how many inputs and outputs were requantized."""
    from tensorflow.lite.python import schema_py_generated as schema

    op_names = _op_names(model)
    quantize = None
    requantized = 0
    for graph in model.subgraphs:
        at = 0
        while at < len(graph.operators):
            op = graph.operators[at]
            added = 0
            coarse_output = _coarser_output(model, graph, op_names, op)
            if coarse_output is not None:
                quantize = _opcode_index(model, schema.BuiltinOperator.QUANTIZE) if quantize is None else quantize
                added = _requantized_output(model, graph, at, scale=coarse_output, quantize=quantize)
                requantized += 1
            for t, target in _coarser_inputs(model, graph, op_names, op):
                if _constant_values(model, graph, t) is not None:  # a constant (eps): its values requantized
                    coarse = _requantized_constant(model, graph, t, scale=target)
                    op.inputs = [coarse if int(i) == t else int(i) for i in op.inputs]
                    requantized += 1
                    continue
                quantize = _opcode_index(model, schema.BuiltinOperator.QUANTIZE) if quantize is None else quantize
                source = t
                for scale in _chain_scales(_scale(graph, t), target):
                    step = schema.OperatorT()
                    step.opcodeIndex, step.inputs = quantize, [source]
                    source = _requantized_copy(model, graph, source, scale=scale)
                    step.outputs = [source]
                    graph.operators.insert(at, step)
                    at += 1
                op.inputs = [source if int(i) == t else int(i) for i in op.inputs]
                requantized += 1
            at += 1 + added
    return requantized


def requantize_add_inputs(path: str | Path) -> Optional[dict]:
    """Requantize the too-fine ADD/SUB inputs of the INT8 file at `path` (replaced in place, atomically)
    when that makes XNNPACK run it in fewer partitions; {requantized, partitions_before,
    partitions_after} when the file changed, else None."""
    from tensorflow.lite.tools import flatbuffer_utils

    from toolkit.runtime.delegate import xnnpack_report

    path = Path(path)
    model = flatbuffer_utils.read_model(str(path))
    added = requantize_in_model(model)
    if not added:
        return None
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}-", suffix=".tflite", delete=False) as tmp:
        edited = Path(tmp.name)
    try:
        flatbuffer_utils.write_model(model, str(edited))
        before, after = xnnpack_report(path)["partitions"], xnnpack_report(edited)["partitions"]
        if after >= before:
            return None
        os.chmod(edited, path.stat().st_mode & 0o7777)
        os.replace(edited, path)
    finally:
        edited.unlink(missing_ok=True)
    return {"requantized": added, "partitions_before": before, "partitions_after": after}
