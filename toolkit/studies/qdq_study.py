"""Top-1, latency and int16-saturation exposure of a real checkpoint's INT8 QDQ ONNX under each
quantization scheme, on this machine, with its CPU flags:

    python -m toolkit.studies.qdq_study --checkpoint models/checkpoints/mobilenet_v3_small_pruned_1622671a.pt --out /tmp/qdq

Prints a table last and writes qdq_study.json under --out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def study(model_name: str, checkpoint: Path, out: Path, *, calib: int = 256, threads: int = 1) -> dict:
    """One row per scheme: top-1 on the held-out split, p50 ms, rows that could saturate on AVX2."""
    import numpy as np
    import torch

    from toolkit.bench.host import benchmark_file
    from toolkit.config.cards import load_card
    from toolkit.models.checkpoint import load_checkpoint
    from toolkit.models.weights import ModelSource
    from toolkit.quantize.onnx_to_qdq_int8 import SCHEMES, onnx_to_qdq_int8, u8s8_saturation_rows
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.core.cpuinfo import cpu_isa_flags
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task
    from toolkit.runtime.verify import run_outputs

    torch.set_num_threads(threads)
    card = load_card(model_name)
    spec = card_input_spec(card)
    task = load_task(card, spec, DataRef(), progress=False)
    model, _ = load_checkpoint(checkpoint, source=ModelSource(card.architecture, dict(card.arguments), str(card.base_dir)))
    shape = (1, spec.channels, spec.height, spec.width)
    fp32 = torch_to_onnx(model, shape, out / "fp32.onnx")
    x01 = task.calibration_nhwc(calib, 0)
    nchw = ((x01 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)).transpose(0, 3, 1, 2)
    rows = [{"scheme": "fp32", "file": str(fp32)}]
    for scheme in SCHEMES:
        q = onnx_to_qdq_int8(fp32, out / f"{scheme}.onnx", np.ascontiguousarray(nchw, np.float32), scheme=scheme)
        rows.append({"scheme": scheme, "file": str(q), **u8s8_saturation_rows(q)})
    probe = [x for _, x in zip(range(8), task.eval_inputs())]
    for row in rows[1:]:
        row["emulated_avx2"] = emulated_u8s8_saturation(row["file"], probe)
    for row in rows:
        row["top1"] = task.metrics(run_outputs(Path(row["file"]), "onnx", task, threads, progress=False), None)["top1"]
    for row in rows:
        row["p50_ms"] = benchmark_file(row["file"], "onnx", shape, threads=threads, warmup=20, min_runs=200, min_seconds=3.0)["latency_ms"]["p50"]
    cpu = cpu_isa_flags()
    (out / "qdq_study.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1))
    print(f"cpu: {cpu['vendor']} {cpu['model']}, vnni={cpu['vnni']}, u8s8_may_saturate={cpu['u8s8_may_saturate']}, "
          f"flags on: {' '.join(k for k, v in cpu['flags'].items() if v)}")
    print(f"{'scheme':7} {'top1':>7} {'p50 ms':>7} {'rows that can saturate':>24} {'max |w|+|w|':>11} "
          f"{'emulated AVX2 clamped pair sums (8 images)':>44}")
    for r in rows:
        sat = f"{r['rows_can_saturate']}/{r['rows']}" if "rows" in r else "-"
        emu = r.get("emulated_avx2")
        emu = f"{emu['clamped']}/{emu['pair_sums']} ({100 * emu['share']:.4f} %)" if emu else "-"
        print(f"{r['scheme']:7} {r['top1']:7.4f} {r['p50_ms']:7.3f} {sat:>24} {r.get('max_pair', '-'):>11} {emu:>44}")
    return {"cpu": cpu, "rows": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    study(a.model, a.checkpoint, a.out, threads=a.threads)



def emulated_u8s8_saturation(qdq_path: str | Path, inputs) -> dict:
    """Share of int16 pair sums that would clamp in an AVX2 (non-VNNI) u8s8 GEMM, emulated in
    numpy on real inputs for every 1x1 Conv of a QDQ file: activations as the kernel sees them
    (int8 shifted to uint8 by +128, as onnxruntime does for s8 activations on x86), pairs of
    adjacent input channels (VPMADDUBSW). An estimate of exposure, not a bit-exact kernel model."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from toolkit.runtime.diagnose import onnx_all_outputs

    model = onnx.load(str(qdq_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = clamped = 0
    for x in inputs:
        nodes, values = onnx_all_outputs(qdq_path, x)
        for node in (n for n in nodes if n.op_type == "Conv"):
            dq_a, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
            if dq_a is None or dq_w is None or dq_w.input[0] not in inits:
                continue
            w = inits[dq_w.input[0]]
            a = values.get(dq_a.input[0])
            if a is None or w.dtype != np.int8 or a.dtype != np.int8 or w.shape[2:] != (1, 1) or w.shape[1] < 2:
                continue
            a16 = a.astype(np.int32)[0].reshape(a.shape[1], -1).T + 128  # (HW, K) as uint8
            k = (w.shape[1] // 2) * 2
            w2 = w[:, :k, 0, 0].astype(np.int32)
            s = a16[:, 0:k:2, None] * w2.T[None, 0:k:2] + a16[:, 1:k:2, None] * w2.T[None, 1:k:2]
            pairs += s.size
            clamped += int((np.abs(s) > 32767).sum())
    return {"pair_sums": pairs, "clamped": clamped, "share": clamped / max(pairs, 1)}


if __name__ == "__main__":
    main()
