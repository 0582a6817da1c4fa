"""The run's host benchmark of every produced file (called by the runner after the parity gate).

    runner.artifacts = benchmark_artifacts(runner)

Every file runs in its own worker process, `benchmark.repeats` rounds with the files interleaved
within a round (a change of load hits them alike); each file keeps its median-p50 process and
records every round's p50 (`p50_runs`). A worker that times out leaves the file verified, with a
`bench_error`, rather than failing the run."""

from __future__ import annotations

import shutil
from pathlib import Path


def benchmark_artifacts(runner) -> list:
    """The runner's artifacts with latency, FPS and peak RSS (or `bench_error`), in the same order."""
    import subprocess

    from toolkit.bench.host import benchmark_file

    b, artifacts = runner.target.benchmark, list(runner.artifacts)
    runs: dict[int, list] = {i: [] for i in range(len(artifacts))}
    errors: dict[int, str] = {}
    for _ in range(b.repeats):
        for i, a in enumerate(artifacts):
            if i in errors:
                continue
            with runner.clock("benchmark"):
                try:
                    runs[i].append(benchmark_file(bench_file(runner, a), a.format, runner.shape, threads=runner.threads,
                                                  warmup=b.warmup, min_runs=b.min_runs, min_seconds=b.min_seconds))
                except subprocess.TimeoutExpired as exc:  # a verified run is worth more than one latency figure
                    errors[i] = f"timed out after {exc.timeout:.0f} s"
    shutil.rmtree(runner.work / ".bench-exports", ignore_errors=True)
    done = []
    for i, a in enumerate(artifacts):
        if i in errors:
            done.append(a.with_(bench_error=errors[i]))
            continue
        ordered = sorted(runs[i], key=lambda r: r["latency_ms"]["p50"])
        r = ordered[len(ordered) // 2]
        done.append(a.with_(latency_ms=r["latency_ms"], fps=r["fps"], peak_rss_mb=r["peak_rss_mb"],
                            p50_runs=[round(x["latency_ms"]["p50"], 4) for x in runs[i]]))
    return done


def bench_file(runner, artifact) -> Path:
    """The file a benchmark process runs for `artifact`. A torch checkpoint of an in-memory module
    (`shrink()`: an architecture only this process knows) is benchmarked as a torch.export program
    of the same model, written once outside the bundle: the worker never rebuilds the module."""
    if artifact.format != "torch" or not runner.plan.source.architecture.startswith("instance:"):
        return runner.work / artifact.file
    scratch = runner.work / ".bench-exports"  # inside the staged folder (cleaned with it), removed after benchmarks
    scratch.mkdir(exist_ok=True)
    exported = scratch / f"{Path(artifact.file).stem}.pt2"
    if not exported.is_file():
        import torch

        model = runner.families[artifact.stage].model.eval()
        example = torch.zeros(*runner.shape)
        torch.export.save(torch.export.export(model, (example,)), str(exported))
    return exported
