"""Prune to a latency budget: the least pruning whose deployed file meets `budget_ms` (p50).

    result = search_for_latency(model, input_shape=(1, 3, 128, 128), cfg=plan.pruning,
                                budget_ms=1000 / fps, threads=2, never_prune=card.never_prune)
    cfg = result.chosen        # PruneConfig(target_macs=..., round_to=...) or None: dense meets it

How: for each channel rounding (8 and 16: XNNPACK packs channels in such blocks) ONE pruning pass
without fine-tuning walks from dense to the floor (`prune_model` with many steps; each step's model
is snapshotted as layer specs). Because `prune_model` steps one deterministic pruner, the model at a
step is exactly what a one-step `prune_model(target_macs=that step's MAC fraction)` gives, so the
whole frontier costs one pass instead of one pass per bisection probe. Every point's latency is
predicted from the per-layer LUT (toolkit.bench.latency_lut, LiteRT/XNNPACK, FP32) as
`scale * sum(layers) + offset`. Two real FP32 TFLite files calibrate it: the dense model and the
fastest level of the walk (a one-point, offset-only calibration was badly off on MobileNetV3: the
ops outside the LUT - SE multiplies, residual adds, delegate partition switches - are ~40 % of the
dense latency and partly scale with width). The fastest file also settles whether the budget is
reachable at all. Then the least-pruned point predicted under `budget * (1 - margin)` is pruned
again, converted (torch -> ONNX -> onnx2tf FP32, cached) and measured with `benchmark_file`; every
measurement refits the line; a miss steps further down, a hit with slack tries less pruning, at most
`max_measurements` candidate files besides the two calibration files. Fine-tuning happens afterwards, in the runner, not in the search.
A run measures the file it deploys (`make_file`: the INT8 TFLite file from the run's converters,
toolkit.pipeline.optional_stages.deployed_int8_file); the FP32 LUT then only ranks the levels and
the fitted line maps it onto INT8 latency. Standalone (`python -m toolkit.pipeline.budget`) measures FP32."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from toolkit.core.errors import EdgeShrinkError

BENCH = {"warmup": 5, "min_runs": 30, "min_seconds": 1.0}


@dataclass
class Probe:
    """One point of the frontier: a pruning level, its LUT prediction, its measurement if any."""

    round_to: int
    macs_fraction: float
    target_macs: Optional[float]  # what reproduces it with prune_model(steps=1); None: the dense model
    lut_ms: float                 # sum of the layer latencies from the table (uncalibrated)
    predicted_ms: float = 0.0     # calibrated, with the final calibration
    measured_ms: Optional[float] = None
    picked_at_ms: Optional[float] = None  # the prediction when it was picked for measuring (before refitting on it)
    specs: list = field(default_factory=list, repr=False)


@dataclass
class BudgetResult:
    """What the search chose and why: every probe, the calibration, the LUT statistics."""

    budget_ms: float
    margin: float
    threads: int
    chosen: Optional[object]      # PruneConfig, or None when the dense model already meets the budget
    chosen_probe: Probe
    dense: Probe
    probes: list[Probe]
    calibration: dict
    lut: dict
    seconds: dict
    precision: str = "fp32"       # what the measured files were: "fp32", or "int8" when the run deploys INT8

    @property
    def measurements(self) -> list[Probe]:
        return [p for p in [self.dense, *self.probes] if p.measured_ms is not None]

    def to_json(self) -> dict:
        """JSON data for the manifest (probes without their layer specs)."""
        def row(p: Probe) -> dict:
            return {k: v for k, v in asdict(p).items() if k != "specs"}

        return {"budget_ms": self.budget_ms, "budget_fps": 1000.0 / self.budget_ms, "margin": self.margin,
                "threads": self.threads, "chosen": self.chosen.model_dump() if self.chosen is not None else None,
                "chosen_probe": row(self.chosen_probe), "dense": row(self.dense),
                "probes": [row(p) for p in self.probes], "calibration": self.calibration, "lut": self.lut,
                "seconds": self.seconds, "precision": self.precision,
                "note": f"LUT: per-layer FP32 latency on LiteRT/XNNPACK, fitted to measured {self.precision.upper()} "
                        "TFLite files (scale, offset)"}


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[edgeshrink] budget: {message}", flush=True)


def fp32_file(model, input_shape: tuple[int, ...], work: Path, *, name: str) -> Path:
    """`model` as an FP32 TFLite file (torch -> ONNX -> onnx2tf, cached), in the form the runner
    exports for XNNPACK (hard-sigmoid/hard-swish rewritten)."""
    from toolkit.convert.cache import cached_onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.convert.graph_rewrite import rewrite_for_delegates

    model, _ = rewrite_for_delegates(copy.deepcopy(model).eval())
    onnx = torch_to_onnx(model, input_shape, work / f"{name}.onnx")
    return cached_onnx_to_tflite(onnx, work / f"{name}-tflite", None, (0.0,), (1.0,), int8=False).float32


def measure_model(model, input_shape: tuple[int, ...], threads: int, work: Path, *, name: str, bench: dict,
                  repeats: int = 3, make_file: Optional[Callable] = None) -> float:
    """p50 ms on the host of `model` as the TFLite file `make_file(model, input_shape, work, name=...)`
    writes (default `fp32_file`), so that the figures match the bundle's files. The lowest p50 of
    `repeats` benchmark processes: one run under a transient load (measured: 0.53 ms once for a file
    that takes 0.19 ms) must not steer the search."""
    from toolkit.bench.host import benchmark_file

    tflite = (make_file or fp32_file)(model, tuple(input_shape), work, name=name)
    return min(float(benchmark_file(tflite, "tflite", input_shape, threads=threads, **bench)["latency_ms"]["p50"])
               for _ in range(repeats))


def _target_for(macs: int, previous: int, dense: int) -> float:
    """A short MAC target at which one-step prune_model stops exactly at this point of the walk
    (its goal, computed as prune_model does, lies in [macs, previous))."""
    for digits in (3, 4, 6, 9):
        f = -(-macs * 10**digits // dense) / 10**digits  # rounded up
        goal = 1.0 - (1.0 - f) * 1 / 1  # prune_model's goal for steps=1
        if macs <= goal * dense < previous and f < 1.0:
            return f
    return (macs + 0.5) / dense


def _trajectory(model, input_shape, cfg, never_prune, *, floor: float, steps: int, grad_batches, progress: bool):
    """[(macs, layer specs)] from dense down to `floor` (or as far as max_layer_ratio allows)."""
    from toolkit.bench.latency_lut import layer_specs
    from toolkit.prune.prune import count_macs_params, prune_model

    points = [(count_macs_params(model, input_shape)[0], layer_specs(model, input_shape))]

    def snapshot(pruned, step: int) -> dict:
        points.append((count_macs_params(pruned, input_shape)[0], layer_specs(pruned, input_shape)))
        return {}

    walk = type(cfg)(**{**cfg.model_dump(), "target_macs": floor, "channel_ratio": None, "steps": steps})
    try:
        prune_model(copy.deepcopy(model), input_shape=input_shape, cfg=walk, never_prune=never_prune, finetune=snapshot,
                    grad_batches=grad_batches, progress=progress)
    except EdgeShrinkError as exc:
        if not str(exc).startswith("cannot reach"):
            raise  # max_layer_ratio stops the walk early: the points so far are the frontier
    unique = {}
    for macs, specs in points:
        unique.setdefault(macs, specs)
    return sorted(unique.items(), reverse=True)


def _fit(points: list[tuple[float, float]]) -> dict:
    """measured ~ scale * lut + offset: offset only from one point (or a narrow spread), else least squares."""
    import numpy as np

    x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    if len(points) >= 2 and x.max() - x.min() > 0.1 * x.max():
        scale, offset = np.polyfit(x, y, 1)
        if scale > 0:
            return {"scale": float(scale), "offset": float(offset), "points": len(points)}
    return {"scale": 1.0, "offset": float(np.mean(y - x)), "points": len(points)}


def _predict(cal: dict, lut_ms: float) -> float:
    return cal["scale"] * lut_ms + cal["offset"]


def _variant(cfg, **changes):
    """A validated copy of a PruneConfig with some fields changed."""
    return type(cfg)(**{**cfg.model_dump(), "channel_ratio": None, **changes})


def _frontier(model, input_shape, cfg, never_prune, table, *, round_tos, floor: float, steps: int, grad_batches,
              progress: bool) -> tuple[list[Probe], Probe]:
    """(every pruning level of every rounding as a Probe with its LUT sum, the dense Probe)."""
    walks = {}
    for r in round_tos:
        _say(progress, f"pruning walk, round_to={r}, down to {floor:.0%} of dense MACs (no fine-tuning)")
        walks[r] = _trajectory(model, input_shape, _variant(cfg, round_to=r), never_prune, floor=floor, steps=steps,
                               grad_batches=grad_batches, progress=progress)
    table.lookup([s for walk in walks.values() for _, specs in walk for s in specs])  # one child for all new entries
    dense_macs, dense_specs = walks[round_tos[0]][0]
    dense = Probe(cfg.round_to, 1.0, None, table.model_ms(dense_specs), specs=dense_specs)
    probes = []
    for r, walk in walks.items():
        for (macs, specs), (previous, _) in zip(walk[1:], walk):
            probes.append(Probe(r, macs / dense_macs, _target_for(macs, previous, dense_macs), table.model_ms(specs),
                                specs=specs))
    return probes, dense


def _next_candidate(probes: list[Probe], cal: dict, limit_ms: float, above: Optional[float],
                    below: Optional[float]) -> Optional[Probe]:
    """The least-pruned unmeasured probe predicted under `limit_ms`, strictly between the MAC
    fractions of the best hit (`above`) and the lightest miss (`below`)."""
    pool = [p for p in probes if p.measured_ms is None and _predict(cal, p.lut_ms) <= limit_ms
            and (above is None or p.macs_fraction > above) and (below is None or p.macs_fraction < below)]
    return max(pool, key=lambda p: (p.macs_fraction, -p.lut_ms), default=None)


def _reprune(model, input_shape, cfg, probe: Probe, *, never_prune, grad_batches):
    """The probe's model again, by the one-step prune the runner will do (then fine-tune)."""
    from toolkit.bench.latency_lut import layer_specs
    from toolkit.prune.prune import prune_model

    one = _variant(cfg, target_macs=probe.target_macs, round_to=probe.round_to, steps=1)
    pruned, _ = prune_model(copy.deepcopy(model), input_shape=input_shape, cfg=one, never_prune=never_prune,
                            grad_batches=grad_batches, progress=False)
    specs = layer_specs(pruned, input_shape)
    if specs != probe.specs:
        # The one-step prune (what the runner will do) may land on a slightly different structure than
        # the walk's step (the MAC search skips ahead): measure and record that model, not the walk's.
        from toolkit.prune.prune import count_macs_params

        dense_macs = count_macs_params(model, input_shape)[0]
        probe.specs = specs
        probe.macs_fraction = count_macs_params(pruned, input_shape)[0] / dense_macs
    return pruned


