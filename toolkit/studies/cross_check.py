"""Cross-check the two TFLite converters on one model: onnx2tf (torch -> ONNX -> TFLite, this venv)
and litert-torch (torch -> LiteRT, run in .venv-litert), FP32 and full-integer INT8 from the same
calibration images, every file verified in this venv's LiteRT runtime.

    python -m toolkit.studies.cross_check --model mobilenet_v3_small --images 64 --out dist/cross_check
    python -m toolkit.studies.cross_check --zoo resnet18,mnasnet0_5 --size 64 --images 32 --out dist/cross_check

Per file: size, XNNPACK partitions, parity against torch (max error / max |torch output|),
the card's metric on held-out inputs (top-1, or foreground Dice at model resolution), top-1
(pixel) agreement with torch, p50 latency. Random-weight zoo models get real images for inputs
and calibration but no metric. Prints a table last and writes cross_check.json under --out."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError

CONVERTERS = ("onnx2tf", "litert-torch")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Subject:
    """One model and the data both converters and every check get."""

    name: str
    model: object           # torch module, eval mode
    checkpoint: Path        # the same model as a portable checkpoint (litert-torch's input)
    shape: tuple[int, ...]  # N, C, H, W
    mean: tuple
    std: tuple
    calib_nhwc: np.ndarray  # calibration inputs before mean/std
    inputs: np.ndarray      # held-out inputs, normalised NCHW
    metric: Optional[Callable[[np.ndarray], float]]
    metric_name: str
    architecture: Optional[str] = None  # what the checkpoint's child process may build (never taken from the file)
    base_dir: Optional[str] = None


def _decoded(split_dir: Path, count: int, *, seed: int, size: tuple[int, int], interpolation: str = "bilinear"):
    """(uint8 NHWC images, labels) of a seeded `count`-image subset of an ImageFolder split."""
    from toolkit.data.imagefolder import list_image_folder
    from toolkit.data.preprocess import resize_image

    files, labels, _ = list_image_folder(split_dir)
    pick = np.sort(np.random.default_rng(seed).permutation(len(files))[:count])
    images = np.stack([resize_image(files[i], size[0], size[1], interpolation=interpolation) for i in pick])
    return images, np.asarray(labels)[pick]


def _normalise(images_u8: np.ndarray, mean, std) -> np.ndarray:
    x = (images_u8.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _top1(labels: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda out: float((out.reshape(len(out), -1).argmax(1) == labels).mean())


def _fg_dice(labels: np.ndarray, classes: int) -> Callable[[np.ndarray], float]:
    """Mean foreground Dice pooled over the given slices (model resolution)."""
    def dice(out: np.ndarray) -> float:
        pred = out.argmax(1)
        scores = [2 * np.sum((pred == c) & (labels == c)) / max(1, np.sum(pred == c) + np.sum(labels == c))
                  for c in range(1, classes)]
        return float(np.mean(scores))
    return dice


def card_subject(name: str, *, images: int, calibration: int, work: Path) -> Subject:
    """A model card's checkpoint with a seeded subset of its held-out data."""
    from toolkit.config.cards import load_card
    from toolkit.models.checkpoint import load_checkpoint
    from toolkit.models.weights import ModelSource
    from toolkit.data.datasets import dataset_root
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task

    card = load_card(name)
    spec = card_input_spec(card)
    checkpoint = card.checkpoint_path()
    if checkpoint is None:
        raise EdgeShrinkError(f"model card {name!r} has no checkpoint; train one with `edgeshrink train --model {name}`")
    model, _ = load_checkpoint(checkpoint, card.checkpoint.sha256,
                               source=ModelSource(card.architecture, dict(card.arguments), str(card.base_dir)))
    where = {"architecture": card.architecture, "base_dir": str(card.base_dir)}
    shape = (1, spec.channels, spec.height, spec.width)
    if card.task == "classification":
        root, splits = dataset_root(card, None), card.data_spec()
        decode = {"size": (spec.height, spec.width), "interpolation": card.input.interpolation}
        train_u8, _ = _decoded(root / splits.train, calibration, seed=0, **decode)
        val_u8, labels = _decoded(root / splits.val, images, seed=1, **decode)
        return Subject(name, model, checkpoint, shape, tuple(spec.mean), tuple(spec.std), train_u8.astype(np.float32) / 255.0,
                       _normalise(val_u8, spec.mean, spec.std), _top1(labels), "top1", **where)
    from toolkit.data.nifti import slices_of

    task = load_task(card, spec, DataRef(), progress=False)
    pairs = [slices_of(v, (spec.height, spec.width)) for v in task.volumes.held_out]
    inputs = np.concatenate([p[0] for p in pairs])[:images]
    labels = np.concatenate([p[1] for p in pairs])[:images]
    return Subject(name, model, checkpoint, shape, tuple(spec.mean), tuple(spec.std), task.calibration_nhwc(calibration, 0),
                   inputs, _fg_dice(labels, len(card.labels)), "fg_dice", **where)


