"""`edgeshrink compare dist/*/`: one table over bundles and every results JSON they hold."""

from __future__ import annotations

import json
import math
import os
import unicodedata
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError


def printable(text) -> str:
    """`text` without control or format characters (a device's terminal escape sequences, newlines)."""
    return "".join(c if unicodedata.category(c)[0] != "C" else "?" for c in str(text))


def parse_json_object(text: str, where, fix: str) -> dict:
    """A JSON object from `text` (read from `where`); anything else is a one-line error ending in `fix`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EdgeShrinkError(f"{where} is unreadable or not valid JSON ({type(exc).__name__}); {fix}") from None
    if not isinstance(data, dict):
        raise EdgeShrinkError(f"{where} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def read_json_file(path: Path, fix: str) -> dict:
    """A JSON object from `path`; a missing, truncated or non-object file is a one-line error ending in `fix`."""
    from toolkit.core.files import TEXT_MAX_BYTES, file_problem, read_bytes_capped

    problem = file_problem(path, TEXT_MAX_BYTES)  # a FIFO or device would block or never end
    if problem:
        raise EdgeShrinkError(f"{path} {problem}; {fix}")
    try:
        text = read_bytes_capped(path, "JSON file", fix).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeShrinkError(f"{path} is unreadable or not valid JSON ({type(exc).__name__}); {fix}") from None
    return parse_json_object(text, path, fix)


def _number(value, what: str, where) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise EdgeShrinkError(f"{where}: {what} is {printable(repr(value))[:40]}, not a number; remove the file or "
                              "re-run `edgeshrink deliver` to measure again")


def _mapping(record: dict, key: str, where) -> dict:
    value = record.get(key)
    if value is not None and not isinstance(value, dict):
        raise EdgeShrinkError(f"{where}: {key} is a JSON {type(value).__name__}, not an object; remove the file or "
                              "re-run `edgeshrink deliver` to measure again")
    return value or {}


def check_device_result(data: dict, where, metric: str = "top1") -> list[dict]:
    """The records of one device results object, checked where they are read: objects whose
    latency, FPS and `metric` accuracy are numbers (a device's file is not trusted to be well formed)."""
    records = data["results"] if "results" in data else [data]
    metric = metric if isinstance(metric, str) else "top1"
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EdgeShrinkError(f"{where}: 'results' is not a list of objects; remove the file or re-run `edgeshrink deliver`")
    for r in records:
        for key in ("latency_ms", "accuracy", "device", "runtime"):
            _mapping(r, key, where)
        for key in ("p50", "p90", "p99"):
            _number((r.get("latency_ms") or {}).get(key), f"latency_ms.{key}", where)
        _number(r.get("fps"), "fps", where)
        _number((r.get("accuracy") or {}).get(metric), f"accuracy.{printable(metric)[:40]}", where)
    return records


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
    m = read_manifest(bundle)
    metric = m.get("primary_metric", "top1")
    rows = _host_rows(bundle, m, metric)
    for rpath in sorted((Path(bundle) / "results").glob("*.json")):
        data = read_json_file(rpath, "remove it or re-run `edgeshrink deliver` to measure again")
        rows += [_device_row(bundle, rpath, r, metric) for r in check_device_result(data, rpath, metric)]
    return rows


def _label(bundle: Path) -> str:
    """The bundle's folder name, also when it was given as `.` or `..`."""
    return Path(os.path.abspath(bundle)).name


def _host_rows(bundle: Path, m: dict, metric: str) -> list[dict]:
    rows = []
    deploy_name = (m.get("deploy") or {}).get("artifact")
    for a in m["artifacts"]:
        if a["name"] == deploy_name or a["name"] == "dense-tflite-fp32":
            lat = a.get("latency_ms") or {}
            rows.append({"bundle": _label(bundle), "where": "host", "runtime": a["format"], "file": a["file"],
                         "precision": a["precision"], metric: a["metrics"].get(metric), "metric": metric,
                         "p50": lat.get("p50"), "p90": lat.get("p90"), "p99": lat.get("p99"), "fps": a.get("fps"),
                         "size_kb": a["size_bytes"] / 1024})
            for key in (metric, "p50", "p90", "p99", "fps"):
                _number(rows[-1][key], f"{a['name']} {key}", Path(bundle) / "manifest.json")
    return rows


def _device_row(bundle: Path, rpath: Path, r: dict, metric: str) -> dict:
    """One table row from a checked device record (its texts are printed only through format_rows)."""
    lat, dev, runtime = (r.get(k) or {} for k in ("latency_ms", "device", "runtime"))
    delegate = runtime.get("delegate")
    return {"bundle": _label(bundle), "where": dev.get("model") or dev.get("hostname") or rpath.stem,
            "runtime": f"{runtime.get('name')}{'/' + str(delegate) if delegate else ''}",
            "file": r.get("file"), "precision": r.get("precision"), "metric": metric,
            metric: (r.get("accuracy") or {}).get(metric), "p50": lat.get("p50"), "p90": lat.get("p90"),
            "p99": lat.get("p99"), "fps": r.get("fps"), "size_kb": None}


def format_rows(rows: list[dict]) -> str:
    """The table; every text is printed without control characters (device files are not trusted)."""
    def f(v, spec):
        return "–" if v is None else format(v, spec)

    def t(v, width):
        return printable(v)[:width]

    head = f"{'bundle':34s} {'measured on':22s} {'runtime':24s} {'prec':5s} {'metric':>8s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'FPS':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        val = r.get(r["metric"])
        lines.append(f"{t(r['bundle'], 34):34s} {t(r['where'], 22):22s} {t(r['runtime'], 24):24s} {t(r['precision'], 5):5s} "
                     f"{f(val, '.4f'):>8s} {f(r['p50'], '.2f'):>8s} {f(r['p90'], '.2f'):>8s} {f(r['p99'], '.2f'):>8s} "
                     f"{f(r['fps'], '.1f'):>8s}")
    return "\n".join(lines)
