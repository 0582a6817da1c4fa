"""End-to-end FPS of the deployed file on this host: the bundle's own device script
(`edgeshrink_run.py --input ...`) on original held-out image files, so the figure covers what a
device does per frame: decode, resize, normalise, inference and the task's post-processing (for
detection: box decoding and NMS). Beside the model-only p50 of the benchmark; a host number,
labelled so. Tasks offer the files with `end_to_end_inputs(count)` (detection does); other tasks
get no figure rather than one made from already-decoded arrays."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.work_limit import run_limited

INCLUDES = {"detection": "decode + resize + inference + box decoding + NMS"}  # by task; others: decode + resize + inference


def measure_end_to_end(bundle: Path, task, *, artifact: str, threads: int, count: int = 20,
                       cpu_limit_s: float = 600) -> Optional[dict]:
    """{artifact, images, p50_ms, p90_ms, fps, includes, measured_on} from the device script run on
    up to `count` held-out files (the first call's warm-up included in the percentiles, as a device
    run would); {"error": ...} when the script refuses or spends `cpu_limit_s` CPU seconds; None when the
    task has no files to offer."""
    offer = getattr(task, "end_to_end_inputs", None)
    files = [str(p) for p in (offer(count) if offer else [])]
    if not files:
        return None
    with tempfile.TemporaryDirectory(prefix="edgeshrink-e2e-") as tmp:
        out = Path(tmp) / "end_to_end.json"
        cmd = [sys.executable, str(bundle / "edgeshrink_run.py"), "--bundle", str(bundle), "--artifact", artifact,
               "--input", *files, "--json", str(out), "--threads", str(threads)]
        try:
            done = run_limited(cmd, cpu_seconds=cpu_limit_s, what=f"the device script on {len(files)} images",
                               fix="measure fewer images", capture_output=True, text=True, cwd=tmp)
        except EdgeShrinkError as exc:
            return {"artifact": artifact, "error": str(exc)}
        if done.returncode != 0 or not out.is_file():
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            return {"artifact": artifact, "error": (lines[-1] if lines else f"exit status {done.returncode}")[:300]}
        record = json.loads(out.read_text())
    latency = record.get("end_to_end_ms") or {}
    p50 = latency.get("p50")
    if not p50:
        return {"artifact": artifact, "error": "the device script timed no input"}
    return {"artifact": artifact, "images": len(files), "p50_ms": float(p50), "p90_ms": latency.get("p90"),
            "fps": 1000.0 / float(p50), "threads": threads, "measured_on": "host",
            "includes": INCLUDES.get(getattr(task, "name", ""), "decode + resize + inference"),
            "how": "the bundle's edgeshrink_run.py --input on held-out image files"}