def zoo_subject(name: str, *, size: int, images: int, calibration: int, work: Path) -> Subject:
    """A random-weight torchvision classifier (seed 0) at `size` px, fed real Imagenette images."""
    import torch

    from toolkit.config.cards import load_card
    from toolkit.models.checkpoint import save_checkpoint
    from toolkit.data.datasets import dataset_root
    from toolkit.studies.zoo import build_zoo_model

    torch.manual_seed(0)
    model, arguments = build_zoo_model(name, size)
    checkpoint = work / f"{name}.pt"
    architecture = f"torchvision.models:{name}"
    save_checkpoint(checkpoint, model, architecture, {"weights": None, **arguments})
    card = load_card("mobilenet_v3_small")  # its dataset: real images for inputs and calibration
    root, splits = dataset_root(card, None), card.data_spec()
    train_u8, _ = _decoded(root / splits.train, calibration, seed=0, size=(size, size))
    val_u8, _ = _decoded(root / splits.val, images, seed=1, size=(size, size))
    return Subject(f"{name}@{size}", model, checkpoint, (1, 3, size, size), IMAGENET_MEAN, IMAGENET_STD,
                   train_u8.astype(np.float32) / 255.0, _normalise(val_u8, IMAGENET_MEAN, IMAGENET_STD), None, "-",
                   architecture, str(work))


def convert_both(subject: Subject, work: Path) -> dict:
    """{converter: {"fp32": path, "int8": path, "seconds": s} or {"error": one line}}."""
    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    def onnx2tf():
        onnx_path = torch_to_onnx(subject.model, subject.shape, work / "onnx2tf" / "model.onnx")
        return onnx_to_tflite(onnx_path, work / "onnx2tf", subject.calib_nhwc, subject.mean, subject.std, int8=True)

    def litert():
        from toolkit.models.architectures import card_code

        with card_code(subject.architecture or "", subject.base_dir or work):  # the child builds this architecture
            return checkpoint_to_litert(subject.checkpoint, subject.shape, work / "litert", subject.calib_nhwc,
                                        mean=subject.mean, std=subject.std)

    made = {}
    for converter, run in (("onnx2tf", onnx2tf), ("litert-torch", litert)):
        start = time.perf_counter()
        try:
            out = run()
            made[converter] = {"fp32": out.float32, "int8": out.int8, "seconds": round(time.perf_counter() - start, 1)}
        except EdgeShrinkError as exc:
            made[converter] = {"error": str(exc)}
    return made


def measure(path: Path, precision: str, subject: Subject, torch_out: np.ndarray, *, threads: int) -> dict:
    """Size, XNNPACK partitions, parity, metric and agreement of one file, in this venv's runtime."""
    from toolkit.runtime.tflite_check import float_compute_ops, io_dtypes
    from toolkit.runtime.delegate import delegate_report
    from toolkit.runtime.parity import compare_outputs
    from toolkit.runtime.tflite import TFLiteRunner

    runner = TFLiteRunner(path, threads=threads)
    out = np.concatenate([runner(subject.inputs[i:i + 1]) for i in range(len(subject.inputs))])
    xnn = delegate_report(path, threads=threads)
    row = {"file": str(path), "size_kb": round(path.stat().st_size / 1024, 1), "partitions": xnn["partitions"],
           "undelegated": xnn["undelegated_ops"], "parity_rel": compare_outputs(out, torch_out)["max_rel_error"],
           "metric": subject.metric(out) if subject.metric else None,
           "agree": float((out.argmax(1) == torch_out.argmax(1)).mean()), "io": "/".join(io_dtypes(path)),
           "runtime": f"{runner.runtime['name']} {runner.runtime['version']}"}
    if precision == "int8":
        row["float_ops"] = len(float_compute_ops(path))
    return row


