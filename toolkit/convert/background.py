"""Background work in plain child processes (`python -m toolkit.convert.background`), not multiprocessing.

multiprocessing's spawn re-imports the caller's `__main__`: a user's 15-line script without an
`if __name__ == "__main__":` guard would start itself again in every worker. A child started with
`python -m` imports only the toolkit. Children get SIGTERM when the parent dies (Linux
PR_SET_PDEATHSIG) and are killed when the run fails or is interrupted. A job folder is named after
its owner's pid (`edgeshrink-job-<pid>-*`); those of runs that were SIGKILLed (the owner is gone) are
removed when the next job starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from toolkit.core.atomic import remove_dead_job_folders
from toolkit.core.errors import EdgeShrinkError
from toolkit.core.work_limit import backstop_s, child_setup, children_cpu_s, spent_cpu_limit

JOB_PREFIX = "edgeshrink-job-"


class BackgroundConversion:
    """One ONNX -> TFLite conversion in a child process; `result()` waits for its TFLiteOutputs.
    `cpu_seconds` limits the child's work (toolkit.core.work_limit; None: no limit)."""

    def __init__(self, onnx_path: Path, out_dir: Path, *, calib01, mean, std, int8: bool, io_dtype: str, cache: bool,
                 rewrite_ops=None, cpu_seconds: Optional[float] = None):
        import numpy as np

        remove_dead_job_folders(Path(tempfile.gettempdir()), JOB_PREFIX)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{JOB_PREFIX}{os.getpid()}-")
        job = Path(self._tmp.name)
        if calib01 is not None:
            np.save(job / "calib.npy", calib01)
        spec = {"onnx": str(onnx_path), "out": str(out_dir), "calib": str(job / "calib.npy") if calib01 is not None else None,
                "mean": list(mean), "std": list(std), "int8": int8, "io_dtype": io_dtype, "cache": cache,
                "rewrite_ops": None if rewrite_ops is None else list(rewrite_ops)}
        (job / "job.json").write_text(json.dumps(spec))
        self._log = open(job / "stderr.log", "w+")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self._cpu_seconds, self._children_cpu_before = cpu_seconds, children_cpu_s()
        self._proc = subprocess.Popen([sys.executable, "-m", "toolkit.convert.background", str(job / "job.json")],
                                      stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
                                      preexec_fn=child_setup(cpu_seconds))

    def result(self):
        """(TFLiteOutputs, seconds); the child's failure, or its spending its CPU seconds (or waiting
        past the wall-clock backstop; it is then killed), is a one-line EdgeShrinkError."""
        from toolkit.convert.onnx_to_tflite import TFLiteOutputs

        try:
            out, _ = self._proc.communicate(timeout=backstop_s(self._cpu_seconds))
        except subprocess.TimeoutExpired:
            self.kill()
            raise EdgeShrinkError(f"TFLite conversion (onnx2tf) waited {backstop_s(self._cpu_seconds):.0f} s without "
                                  "finishing and was stopped") from None
        self._log.seek(0)
        tail = [line for line in self._log.read().splitlines() if line.strip()]
        self.close()
        if spent_cpu_limit(self._proc.returncode, cpu_seconds=self._cpu_seconds,
                           spent_s=children_cpu_s() - self._children_cpu_before):
            raise EdgeShrinkError(f"TFLite conversion (onnx2tf) spent its {self._cpu_seconds:.0f} CPU seconds and was "
                                  "stopped; raise the limit or convert a smaller model")
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if self._proc.returncode != 0 or not lines:
            raise EdgeShrinkError(f"TFLite conversion failed: {tail[-1] if tail else f'exit {self._proc.returncode}'}")
        data = json.loads(lines[-1])
        return TFLiteOutputs(Path(data["float32"]), Path(data["int8"]) if data["int8"] else None,
                             tuple(data.get("onnx2tf_options", ())), tuple(data.get("rewrites", ()))), data["seconds"]

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.close()

    def close(self) -> None:
        self._log.close()
        self._tmp.cleanup()


def _main(job_file: str) -> int:
    """Child side: run the conversion described in job.json, print one JSON line."""
    import numpy as np

    from toolkit.convert.cache import cached_onnx_to_tflite
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite

    spec = json.loads(Path(job_file).read_text())
    calib = np.load(spec["calib"]) if spec["calib"] else None
    convert = cached_onnx_to_tflite if spec["cache"] else onnx_to_tflite
    t0 = time.perf_counter()
    try:
        out = convert(spec["onnx"], spec["out"], calib, tuple(spec["mean"]), tuple(spec["std"]), int8=spec["int8"],
                      io_dtype=spec["io_dtype"], rewrite_ops=spec.get("rewrite_ops"))
    except EdgeShrinkError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps({"float32": str(out.float32), "int8": str(out.int8) if out.int8 else None,
                      "onnx2tf_options": list(out.onnx2tf_options), "rewrites": list(out.rewrites),
                      "seconds": time.perf_counter() - t0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
