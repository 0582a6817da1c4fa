"""Unstructured sparsity: magnitude pruning of conv/linear weights (one-shot or gradual), the
zeros actually present in exported ONNX/TFLite files, and whether a runtime can use them.

    from toolkit.sparsity import sparsify, sparsity_report
    model, record = sparsify(model, sparsity=0.8, scope="global", schedule="gradual", steps=4, finetune=ft)
    sparsity_report("model_float32.tflite", "tflite")  # {"prunable_zero_fraction": ..., "layers": ..., sizes}
"""

from __future__ import annotations


def sparsify(model, **options):
    """See toolkit.sparsity.magnitude.sparsify."""
    from toolkit.sparsity.magnitude import sparsify as run

    return run(model, **options)


def sparsity_report(path, fmt: str) -> dict:
    """See toolkit.sparsity.measure.sparsity_report."""
    from toolkit.sparsity.measure import sparsity_report as run

    return run(path, fmt)


__all__ = ["sparsify", "sparsity_report"]
