"""Segmentation-only outputs: full-slice (256x256) files and benchmarks, time per volume, and a
PNG grid of held-out examples (image, truth, dense FP32, pruned INT8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FULL_SLICE = 256


def _pad_to(x_nchw: np.ndarray, size: int) -> np.ndarray:
    n, c, h, w = x_nchw.shape
    out = np.zeros((n, c, size, size), np.float32)
    oy, ox = (size - h) // 2, (size - w) // 2
    out[:, :, oy:oy + h, ox:ox + w] = x_nchw
    return out


def full_slice_benchmarks(runner, task) -> dict:
    """Export dense/pruned at 256x256 (TFLite FP32, pruned INT8 too), benchmark them and estimate
    the time per whole volume (p50 x mean slices per held-out volume)."""
    work, name, target, clock = runner.work, runner.name, runner.target, runner.clock
    models = {"dense": runner.families["dense"].model, "pruned": runner.families["pruned"].model}
    calib_nchw = runner.calib_nchw
    from toolkit.artifact import Artifact
    from toolkit.bench.host import benchmark_file
    from toolkit.convert.cache import cached_onnx_to_tflite
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite as uncached
    from toolkit.convert.tflite_check import require_full_integer
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    shape = (1, task.spec.channels, FULL_SLICE, FULL_SLICE)
    calib = _pad_to(calib_nchw, FULL_SLICE).transpose(0, 2, 3, 1)
    slices_per_volume = task.eval_count() / max(1, len(task.volumes.held_out))
    b = target.benchmark
    rows = []
    for stage, model in models.items():
        int8 = stage == "pruned" and "int8" in target.precisions
        with clock("full-slice 256 export"):
            onnx_path = torch_to_onnx(model, shape, work / f"{name}_{stage}_fp32_{FULL_SLICE}.onnx")
            convert = cached_onnx_to_tflite if runner.plan.cache else uncached
            out = convert(onnx_path, work, calib, task.spec.mean, task.spec.std, int8=int8,
                                 io_dtype=target.quantization.io_dtype)
            files = [("fp32", out.float32.rename(work / f"{name}_{stage}_fp32_{FULL_SLICE}.tflite"))]
            if out.int8:
                q = out.int8.rename(work / f"{name}_{stage}_int8_{FULL_SLICE}.tflite")
                require_full_integer(q, target.quantization.io_dtype)
                files.append(("int8", q))
            onnx_path.unlink()
        for precision, path in files:
            with clock("benchmark"):
                r = benchmark_file(path, "tflite", shape, threads=target.bench_threads, warmup=b.warmup,
                                   min_runs=b.min_runs, min_seconds=b.min_seconds)
            a = Artifact.of_file(work, path, name=f"{stage}-tflite-{precision}-{FULL_SLICE}", stage=stage, format="tflite",
                                 precision=precision)
            rows.append({**a.to_dict(), "input_shape": list(shape), "latency_ms": r["latency_ms"], "fps": r["fps"],
                         "slices_per_s": r["fps"], "peak_rss_mb": r["peak_rss_mb"],
                         "volume_ms_estimate": r["latency_ms"]["p50"] * slices_per_volume})
    return {"size": FULL_SLICE, "slices_per_volume": slices_per_volume, "rows": rows,
            "note": "volume_ms_estimate = p50 per slice x mean slices per held-out volume"}


def example_grid(path: Path, task, dense_out: np.ndarray, pruned_out: np.ndarray, *, title: str, count: int = 4) -> None:
    """Rows of held-out slices with the most foreground: image | truth | dense FP32 | pruned INT8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from toolkit.segmentation.nifti import slices_of

    size = (task.spec.height, task.spec.width)
    images, labels = zip(*(slices_of(v, size) for v in task.volumes.held_out))
    images, labels = np.concatenate(images), np.concatenate(labels)
    fg = (labels > 0).reshape(len(labels), -1).sum(1)
    vol_step = max(1, len(labels) // count)
    picks = [int(np.argmax(fg[i:i + vol_step])) + i for i in range(0, vol_step * count, vol_step)][:count]
    cmap = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.6), (0.9, 0.3, 0.1, 0.6)])
    fig, axes = plt.subplots(len(picks), 4, figsize=(9, 2.3 * len(picks)))
    for r, i in enumerate(picks):
        for c, (mask, head) in enumerate([(None, "image"), (labels[i], "ground truth"),
                                          (dense_out[i].argmax(0), "dense FP32"), (pruned_out[i].argmax(0), "pruned INT8 TFLite")]):
            ax = axes[r, c]
            ax.imshow(images[i, 0], cmap="gray")
            if mask is not None:
                ax.imshow(mask, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(head, fontsize=9)
    fig.suptitle(f"{title} — green: anterior, red: posterior", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
