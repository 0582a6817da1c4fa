"""The pipeline's stages: each takes what it needs and returns Artifacts; the runner times them."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from toolkit.artifact import Artifact
from toolkit.errors import EdgeShrinkError


def _normalised_calibration(task, spec, count: int, seed: int):
    """(NHWC before mean/std for onnx2tf, NCHW normalised for onnxruntime) from real training data."""
    x01 = task.calibration_nhwc(count, seed)
    if len(x01) == 0:
        raise EdgeShrinkError("calibration set is empty: the training split yielded no images; check the data folder")
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    nchw = ((x01 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    return x01, np.ascontiguousarray(nchw)


def _convert_in_child(onnx_path, out_dir, calib01, mean, std, int8: bool, io_dtype: str):
    """Runs in a worker process: onnx2tf is mostly single-threaded Python, so a conversion overlaps
    well with verification and pruning in the parent. Returns (TFLiteOutputs, seconds)."""
    import os
    import time

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from toolkit.convert.cache import cached_onnx_to_tflite

    t0 = time.perf_counter()
    out = cached_onnx_to_tflite(onnx_path, out_dir, calib01, mean, std, int8=int8, io_dtype=io_dtype)
    return out, time.perf_counter() - t0


def build_artifacts(work: Path, card, target, spec, task, prune_cfg, calib_size: int, ckpt: Path, opts, clock):
    """Produce, verify and benchmark every file the target asks for. Returns (artifacts, extra).
    TFLite conversions run in worker processes while the parent verifies and prunes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    try:
        return _build_artifacts(pool, work, card, target, spec, task, prune_cfg, calib_size, ckpt, opts, clock)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _build_artifacts(pool, work: Path, card, target, spec, task, prune_cfg, calib_size: int, ckpt: Path, opts, clock):
    """build_artifacts' body; `pool` runs the TFLite conversions."""
    import torch

    from toolkit.checkpoint import load_checkpoint, save_checkpoint
    from toolkit.convert.onnx_to_qdq_int8 import onnx_to_qdq_int8
    from toolkit.convert.tflite_check import require_full_integer
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.prune.prune import count_macs_params, prune_model
    from toolkit.train import seed_everything
    from toolkit.verify import verify

    threads = target.bench_threads
    torch.set_num_threads(max(1, opts.train_threads or threads))
    seed_everything(opts.seed)
    shape = (1, spec.channels, spec.height, spec.width)
    name = card.name
    artifacts: list[Artifact] = []
    extra: dict = {}
    outputs: dict[str, np.ndarray] = {}

    with clock("load checkpoint"):
        dense, payload = load_checkpoint(ckpt)
        save_checkpoint(work / f"{name}_dense.pt", dense, payload["architecture"], payload["arguments"], {"source": str(ckpt)})
        dmacs, dparams = count_macs_params(dense, shape)
    with clock("verify"):
        dense_ref = task.torch_outputs(dense)
    artifacts.append(Artifact.of_file(work, work / f"{name}_dense.pt", name="dense-torch-fp32", stage="dense", format="torch",
                                      precision="fp32", macs=dmacs, params=dparams, metrics=task.metrics(dense_ref, dense_ref)))

    with clock("calibration data"):
        calib01, calib_nchw = _normalised_calibration(task, spec, calib_size, opts.seed)

    def export_onnx(model, stage: str, int8: bool):
        """Export ONNX and start the TFLite conversion in a worker; finish_family collects it."""
        with clock("export onnx"):
            onnx_path = torch_to_onnx(model, shape, work / f"{name}_{stage}_fp32.onnx")
        job = None
        if "tflite" in target.formats:
            job = pool.submit(_convert_in_child, onnx_path, work / f".tflite-{stage}", calib01, tuple(spec.mean),
                              tuple(spec.std), int8, target.quantization.io_dtype)
        return onnx_path, job

    def finish_family(onnx_path, job, stage: str, torch_out: np.ndarray, macs: int, params: int, int8: bool):
        parent = f"{stage}-torch-fp32"
        if "onnx" in target.formats:
            with clock("verify"):
                _, m, p = verify(onnx_path, "onnx", "fp32", task, dense_ref, torch_out, threads, opts.progress, f"{stage} onnx fp32")
            artifacts.append(Artifact.of_file(work, onnx_path, name=f"{stage}-onnx-fp32", stage=stage, format="onnx",
                                              precision="fp32", macs=macs, params=params, parent=parent, metrics=m, parity=p))
            if int8:
                with clock("quantize onnx int8"):
                    q = onnx_to_qdq_int8(onnx_path, work / f"{name}_{stage}_int8.onnx", calib_nchw,
                                         per_channel=target.quantization.per_channel, method=target.quantization.method)
                with clock("verify"):
                    _, m, _ = verify(q, "onnx", "int8", task, dense_ref, None, threads, opts.progress, f"{stage} onnx int8")
                artifacts.append(Artifact.of_file(work, q, name=f"{stage}-onnx-int8", stage=stage, format="onnx",
                                                  precision="int8", macs=macs, params=params, parent=f"{stage}-onnx-fp32", metrics=m))
        if job is not None:
            with clock("wait for tflite"):
                out, seconds = job.result()
            label = "convert tflite" + (" + int8" if int8 else "") + f" ({stage}, background)"
            clock.seconds[label] = round(seconds, 2)
            fp32 = out.float32.rename(work / f"{name}_{stage}_fp32.tflite")
            q8 = out.int8.rename(work / f"{name}_{stage}_int8.tflite") if out.int8 else None
            out.float32.parent.rmdir()
            with clock("verify"):
                _, m, p = verify(fp32, "tflite", "fp32", task, dense_ref, torch_out, threads, opts.progress, f"{stage} tflite fp32")
            artifacts.append(Artifact.of_file(work, fp32, name=f"{stage}-tflite-fp32", stage=stage, format="tflite",
                                              precision="fp32", macs=macs, params=params, parent=f"{stage}-onnx-fp32", metrics=m, parity=p))
            if q8 is not None:
                with clock("verify"):
                    require_full_integer(q8, target.quantization.io_dtype)
                    outputs[f"{stage}-tflite-int8"], m, _ = verify(q8, "tflite", "int8", task, dense_ref, None, threads,
                                                                   opts.progress, f"{stage} tflite int8")
                artifacts.append(Artifact.of_file(work, q8, name=f"{stage}-tflite-int8", stage=stage, format="tflite",
                                                  precision="int8", macs=macs, params=params, parent=f"{stage}-onnx-fp32", metrics=m))
        if "onnx" not in target.formats:
            onnx_path.unlink()

    dense_onnx, dense_job = export_onnx(dense, "dense", int8=False)

    with clock("prune"):
        from toolkit.prune.cache import find_pruned, prune_cache_key, store_pruned

        key = prune_cache_key(ckpt, prune_cfg, spec, task.data_description(), opts.seed, card.never_prune)
        found = find_pruned(card, key)
        ft_seconds: dict = {}
        if found is not None:
            pruned, history, published = found
            extra["prune_cache"] = {"key": key, "hit": True, **({"published": published} if published else {})}
        else:
            teacher = copy.deepcopy(dense).eval()

            def finetune(model, step):
                import time

                t0 = time.perf_counter()
                result = task.finetune(model, prune_cfg.finetune_epochs, prune_cfg.finetune_lr, prune_cfg.distill,
                                       teacher, opts.seed + step, opts.progress)
                ft_seconds[step] = time.perf_counter() - t0
                return result

            grad = task.grad_batches() if prune_cfg.importance == "taylor" else None
            pruned, history = prune_model(copy.deepcopy(dense), shape, prune_cfg, card.never_prune, finetune, grad,
                                          opts.progress)
            store_pruned(key, pruned, payload, history)
            extra["prune_cache"] = {"key": key, "hit": False}
        extra["prune_history"] = history
    # Report fine-tuning separately from the pruning itself.
    ft_total = round(sum(ft_seconds.values()), 2)
    clock.seconds["prune"] = round(clock.seconds["prune"] - ft_total, 2)
    clock.seconds["fine-tune"] = ft_total
    pmacs, pparams = history[-1]["macs"], history[-1]["params"]
    save_checkpoint(work / f"{name}_pruned.pt", pruned, payload["architecture"], payload["arguments"],
                    {"pruning": prune_cfg.model_dump(), "history": history})
    with clock("verify"):
        pruned_ref = task.torch_outputs(pruned)
    artifacts.append(Artifact.of_file(work, work / f"{name}_pruned.pt", name="pruned-torch-fp32", stage="pruned", format="torch",
                                      precision="fp32", macs=pmacs, params=pparams, parent="dense-torch-fp32",
                                      metrics=task.metrics(pruned_ref, dense_ref)))
    pruned_int8 = "int8" in target.precisions
    pruned_onnx, pruned_job = export_onnx(pruned, "pruned", int8=pruned_int8)
    finish_family(dense_onnx, dense_job, "dense", dense_ref, dmacs, dparams, int8=False)
    finish_family(pruned_onnx, pruned_job, "pruned", pruned_ref, pmacs, pparams, int8=pruned_int8)
    artifacts.sort(key=lambda a: a.stage != "dense")  # stable: dense rows first, each family in its own order

    bad = [a.name for a in artifacts if a.parity and not a.parity["ok"]]
    if bad:
        worst = max(a.parity["max_abs_error"] for a in artifacts if a.name in bad)
        raise EdgeShrinkError(f"numerical parity failed for {', '.join(bad)} (max abs error {worst:.2e} > 1e-4 vs torch); the converter changed the model")

    if opts.bench:
        from toolkit.bench.host import benchmark_file

        b = target.benchmark
        for i, a in enumerate(artifacts):
            with clock("benchmark"):
                r = benchmark_file(work / a.file, a.format, shape, threads, b.warmup, b.min_runs, b.min_seconds)
            artifacts[i] = a.with_(latency_ms=r["latency_ms"], fps=r["fps"], peak_rss_mb=r["peak_rss_mb"])
    if card.task == "segmentation":
        from toolkit.segmentation.extras import example_grid, full_slice_benchmarks

        if opts.bench:
            extra["full_slice"] = full_slice_benchmarks(work, name, {"dense": dense, "pruned": pruned}, task, target,
                                                        calib_nchw, clock)
        if "pruned-tflite-int8" in outputs:
            with clock("report"):
                example_grid(work / "examples.png", task, dense_ref, outputs["pruned-tflite-int8"], f"{name}: held-out cases")
    return artifacts, extra
