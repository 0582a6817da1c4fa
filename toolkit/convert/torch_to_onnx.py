"""torch.nn.Module -> ONNX (TorchScript exporter, dynamo=False, checked and simplified). A graph the
TorchScript exporter refuses (Unfold of a traced size, adaptive pools with odd factors, ...) is
exported again with torch.export (dynamo=True, onnxscript, opset 18 or later)."""

from __future__ import annotations

from pathlib import Path


_PROTOBUF_SAFE_BYTES = 1_800_000_000  # one protobuf message holds at most 2 GiB


def _weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _export_large(model, example, path: Path, *, opset: int, input_name: str, output_name: str) -> Path:
    """Models over the protobuf limit: the weights go to one `<name>.onnx.data` file beside the
    graph (ONNX external data); no onnxsim (it works in memory); checked from the path."""
    import tempfile
    import warnings

    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as tmp:
        raw = Path(tmp) / "model.onnx"  # the exporter writes one external file per tensor here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(raw), opset_version=opset, input_names=[input_name],
                              output_names=[output_name], dynamo=False, do_constant_folding=True)
        proto = onnx.load(str(raw))
        onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
    onnx.checker.check_model(str(path))
    return path


def _reason(error: BaseException) -> str:
    """The innermost cause's first line, without terminal colours, for a one-line message."""
    import re

    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _export_with_torch_export(model, example, *, opset: int, input_name: str, output_name: str, refused: Exception):
    """The dynamo exporter (torch.export + onnxscript) for a graph the TorchScript exporter refused;
    the error names both exporters' reasons when this one fails too."""
    import warnings

    import torch

    first = _reason(refused)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=max(opset, 18), external_data=False,
                                        input_names=[input_name], output_names=[output_name], verbose=False,
                                        report=False)
        program.optimize()
        return program.model_proto
    except Exception as error:
        second = _reason(error)
        raise RuntimeError(f"ONNX export failed: the TorchScript exporter: {first}; torch.export (dynamo): {second}") from refused


def torch_to_onnx(model, input_shape: tuple[int, ...], path: str | Path, *, opset: int = 17,
                  input_name: str = "input", output_name: str = "output", simplify: bool = True) -> Path:
    """Export `model` (eval mode) at a fixed input shape (N,C,H,W). Returns the file path.
    The exported graph is validated with onnx.checker; onnxsim folds constants when it can."""
    import io
    import warnings

    import onnx
    import torch

    from toolkit.convert.resize_matrices import resizes_as_matrices

    path = Path(path)
    model = model.eval()
    example = torch.zeros(*input_shape)
    with resizes_as_matrices(model, example):  # cubic Resize: FlexResizeBicubic in TFLite; uneven adaptive pools
        if _weight_bytes(model) > _PROTOBUF_SAFE_BYTES:
            return _export_large(model, example, path, opset=opset, input_name=input_name, output_name=output_name)
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (example,), buffer, opset_version=opset, input_names=[input_name],
                                  output_names=[output_name], dynamo=False, do_constant_folding=True)
            proto = onnx.load_from_string(buffer.getvalue())
        except MemoryError:
            raise
        except Exception as refused:  # the TorchScript exporter's limits; torch.export may trace what it cannot
            proto = _export_with_torch_export(model, example, opset=opset, input_name=input_name,
                                              output_name=output_name, refused=refused)
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
