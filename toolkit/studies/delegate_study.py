"""Measure what the delegate rewrite buys on a real checkpoint: XNNPACK partitions, top-1 on the
held-out split and host p50 latency of FP32 and INT8 TFLite, before and after
`toolkit.convert.graph_rewrite.rewrite_for_delegates`, all in one run on one machine.

    python -m toolkit.studies.delegate_study --model mobilenet_v3_small \
        --checkpoint models/checkpoints/mobilenet_v3_small_pruned_1622671a.pt --out /tmp/study

Prints a table last and writes study.json under --out."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path


def _convert(model, shape, out: Path, calib01, spec) -> dict:
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    onnx_path = torch_to_onnx(model, shape, out / "model.onnx")
    tfl = onnx_to_tflite(onnx_path, out, calib01, tuple(spec.mean), tuple(spec.std), int8=True, io_dtype="int8")
    return {"fp32": tfl.float32, "int8": tfl.int8}


def study(model_name: str, checkpoint: Path, out: Path, *, calib: int = 256, threads: int = 1, seconds: float = 3.0) -> list[dict]:
    """One row per (variant, precision): partitions, undelegated ops, top-1, p50 ms."""
    import torch

    from toolkit.bench.host import benchmark_file
    from toolkit.config.cards import load_card
    from toolkit.models.checkpoint import load_checkpoint
    from toolkit.models.weights import ModelSource
    from toolkit.runtime.delegate import delegate_report
    from toolkit.convert.graph_rewrite import rewrite_for_delegates
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task
    from toolkit.runtime.verify import run_outputs

    torch.set_num_threads(threads)
    card = load_card(model_name)
    spec = card_input_spec(card)
    task = load_task(card, spec, DataRef(), progress=False)
    model, _ = load_checkpoint(checkpoint, source=ModelSource(card.architecture, dict(card.arguments), str(card.base_dir)))
    shape = (1, spec.channels, spec.height, spec.width)
    calib01 = task.calibration_nhwc(calib, 0)
    rewritten, changes = rewrite_for_delegates(copy.deepcopy(model).eval())
    sigmoid_only, _ = rewrite_for_delegates(copy.deepcopy(model).eval(), hardswish=False)
    x = torch.from_numpy(next(iter(task.eval_inputs())))
    with torch.no_grad():
        torch_gap = float((model.eval()(x) - rewritten(x)).abs().max())
    files = {}
    for variant, m in (("original", model), ("rewritten", rewritten), ("hsig-only", sigmoid_only)):
        files[variant] = _convert(m, shape, out / variant, calib01, spec)
    rows = []
    for variant, pair in files.items():
        for precision, path in pair.items():
            rep = delegate_report(path, threads=threads)
            top1 = task.metrics(run_outputs(path, "tflite", task, threads, progress=False), None)["top1"]
            rows.append({"variant": variant, "precision": precision, "partitions": rep["partitions"],
                         "undelegated": rep["undelegated_ops"], "top1": top1, "file": str(path)})
    for row in rows:  # benchmark last, back to back, so the machine state is as equal as it gets
        r = benchmark_file(row["file"], "tflite", shape, threads=threads, warmup=20, min_runs=200, min_seconds=seconds)
        row["p50_ms"] = r["latency_ms"]["p50"] if isinstance(r["latency_ms"], dict) else r["latency_ms"]
    (out / "study.json").write_text(json.dumps({"changes": changes, "torch_max_abs_diff": torch_gap, "rows": rows},
                                               indent=1, default=str))
    print(f"rewrite: {len(changes)} modules, torch max |diff| {torch_gap:.2e}")
    print(f"{'variant':10} {'prec':5} {'parts':>5} {'top1':>7} {'p50 ms':>7}  undelegated")
    for r in rows:
        print(f"{r['variant']:10} {r['precision']:5} {r['partitions']:5d} {r['top1']:7.4f} {r['p50_ms']:7.3f}  {r['undelegated']}")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calibration", type=int, default=256)
    a = p.parse_args(argv)
    study(a.model, a.checkpoint, a.out, calib=a.calibration, threads=a.threads)


if __name__ == "__main__":
    main()
