"""torch.nn.Module -> ONNX (TorchScript exporter, dynamo=False, checked and simplified)."""

from __future__ import annotations

from pathlib import Path


def torch_to_onnx(model, input_shape: tuple[int, ...], path: str | Path, *, opset: int = 17,
                  input_name: str = "input", output_name: str = "output", simplify: bool = True) -> Path:
    """Export `model` (eval mode) at a fixed input shape (N,C,H,W). Returns the file path.
    The exported graph is validated with onnx.checker; onnxsim folds constants when it can."""
    import io
    import warnings

    import onnx
    import torch

    path = Path(path)
    model = model.eval()
    example = torch.zeros(*input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, opset_version=opset, input_names=[input_name],
                          output_names=[output_name], dynamo=False, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    if simplify:
        try:
            from onnxsim import simplify as onnxsim_simplify

            simplified, ok = onnxsim_simplify(proto)
            if ok:
                proto = simplified
        except Exception:  # onnxsim is an optimisation; the checked export stands without it
            pass
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path
