"""`edgeshrink sweep`: which pruning setting buys how much speed, before paying for fine-tuning.

For each (scope, MAC target) point the dense checkpoint is pruned in one step, exported to ONNX and
converted to FP32 TFLite, and that file is benchmarked on the host with the target's thread count.
With `--finetune-epochs N` every point is also fine-tuned for N epochs (with distillation, as the
pipeline does) and its torch top-1 / Dice on the held-out data is reported, which makes the sweep a
cheap proxy for choosing the pipeline's pruning settings. Latency runs are repeated in interleaved
order and the lowest p50 of the repeats is kept, so a noisy neighbour hurts every point alike.
Writes sweep.json (rows, configuration, versions, machine), sweep.md and sweep.png, atomically."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.paths import DIST_DIR


@dataclass(frozen=True)
class SweepOptions:
    model: str
    target: str = "host"
    scopes: tuple[str, ...] = ("uniform", "global")
    macs: tuple[float, ...] = (0.3, 0.4, 0.5)
    finetune_epochs: int = 0
    repeats: int = 2
    out_root: str = str(DIST_DIR)
    data: Optional[str] = None
    synthetic_data: bool = False
    checkpoint: Optional[str] = None
    seed: int = 0
    progress: bool = True


def _points(opts: SweepOptions, base_cfg) -> list[tuple[str, object]]:
    from toolkit.config.pruning import PruneConfig
    from toolkit.core.schema import validate_data

    if not opts.scopes or not opts.macs:
        raise EdgeShrinkError("sweep needs at least one scope (--scopes uniform,global) and one MAC target (--macs 0.4)")
    if opts.repeats < 1:
        raise EdgeShrinkError(f"--repeats must be >= 1, got {opts.repeats}")
    points = []
    for scope in opts.scopes:
        for macs in opts.macs:
            data = {**base_cfg.model_dump(), "scope": scope, "target_macs": macs, "channel_ratio": None, "steps": 1,
                    "finetune_epochs": opts.finetune_epochs}
            points.append((f"{scope}-{macs:g}", validate_data(PruneConfig, data, f"sweep point {scope} {macs:g}")))
    return points


def run_sweep(opts: SweepOptions) -> Path:
    """Run the sweep; returns the output folder `<out_root>/sweep-<model>-<target>/`."""
    import torch

    from toolkit.models.artifact import write_json
    from toolkit.core.atomic import staged_folder
    from toolkit.pipeline.plan import load_dense, make_plan

    plan = make_plan(opts.model, target=opts.target, finetune_epochs=opts.finetune_epochs, data=opts.data,
                     synthetic_data=opts.synthetic_data, seed=opts.seed,
                     **({"checkpoint": opts.checkpoint} if opts.checkpoint else {}))
    task = None
    if opts.finetune_epochs > 0:
        from toolkit.tasks.registry import load_task

        task = load_task(plan.card, plan.input, plan.data, opts.progress)
    torch.set_num_threads(max(1, plan.target.bench_threads))
    dense = load_dense(plan)
    final = Path(opts.out_root) / f"sweep-{plan.card.name}-{plan.target.name}"
    with staged_folder(final) as work:
        rows, files = _build_points(opts, plan=plan, dense=dense, task=task, work=work)
        _benchmark_points(opts, plan=plan, rows=rows, files=files)
        for f in work.iterdir():  # keep the record, not the throw-away model files
            if f.is_file():
                f.unlink()
        result = _sweep_record(opts, plan=plan, rows=rows, task=task)
        write_json(work / "sweep.json", result)
        (work / "sweep.md").write_text(format_sweep(result))
        plot_sweep(result, work / "sweep.png")
    return final


def _build_points(opts: SweepOptions, *, plan, dense, task, work: Path) -> tuple[list[dict], dict]:
    """Prune (and fine-tune, with a task) a copy of the dense model per point and convert it to an
    FP32 TFLite file. Returns the rows and {point: file}."""
    from tqdm import tqdm

    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.prune.prune import count_macs_params, prune_model
    from toolkit.train.loop import seed_everything

    shape, rows, files = plan.input_shape, [], {}
    for label, cfg in tqdm([("dense", None)] + _points(opts, plan.pruning), desc="sweep: prune + convert",
                           disable=not opts.progress):
        seed_everything(opts.seed)
        model = copy.deepcopy(dense)
        row: dict = {"point": label, "scope": cfg.scope if cfg else None, "target_macs": cfg.target_macs if cfg else 1.0}
        if cfg is not None:
            prune_model(model, input_shape=shape, cfg=cfg, never_prune=plan.card.never_prune,
                        finetune=_finetuner(opts, cfg=cfg, dense=dense, task=task), progress=False)
            if task is not None:
                row["finetune_epochs"] = cfg.finetune_epochs
        if task is not None:
            row[task.primary_metric] = task.metrics(task.torch_outputs(model.eval()), None)[task.primary_metric]
        macs, params = count_macs_params(model, shape)
        tfl = onnx_to_tflite(torch_to_onnx(model, shape, work / f"{label}.onnx"), work, None, int8=False)
        files[label] = tfl.float32
        dense_macs = rows[0]["macs"] if rows else macs
        row.update({"macs": macs, "params": params, "macs_fraction": round(macs / dense_macs, 4),
                    "size_bytes": tfl.float32.stat().st_size})
        rows.append(row)
    return rows, files


def _finetuner(opts: SweepOptions, *, cfg, dense, task):
    """The fine-tune callback for one point (distilling from the dense model), or None without data."""
    if task is None:
        return None
    teacher = copy.deepcopy(dense).eval()

    def finetune(model, step):
        return task.finetune(model, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, distill=cfg.distill,
                             teacher=teacher, seed=opts.seed + step, progress=opts.progress)

    return finetune


def _benchmark_points(opts: SweepOptions, *, plan, rows: list[dict], files: dict) -> None:
    """Benchmark every point's file `opts.repeats` times, interleaved; keep the lowest p50."""
    from tqdm import tqdm

    from toolkit.bench.host import benchmark_file

    p50s: dict[str, list[float]] = {label: [] for label in files}
    b = plan.target.benchmark
    for _, label in tqdm([(r, label) for r in range(opts.repeats) for label in files], desc="sweep: benchmark",
                         disable=not opts.progress):
        rec = benchmark_file(files[label], "tflite", plan.input_shape, threads=plan.target.bench_threads,
                             warmup=b.warmup, min_runs=b.min_runs, min_seconds=b.min_seconds)
        p50s[label].append(rec["latency_ms"]["p50"])
    dense_p50 = min(p50s["dense"])
    for row in rows:
        row["p50_ms_repeats"] = [round(v, 4) for v in p50s[row["point"]]]
        row["p50_ms"] = round(min(p50s[row["point"]]), 4)
        row["speedup"] = round(dense_p50 / min(p50s[row["point"]]), 3)