def _unreachable(budget_ms: float, fastest: Probe, dense: Probe) -> EdgeShrinkError:
    return EdgeShrinkError(
        f"latency budget {budget_ms:.3g} ms ({1000 / budget_ms:.1f} FPS) is out of reach: the fastest pruning level "
        f"reaches {fastest.measured_ms:.3g} ms (measured, {fastest.macs_fraction:.0%} of dense MACs, round_to "
        f"{fastest.round_to}; dense {dense.measured_ms:.3g} ms); lower the FPS target or the input size, or raise "
        "max_layer_ratio")


def _measure_probe(model, probe: Probe, cal: dict, *, ctx: dict, name: str) -> None:
    """Prune again to the probe's MAC target, convert, benchmark; records the prediction it was picked at."""
    probe.picked_at_ms = _predict(cal, probe.lut_ms)
    pruned = _reprune(model, ctx["input_shape"], ctx["cfg"], probe, never_prune=ctx["never_prune"],
                      grad_batches=ctx["grad_batches"])
    probe.measured_ms = measure_model(pruned, ctx["input_shape"], ctx["threads"], ctx["work"], name=name,
                                      bench=ctx["bench"], make_file=ctx["make_file"])
    _say(ctx["progress"], f"{name}: {probe.macs_fraction:.1%} MACs, round_to {probe.round_to}: predicted "
         f"{probe.picked_at_ms:.3g} ms, measured {probe.measured_ms:.3g} ms (budget {ctx['budget_ms']:.3g})")


