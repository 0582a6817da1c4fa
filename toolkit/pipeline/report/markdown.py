"""report.md: one row per produced file, then stage timings and provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def _fmt(v, spec: str, empty: str = "–") -> str:
    return empty if v is None else format(v, spec)


def metric_columns(metric: str, artifacts) -> list[str]:
    """Metric keys shown in the table: the primary one first, then per-class/agreement extras."""
    keys = [metric]
    for a in artifacts:
        for k in a.metrics:
            if k not in keys and not isinstance(a.metrics[k], (list, dict)):
                keys.append(k)
    return keys


_CONVERTER_NAMES = {"torch_to_onnx": "torch.onnx", "onnx_to_qdq_int8": "onnxruntime QDQ"}


def stage_table(artifacts, metric: str) -> str:
    keys = metric_columns(metric, artifacts)
    head = ["file", "format", "precision", "converter", "MMACs", "params (k)", "size (KB)"] + keys + \
           ["parity rel err", "p50 ms", "p90 ms", "p99 ms", "FPS", "peak MB"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in artifacts:
        lat = a.latency_ms or {}
        cells = [f"`{a.file}`", a.format, a.precision, _CONVERTER_NAMES.get(a.converter, a.converter or "–"), f"{a.macs / 1e6:.1f}", f"{a.params / 1e3:.0f}",
                 f"{a.size_bytes / 1024:.0f}"]
        for k in keys:
            v = a.metrics.get(k)
            cells.append("–" if v is None else (f"{100 * v:.2f}%" if k in ("top1", "agreement_top1") else f"{v:.4f}"))
        cells += [_fmt(a.parity.get("max_rel_error") if a.parity else None, ".1e"),
                  a.bench_error or _fmt(lat.get("p50"), ".2f"),
                  _fmt(lat.get("p90"), ".2f"), _fmt(lat.get("p99"), ".2f"), _fmt(a.fps, ".0f"), _fmt(a.peak_rss_mb, ".0f")]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def pruning_line(pruning: dict) -> str:
    """How the pruned model was made, and whether fine-tuning ran here or was reused."""
    cfg, history, cache = pruning.get("config") or {}, pruning.get("history") or [], pruning.get("cache") or {}
    if not cfg:
        return ""
    skipped = pruning.get("skipped")
    if skipped:
        return (f"Pruning: **skipped, the \"pruned\" files are the dense model** — {skipped['reason']} "
                f"({skipped['switch']}).")
    kept = pruning.get("macs_fraction") or (history[-1]["macs_fraction"] if history else None)
    line = (f"Pruning: {cfg.get('importance')} importance, {cfg.get('scope')} scope, {cfg.get('steps')} step(s), "
            f"{_fmt(kept, '.1%')} of dense MACs kept, {cfg.get('finetune_epochs')} fine-tune epochs per step")
    target = (history[-1].get("target") if history else None) or {}
    if target and not target.get("met", True):
        line += f" — **{target['why']}**"
    if cache.get("published"):
        line += f" (fine-tuned model loaded from the published `{cache['published']}`, same settings)"
    elif cache.get("hit"):
        line += " (fine-tuned model reused from the local prune cache, same settings)"
    excluded = pruning.get("excluded") or []
    if excluded:
        shown = "; ".join(f"`{e['layer']}` ({e['reason']})" for e in excluded[:8])
        line += f"\n\nExcluded from pruning ({len(excluded)}): {shown}" + (" ..." if len(excluded) > 8 else "")
    return line


def recovery_lines(manifest: dict, metric: str) -> list[str]:
    """When the pruned model itself misses the deploy gate on the primary metric: how its fine-tuning
    ended, and the settings that change that (each a real card key or run flag)."""
    selection = (manifest.get("deploy") or {}).get("selection") or {}
    failed = [c for c in selection.get("candidates") or [] if c["artifact"].startswith("pruned-")
              and c["artifact"].endswith("fp32") and any(w.startswith(f"{metric} ") for w in c.get("why_not") or [])]
    pruned = next((a for a in manifest.get("artifacts") or [] if a["name"] == "pruned-torch-fp32"), None)
    history = (manifest.get("pruning") or {}).get("history") or []
    tune = (history[-1].get("finetune") if history else None) or {}
    if not failed or pruned is None or not tune.get("epochs"):
        return []
    trend = [e.get(metric) for e in tune.get("per_epoch") or [] if e.get(metric) is not None]
    shown = " → ".join(f"{v:.3f}" for v in (trend if len(trend) <= 6 else trend[:3] + trend[-3:]))
    dense = (manifest.get("baseline") or {}).get("metrics", {}).get(metric)
    return [f"**The pruned model did not recover**: after {tune['epochs']} fine-tune epochs it scores {metric} "
            f"{pruned['metrics'].get(metric, float('nan')):.4f} against dense {_fmt(dense, '.4f')}"
            + (f" (per epoch: {shown})" if shown else "") + ". Fine-tune longer or faster (card `pruning.finetune_epochs` "
            "and `pruning.finetune_lr`, or `--finetune-epochs N`) or prune less (`pruning.target_macs`): a small "
            "dataset gives few optimizer steps per epoch.", ""]


def reparameterization_lines(manifest: dict) -> list[str]:
    """The deploy-time fusion applied before pruning and export (MACs before and after), or why not."""
    from toolkit.models.reparameterize import summary

    line = summary(manifest.get("reparameterization") or {})
    return ["", line[0].upper() + line[1:] + "."] if line else []


def sparsity_lines(manifest: dict) -> list[str]:
    """Zeros present in each sparse file, raw vs gzip size, and whether any kernel uses them."""
    sp = manifest.get("sparsity")
    if not sp:
        return []
    lines = [f"## Unstructured sparsity ({sp['target_sparsity']:.0%} target, {sp['schedule']}, {sp['scope']})", "",
             "| file | zero weights (prunable layers) | raw KB | gzip KB | kernels |", "|---|---|---|---|---|"]
    for name, f in sp["files"].items():
        lines.append(f"| {name} | {f['prunable_zero_fraction']:.1%} | {f['raw_bytes'] / 1024:,.0f} | "
                     f"{f['gzip_bytes'] / 1024:,.0f} | {f['kernels']} |")
    x = sp.get("xnnpack_sparse")
    if x:
        lines += ["", f"XNNPACK sparse inference, FP32 sparse-encoded twin vs dense-encoded file: {x.get('verdict')} "
                  f"(p50 {x.get('dense_p50_ms', float('nan')):.3f} vs {x.get('sparse_p50_ms', float('nan')):.3f} ms)."]
    return lines + [""]


def _speedup_text(budget: dict) -> str:
    d, request = budget.get("deployed") or {}, budget.get("request") or {}
    if "speedup_same_pass" not in d:
        return ""
    return (f" Requested {request['speedup']:g}x the dense FP32 file (budget from its p50 "
            f"{request['dense_fp32_p50_ms']:.3f} ms at the start of the run); in the final benchmark pass the dense "
            f"FP32 file took {d['dense_fp32_p50_ms_same_pass']:.3f} ms: **{d['speedup_same_pass']:.2f}x**.")


def budget_lines(manifest: dict) -> list[str]:
    """The latency budget, the chosen pruning point, the deployed file's measured FPS, the frontier."""
    b = manifest.get("latency_budget")
    if not b:
        return []
    d = b.get("deployed") or {}
    chosen = b.get("chosen") or {}
    met = {True: "**met**", False: "**missed**", None: "not measured"}[d.get("met")]
    lines = [f"## Latency budget: {b['budget_fps']:.0f} FPS ({b['budget_ms']:.3f} ms p50)", "",
             f"Chosen: target_macs {chosen.get('target_macs', 1.0)}, round_to {chosen.get('round_to', '–')} "
             f"(the least pruning predicted and measured to meet the budget before fine-tuning; {b['note']}). "
             f"Deployed `{d.get('artifact')}`: p50 {d.get('p50_ms') or float('nan'):.3f} ms = "
             f"{d.get('fps') or float('nan'):.0f} FPS model-only — {met}" + _end_to_end_met(d) + "." + _speedup_text(b), "",
             f"| round_to | MACs kept | LUT-predicted ms | measured {b.get('precision', 'fp32').upper()} ms |",
             "|---|---|---|---|"]
    probes = b["probes"]
    shown = [p for i, p in enumerate(probes) if p.get("measured_ms") is not None or i % 8 == 0]
    for p in shown:
        measured = "–" if p.get("measured_ms") is None else f"{p['measured_ms']:.3f}"
        lines.append(f"| {p['round_to']} | {p['macs_fraction']:.1%} | {p['predicted_ms']:.3f} | {measured} |")
    return lines + ["", f"({len(shown)} of {len(probes)} frontier points shown; all in manifest.json)",
                    "", "![frontier](frontier.png)", ""]