def _sweep_record(opts: SweepOptions, *, plan, rows: list[dict], task) -> dict:
    from toolkit.core.provenance import library_versions, machine_description

    return {"schema": "edgeshrink-sweep/1", "model": plan.card.name, "target": plan.target.name,
            "checkpoint": {"file": Path(plan.checkpoint).name, "sha256": plan.checkpoint_sha256},
            "input_shape": list(plan.input_shape), "threads": plan.target.bench_threads, "options": asdict(opts),
            "base_pruning": plan.pruning.model_dump(), "rows": rows, "versions": library_versions(),
            "machine": {"kind": "host", **machine_description()},
            "data": task.data_description() if task is not None else None}


def format_sweep(result: dict) -> str:
    """Markdown table of a sweep result."""
    rows = result["rows"]
    metric = next((k for k in ("top1", "dice") if any(k in r for r in rows)), None)
    head = ["point", "MACs (M)", "MACs kept", "params (M)", "FP32 TFLite KB", "p50 ms", "speedup"]
    if metric:
        head.append(f"{metric} (after {result['options']['finetune_epochs']} FT epochs)")
    lines = [f"# Pruning sweep: {result['model']} on {result['target']} (host numbers, {result['threads']} threads)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["point"], f"{r['macs'] / 1e6:.2f}", f"{r['macs_fraction']:.1%}", f"{r['params'] / 1e6:.3f}",
                 f"{r['size_bytes'] / 1024:,.0f}", f"{r['p50_ms']:.3f}", f"{r['speedup']:.2f}x"]
        if metric:
            v = r.get(metric)
            cells.append("" if v is None else (f"{v:.2%}" if metric == "top1" else f"{v:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    m = result["machine"]
    lines += ["", f"Machine: {m.get('cpu')} ({m.get('cores')} cores). p50 is the lowest of "
              f"{result['options']['repeats']} interleaved repeats; speedup is against the dense FP32 TFLite."]
    return "\n".join(lines) + "\n"


def plot_sweep(result: dict, path: Path) -> None:
    """Speed-up against MACs kept, one line per scope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for scope in sorted({r["scope"] for r in result["rows"] if r["scope"]}):
        pts = sorted((r["macs_fraction"], r["speedup"]) for r in result["rows"] if r["scope"] == scope)
        ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=scope)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("MACs kept (% of dense)")
    ax.set_ylabel("FP32 TFLite speed-up vs dense (host p50)")
    ax.set_title(f"{result['model']} on {result['target']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
