"""`edgeshrink bench BUNDLE`: re-benchmark every file of a bundle, print a table, write bench.json."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError


def bench_bundle(bundle: Path, threads: int | None = None, min_runs: int = 100, min_seconds: float = 5.0,
                 warmup: int = 20) -> dict:
    """Latency of each artifact, with speed-up and size ratio against the manifest's baseline."""
    from tqdm import tqdm

    from toolkit.bench.host import benchmark_file
    from toolkit.core.provenance import library_versions, machine_description

    from toolkit.delivery.compare import read_manifest
    from toolkit.config.targets import load_target

    bundle = Path(bundle)
    if not (bundle / "manifest.json").is_file():
        raise EdgeShrinkError(f"{bundle} has no manifest.json; build it first with `make deploy` / `edgeshrink run`")
    manifest = read_manifest(bundle)
    try:
        spec = manifest["input"]
        shape = (1, int(spec["channels"]), int(spec["height"]), int(spec["width"]))
        baseline, target = manifest["baseline"]["file"], manifest["target"]
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeShrinkError(f"{bundle}/manifest.json lacks or mistypes {exc} (edited or truncated); rebuild the "
                              "bundle with `edgeshrink run`") from None
    missing = [a["file"] for a in manifest["artifacts"] if not (bundle / a["file"]).is_file()]
    if missing:
        raise EdgeShrinkError(f"{bundle} lacks {', '.join(missing[:3])} listed in its manifest; rebuild the bundle "
                              "with `edgeshrink run`")
    threads = threads or load_target(target).bench_threads
    rows = []
    with _bundle_card_code(bundle):
        _check_torch_files(bundle, manifest["artifacts"])  # before any benchmark: one line, no progress bar
        for a in tqdm(manifest["artifacts"], desc="bench"):
            r = benchmark_file(bundle / a["file"], a["format"], shape, threads=threads, warmup=warmup, min_runs=min_runs,
                               min_seconds=min_seconds)
            rows.append({"file": a["file"], "format": a["format"], "precision": a["precision"], "stage": a["stage"],
                         "size_bytes": a["size_bytes"], "metrics": a["metrics"], **r})
    base = next((r for r in rows if r["file"] == baseline), None)
    if base is None:
        raise EdgeShrinkError(f"{bundle}: baseline {baseline} is not among the manifest's artifacts; rebuild the bundle")
    for r in rows:
        r["speedup_vs_baseline"] = base["latency_ms"]["p50"] / r["latency_ms"]["p50"]
        r["size_ratio_vs_baseline"] = base["size_bytes"] / r["size_bytes"]
    result = {"bundle": str(bundle), "model": manifest["model"], "target": manifest["target"], "threads": threads,
              "input_shape": list(shape), "baseline": baseline, "rows": rows,
              "device": {"kind": "host", **machine_description()}, "versions": library_versions()}
    (bundle / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def _check_torch_files(bundle: Path, artifacts: list) -> None:
    """Each torch file must name the architecture the bundle's card names (or a registered one): the
    benchmark worker would refuse it anyway, this says so before anything is measured."""
    from toolkit.models.architectures import checkpoint_architecture
    from toolkit.models.checkpoint import read_checkpoint

    for a in artifacts:
        if a.get("format") == "torch":
            checkpoint_architecture(read_checkpoint(bundle / a["file"]).get("architecture"), bundle / a["file"])


def _bundle_card_code(bundle: Path):
    """The architecture the bundle's torch files may be rebuilt with: its config.json's card's (checked
    like a replayed plan: a registered name, a model library or file.py:factory inside the card's
    folder), never the name a weights file carries. Without a config.json only registered names load."""
    import contextlib

    from toolkit.core.files import read_bytes_capped
    from toolkit.models.architectures import card_code, check_architecture

    config = bundle / "config.json"
    if not config.exists():
        return contextlib.nullcontext()
    fix = "rebuild the bundle with `edgeshrink run`"
    try:
        plan = json.loads(read_bytes_capped(config, "bundle plan", fix).decode("utf-8"))
        architecture, card_dir = plan["card"]["architecture"], plan["card_dir"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise EdgeShrinkError(f"{config} is unreadable or lacks the card's architecture ({type(exc).__name__}); "
                              f"{fix}") from None
    if not isinstance(card_dir, str):
        raise EdgeShrinkError(f"{config}: card_dir is not a folder name; {fix}")
    check_architecture(architecture, Path(card_dir))
    return card_code(architecture, card_dir)


def format_bench_table(result: dict, metric: str = "top1") -> str:
    head = f"{'file':42s} {'fmt':6s} {'prec':5s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'FPS':>8s} {'peak MB':>8s} {'x faster':>9s} {'x smaller':>9s}"
    lines = [f"host: {result['device']['cpu']}, {result['threads']} threads, input {result['input_shape']}", head]
    for r in result["rows"]:
        lat = r["latency_ms"]
        lines.append(f"{r['file']:42s} {r['format']:6s} {r['precision']:5s} {lat['p50']:8.2f} {lat['p90']:8.2f} "
                     f"{lat['p99']:8.2f} {r['fps']:8.0f} {r['peak_rss_mb']:8.0f} {r['speedup_vs_baseline']:9.2f} "
                     f"{r['size_ratio_vs_baseline']:9.2f}")
    return "\n".join(lines)