def _calibration(dense: Probe, probes: list[Probe]) -> dict:
    return _fit([(p.lut_ms, p.measured_ms) for p in [dense, *probes] if p.measured_ms is not None])


def _measure_loop(model, probes: list[Probe], dense: Probe, *, ctx: dict) -> Optional[Probe]:
    """Two-point calibration first: the fastest level is measured (it decides whether the budget is
    reachable at all), then the candidates the refitted LUT picks. Returns the least-pruned hit."""
    fastest = min(probes, key=lambda p: p.lut_ms)
    _measure_probe(model, fastest, _calibration(dense, probes), ctx=ctx, name="fastest")
    if fastest.measured_ms > ctx["budget_ms"]:
        return None
    hit, miss = fastest, None
    limit = ctx["budget_ms"] * (1.0 - ctx["margin"])
    for i in range(ctx["max_measurements"]):
        probe = _next_candidate(probes, _calibration(dense, probes), limit, hit.macs_fraction, miss)
        if probe is None:
            break
        _measure_probe(model, probe, _calibration(dense, probes), ctx=ctx, name=f"probe{i + 1}")
        if probe.measured_ms <= ctx["budget_ms"]:
            hit = probe if probe.macs_fraction > hit.macs_fraction else hit
        else:
            miss = probe.macs_fraction if miss is None else min(miss, probe.macs_fraction)
    return hit


