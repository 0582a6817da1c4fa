"""`edgeshrink compare dist/*/`: one table over bundles and every results JSON they hold."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError


def read_json_file(path: Path, fix: str) -> dict:
    """A JSON object from `path`; a missing, truncated or non-object file is a one-line error ending in `fix`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeShrinkError(f"{path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EdgeShrinkError(f"{path} is unreadable or not valid JSON ({type(exc).__name__}); {fix}") from None
    if not isinstance(data, dict):
        raise EdgeShrinkError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def read_manifest(bundle: Path, fix: str = "rebuild the bundle with `edgeshrink run`") -> dict:
    """A bundle's manifest.json, checked to hold the keys every command reads."""
    mpath = Path(bundle) / "manifest.json"
    if not Path(bundle).is_dir() or not mpath.is_file():
        raise EdgeShrinkError(f"{bundle} is not a bundle (no manifest.json); point at an `edgeshrink run` output folder")
    m = read_json_file(mpath, fix)
    arts = m.get("artifacts")
    if not isinstance(arts, list) or not all(isinstance(a, dict) and "file" in a and "name" in a for a in arts):
        raise EdgeShrinkError(f"{mpath} has no valid 'artifacts' list (edited or truncated); {fix}")
    return m


def collect_rows(bundles: list[Path]) -> list[dict]:
    """Rows from each bundle's manifest (host measurements) and results/*.json (device runs)."""
    rows = []
    for bundle in bundles:
        try:
            rows += _bundle_rows(Path(bundle))
        except (KeyError, TypeError, AttributeError) as exc:
            raise EdgeShrinkError(f"{bundle}: manifest.json or a results file lacks or mistypes {exc}; rebuild the "
                                  "bundle or re-run `edgeshrink deliver`") from None
    return rows


def _bundle_rows(bundle: Path) -> list[dict]:
    rows = []
    m = read_manifest(bundle)
    metric = m.get("primary_metric", "top1")
    deploy_name = m.get("deploy", {}).get("artifact")
    for a in m["artifacts"]:
        if a["name"] == deploy_name or a["name"] == "dense-tflite-fp32":
            rows.append({"bundle": Path(bundle).name, "where": "host", "runtime": a["format"], "file": a["file"],
                         "precision": a["precision"], metric: a["metrics"].get(metric), "metric": metric,
                         "p50": (a.get("latency_ms") or {}).get("p50"), "p90": (a.get("latency_ms") or {}).get("p90"),
                         "p99": (a.get("latency_ms") or {}).get("p99"), "fps": a.get("fps"), "size_kb": a["size_bytes"] / 1024})
    for rpath in sorted((Path(bundle) / "results").glob("*.json")):
        data = read_json_file(rpath, "remove it or re-run `edgeshrink deliver` to measure again")
        for r in data["results"] if isinstance(data.get("results"), list) else [data]:
            lat = r.get("latency_ms") or {}
            dev = r.get("device", {})
            runtime = r.get("runtime", {})
            rows.append({"bundle": Path(bundle).name, "where": dev.get("model") or dev.get("hostname") or rpath.stem,
                         "runtime": f"{runtime.get('name')}{'/' + runtime['delegate'] if runtime.get('delegate') else ''}",
                         "file": r.get("file"), "precision": r.get("precision"), "metric": metric,
                         metric: (r.get("accuracy") or {}).get(metric), "p50": lat.get("p50"), "p90": lat.get("p90"),
                         "p99": lat.get("p99"), "fps": r.get("fps"), "size_kb": None})
    return rows


def format_rows(rows: list[dict]) -> str:
    def f(v, spec):
        return "–" if v is None else format(v, spec)

    head = f"{'bundle':34s} {'measured on':22s} {'runtime':24s} {'prec':5s} {'metric':>8s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'FPS':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        val = r.get(r["metric"])
        lines.append(f"{r['bundle'][:34]:34s} {str(r['where'])[:22]:22s} {str(r['runtime'])[:24]:24s} {str(r['precision']):5s} "
                     f"{f(val, '.4f'):>8s} {f(r['p50'], '.2f'):>8s} {f(r['p90'], '.2f'):>8s} {f(r['p99'], '.2f'):>8s} "
                     f"{f(r['fps'], '.1f'):>8s}")
    return "\n".join(lines)
