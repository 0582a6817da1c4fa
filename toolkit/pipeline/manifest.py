"""What a run leaves in its bundle: manifest.json (the record devices read), report.md,
tradeoffs.png, config.json (the plan that ran, replayable) and the device files; and `Bundle`,
the handle the Python API returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from toolkit.models.artifact import write_json
from toolkit.core.errors import EdgeShrinkError
from toolkit.pipeline.records import MANIFEST_SCHEMA, PER_FAMILY, FailedManifest, Manifest

__all__ = ["MANIFEST_SCHEMA", "Bundle", "Manifest", "build_manifest", "write_bundle_files"]


@dataclass(frozen=True)
class Bundle:
    """A finished bundle folder. `path` is the folder, `manifest` its manifest.json as a `Manifest`
    (typed; also read like the JSON: `bundle.manifest["artifacts"]`)."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path) -> "Bundle":
        """The bundle at `path`; a missing, unreadable or undeclared manifest is a one-line error."""
        from pydantic import ValidationError

        path = Path(path)
        try:
            manifest = Manifest.model_validate_json((path / "manifest.json").read_bytes())
        except OSError as exc:
            raise EdgeShrinkError(f"{path} holds no readable manifest.json ({type(exc).__name__}); "
                                  "point at a finished `edgeshrink run` output") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise EdgeShrinkError(f"{path}/manifest.json is not an EdgeShrink manifest ({where}: {err['msg']}); "
                                  "point at a finished `edgeshrink run` output") from None
        return cls(path, manifest)

    def artifact(self, name: str) -> dict:
        """The manifest record of one produced file, e.g. "pruned-tflite-int8"."""
        for a in self.manifest["artifacts"]:
            if a["name"] == name:
                return a
        raise EdgeShrinkError(f"{self.path} has no artifact {name!r}")

    @property
    def deployed(self) -> Path:
        """The file the target runs."""
        return self.path / self.artifact(self.manifest.deploy.artifact)["file"]


def _portable(path: str, plan) -> str:
    """A weights path as recorded: relative to the card's folder when inside it (no machine paths)."""
    p = Path(path).resolve()
    for base in (Path(plan.card.base_dir).resolve(), Path.cwd().resolve()):
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return p.name


def _baseline(arts) -> dict:
    """The dense FP32 TFLite file (else the first dense converted file): what speed-ups are against."""
    b = next((a for a in arts if a.stage == "dense" and a.format == "tflite" and a.precision == "fp32"),
             next(a for a in arts if a.stage == "dense" and a.format != "torch"))
    return {"file": b.file, "format": b.format, "precision": b.precision, "macs": int(b.macs), "params": int(b.params),
            "size_bytes": b.size_bytes, "metrics": b.metrics, "latency_ms": b.latency_ms, "fps": b.fps}


def _pruning(runner) -> dict:
    r = runner.records
    return {"config": runner.pruning_config(), "history": r.prune_history, "macs_fraction": r.macs_fraction,
            "cache": r.prune_cache, "excluded": list(r.prune_excluded), "protected_outputs": list(r.prune_protected_outputs),
            "skipped": r.pruning_skipped}


def manifest_fields(runner) -> dict:
    """The manifest's sections from the plan, the task and the records the runner kept (the deploy
    section and device files are added by write_bundle_files)."""
    from toolkit.core.provenance import library_versions, machine_description

    plan, task, r = runner.plan, runner.task, runner.records
    made = {name: dict(r.per_family[name]) or None for name in PER_FAMILY}
    return {"model": plan.card.name, "architecture": plan.source.architecture, "task": plan.card.task,
            "target": plan.target.name, "labels": list(getattr(task, "labels", None) or plan.card.labels),
            "input": plan.input.to_dict(), "data": _data(task), "primary_metric": task.primary_metric,
            "baseline": _baseline(runner.artifacts), "artifacts": list(runner.artifacts), "pruning": _pruning(runner),
            "reparameterization": r.reparameterization, "latency_budget": r.latency_budget, "sparsify": r.sparsify,
            "sparsity": r.sparsity, "full_slice_benchmarks": r.full_slice_benchmarks, "task_extras": r.task_extras or None,
            **made,
            "source_checkpoint": {"path": _portable(plan.checkpoint, plan), "sha256": plan.checkpoint_sha256},
            "stage_seconds": dict(runner.clock.seconds), "device": {"kind": "host", **machine_description(), "isa": _isa()},
            "versions": library_versions()}


def build_manifest(runner, **sections) -> Manifest:
    """The manifest (validated: an undeclared or mistyped section fails here, naming it)."""
    from pydantic import ValidationError

    try:
        return Manifest.model_validate({**manifest_fields(runner), **sections})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise EdgeShrinkError(f"manifest section {where!r}: {err['msg']} (declare it in toolkit.pipeline.records)") from None


