"""Deploy zoo: timm's families and MONAI's 2-D segmentation nets (toolkit.studies.zoo_sources),
random weights, through the chain a run uses for an XNNPACK target:

    build -> reparameterize -> prune -> onnx -> onnx2tf (FP32 + INT8) -> litert-torch -> parity -> int8 -> partitions

Each stage of each model is ok / refused (a one-line EdgeShrinkError: declined safely, with the
message) / failed (anything else: a bug to fix) / skipped. Pruning never blocks: a refused prune
goes on with the dense model. The FP32 file of the first converter whose file passes parity is
the one deployed ("converter"); a model has a verified bundle when that file exists and its INT8
twin is integer (XNNPACK's float islands excepted) with no Flex op; where both converters' files
verify, the one whose INT8 file XNNPACK runs in fewer partitions is deployed, as a run does.

Rows are written to JSON after every model; models already there are skipped (resumable, also
across machines: a row names the commit and libraries it ran with, and holds no machine path), and
a table is printed last.

    make zoo SOURCE=timm [ZOO_MODELS=a,b] [ZOO_SIZE=64]     (python -m toolkit.studies.zoo --source timm)"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.studies.deploy_zoo_table import STAGES, format_table
SIDES = (64, 96, 128)  # input sides tried in turn until the model runs (patch/window sizes)
CALIBRATION = 16
PARITY_INPUTS = 4


def _mean_std(channels: int) -> tuple[tuple, tuple]:
    return ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if channels == 3 else ((0.5,) * channels, (0.25,) * channels)


def _run(row: dict, stage: str, work) -> bool:
    """Run one stage, recording status, seconds and message in `row`. Returns True when ok."""
    from toolkit.studies.zoo import _run_stage

    return _run_stage(row, stage, work)


def _skip(row: dict, stage: str, reason: str) -> None:
    row["stages"][stage] = {"status": "skipped", "message": reason, "seconds": 0.0}


def _build(state: dict, row: dict, entry, *, size: int) -> str:
    """The model at the first side (from `size`, then SIDES) its forward accepts; MACs, params."""
    import torch

    from toolkit.prune.macs import count_macs, count_params

    errors: list = []
    tried: list = []
    for side in _sides(entry, size):
        if side in tried:
            continue
        tried.append(side)
        model, arguments = entry.build(side)
        x = torch.randn(1, entry.channels, side, side, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                model(x)
        except Exception as exc:  # noqa: BLE001 - the input side does not fit the architecture
            errors.append(f"{side} px: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        state.update(model=model, arguments=arguments, side=side)
        row.update(size=side, params=count_params(model), macs_dense=count_macs(model, x))
        return "" if side == size else f"runs from {side} px ({errors[0]})"
    raise EdgeShrinkError(f"{entry.name} runs at none of {', '.join(map(str, tried))} px: {errors[-1]}")


def _sides(entry, size: int):
    """Input sides to try: `size`, the larger SIDES, 112 and 224 (patches of 14 px), then the model's
    own default side (timm's pretrained_cfg input_size, e.g. a position table fixed at 240 px)."""
    yield size
    yield from (s for s in SIDES if s > size)
    yield from (112, 224)  # 8 and 16 patches of 14 px
    model, _ = entry.build(size)
    default = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if default and default[-1] > size:
        yield int(default[-1])


def _reparameterize(state: dict, row: dict) -> str:
    from toolkit.models.reparameterize import reparameterize, summary
    from toolkit.prune.macs import count_macs

    shape = (1, state["channels"], state["side"], state["side"])
    state["model"], report = reparameterize(state["model"], input_shape=shape, count_macs=count_macs)
    row["macs_fused"] = report.get("macs_after", row["macs_dense"])
    if report and not report["fused"]:
        raise EdgeShrinkError(report["reason"])
    return summary(report) or "nothing to fuse"


def _prune(state: dict, row: dict, *, target_macs: float, trials: int, cnn_trials: int) -> str:
    """Uniform one-step prune to `target_macs`, or as far as the model allows; refusals keep the dense model."""
    import torch

    from toolkit.config.pruning import PruneConfig
    from toolkit.prune.macs import count_macs
    from toolkit.prune.prune import UnreachableTarget, prune
    from toolkit.prune.safety import attention_layers

    side, c = state["side"], state["channels"]
    example = torch.randn(2, c, side, side, generator=torch.Generator().manual_seed(0))
    budget = trials if any(attention_layers(state["model"])) else cnn_trials

    def attempt(target: float):
        cfg = PruneConfig(target_macs=target, steps=1, scope="uniform", round_to=8, max_trials=budget)
        return prune(copy.deepcopy(state["model"]), example_input=example, cfg=cfg, progress=False)

    note = ""
    try:
        result = attempt(target_macs)
    except UnreachableTarget as exc:
        result = attempt(exc.reachable_target)
        note = f"target {target_macs:.0%} unreachable, pruned to {exc.reached:.0%}"
    state["model"] = result.model.eval()
    row["macs_pruned"] = count_macs(state["model"], example[:1])
    return note or f"{row['macs_pruned'] / max(row['macs_fused'], 1):.0%} of MACs kept"


def _calibration(state: dict) -> None:
    """Uniform [0, 1] NHWC images, and the torch model's outputs on the first few (normalised NCHW)."""
    import torch

    side, c = state["side"], state["channels"]
    x01 = np.random.default_rng(0).random((CALIBRATION, side, side, c), dtype=np.float32)
    mean, std = _mean_std(c)
    nchw = ((x01 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(0, 3, 1, 2)
    state["x01"], state["x"] = x01, np.ascontiguousarray(nchw[:PARITY_INPUTS], dtype=np.float32)
    with torch.no_grad():
        out = state["model"](torch.from_numpy(state["x"]))
    state["reference"] = (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def _onnx(state: dict, work: Path) -> None:
    """The ONNX file a run exports for an XNNPACK target: hard-swish/hard-sigmoid in delegate-friendly
    forms first (toolkit.convert.graph_rewrite, as the runner does)."""
    import copy

    from toolkit.convert.graph_rewrite import rewrite_for_delegates
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    model, _ = rewrite_for_delegates(copy.deepcopy(state["model"]))
    state["onnx"] = torch_to_onnx(model, (1, state["channels"], state["side"], state["side"]), work / "model.onnx")


def _onnx2tf(state: dict, work: Path, *, cpu_limit_s: float) -> str:
    from toolkit.convert.background import BackgroundConversion
    from toolkit.convert.onnx_rewrite import rewrites_for

    mean, std = _mean_std(state["channels"])
    job = BackgroundConversion(state["onnx"], work / "onnx2tf", calib01=state["x01"], mean=mean, std=std, int8=True,
                               io_dtype="int8", cache=False, rewrite_ops=rewrites_for("xnnpack"),
                               cpu_seconds=cpu_limit_s)
    try:
        out, seconds = job.result()
    finally:
        job.kill()
    state["files"]["onnx2tf"] = (out.float32, out.int8)
    return "; ".join([f"{seconds:.0f} s", *([f"rewritten: {', '.join(out.rewrites)}"] if out.rewrites else []),
                      *_requantized(out.int8)])


def _litert(state: dict, entry, work: Path, *, cpu_limit_s: float) -> str:
    """litert-torch from the model's portable checkpoint, in .venv-litert (refused when not installed)."""
    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert
    from toolkit.models.architectures import card_code
    from toolkit.models.checkpoint import save_checkpoint

    checkpoint = work / "model.pt"
    save_checkpoint(checkpoint, state["model"], entry.architecture, state["arguments"])
    mean, std = _mean_std(state["channels"])
    with card_code(entry.architecture, work):
        out = checkpoint_to_litert(checkpoint, (1, state["channels"], state["side"], state["side"]), work / "litert",
                                   state["x01"], mean=mean, std=std, stem="model", cpu_limit_s=cpu_limit_s,
                                   delegate_rewrites=True)
    state["files"]["litert-torch"] = (out.float32, out.int8)
    return "; ".join(_requantized(out.int8))


def _requantized(int8: Optional[Path]) -> list[str]:
    """As a run does for an XNNPACK target: the INT8 file's too-fine ADD/MUL inputs requantized
    (toolkit.convert.int8_add_scales); the note says so."""
    from toolkit.convert.int8_add_scales import requantize_add_inputs

    change = requantize_add_inputs(int8) if int8 else None
    return [f"INT8 ADD/MUL inputs requantized: {change['requantized']}, partitions {change['partitions_before']} -> "
            f"{change['partitions_after']}"] if change else []


def _tflite_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from toolkit.runtime.tflite import TFLiteRunner

    run = TFLiteRunner(path, threads=1)
    return np.concatenate([run(x[i:i + 1]) for i in range(len(x))])


def _aligned(outputs: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, Optional[dict]]:
    """Outputs in torch's axis order when that is provably what the file computed (runtime.layout)."""
    from toolkit.runtime.layout import match_layout
    from toolkit.runtime.parity import compare_outputs
    from toolkit.runtime.verify import PARITY_RTOL

    return match_layout(outputs, expected_shape=reference.shape,
                        agrees=lambda candidate: compare_outputs(candidate, reference, rtol=PARITY_RTOL)["ok"])


def _parity(state: dict, row: dict) -> str:
    """Whether `row["converter"]`'s FP32 file computes what torch computes (relative error <= 1e-4),
    its output transposed to torch's axis order when that is provably what happened."""
    from toolkit.runtime.parity import compare_outputs, summary
    from toolkit.runtime.verify import PARITY_RTOL

    fp32 = state["files"][row["converter"]][0]
    outputs, layout = _aligned(_tflite_outputs(fp32, state["x"]), state["reference"])
    result = compare_outputs(outputs, state["reference"], rtol=PARITY_RTOL)
    moved = f"; {layout['reason']}" if layout else ""
    if not result["ok"]:
        raise RuntimeError(f"{summary(result)}{moved}")
    state["axes"] = (layout or {}).get("axes")
    return f"{summary(result)}{moved}"


def _int8(state: dict, row: dict) -> str:
    """The deployed converter's INT8 file: integer ops (XNNPACK float islands excepted), no Flex op;
    its error against torch (and top-1 agreement for classifiers)."""
    from toolkit.runtime.tflite_check import XNNPACK_FLOAT_ISLAND_OPS, require_full_integer

    path = state["files"][row["converter"]][1]
    if path is None:
        raise EdgeShrinkError(f"{row['converter']} made no INT8 file")
    require_full_integer(path, "int8", float_ops=XNNPACK_FLOAT_ISLAND_OPS)
    out, ref = _tflite_outputs(path, state["x"]), state["reference"]
    if state.get("axes"):  # the FP32 twin's output order, proven by its parity
        out = np.ascontiguousarray(out.transpose(state["axes"]))
    row["int8_rel_error"] = float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    return f"relative error {row['int8_rel_error']:.3f}, argmax agreement {agree:.0%}"


def _partitions(state: dict, row: dict) -> str:
    from toolkit.runtime.delegate import delegate_report

    fp32, int8 = state["files"][row["converter"]]
    reports = {"fp32": delegate_report(fp32), **({"int8": delegate_report(int8)} if int8 else {})}
    row["partitions"] = {k: r["partitions"] for k, r in reports.items()}
    left = {k: r["undelegated_ops"] for k, r in reports.items() if r["undelegated_ops"]}
    return "; ".join(f"{k} undelegated {v}" for k, v in left.items())


def _litert_installed() -> Optional[str]:
    """None when .venv-litert is there, else why not."""
    from toolkit.convert.checkpoint_to_litert import litert_python

    try:
        litert_python()
    except EdgeShrinkError:
        return "not installed (make setup-litert)"
    return None


def zoo_one(entry, *, size: int, work_dir: Path, target_macs: float = 0.6, trials: int = 60, cnn_trials: int = 600,
            cpu_limit_s: float = 900.0) -> dict:
    """One model through every stage; returns its row (never raises for the model's sake). Each
    converter child gets `cpu_limit_s` CPU seconds (toolkit.core.work_limit)."""
    row: dict = {"model": entry.name, "family": entry.family, "source": entry.source, "task": entry.task,
                 "size": size, "stages": {}, "converter": None, "partitions": {}}
    state: dict = {"channels": entry.channels, "files": {}}
    if not _run(row, "build", lambda: _build(state, row, entry, size=size)):
        for stage in STAGES[1:]:
            _skip(row, stage, "model not built")
        return row
    _run(row, "reparameterize", lambda: _reparameterize(state, row))
    row.setdefault("macs_fused", row["macs_dense"])
    dense = copy.deepcopy(state["model"])
    if not _run(row, "prune", lambda: _prune(state, row, target_macs=target_macs, trials=trials, cnn_trials=cnn_trials)):
        state["model"], row["macs_pruned"] = dense, row["macs_fused"]  # pruning never blocks: go on dense
    row["model_checked"] = "pruned" if row["stages"]["prune"]["status"] == "ok" else "dense"
    _calibration(state)
    _run(row, "onnx", lambda: _onnx(state, work_dir))
    if "onnx" in state:
        _run(row, "onnx2tf", lambda: _onnx2tf(state, work_dir, cpu_limit_s=cpu_limit_s))
    else:
        _skip(row, "onnx2tf", "no ONNX file")
    missing = _litert_installed()
    if missing:
        _skip(row, "litert-torch", missing)
    else:
        _run(row, "litert-torch", lambda: _litert(state, entry, work_dir, cpu_limit_s=cpu_limit_s))
    _finish(state, row)
    return row


VERIFY = ("parity", "int8", "partitions")


def _verify(state: dict, converter: str) -> dict:
    """parity, int8 and partitions of one converter's files, as a row of their own."""
    sub: dict = {"converter": converter, "stages": {}, "partitions": {}}
    own = {**state, "axes": None}
    if _run(sub, "parity", lambda: _parity(own, sub)):
        _run(sub, "int8", lambda: _int8(own, sub))
        _run(sub, "partitions", lambda: _partitions(own, sub))
    else:
        for stage in VERIFY[1:]:
            _skip(sub, stage, "the FP32 file failed parity")
    sub["verified"] = all(sub["stages"][s]["status"] == "ok" for s in VERIFY[:2])
    return sub


def _finish(state: dict, row: dict) -> None:
    """Every converter's files verified (row["converters"]: what the default converter is chosen
    from); of the converters whose files verify, the one whose INT8 file runs in the fewest XNNPACK
    partitions is deployed (the first on a tie: what a run does, runner's `fewer_partitions`), else
    the first whose FP32 file passes parity; the bundle verdict."""
    subs = {converter: _verify(state, converter) for converter in state["files"]}
    row["converters"] = {c: {"verified": s["verified"], "partition_counts": s["partitions"],
                             **{stage: s["stages"][stage] for stage in VERIFY}} for c, s in subs.items()}
    verified = [s for s in subs.values() if s["verified"]]
    chosen = (min(verified, key=_int8_partitions, default=None)  # the first of the fewest INT8 partitions
              or next((s for s in subs.values() if s["stages"]["parity"]["status"] == "ok"), None))
    if chosen is None:
        tried = "; ".join(f"{c}: {s['stages']['parity']['message']}" for c, s in subs.items())
        row["stages"]["parity"] = {"status": "failed", "seconds": 0.0,
                                   "message": f"no FP32 file passes parity: {tried or 'no converter made one'}"}
        for stage in VERIFY[1:]:
            _skip(row, stage, "no FP32 file passed parity")
        row["bundle"] = False
        return
    row["converter"], row["partitions"] = chosen["converter"], chosen["partitions"]
    if "int8_rel_error" in chosen:
        row["int8_rel_error"] = chosen["int8_rel_error"]
    for stage in VERIFY:
        entry = dict(chosen["stages"][stage])
        first = next(iter(subs))
        if stage == "parity" and chosen["converter"] != first:
            why = ("did not verify" if not subs[first]["verified"] else
                   f"ran its INT8 file in {_int8_partitions(subs[first])} XNNPACK partitions, "
                   f"{chosen['converter']} in {_int8_partitions(chosen)}")
            entry["message"] = f"{chosen['converter']}: {entry['message']} (after {first} {why})"
        row["stages"][stage] = entry
    row["bundle"] = chosen["verified"]


def _path_free(value, *, work: Path):
    """`value` (a row) with this machine's folders in its messages replaced: the model's work folder
    by <work>, the current folder by ., the home folder by ~."""
    if isinstance(value, dict):
        return {k: _path_free(v, work=work) for k, v in value.items()}
    if isinstance(value, list):
        return [_path_free(v, work=work) for v in value]
    if not isinstance(value, str):
        return value
    for folder, mark in ((str(work), "<work>"), (str(Path.cwd()), "."), (str(Path.home()), "~")):
        if len(folder) > 1:
            value = value.replace(folder, mark)
    return value


def _ran_with() -> dict:
    """The code and libraries a row was made with: the git commit (with "+changes" when the code
    under toolkit/ differs from it; the zoo's own JSON files do not count) and the converter and
    model libraries' versions."""
    import subprocess
    from importlib import metadata

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "toolkit"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    versions = {}
    for name in ("torch", "timm", "monai", "onnx2tf", "ai-edge-litert"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"commit": (commit or "unknown") + ("+changes" if dirty else ""), **versions}


def _int8_partitions(sub: dict) -> int:
    """A converter's INT8 XNNPACK partitions (a large number when they were not counted)."""
    return int((sub.get("partitions") or {}).get("int8") or 10**6)


def _load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("models", []))
    except (OSError, ValueError):
        raise EdgeShrinkError(f"{path} is not a zoo JSON file; move it away or pick another --out") from None


def run_deploy_zoo(source: str, names: Optional[list[str]] = None, *, size: int = 64, out: str | Path = "dist/zoo",
                   progress: bool = True, redo: bool = False, **limits) -> list[dict]:
    """Run the `source` zoo (toolkit.studies.zoo_sources.entries), skipping models already in
    `out`/zoo_<source>.json unless `redo`; writes the JSON after every model, prints the table last
    and returns every row. `limits`: zoo_one's target_macs, trials, cnn_trials, cpu_limit_s."""
    import tempfile

    import torch

    from toolkit.studies.zoo import _write_json_atomic
    from toolkit.studies.zoo_sources import entries

    path = Path(out) / f"zoo_{source}.json"
    todo = entries(source, names)
    wanted = {e.name for e in todo}
    rows = [r for r in _load_rows(path) if not (redo and r["model"] in wanted)]
    done = {r["model"] for r in rows}
    ran_with = _ran_with()
    for entry in (e for e in todo if e.name not in done):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="edgeshrink-zoo-") as work:
            row = zoo_one(entry, size=size, work_dir=Path(work), **limits)
        row["seconds"] = round(time.monotonic() - started, 1)
        row = _path_free(row, work=Path(work))
        row["ran_with"] = ran_with
        rows.append(row)
        _write_json_atomic(path, {"source": source, "size": size, "threads": torch.get_num_threads(), "models": rows})
        if progress:
            print(format_table([row]).splitlines()[2], flush=True)
    shown = [r for r in rows if r["model"] in wanted]
    print(format_table(shown))
    return shown
