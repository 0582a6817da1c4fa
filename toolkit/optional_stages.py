"""Optional stages of a run, called by the runner: the latency-budget search (`--fps`) and
unstructured sparsity (`--sparsity`) with its honest report."""

from __future__ import annotations

from pathlib import Path


def budget_config(runner, dense_model):
    """The least pruning whose FP32 TFLite file meets the FPS budget on this host: per-layer
    latencies measured on LiteRT/XNNPACK (a lookup table), calibrated and confirmed by converting
    and benchmarking real files. Fine-tuning happens after the search. None: dense meets it."""
    from toolkit.budget import plot_frontier, search_for_latency

    plan = runner.plan
    with runner.clock("latency budget search"):
        budget_ms = budget_ms_for(runner, dense_model)
        result = search_for_latency(dense_model, input_shape=runner.shape, cfg=plan.pruning,
                                    budget_ms=budget_ms, threads=runner.threads,
                                    never_prune=plan.card.never_prune, progress=plan.progress)
    runner.extra["latency_budget"] = result.to_json()
    plot_frontier(result, runner.work / "frontier.png")
    return result.chosen


def budget_ms_for(runner, dense_model) -> float:
    """The p50 budget: 1000 / fps, or for a speed-up ("2x") the dense FP32 TFLite p50 measured
    now on this host divided by the factor."""
    fps = runner.plan.fps
    if isinstance(fps, str) and fps.endswith("x"):
        import tempfile

        from toolkit.budget import BENCH, measure_model

        with tempfile.TemporaryDirectory() as tmp:
            dense_ms = measure_model(dense_model, runner.shape, runner.threads, Path(tmp), name="dense", bench=BENCH)
        runner.extra["latency_budget_request"] = {"speedup": float(fps[:-1]), "dense_fp32_p50_ms": dense_ms}
        return dense_ms / float(fps[:-1])
    return 1000.0 / fps


def sparsify_or_reuse(runner, model, dense_model, history: list):
    """Unstructured magnitude sparsity on top of the (channel-pruned) model, fine-tuned between
    steps; cached under the structured key + the sparsity settings."""
    import hashlib
    import json

    from toolkit.prune.cache import find_pruned, store_pruned
    from toolkit.sparsity import sparsify

    plan = runner.plan
    settings = {"sparsity": plan.sparsity, "schedule": plan.sparsity_schedule, "steps": plan.sparsity_steps,
                "epochs": plan.sparsity_finetune_epochs, "lr": plan.pruning.finetune_lr, "seed": plan.seed,
                "base": runner.extra["prune_cache"]["key"] or plan.checkpoint_sha256, "never_prune": plan.card.never_prune}
    key = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:32]
    found = find_pruned(plan.card, key, source=plan.source) if plan.cache else None
    with runner.clock("sparsify"):
        if found is not None:
            model, record, _ = found
            record = record[0]
        else:
            steps = plan.sparsity_steps if plan.sparsity_schedule == "gradual" else 1
            model, record = sparsify(model, sparsity=plan.sparsity, scope="global", schedule=plan.sparsity_schedule,
                                     steps=steps, finetune=runner._finetuner(dense_model, plan.sparsity_finetune_epochs),
                                     exclude=tuple(plan.card.never_prune))
            record = json.loads(json.dumps(record, default=float))  # plain data: checkpoints load weights-only
            if plan.cache:
                store_pruned(key, model, plan.source, [record])
    runner.extra["sparsify"] = {"key": key, "hit": found is not None, "record": record}
    return model.eval()


def sparsity_report(runner) -> dict:
    """Zeros really present in each pruned file, raw vs gzip size, and whether any kernel uses
    them (XNNPACK's FP32 sparse path, measured on a sparse-encoded twin of the FP32 TFLite)."""
    import tempfile

    from toolkit.sparsity.bundle import bundle_sparsity_fields
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
    return bundle_sparsity_fields(runner.extra["sparsify"]["record"], files, sparse_timing=timing)
