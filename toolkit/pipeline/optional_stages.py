"""Optional stages of a run, called by the runner: the latency-budget search (`--fps`),
unstructured sparsity (`--sparsity`) with its honest report, the INT8 accuracy fallback, and pruning as
far as the model allows when the MAC target is out of reach.
Each returns what it made with its record; the runner keeps them (nothing here writes its state)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def budget_config(runner, dense_model) -> tuple:
    """(pruning settings, `latency_budget` record): the least pruning whose INT8 TFLite file (what a
    run deploys when it passes the gate; `deployed_int8_file`) meets the FPS budget on this host:
    per-layer latencies measured on LiteRT/XNNPACK (a lookup table), calibrated and confirmed by
    converting and benchmarking real files. Fine-tuning happens after the search. Settings None:
    the dense model meets it."""
    from toolkit.pipeline.budget import plot_frontier, search_for_latency

    plan = runner.plan
    with runner.clock("latency budget search"):
        budget_ms, request = budget_ms_for(runner, dense_model)
        result = search_for_latency(dense_model, input_shape=runner.shape, cfg=plan.pruning,
                                    budget_ms=budget_ms, threads=runner.threads,
                                    never_prune=plan.card.never_prune, progress=plan.progress,
                                    make_file=deployed_int8_file(runner), precision="int8")
    plot_frontier(result, runner.work / "frontier.png")
    return result.chosen, {**result.to_json(), **({"request": request} if request else {})}


def deployed_int8_file(runner):
    """make_file(model, input_shape, work, name=...) for the latency search: the model's full-integer
    TFLite file as the run makes it (calibrated on the run's images, delegate rewrites for XNNPACK,
    the profile's converter, the other one when it fails and the profile allows the fallback; once
    one converter fails, later files go straight to the one that worked)."""
    import copy

    from toolkit.core.errors import EdgeShrinkError
    from toolkit.pipeline.tflite_converters import other_converter

    conversion, q, spec = runner.target.conversion, runner.target.quantization, runner.plan.input
    xnnpack = runner.target.runtime.delegate == "xnnpack"
    order = [conversion.tflite] + ([other_converter(conversion.tflite)] if conversion.fallback else [])

    def onnx2tf(model, input_shape, work: Path, name: str) -> Path:
        from toolkit.convert.cache import cached_onnx_to_tflite
        from toolkit.convert.graph_rewrite import rewrite_for_delegates
        from toolkit.convert.onnx_rewrite import rewrites_for
        from toolkit.convert.torch_to_onnx import torch_to_onnx

        model = rewrite_for_delegates(copy.deepcopy(model).eval())[0] if xnnpack else model
        onnx = torch_to_onnx(model, input_shape, work / f"{name}.onnx")
        return cached_onnx_to_tflite(onnx, work / f"{name}-tflite", runner.calib01, tuple(spec.mean), tuple(spec.std),
                                     int8=True, io_dtype=q.io_dtype,
                                     rewrite_ops=rewrites_for(runner.target.runtime.delegate)).int8

    def litert(model, input_shape, work: Path, name: str) -> Path:
        from toolkit.models.checkpoint import save_checkpoint
        from toolkit.pipeline.tflite_converters import litert_convert

        checkpoint = work / f"{name}.pt"
        save_checkpoint(checkpoint, model, runner.plan.source.architecture, runner.plan.source.arguments)
        return litert_convert(runner, checkpoint, work / f"{name}-litert", stem=name, int8=True).int8

    makers = {"onnx2tf": onnx2tf, "litert-torch": litert}

    def make(model, input_shape, work: Path, *, name: str) -> Path:
        failures = []
        for converter in list(order):
            try:
                path = makers[converter](model, input_shape, work, name)
            except EdgeShrinkError as exc:
                failures.append(f"{converter}: {str(exc)[:200]}")
                continue
            order[:] = [converter] + [c for c in order if c != converter]  # the next levels convert the same way first
            return path
        raise EdgeShrinkError(f"the latency search could not make an INT8 TFLite file of the {name} model ("
                              + "; ".join(failures) + "); run without --fps or fix the conversion first")

    return make


def budget_ms_for(runner, dense_model) -> tuple[float, Optional[dict]]:
    """(p50 budget, speed-up request): 1000 / fps, or for a speed-up ("2x") the dense FP32 TFLite
    p50 measured now on this host divided by the factor (the request records both)."""
    fps = runner.plan.fps
    if isinstance(fps, str) and fps.endswith("x"):
        import tempfile

        from toolkit.pipeline.budget import BENCH, measure_model

        with tempfile.TemporaryDirectory() as tmp:  # the lowest of 3 p50s: a transient load must not loosen the budget
            dense_ms = measure_model(dense_model, runner.shape, runner.threads, Path(tmp), name="dense", bench=BENCH)
        return dense_ms / float(fps[:-1]), {"speedup": float(fps[:-1]), "dense_fp32_p50_ms": dense_ms}
    return 1000.0 / fps, None


def sparsify_or_reuse(runner, model, *, base_key: Optional[str], finetune) -> tuple:
    """(model, `sparsify` record): unstructured magnitude sparsity on top of the (channel-pruned)
    model, fine-tuned between steps by `finetune(model, step)`; cached under the structured key
    (`base_key`) + the sparsity settings."""
    import hashlib
    import json

    from toolkit.prune.cache import find_pruned, store_pruned
    from toolkit.sparsity import sparsify

    plan = runner.plan
    settings = {"sparsity": plan.sparsity, "schedule": plan.sparsity_schedule, "steps": plan.sparsity_steps,
                "epochs": plan.sparsity_finetune_epochs, "lr": plan.pruning.finetune_lr, "seed": plan.seed,
                "base": base_key or plan.checkpoint_sha256, "never_prune": plan.card.never_prune}
    key = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:32]
    found = find_pruned(plan.card, key, source=plan.source) if plan.cache else None
    with runner.clock("sparsify"):
        if found is not None:
            model, record, _ = found
            record = record[0]
        else:
            steps = plan.sparsity_steps if plan.sparsity_schedule == "gradual" else 1
            model, record = sparsify(model, sparsity=plan.sparsity, scope="global", schedule=plan.sparsity_schedule,
                                     steps=steps, finetune=finetune,
                                     exclude=tuple(plan.card.never_prune))
            record = json.loads(json.dumps(record, default=float))  # plain data: checkpoints load weights-only
            if plan.cache:
                store_pruned(key, model, plan.source, [record])
    return model.eval(), {"key": key, "hit": found is not None, "record": record}


def sparsity_report(runner, sparsify: dict) -> dict:
    """Zeros really present in each pruned file, raw vs gzip size, and whether any kernel uses
    them (XNNPACK's FP32 sparse path, measured on a sparse-encoded twin of the FP32 TFLite)."""
    import tempfile

    from toolkit.sparsity.bundle_section import bundle_sparsity_fields
    from toolkit.sparsity.xnnpack import measure_sparse_speedup, sparse_tflite

    files = {a.name: (runner.work / a.file, a.format) for a in runner.artifacts
             if a.stage == "pruned" and a.format in ("onnx", "tflite")}
    timing = None
    fp32 = next((a for a in runner.artifacts if a.name == "pruned-tflite-fp32"), None)
    onnx = runner.work / f"{runner.name}_pruned_fp32.onnx"
    if fp32 is not None and onnx.is_file() and runner.plan.bench:
        with runner.clock("sparse kernels"), tempfile.TemporaryDirectory() as tmp:
            twin = sparse_tflite(onnx, Path(tmp) / "sparse_float32.tflite")
            timing = measure_sparse_speedup(runner.work / fp32.file, twin, threads=runner.threads)
    return bundle_sparsity_fields(sparsify["record"], files, sparse_timing=timing)


def int8_fallback(runner, family, *, edge, made: dict):
    """When the family's INT8 TFLite file is further below the dense FP32 file than the gate
    allows, run the protection ladder (toolkit.quantize.int8_fallback) on its FP32 twin. Returns
    None (not triggered) or an Outcome: the `int8_fallback` record, and the first file that
    passes (in place of the INT8 file, its integer I/O checked) for the runner to verify again."""
    from toolkit.pipeline.edge_steps import Outcome

    q, metric = runner.target.quantization, runner.task.primary_metric
    art = runner.artifact(f"{family.stage}-{edge.key}")
    dense, value = _dense_metric(runner, metric), art.metrics.get(metric)
    if not q.fallback or dense is None or value is None or dense - value <= runner.target.gate.max_metric_drop \
            or "tflite-fp32" not in made:
        return None
    record: dict = {"trigger": {"artifact": art.name, metric: value, "dense_fp32": dense,
                                "max_metric_drop": runner.target.gate.max_metric_drop}}
    skipped = _why_skipped(runner, family, metric=metric, dense=dense)
    if skipped:
        print(f"[edgeshrink] int8 fallback skipped: {skipped}", flush=True)
        return Outcome(records={"int8_fallback": {**record, "skipped": skipped}})
    result = _ladder(runner, family, made, metric=metric, dense=dense)
    found = result.pop("file")
    record.update(result)
    if found is None:
        return Outcome(records={"int8_fallback": record})
    _require_integer_io(made["tflite-int8"], q.io_dtype, full_integer=not _has_float(result),
                        xnnpack=runner.target.runtime.delegate == "xnnpack")
    return Outcome(records={"int8_fallback": record}, files={"tflite-int8": made["tflite-int8"]}, checked=True,
                   converter=f"{family.made_by.get('tflite-fp32')} FP32 + ai-edge-quantizer ({result['chosen']})")


def gate_keeps(runner, *, metrics: dict, current: dict) -> bool:
    """Whether a file with `metrics` may take the place of a file with `current` metrics: its
    primary metric passes the gate against the dense FP32 file, or is no worse than the current
    file's (a run without a metric compares nothing: True)."""
    metric = runner.task.primary_metric
    value, now = metrics.get(metric), current.get(metric)
    if value is None or now is None:
        return value is None and now is None
    dense = _dense_metric(runner, metric)
    return (dense is not None and dense - value <= runner.target.gate.max_metric_drop) or value >= now


def _why_skipped(runner, family, *, metric: str, dense: float) -> str:
    """Why the ladder cannot help ('' when it may): its FP32 twin fails the gate, or no quantizer."""
    from toolkit.core.errors import EdgeShrinkError
    from toolkit.quantize.int8_fallback import quant_python

    twin_fails = _float_twin_fails(runner, family, metric=metric, dense=dense)
    if twin_fails:
        return f"its FP32 twin already fails the gate ({twin_fails}): no INT8 file of it can pass"
    try:
        quant_python()
    except EdgeShrinkError as exc:
        return str(exc)
    return ""


def _ladder(runner, family, made: dict, *, metric: str, dense: float) -> dict:
    """The protection ladder's result; a file that passes is moved over the family's INT8 file."""
    import shutil

    from toolkit.quantize.int8_fallback import protect_until_gate

    q = runner.target.quantization
    calibration = _normalised(runner, runner.calib01)
    work = runner.work / f".int8-fallback-{family.stage}"
    with runner.clock("int8 fallback"):
        better = _normalised(runner, runner.task.calibration_nhwc(4 * runner.plan.calibration_size, runner.plan.seed))
        result = protect_until_gate(float_file=made["tflite-fp32"], work=work,
                                    calibration=calibration, better_calibration=better, io_dtype=q.io_dtype,
                                    evaluate=lambda path: _trial(runner, path, metric=metric, dense=dense),
                                    allow_float=q.fallback_float, max_layers=q.fallback_max_layers,
                                    progress=runner.plan.progress)
    if result.get("file") is not None:
        result["file"].replace(made["tflite-int8"])
    shutil.rmtree(work, ignore_errors=True)
    return result


def _float_twin_fails(runner, family, *, metric: str, dense: float) -> str:
    """Why the family's FP32 TFLite file fails the gate ('' when it passes or is not there)."""
    from toolkit.pipeline.choose import gate_failures

    twin = next((a for a in runner.artifacts if a.name == f"{family.stage}-tflite-fp32"), None)
    if twin is None:
        return ""
    gate = runner.target.gate.model_copy(update={"require_full_delegation": False})
    return "; ".join(gate_failures(twin, dense_metric=dense, metric=metric, gate=gate))


def _dense_metric(runner, metric: str):
    """The dense FP32 file's metric in the target's format (the gate's baseline), else torch's."""
    from toolkit.pipeline.choose import ENGINE_FORMAT

    fmt = ENGINE_FORMAT.get(runner.target.runtime.engine)
    for name in (f"dense-{fmt}-fp32", "dense-torch-fp32"):
        art = next((a for a in runner.artifacts if a.name == name), None)
        if art is not None and art.metrics.get(metric) is not None:
            return art.metrics[metric]
    return None


def _normalised(runner, x01):
    import numpy as np

    spec = runner.plan.input
    return ((x01 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)).astype(np.float32)


def _has_float(result: dict) -> bool:
    chosen = next((s for s in result["steps"] if s["step"] == result["chosen"]), {})
    return "float" in (chosen.get("protect") or {}).values()


def _require_integer_io(path, io_dtype: str, *, full_integer: bool, xnnpack: bool) -> None:
    """Integer I/O and no Flex op; with `full_integer`, integer ops too (XNNPACK's float islands excepted)."""
    from toolkit.runtime.tflite_check import XNNPACK_FLOAT_ISLAND_OPS, require_builtin_ops, require_full_integer, require_io_dtype

    if full_integer:
        require_full_integer(path, io_dtype, float_ops=XNNPACK_FLOAT_ISLAND_OPS if xnnpack else ())
    else:
        require_builtin_ops(path)
        require_io_dtype(path, io_dtype)


def _trial(runner, path, *, metric: str, dense: float):
    """Verify one candidate INT8 file in the target's runtime and judge it by the deploy gate."""
    from types import SimpleNamespace

    from toolkit.runtime.tflite_check import require_io_dtype
    from toolkit.core.errors import EdgeShrinkError
    from toolkit.quantize.int8_fallback import RUNTIME_REFUSED, Trial
    from toolkit.pipeline.choose import gate_failures
    from toolkit.runtime.verify import verify

    try:
        require_io_dtype(path, runner.target.quantization.io_dtype)
        _, metrics, _ = verify(path, "tflite", "int8", runner.task, reference=runner.outputs["dense-torch-fp32"],
                               source_torch_outputs=None, threads=runner.threads, progress=runner.plan.progress,
                               desc="int8 fallback")
    except (RuntimeError, ValueError) as exc:  # the runtime cannot load or run the file
        raise EdgeShrinkError(f"{RUNTIME_REFUSED}: {str(exc).splitlines()[0][:200]}") from None
    delegate = runner.delegate_report(path)
    why = gate_failures(SimpleNamespace(metrics=metrics, delegate=delegate, parity={}), dense_metric=dense,
                        metric=metric, gate=runner.target.gate)
    return Trial(not why, metrics.get(metric), delegate.get("partitions"), tuple(why), delegate.get("undelegated_ops"))


def pruned_as_far_as_allowed(runner, dense, unreachable):
    """The MAC target is below what the model allows: prune to what it allows
    (UnreachableTarget.reachable_target); the history's target note says the target was not met and why."""
    from toolkit.prune.prune import mac_target_note

    model, history = runner._prune_or_reuse(dense, target_macs=unreachable.reachable_target)
    note = mac_target_note(runner.plan.pruning, reached=history[-1]["macs_fraction"])
    if not note["met"]:
        note["why"] = f"{unreachable}; pruned as far as the model allows instead"
    history[-1] = {**history[-1], "target": note}
    if runner.plan.progress:
        print(f"[edgeshrink] {unreachable}: pruned to {history[-1]['macs_fraction']:.0%} of dense MACs instead", flush=True)
    return model, history
