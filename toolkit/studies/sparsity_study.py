"""`edgeshrink sparsity`: sparsify a card's trained model, export it, and measure what the zeros
buy (zeros present per file, raw vs gzip size, top-1, XNNPACK sparse-kernel latency)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class SparsityRun:
    """Everything one `edgeshrink sparsity` run does; written as config.json."""

    model: str
    sparsity: float
    scope: str = "global"
    schedule: str = "oneshot"
    steps: int = 1
    finetune_epochs: int = 0
    finetune_lr: float = 1e-3
    include_depthwise: bool = False
    checkpoint: Optional[str] = None
    data: Optional[str] = None
    synthetic_data: bool = False
    threads: int = 1
    seed: int = 0
    out: str = "runs/sparsity"


def run_sparsity(cfg: SparsityRun, progress: bool = True) -> dict:
    """Dense top-1 -> sparsify (fine-tuning between steps) -> top-1 -> sparse.pt, ONNX, FP32 and
    INT8 TFLite, sparse-encoded FP32 TFLite -> sparsity_report of each + XNNPACK timing.
    Writes config.json and sparsity.json in cfg.out; returns the summary."""
    from toolkit.config.cards import load_card
    from toolkit.core.errors import EdgeShrinkError
    from toolkit.models.checkpoint import load_checkpoint, save_checkpoint
    from toolkit.models.weights import ModelSource
    from toolkit.sparsity.magnitude import sparsify
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task
    from toolkit.train.loop import seed_everything

    out = Path(cfg.out)
    seed_everything(cfg.seed)
    card = load_card(cfg.model)
    source = ModelSource(card.architecture, dict(card.arguments), str(card.base_dir))
    checkpoint = cfg.checkpoint or card.checkpoint_path()
    if checkpoint is None:
        raise EdgeShrinkError(f"model card '{card.name}' has no checkpoint; train one (`edgeshrink train --model "
                              f"{card.name}`) or pass --checkpoint")
    model, payload = load_checkpoint(checkpoint, source=source)  # the card's architecture, never the file's
    spec = card_input_spec(card)
    task = load_task(card, spec, DataRef(cfg.data, cfg.synthetic_data), progress)
    out.mkdir(parents=True, exist_ok=True)  # only once the model and the data are known good
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    dense_top1 = task.metrics(task.torch_outputs(model), None)["top1"]

    def finetune(m, step):
        return task.finetune(m, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, distill=0.0, teacher=None,
                             seed=cfg.seed + step, progress=progress)

    model, record = sparsify(model.train(), sparsity=cfg.sparsity, scope=cfg.scope, schedule=cfg.schedule,
                             steps=cfg.steps, finetune=finetune if cfg.finetune_epochs else None,
                             include_depthwise=cfg.include_depthwise, exclude=tuple(card.never_prune or ()))
    model.eval()
    sparse_top1 = task.metrics(task.torch_outputs(model), None)["top1"]
    save_checkpoint(out / "sparse.pt", model, source.architecture, source.arguments,
                    {"card": card.name, "sparsity": record["config"]})
    files = _export(model, task, spec, out)
    summary = {"model": card.name, "synthetic_data": task.synthetic, "dense_top1": round(dense_top1, 4),
               "sparse_top1": round(sparse_top1, 4), "sparsify": record,
               "files": {k: _short(v) for k, v in files["reports"].items()}, "xnnpack": files["xnnpack"]}
    (out / "sparsity.json").write_text(json.dumps(summary, indent=2))
    return summary


def _short(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "layers"}


def _export(model, task, spec, out: Path) -> dict:
    """ONNX + FP32/INT8 TFLite + sparse FP32 TFLite, each with its sparsity report, and timing."""
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.sparsity.measure import sparsity_report
    from toolkit.sparsity.xnnpack import measure_sparse_speedup, sparse_tflite

    onnx_path = torch_to_onnx(model, (1, 3, spec.height, spec.width), out / "model.onnx")
    tfl = onnx_to_tflite(onnx_path, out, task.calibration_nhwc(64), mean=spec.mean, std=spec.std)
    sparse = sparse_tflite(onnx_path, out / "model_float32_sparse.tflite")
    reports = {"onnx": sparsity_report(onnx_path, "onnx"), "tflite_fp32": sparsity_report(tfl.float32, "tflite"),
               "tflite_int8": sparsity_report(tfl.int8, "tflite"),
               "tflite_fp32_sparse_encoded": sparsity_report(sparse, "tflite")}
    return {"reports": reports, "xnnpack": measure_sparse_speedup(tfl.float32, sparse, threads=1, runs=200, repeats=3)}


def format_summary(summary: dict) -> str:
    """A small markdown table: one row per file."""
    lines = [f"top-1 dense {summary['dense_top1']:.4f} -> sparse {summary['sparse_top1']:.4f} "
             f"(prunable zeros in the model {summary['sparsify']['prunable_zero_fraction']:.3f})", "",
             "| file | prunable zeros | raw KB | gzip KB |", "|---|---|---|---|"]
    for name, r in summary["files"].items():
        lines.append(f"| {name} | {r['prunable_zero_fraction']:.3f} | {r['raw_bytes'] / 1024:.0f} | {r['gzip_bytes'] / 1024:.0f} |")
    x = summary["xnnpack"]
    lines += ["", f"XNNPACK FP32 p50 (1 thread): dense {x['dense_p50_ms']} ms, sparse-encoded {x['sparse_p50_ms']} ms "
              f"({x['densify_ops']} DENSIFY ops) -> {x['verdict']}"]
    return "\n".join(lines)


def register_cli(subparsers) -> None:
    """Add `edgeshrink sparsity` to the CLI's subparsers."""
    p = subparsers.add_parser("sparsity", help="unstructured magnitude sparsity: prune, export, measure zeros, size and latency")
    p.add_argument("--model", required=True, help="model card")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of prunable weights to zero, e.g. 0.8")
    p.add_argument("--scope", default="global", choices=["global", "layer"])
    p.add_argument("--schedule", default="oneshot", choices=["oneshot", "gradual"])
    p.add_argument("--steps", type=int, default=1, help="gradual: cubic steps (Zhu & Gupta 2017)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs after each step")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--include-depthwise", action="store_true", help="prune depthwise convolutions too")
    p.add_argument("--checkpoint", help="dense checkpoint (default: the card's)")
    p.add_argument("--data")
    p.add_argument("--synthetic-data", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/sparsity")
    p.set_defaults(func=_cmd_sparsity)


def _cmd_sparsity(args) -> int:
    cfg = SparsityRun(model=args.model, sparsity=args.sparsity, scope=args.scope, schedule=args.schedule,
                      steps=args.steps, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                      include_depthwise=args.include_depthwise, checkpoint=args.checkpoint, data=args.data,
                      synthetic_data=args.synthetic_data, seed=args.seed, out=args.out)
    print(format_summary(run_sparsity(cfg)))
    return 0