def _budget_check(artifacts, budget: dict, deployed: str, *, end_to_end: Optional[dict] = None) -> dict:
    """Whether the deployed file meets the FPS budget, measured in this run (model-only p50, and end
    to end through the device script when the task offers image files). A speed-up request
    ("2x") must also hold against the dense FP32 file benchmarked in the same pass as the deployed
    one: the budget was fixed from a measurement made minutes earlier, under other load."""
    p50s = {a.name: (a.latency_ms or {}).get("p50") for a in artifacts}
    p50 = p50s.get(deployed)
    check = {"artifact": deployed, "p50_ms": p50, "fps": (1000.0 / p50) if p50 else None,
             "met": None if p50 is None else bool(p50 <= budget["budget_ms"])}
    if end_to_end and end_to_end.get("p50_ms"):
        check["end_to_end_fps"] = end_to_end["fps"]
        check["end_to_end_met"] = bool(end_to_end["p50_ms"] <= budget["budget_ms"])
    speedup = (budget.get("request") or {}).get("speedup")
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


def write_bundle_files(runner) -> Manifest:
    """Write manifest.json, config.json, report.md, tradeoffs.png and the device files into the
    staged folder. Returns the manifest."""
    from toolkit.pipeline.device_files import add_device_files
    from toolkit.pipeline.report.markdown import write_report
    from toolkit.pipeline.report.plot import plot_tradeoffs

    plan, work = runner.plan, runner.work
    selection = _select(runner)
    target = plan.target.model_copy(update={"deploy": plan.target.deploy.model_copy(update={"artifact": selection["artifact"]})})
    deploy, device_files = add_device_files(work, target, build_manifest(runner).to_json())
    sections = {"deploy": {**deploy, "selection": selection}, "device_files": device_files}
    end_to_end = _end_to_end(runner, sections, selection["artifact"])
    if end_to_end:
        sections["deploy"]["end_to_end"] = end_to_end
    if runner.records.latency_budget is not None:
        budget = runner.records.latency_budget
        sections["latency_budget"] = {**budget, "deployed": _budget_check(runner.artifacts, budget, selection["artifact"],
                                                                          end_to_end=end_to_end)}
    with runner.clock("report"):
        plot_tradeoffs(runner.artifacts, runner.task.primary_metric, work / "tradeoffs.png",
                       f"{plan.card.name} on {plan.target.name}")
        write_report(work / "report.md", build_manifest(runner, **sections).to_json(), runner.artifacts,
                     runner.task.primary_metric)
    manifest = build_manifest(runner, **sections)  # stage_seconds now with the report's time
    write_json(work / "config.json", {**plan.to_json(), "versions": manifest.versions})
    write_json(work / "manifest.json", manifest.to_json())
    return manifest


def _data(task) -> dict:
    """The task's data description, with what a trial run (`eval_limit`) left out of the scoring."""
    limited = getattr(task, "eval_limited", None)
    return {**task.data_description(), **({"eval_limited": limited} if limited else {})}


def _end_to_end(runner, sections: dict, artifact: str) -> Optional[dict]:
    """The deployed TFLite file's end-to-end FPS through the bundle's device script on this host
    (toolkit.pipeline.end_to_end); the script reads the manifest, so a first one is written."""
    from toolkit.pipeline.end_to_end import measure_end_to_end

    chosen = next((a for a in runner.artifacts if a.name == artifact), None)
    if not runner.plan.bench or chosen is None or chosen.format != "tflite":
        return None
    write_json(runner.work / "manifest.json", build_manifest(runner, **sections).to_json())
    with runner.clock("end-to-end fps"):
        return measure_end_to_end(runner.work, runner.task, artifact=artifact, threads=runner.threads)


def _select(runner) -> dict:
    """The deploy choice (toolkit.pipeline.choose): measured on this host for local x86 profiles, else an estimate."""
    import platform

    from toolkit.pipeline.choose import choose_deploy

    target = runner.plan.target
    here = target.deploy.transport == "local" and target.device.arch == platform.machine()
    return choose_deploy(runner.artifacts, target=target, metric=runner.task.primary_metric,
                         measured_on="host" if here else "host-estimate")


def keep_failed(runner, bundle: Path, message: str) -> Path:
    """Move the staged files of a run that failed parity to `<bundle>.failed/`, with a report that
    names the first diverging layer (write_failure_report), so the user can inspect them."""
    import os
    import shutil

    failed = bundle.with_name(bundle.name + ".failed")
    write_failure_report(runner, message)
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(runner.work, failed)
    return failed


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
    failed = FailedManifest(failed=message, artifacts=list(runner.artifacts), diagnoses=diagnoses)
    write_json(runner.work / "manifest.json", failed.to_json())


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