def cross_check(subject: Subject, work: Path, *, threads: int = 1, bench_seconds: float = 1.0) -> list[dict]:
    """Convert with both converters, measure every file, benchmark them back to back; rows, torch first."""
    import torch

    from toolkit.bench.host import benchmark_file

    with torch.no_grad():
        torch_out = np.concatenate([subject.model(torch.from_numpy(subject.inputs[i:i + 1])).numpy()
                                    for i in range(len(subject.inputs))])
    rows = [{"model": subject.name, "converter": "torch", "precision": "fp32", "parity_rel": 0.0, "agree": 1.0,
             "metric": subject.metric(torch_out) if subject.metric else None}]
    for converter, made in convert_both(subject, work).items():
        for precision in ("fp32", "int8"):
            row = {"model": subject.name, "converter": converter, "precision": precision}
            if "error" in made:
                rows.append({**row, "error": made["error"]})
                continue
            try:
                rows.append({**row, "convert_s": made["seconds"], **measure(made[precision], precision, subject, torch_out,
                                                                            threads=threads)})
            except Exception as exc:  # noqa: BLE001 - a file the runtime refuses is a finding, not a crash
                rows.append({**row, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    for row in rows:  # benchmark last, back to back, so the machine state is as equal as it gets
        if "file" in row:
            r = benchmark_file(row["file"], "tflite", subject.shape, threads=threads, warmup=10, min_runs=30,
                               min_seconds=bench_seconds)
            row["p50_ms"] = r["latency_ms"]["p50"] if isinstance(r["latency_ms"], dict) else r["latency_ms"]
    return rows


def _fmt(value, spec: str) -> str:
    """`value` formatted with `spec` ("8.1f"), or "-" at the same width."""
    return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0].rstrip("d")))


def format_table(rows: list[dict], metric_name: str = "metric") -> str:
    head = (f"{'model':22} {'converter':12} {'prec':4} {'KB':>8} {'parts':>5} {'parity(rel)':>11} "
            f"{metric_name:>7} {'agree':>6} {'p50 ms':>7} {'conv s':>6}  notes")
    lines = [head, "-" * len(head)]
    for r in rows:
        notes = r.get("error", "")[:90] or (f"io {r['io']}" if "io" in r else "")
        if r.get("float_ops"):
            notes += f", {r['float_ops']} float ops"
        if r.get("undelegated"):
            notes += f", undelegated {r['undelegated']}"
        lines.append(f"{r['model']:22} {r['converter']:12} {r['precision']:4} {_fmt(r.get('size_kb'), '8.1f')} "
                     f"{_fmt(r.get('partitions'), '5d')} {_fmt(r.get('parity_rel') if 'error' not in r else None, '11.2e')} "
                     f"{_fmt(r.get('metric'), '7.4f')} {_fmt(r.get('agree'), '6.3f')} {_fmt(r.get('p50_ms'), '7.3f')} "
                     f"{_fmt(r.get('convert_s'), '6.1f')}  {notes}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolkit.studies.cross_check", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], help="model card name (repeatable)")
    p.add_argument("--zoo", default="", help="comma-separated torchvision classifiers with random weights")
    p.add_argument("--size", type=int, default=64, help="input side for --zoo models")
    p.add_argument("--images", type=int, default=64, help="held-out inputs per model")
    p.add_argument("--calibration", type=int, default=32, help="calibration images (the same for both converters)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("dist/cross_check"))
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    jobs = [(m, lambda w, m=m: card_subject(m, images=a.images, calibration=a.calibration, work=w)) for m in a.model]
    jobs += [(z, lambda w, z=z: zoo_subject(z, size=a.size, images=a.images, calibration=a.calibration, work=w))
             for z in (s.strip() for s in a.zoo.split(",")) if z]
    if not jobs:
        p.error("give --model NAME and/or --zoo a,b")
    all_rows, metric_names = [], set()
    for name, make in jobs:
        work = a.out / name
        work.mkdir(parents=True, exist_ok=True)
        try:
            subject = make(work)
        except EdgeShrinkError as exc:
            print(f"cross_check: error: {exc}")
            return 2
        metric_names.add(subject.metric_name)
        rows = cross_check(subject, work, threads=a.threads)
        all_rows += rows
        print(format_table(rows, subject.metric_name), flush=True)
    (a.out / "cross_check.json").write_text(json.dumps(all_rows, indent=1, default=str))
    runtimes = sorted({r["runtime"] for r in all_rows if "runtime" in r})
    print(f"\nverified in: {', '.join(runtimes)}; {a.images} held-out inputs, {a.calibration} calibration images, "
          f"{a.threads} thread(s)")
    print(format_table(all_rows, "/".join(sorted(metric_names - {'-'})) or "metric"))
    print(f"wrote {a.out / 'cross_check.json'}")
    return 1 if any("error" in r for r in all_rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
