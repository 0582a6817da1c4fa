"""The litert-torch conversion as a child process, run by .venv-litert's Python (never the main venv):

    .venv-litert/bin/python -m toolkit.convert.litert_child --checkpoint model.pt --out DIR \
        --input-shape 1,3,224,224 [--calibration calib.npy --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225]

Rebuilds the model from a portable checkpoint (toolkit.models.checkpoint), writes `<stem>_float32.tflite`
and, with calibration data, `<stem>_int8.tflite`, and `litert.json` (files, package versions,
seconds). Errors are one line on stderr, exit status 2. Only torch, numpy and the litert packages
are imported: nothing of the main venv's stack."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PACKAGES = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert", "litert-converter", "torch", "numpy")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def package_versions() -> dict[str, str]:
    """{distribution: version} of the converter stack in this process's environment."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def _program_module(path: Path):
    """A torch.export program as an eval-mode nn.Module (the program's own module refuses .eval();
    it is held, not registered, so that train/eval calls do not reach it)."""
    import torch

    graph = torch.export.load(str(path)).module()

    class Program(torch.nn.Module):
        def __init__(self):
            super().__init__()
            object.__setattr__(self, "graph", graph)

        def forward(self, x):
            return self.graph(x)

    return Program().eval()


def convert(args) -> dict:
    """Run the conversion; returns what litert.json records."""
    import numpy as np
    import torch

    from toolkit.models.checkpoint import load_checkpoint, read_checkpoint
    from toolkit.convert.torch_to_litert import torch_to_litert

    torch.set_num_threads(args.threads)
    if args.program is not None:  # exported by the parent: no model code imported here
        model, payload = _program_module(args.program), read_checkpoint(args.checkpoint)
    else:
        model, payload = load_checkpoint(args.checkpoint)
    calib = np.load(args.calibration) if args.calibration else None
    start = time.perf_counter()
    out = torch_to_litert(model, args.input_shape, args.out, calib, mean=args.mean, std=args.std,
                          int8=calib is not None, stem=args.stem, threads=args.threads, float_ops=args.float_ops)
    return {"float32": out.float32.name, "int8": out.int8.name if out.int8 else None,
            "architecture": payload["architecture"], "seconds": round(time.perf_counter() - start, 2),
            "versions": package_versions()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolkit.convert.litert_child", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="an EdgeShrink portable checkpoint")
    p.add_argument("--program", type=Path, default=None, help="the same model as a torch.export .pt2 (preferred)")
    p.add_argument("--out", type=Path, required=True, help="folder for the .tflite files and litert.json")
    p.add_argument("--input-shape", type=lambda s: tuple(int(v) for v in s.split(",")), required=True, help="N,C,H,W")
    p.add_argument("--calibration", type=Path, default=None, help=".npy of NHWC images in [0, 1]; gives the INT8 file")
    p.add_argument("--mean", type=_floats, default=(0.0,))
    p.add_argument("--std", type=_floats, default=(1.0,))
    p.add_argument("--stem", default="model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--float-ops", type=lambda s: tuple(v for v in s.split(",") if v), default=(),
                   help="TFLite ops kept float in the INT8 file (XNNPACK's float islands: DIV,SQRT)")
    args = p.parse_args(argv)
    from toolkit.core.errors import EdgeShrinkError

    try:
        record = convert(args)
    except EdgeShrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.out / "litert.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