def search_for_latency(model, *, input_shape: tuple[int, ...], cfg, budget_ms: float, threads: int,
                       never_prune: Iterable[str] = (), progress: bool = True, margin: float = 0.05,
                       max_measurements: int = 3, floor: float = 0.15, round_tos: tuple[int, ...] = (8, 16),
                       steps: int = 40, grad_batches: Optional[Callable[[], Iterable]] = None, table=None,
                       bench: Optional[dict] = None, workdir: Optional[Path] = None,
                       make_file: Optional[Callable] = None, precision: str = "fp32") -> BudgetResult:
    """The least pruning (highest MAC fraction, over `round_tos`) whose TFLite file (`make_file`,
    default FP32; `precision` names what it makes) measures at most `budget_ms` p50 on this host with `threads`. Measures the dense file, the fastest level
    (both calibrate the LUT: scale and offset) and at most `max_measurements` candidates. Refuses,
    in one line naming the measured fastest latency, a budget no level down to `floor` reaches.
    `cfg` supplies importance, scope, max_layer_ratio and steps; the search never fine-tunes."""
    import tempfile

    from toolkit.bench.latency_lut import LatencyTable

    if not budget_ms > 0:
        raise EdgeShrinkError(f"latency budget must be > 0 ms, got {budget_ms}; give a positive --fps")
    if max_measurements < 1 or not 0.0 < floor < 1.0 or not 0.0 <= margin < 0.5:
        raise EdgeShrinkError("search_for_latency needs max_measurements >= 1, 0 < floor < 1 and 0 <= margin < 0.5")
    never_prune, table = list(never_prune), table or LatencyTable(threads, progress=progress)
    clock = {"start": time.perf_counter()}
    probes, dense = _frontier(model, input_shape, cfg, never_prune, table, round_tos=tuple(round_tos), floor=floor,
                              steps=steps, grad_batches=grad_batches, progress=progress)
    clock["frontier"] = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgeshrink-budget-") as tmp:
        ctx = {"budget_ms": budget_ms, "margin": margin, "max_measurements": max_measurements, "cfg": cfg,
               "input_shape": tuple(input_shape), "never_prune": never_prune, "grad_batches": grad_batches,
               "threads": threads, "work": Path(workdir or tmp), "bench": {**BENCH, **(bench or {})}, "progress": progress,
               "make_file": make_file}
        dense.measured_ms = measure_model(model, ctx["input_shape"], threads, ctx["work"], name="dense", bench=ctx["bench"],
                                          make_file=make_file)
        _say(progress, f"dense: LUT sum {dense.lut_ms:.3g} ms, measured {dense.measured_ms:.3g} ms ({precision.upper()} file)")
        if not probes:
            raise EdgeShrinkError(f"pruning removed nothing down to {floor:.0%} of MACs; check never_prune and max_layer_ratio")
        hit = dense if dense.measured_ms <= budget_ms else _measure_loop(model, probes, dense, ctx=ctx)
    cal = _calibration(dense, probes)
    for p in [dense, *probes]:
        p.predicted_ms = _predict(cal, p.lut_ms)
    if hit is None:
        raise _unreachable(budget_ms, min(probes, key=lambda p: p.lut_ms), dense)
    chosen = None if hit is dense else _variant(cfg, target_macs=hit.target_macs, round_to=hit.round_to)
    end = time.perf_counter()
    seconds = {"frontier": round(clock["frontier"] - clock["start"], 2), "measure": round(end - clock["frontier"], 2),
               "total": round(end - clock["start"], 2)}
    return BudgetResult(budget_ms, margin, threads, chosen, hit, dense, probes, cal, dict(table.stats), seconds, precision)


