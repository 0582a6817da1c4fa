"""What a run leaves in its bundle: manifest.json (the record devices read), report.md,
tradeoffs.png, config.json (the plan that ran, replayable) and the device files; and `Bundle`,
the handle the Python API returns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from toolkit.models.artifact import write_json
from toolkit.core.errors import EdgeShrinkError

MANIFEST_SCHEMA = "edgeshrink-manifest/1"


@dataclass(frozen=True)
class Bundle:
    """A finished bundle folder. `path` is the folder, `manifest` its manifest.json."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path) -> "Bundle":
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EdgeShrinkError(f"{path} holds no readable manifest.json ({type(exc).__name__}); "
                                  "point at a finished `edgeshrink run` output") from None
        return cls(path, manifest)

    def artifact(self, name: str) -> dict:
        """The manifest record of one produced file, e.g. "pruned-tflite-int8"."""
        for a in self.manifest.get("artifacts", []):
            if a["name"] == name:
                return a
        raise EdgeShrinkError(f"{self.path} has no artifact {name!r}")

    @property
    def deployed(self) -> Path:
        """The file the target runs."""
        return self.path / self.artifact(self.manifest["deploy"]["artifact"])["file"]


def _portable(path: str, plan) -> str:
    """A weights path as recorded: relative to the card's folder when inside it (no machine paths)."""
    p = Path(path).resolve()
    for base in (Path(plan.card.base_dir).resolve(), Path.cwd().resolve()):
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return p.name


def build_manifest(runner) -> dict:
    """The manifest as data (device files and deploy section are added by toolkit.pipeline.device_files)."""
    from toolkit.core.provenance import library_versions, machine_description

    plan, task, arts = runner.plan, runner.task, runner.artifacts
    baseline = next((a for a in arts if a.stage == "dense" and a.format == "tflite" and a.precision == "fp32"),
                    next(a for a in arts if a.stage == "dense" and a.format != "torch"))
    return {
        "schema": MANIFEST_SCHEMA, "model": plan.card.name, "architecture": plan.source.architecture,
        "task": plan.card.task, "target": plan.target.name, "labels": list(getattr(task, "labels", None) or plan.card.labels),
        "input": plan.input.to_dict(), "data": task.data_description(), "primary_metric": task.primary_metric,
        "baseline": {"file": baseline.file, "format": baseline.format, "precision": baseline.precision,
                     "macs": baseline.macs, "params": baseline.params, "size_bytes": baseline.size_bytes,
                     "metrics": baseline.metrics, "latency_ms": baseline.latency_ms, "fps": baseline.fps},
        "artifacts": [a.to_dict() for a in arts],
        "pruning": {"config": (runner.extra.get("latency_budget") or {}).get("chosen") or plan.pruning.model_dump(),
                    "history": runner.extra.get("prune_history", []),
                    "macs_fraction": runner.extra.get("macs_fraction"),
                    "cache": runner.extra.get("prune_cache"),
                    "excluded": runner.extra.get("prune_excluded", []),
                    "protected_outputs": runner.extra.get("prune_protected_outputs", []),
                    "skipped": runner.extra.get("pruning_skipped")},
        **{k: v for k, v in runner.extra.items() if k not in ("prune_history", "prune_cache", "prune_excluded", "macs_fraction",
                                                             "prune_protected_outputs", "pruning_skipped")},
        "source_checkpoint": {"path": _portable(plan.checkpoint, plan), "sha256": plan.checkpoint_sha256},
        "stage_seconds": runner.clock.seconds,
        "device": {"kind": "host", **machine_description(), "isa": _isa()},
        "versions": library_versions(),
    }


def _budget_check(manifest: dict, deployed: str) -> dict:
    """Whether the deployed file meets the FPS budget, measured in this run. A speed-up request
    ("2x") must also hold against the dense FP32 file benchmarked in the same pass as the deployed
    one: the budget was fixed from a measurement made minutes earlier, under other load."""
    p50s = {a["name"]: (a.get("latency_ms") or {}).get("p50") for a in manifest["artifacts"]}
    p50 = p50s.get(deployed)
    budget = manifest["latency_budget"]["budget_ms"]
    check = {"artifact": deployed, "p50_ms": p50, "fps": (1000.0 / p50) if p50 else None,
             "met": None if p50 is None else bool(p50 <= budget)}
    speedup = (manifest["latency_budget"].get("request") or {}).get("speedup")
    dense = p50s.get("dense-tflite-fp32")
    if speedup and p50 and dense:
        check["dense_fp32_p50_ms_same_pass"] = dense
        check["speedup_same_pass"] = dense / p50
        check["met"] = bool(check["met"] and dense / p50 >= speedup)
    return check


