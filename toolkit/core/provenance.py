"""What a run used: library versions, machine, and the exact configuration."""

from __future__ import annotations

import platform
from importlib import metadata

LIBRARIES = ("torch", "torchvision", "torch-pruning", "numpy", "onnx", "onnxruntime", "onnx2tf",
             "tensorflow", "ai-edge-litert", "tflite-runtime", "nibabel")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run can touch (absent ones omitted)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine_description() -> dict:
    """The host as a benchmark row names it."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"hostname": platform.node(), "cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}"}