def _end_to_end_met(d: dict) -> str:
    if "end_to_end_met" not in d:
        return ""
    return f"; end to end {d['end_to_end_fps']:.0f} FPS — {'**met**' if d['end_to_end_met'] else '**missed**'}"


def end_to_end_line(manifest: dict) -> list[str]:
    """The deployed file's end-to-end FPS through the device script, model-only beside it (host numbers)."""
    e = (manifest.get("deploy") or {}).get("end_to_end")
    if not e:
        return []
    if e.get("error"):
        return [f"End to end: not measured ({e['error']}).", ""]
    return [f"**End to end on this host: {e['fps']:.1f} FPS** (p50 {e['p50_ms']:.2f} ms per image: {e['includes']}; "
            f"{e['images']} held-out image files through the bundle's `edgeshrink_run.py`, {e['threads']} threads). "
            "A host number, not a device number.", ""]


def deploy_lines(manifest: dict) -> list[str]:
    """Which file the target deploys and why, its end-to-end FPS, and each candidate's gate result."""
    sel = (manifest.get("deploy") or {}).get("selection")
    if not sel:
        return []
    lines = [f"**Deployed: `{sel['artifact']}`** — {sel['reason']}.", "", *end_to_end_line(manifest),
             "| candidate | p50 ms (model only) | delegate partitions | gate |", "|---|---|---|---|"]
    for r in sel["candidates"]:
        p50 = "–" if r["p50_ms"] is None else f"{r['p50_ms']:.3f}"
        parts = "–" if r.get("partitions") is None else str(r["partitions"])
        lines.append(f"| {r['artifact']} | {p50} | {parts} | {'pass' if r['passes'] else '; '.join(r['why_not'])} |")
    return lines + [""]


