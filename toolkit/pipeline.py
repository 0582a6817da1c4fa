"""`edgeshrink run`: dense checkpoint -> pruned + fine-tuned -> ONNX/TFLite FP32/INT8, every file
verified and benchmarked, written to dist/<model>-<target>/ only when complete."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from toolkit.artifact import write_json
from toolkit.errors import EdgeShrinkError
from toolkit.paths import DIST_DIR


@dataclass(frozen=True)
class RunOptions:
    model: str
    target: str
    out_root: str = str(DIST_DIR)
    data: Optional[str] = None
    synthetic_data: bool = False
    checkpoint: Optional[str] = None
    finetune_epochs: Optional[int] = None
    calibration_size: Optional[int] = None
    seed: int = 0
    train_threads: Optional[int] = None  # torch threads for pruning/fine-tuning (default: the profile's)
    bench: bool = True
    progress: bool = True


class StageClock:
    """Records wall time per stage (the runner times stages, not the stages themselves)."""

    def __init__(self, progress: bool):
        self.seconds: dict[str, float] = {}
        self.progress = progress

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.progress:
            print(f"[edgeshrink] {name} ...", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 2)


def plan_run(opts: RunOptions):
    """Check the whole chain before any work: card, target, overrides, checkpoint, data.
    Returns (card, target, prune_cfg, calibration size, checkpoint path, input spec)."""
    from toolkit.cards import load_card
    from toolkit.checkpoint import read_checkpoint
    from toolkit.targets import load_target

    card, target = load_card(opts.model), load_target(opts.target)
    prune_cfg = target.pruning
    if card.pruning:
        from toolkit.prune.config import PruneConfig
        from toolkit.schema import validate_data

        prune_cfg = validate_data(PruneConfig, {**prune_cfg.model_dump(), **card.pruning}, f"models/{card.name}.yaml: pruning")
    if opts.finetune_epochs is not None:
        if opts.finetune_epochs < 0:
            raise EdgeShrinkError(f"--finetune-epochs must be >= 0, got {opts.finetune_epochs}")
        prune_cfg = prune_cfg.model_copy(update={"finetune_epochs": opts.finetune_epochs})
    calib = opts.calibration_size if opts.calibration_size is not None else target.quantization.calibration_size
    if calib < 1:
        raise EdgeShrinkError(f"calibration set is empty (--calibration-size {calib}); use >= 1 (>= 200 recommended)")
    ckpt = Path(opts.checkpoint) if opts.checkpoint else card.checkpoint_path()
    if ckpt is None:
        raise EdgeShrinkError(f"model card '{card.name}' has no checkpoint; train one (`edgeshrink train --model {card.name}`) or pass --checkpoint")
    read_checkpoint(ckpt)
    if not opts.checkpoint and card.checkpoint and card.checkpoint.sha256:
        from toolkit.checkpoint import sha256_file

        if sha256_file(ckpt) != card.checkpoint.sha256:
            raise EdgeShrinkError(f"{ckpt} does not match the sha256 in models/{card.name}.yaml; restore it "
                                  "(git checkout) or republish with `edgeshrink publish`")
    spec = card.input_spec()
    if target.input_size:
        from dataclasses import replace

        spec = replace(spec, height=target.input_size[0], width=target.input_size[1])
    return card, target, prune_cfg, calib, ckpt, spec


def run_pipeline(opts: RunOptions) -> Path:
    """Run every stage; returns the bundle folder. On any error nothing is left in out_root."""
    card, target, prune_cfg, calib_size, ckpt, spec = plan_run(opts)
    from toolkit.tasks import load_task

    clock = StageClock(opts.progress)
    with clock("load data"):
        task = load_task(card, spec, opts.data, opts.synthetic_data, opts.progress)
    bundle = Path(opts.out_root) / f"{card.name}-{target.name}"
    from toolkit.atomic import staged_folder
    from toolkit.stages import build_artifacts

    with staged_folder(bundle) as work:
        artifacts, extra = build_artifacts(work, card, target, spec, task, prune_cfg, calib_size, ckpt, opts, clock)
        _finish_bundle(work, card, target, spec, task, prune_cfg, calib_size, ckpt, opts, clock, artifacts, extra)
    return bundle


def _finish_bundle(work, card, target, spec, task, prune_cfg, calib_size, ckpt, opts, clock, artifacts, extra):
    from toolkit.checkpoint import sha256_file
    from toolkit.provenance import library_versions, machine_description
    from toolkit.report.markdown import write_report
    from toolkit.report.plot import plot_tradeoffs

    metric = task.primary_metric
    baseline = next((a for a in artifacts if a.stage == "dense" and a.format == "tflite" and a.precision == "fp32"),
                    next(a for a in artifacts if a.stage == "dense" and a.format != "torch"))
    manifest = {
        "schema": "edgeshrink-manifest/1",
        "model": card.name,
        "architecture": card.architecture,
        "task": card.task,
        "target": target.name,
        "labels": card.labels,
        "input": spec.to_dict(),
        "data": task.data_description(),
        "primary_metric": metric,
        "baseline": {"file": baseline.file, "format": baseline.format, "precision": baseline.precision,
                     "macs": baseline.macs, "params": baseline.params, "size_bytes": baseline.size_bytes,
                     "metrics": baseline.metrics, "latency_ms": baseline.latency_ms, "fps": baseline.fps},
        "artifacts": [a.to_dict() for a in artifacts],
        "pruning": {"config": prune_cfg.model_dump(), "history": extra.get("prune_history", []),
                    "cache": extra.get("prune_cache")},
        **({"full_slice_benchmarks": extra["full_slice"]} if "full_slice" in extra else {}),
        "source_checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt)},
        "stage_seconds": clock.seconds,
        "device": {"kind": "host", **machine_description()},
        "versions": library_versions(),
    }
    config = {"options": asdict(opts), "card": card.model_dump(), "target": target.model_dump(),
              "pruning": prune_cfg.model_dump(), "calibration_size": calib_size, "versions": manifest["versions"]}
    from toolkit.bundle import add_device_files

    add_device_files(work, target, manifest)
    with clock("report"):
        plot_tradeoffs(artifacts, metric, work / "tradeoffs.png", f"{card.name} on {target.name}")
        write_report(work / "report.md", manifest, artifacts, metric)
    manifest["stage_seconds"] = clock.seconds
    write_json(work / "config.json", config)
    write_json(work / "manifest.json", manifest)