def _isa() -> dict:
    """The host CPU's int8-relevant ISA flags (VNNI or not changes onnxruntime's INT8 kernels)."""
    from toolkit.core.cpuinfo import cpu_isa_flags

    return cpu_isa_flags()


def write_bundle_files(runner) -> dict:
    """Write manifest.json, config.json, report.md, tradeoffs.png and the device files into the
    staged folder. Returns the manifest."""
    from toolkit.pipeline.device_files import add_device_files
    from toolkit.pipeline.report.markdown import write_report
    from toolkit.pipeline.report.plot import plot_tradeoffs

    plan, work = runner.plan, runner.work
    manifest = build_manifest(runner)
    selection = _select(runner)
    target = plan.target.model_copy(update={"deploy": plan.target.deploy.model_copy(update={"artifact": selection["artifact"]})})
    add_device_files(work, target, manifest)
    manifest["deploy"]["selection"] = selection
    if "latency_budget_request" in manifest:
        manifest["latency_budget"]["request"] = manifest.pop("latency_budget_request")
    if "latency_budget" in manifest:
        manifest["latency_budget"]["deployed"] = _budget_check(manifest, selection["artifact"])
    with runner.clock("report"):
        plot_tradeoffs(runner.artifacts, runner.task.primary_metric, work / "tradeoffs.png",
                       f"{plan.card.name} on {plan.target.name}")
        write_report(work / "report.md", manifest, runner.artifacts, runner.task.primary_metric)
    manifest["stage_seconds"] = runner.clock.seconds
    write_json(work / "config.json", {**plan.to_json(), "versions": manifest["versions"]})
    write_json(work / "manifest.json", manifest)
    return manifest


def _select(runner) -> dict:
    """The deploy choice (toolkit.pipeline.choose): measured on this host for local x86 profiles, else an estimate."""
    import platform

    from toolkit.pipeline.choose import choose_deploy

    target = runner.plan.target
    here = target.deploy.transport == "local" and target.device.arch == platform.machine()
    return choose_deploy(runner.artifacts, target=target, metric=runner.task.primary_metric,
                         measured_on="host" if here else "host-estimate")


def write_failure_report(runner, message: str) -> None:
    """report.md + manifest.json of a failed run: what failed, per-file parity, and for each failing
    file the first diverging layer with a suggested fix (when the diagnosis can tell)."""
    lines = [f"# {runner.plan.bundle_name}: FAILED", "", message, "", "| file | max rel error | max abs error | ok |",
             "|---|---|---|---|"]
    diagnoses = {}
    for a in runner.artifacts:
        if a.parity:
            lines.append(f"| `{a.file}` | {a.parity['max_rel_error']:.2e} | {a.parity['max_abs_error']:.2e} | {a.parity['ok']} |")
            if not a.parity["ok"]:
                diagnoses[a.name] = _diagnose(runner, a)
    for name, d in diagnoses.items():
        lines += ["", f"## {name}", "", f"First diverging layer: {d.get('layer', 'unknown')}",
                  f"Suggestion: {d.get('suggestion', 'try the other converter or report the model')}"]
    (runner.work / "report.md").write_text("\n".join(lines) + "\n")
    write_json(runner.work / "manifest.json", {"schema": MANIFEST_SCHEMA, "failed": message,
                                               "artifacts": [a.to_dict() for a in runner.artifacts],
                                               "diagnoses": diagnoses})


def _diagnose(runner, artifact) -> dict:
    """First diverging tensor of a failing float file (torch -> ONNX, then ONNX -> TFLite), with the
    converter option or alternative that may fix it; or why it cannot be told."""
    from toolkit.runtime.diagnose import first_divergence

    family = runner.families.get(artifact.stage)
    onnx = runner.work / f"{runner.name}_{artifact.stage}_fp32.onnx"
    if family is None or not onnx.is_file():
        return {"layer": "not diagnosed (the ONNX file of this family is gone)"}
    sample = runner.task.example_batch(1)
    tflite = runner.work / artifact.file if artifact.format == "tflite" else None
    try:
        found = first_divergence(onnx, tflite, family.model, sample)
    except Exception as exc:  # the diagnosis must never hide the parity failure itself
        return {"layer": f"diagnosis failed ({type(exc).__name__}: {str(exc)[:80]})"}
    if not found.get("diverged"):
        return {"layer": "no single layer diverged on the first held-out input", **found}
    where = found.get("module") or found.get("node")
    return {**found, "layer": f"{where} ({found.get('op_type')}, {found.get('stage')}, relative error "
                              f"{found.get('rel_error', float('nan')):.2e})"}