def converter_lines(manifest: dict) -> list[str]:
    """Which converter made each family's TFLite files, and why when it was not the chosen one."""
    chosen = manifest.get("tflite_converters") or {}
    lines = []
    for stage, c in chosen.items():
        if c.get("fallback_reason"):
            lines.append(f"- {stage} TFLite files: made by **{c['used']}** instead of {c['primary']}: {c['fallback_reason']}")
        else:
            lines.append(f"- {stage} TFLite files: made by {c['used']}")
        if c.get("int8"):
            lines.append(f"- {stage} INT8 TFLite file: made by **{c['int8']['used']}**: {c['int8']['fallback_reason']}")
        if c.get("int8_dropped"):
            lines.append(f"- {stage}: **no INT8 TFLite file**: {c['int8_dropped']}")
        kept = c.get("int8_partitions") or {}
        if kept:
            lines.append(f"- {stage} INT8 TFLite file: kept {kept['kept']}'s: {kept['compared']}")
    for stage, r in (manifest.get("int8_requantized") or {}).items():
        lines.append(f"- {stage} INT8 TFLite file ({r['converter']}): {r['requantized']} ADD/MUL input(s) on a grid finer "
                     f"than XNNPACK takes requantized: {r['partitions_before']} -> {r['partitions_after']} partitions")
    return ["TFLite converters:", *lines, ""] if lines else []


def int8_fallback_lines(manifest: dict) -> list[str]:
    """What the INT8 fallback tried (toolkit.quantize.int8_fallback): each step's metric and partitions."""
    lines = []
    for stage, rec in (manifest.get("int8_fallback") or {}).items():
        trig = rec["trigger"]
        metric = next(k for k in trig if k not in ("artifact", "dense_fp32", "max_metric_drop"))
        head = (f"**INT8 fallback ({stage})**: `{trig['artifact']}` scored {metric} {trig[metric]:.4f} vs dense FP32 "
                f"{trig['dense_fp32']:.4f} (gate: at most {trig['max_metric_drop']} below)")
        if rec.get("skipped"):
            lines += [f"{head}; skipped: {rec['skipped']}", ""]
            continue
        outcome = f"deployed candidate: **{rec['chosen']}**" if rec.get("chosen") else "no step passed: the file is kept as it was"
        lines += [f"{head}; {outcome}.", "", f"| step | protected layers | {metric} | partitions | gate |", "|---|---|---|---|---|"]
        for s in rec["steps"]:
            value = "–" if s["metric"] is None else f"{s['metric']:.4f}"
            parts = "–" if s["partitions"] is None else str(s["partitions"])
            lines.append(f"| {s['step']} | {len(s['protect'])} | {value} | {parts} | "
                         f"{'pass' if s['passes'] else '; '.join(s['why_not'])} |")
        if rec.get("sensitivity"):
            worst = "; ".join(f"{r['op']} `{r['name'][:48]}` {r['loss_db']:.1f} dB" for r in rec["sensitivity"][:3])
            lines.append(f"\nMost sensitive layers (SNR lost against their inputs): {worst}.")
        lines.append("")
    return lines


