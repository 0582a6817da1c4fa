"""tradeoffs.png: the primary metric against p50 latency and against file size."""

from __future__ import annotations

from pathlib import Path


def plot_tradeoffs(artifacts, metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"torch": "tab:gray", "onnx": "tab:blue", "tflite": "tab:orange"}
    markers = {"fp32": "o", "int8": "s"}
    scale = 100.0 if metric == "top1" else 1.0
    for a in artifacts:
        y = a.metrics.get(metric)
        if y is None:
            continue
        face = colours.get(a.format, "k") if a.stage == "pruned" else "none"
        kw = dict(marker=markers.get(a.precision, "o"), s=70, edgecolors=colours.get(a.format, "k"), facecolors=face)
        if a.latency_ms:
            axes[0].scatter(a.latency_ms["p50"], y * scale, **kw)
            axes[0].annotate(a.name, (a.latency_ms["p50"], y * scale), fontsize=7, xytext=(4, 3), textcoords="offset points")
        axes[1].scatter(a.size_bytes / 1024, y * scale, **kw)
        axes[1].annotate(a.name, (a.size_bytes / 1024, y * scale), fontsize=7, xytext=(4, 3), textcoords="offset points")
    label = "top-1 (%)" if metric == "top1" else metric
    axes[0].set_xlabel("p50 latency (ms, host)")
    axes[1].set_xlabel("file size (KB)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} — hollow: dense, filled: pruned; circle fp32, square int8", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