def frontier_table(result: BudgetResult) -> str:
    """Markdown: every pruning level (MAC fraction, rounding, LUT sum, predicted, measured)."""
    head = (f"Latency budget {result.budget_ms:.3g} ms ({1000 / result.budget_ms:.1f} FPS), {result.threads} threads, "
            f"{result.precision.upper()} TFLite on LiteRT/XNNPACK. Prediction = {result.calibration['scale']:.3f} x LUT sum + "
            f"{result.calibration['offset']:.3g} ms (fitted on {result.calibration['points']} measured files).\n\n"
            "| round_to | MACs kept | target_macs | LUT sum (ms) | predicted (ms) | predicted when picked (ms) "
            "| measured p50 (ms) | |\n|---:|---:|---:|---:|---:|---:|---:|---|\n")
    rows = []
    for p in [result.dense, *sorted(result.probes, key=lambda p: (p.round_to, -p.macs_fraction))]:
        mark = "**chosen**" if p is result.chosen_probe else ("dense" if p is result.dense else "")
        target = "-" if p.target_macs is None else f"{p.target_macs:g}"
        measured = "" if p.measured_ms is None else f"{p.measured_ms:.3f}"
        picked = "" if p.picked_at_ms is None else f"{p.picked_at_ms:.3f}"
        rows.append(f"| {'-' if p is result.dense else p.round_to} | {p.macs_fraction:.1%} | {target} | "
                    f"{p.lut_ms:.3f} | {p.predicted_ms:.3f} | {picked} | {measured} | {mark} |")
    return head + "\n".join(rows) + "\n"


def plot_frontier(result: BudgetResult, path: str | Path) -> Path:
    """PNG: predicted latency against MAC fraction per rounding, measured files marked, the budget
    as a horizontal line, the chosen point highlighted. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r, colour in zip(sorted({p.round_to for p in result.probes}), ("tab:blue", "tab:orange", "tab:green")):
        pts = sorted([result.dense, *[p for p in result.probes if p.round_to == r]], key=lambda p: p.macs_fraction)
        ax.plot([p.macs_fraction for p in pts], [p.predicted_ms for p in pts], "-", color=colour, lw=1.2,
                label=f"predicted (LUT), round_to {r}")
        done = [p for p in pts if p.measured_ms is not None and p is not result.dense]
        ax.scatter([p.macs_fraction for p in done], [p.measured_ms for p in done], marker="x", s=60, color=colour,
                   label=f"measured, round_to {r}" if done else None)
    ax.scatter([1.0], [result.dense.measured_ms], marker="o", s=50, color="k", label="dense, measured")
    c = result.chosen_probe
    ax.scatter([c.macs_fraction], [c.measured_ms], marker="*", s=260, color="gold", edgecolors="k", zorder=5,
               label=f"chosen ({c.macs_fraction:.0%} MACs)")
    ax.axhline(result.budget_ms, color="tab:red", ls="--", lw=1, label=f"budget {result.budget_ms:.3g} ms")
    ax.set_xlabel("MAC fraction kept")
    ax.set_ylabel(f"p50 latency (ms, {result.precision.upper()} TFLite, {result.threads} threads)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    """`python -m toolkit.pipeline.budget MODEL --target T (--fps F | --speedup S) --out DIR`: run the search
    on a card's dense weights without fine-tuning; writes budget.json, frontier.md, frontier.png."""
    import argparse
    import json
    import tempfile

    import torch

    from toolkit.pipeline.plan import load_dense, make_plan

    p = argparse.ArgumentParser(prog="python -m toolkit.pipeline.budget")
    p.add_argument("model")
    p.add_argument("--target", default="host")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--fps", type=float, help="frames per second to reach (the budget is 1000/fps ms)")
    goal.add_argument("--speedup", type=float, help="budget = dense FP32 TFLite p50 / SPEEDUP (measured first)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    plan = make_plan(args.model, target=args.target, finetune_epochs=0)
    torch.set_num_threads(1)
    model, shape, threads = load_dense(plan).eval(), plan.input_shape, plan.target.bench_threads
    dense_ms = None
    if args.speedup:
        with tempfile.TemporaryDirectory() as tmp:
            dense_ms = measure_model(model, shape, threads, Path(tmp), name="dense", bench=BENCH)
    budget = 1000.0 / args.fps if args.fps else dense_ms / args.speedup
    result = search_for_latency(model, input_shape=shape, cfg=plan.pruning, budget_ms=budget, threads=threads,
                                never_prune=plan.card.never_prune, progress=plan.progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.md").write_text(frontier_table(result))
    plot_frontier(result, out / "frontier.png")
    (out / "budget.json").write_text(json.dumps({"model": args.model, "target": args.target, "input_shape": list(shape),
                                                 "budget_from_dense_ms": dense_ms, **result.to_json()}, indent=1))
    print(frontier_table(result))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