def onnx_cpu_lines(manifest: dict) -> list[str]:
    """Why the INT8 ONNX figures hold on CPUs with and without VNNI (or why they may not)."""
    lines = []
    for stage, r in (manifest.get("onnx_int8_same_on_every_cpu") or {}).items():
        verdict = ("same int32 sums with and without VNNI" if r["same_on_every_cpu"] else
                   f"**{r['rows_can_saturate']} rows can clamp on AVX2 CPUs without VNNI: top-1 may differ there**")
        lines.append(f"- {stage} INT8 ONNX ({r['scheme']}): {r['rows_can_saturate']} of {r['rows']} weight rows can clamp "
                     f"onnxruntime's AVX2 u8s8 pair sums (largest pair {r['max_pair']}): {verdict}; this host: "
                     f"VNNI {'yes' if r['host_vnni'] else 'no'}")
    return ["INT8 ONNX on other CPUs:", *lines, ""] if lines else []


def _trial_text(limited: Optional[dict]) -> str:
    if not limited:
        return ""
    return (f" — **TRIAL RUN: every metric from {limited['evaluated']} of the {limited['of']} held-out {limited['unit']} "
            f"(eval_limit {limited['eval_limit']}); not comparable with a full run**")


def write_report(path: Path, manifest: dict, artifacts, metric: str) -> None:
    from toolkit.pipeline.report.segmentation import segmentation_lines

    data, dev = manifest["data"], manifest["device"]
    base = manifest["baseline"]
    lines = [
        f"# {manifest['model']} → {manifest['target']}",
        "",
        f"Data: `{data['source']}` ({data['eval_images']} held-out {data.get('eval_unit', 'images')}, split `{data['eval_split']}`)"
        + (" — **SYNTHETIC DATA: figures say nothing about real accuracy**" if data["synthetic"] else "")
        + _trial_text(data.get("eval_limited")),
        f"Machine: {dev['cpu']} ({dev['cores']} cores, {dev['arch']}) — **host numbers, not device numbers**"
        if dev.get("kind") == "host" else f"Device: {dev}",
        f"Baseline: dense FP32 `{base['file']}` — {metric} {base['metrics'].get(metric, float('nan')):.4f}, "
        f"p50 {base['latency_ms'].get('p50', float('nan')):.2f} ms, {base['size_bytes'] / 1024:.0f} KB",
        pruning_line(manifest.get("pruning") or {}),
        *recovery_lines(manifest, metric),
        *reparameterization_lines(manifest),
        "",
        stage_table(artifacts, metric),
        "",
        *deploy_lines(manifest),
        *converter_lines(manifest),
        *int8_fallback_lines(manifest),
        *onnx_cpu_lines(manifest),
        *sparsity_lines(manifest),
        *budget_lines(manifest),
        "Latency: batch 1, the target profile's thread count, warm-up then at least N runs and T seconds, "
        "each file in its own process, `benchmark.repeats` rounds with the files interleaved, the median-p50 "
        "process kept (every round's p50 in manifest.json `p50_runs`; peak MB is that process's max RSS). Parity: max |output − torch output| "
        "over the held-out set divided by max |torch output|, float files only (tolerance 1e-4).",
        "",
        "![accuracy vs latency and size](tradeoffs.png)",
        "",
    ]
    if "full_slice_benchmarks" in manifest:
        fs = manifest["full_slice_benchmarks"]
        lines += [f"## Full-slice deployment size ({fs['size']}x{fs['size']})", "",
                  "| file | precision | p50 ms | p90 ms | slices/s | est. ms per volume |", "|---|---|---|---|---|---|"]
        lines += [f"| `{r['file']}` | {r['precision']} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p90']:.2f} | "
                  f"{r['slices_per_s']:.1f} | {r['volume_ms_estimate']:.0f} |" for r in fs["rows"]]
        lines += ["", f"({fs['note']}; {fs['slices_per_volume']:.1f} slices per held-out volume)", ""]
    if (Path(path).parent / "examples.png").exists():
        lines += ["![held-out examples](examples.png)", ""]
    lines += segmentation_lines(manifest, artifacts)
    lines += [
        "## Stage wall times (s)",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in manifest["stage_seconds"].items()]
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in manifest['versions'].items())}", ""]
    Path(path).write_text("\n".join(lines))
