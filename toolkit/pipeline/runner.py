"""The one runner: plan in, bundle out. It alone times stages, uses caches, runs worker
processes, verifies every produced file and records its lineage.

    bundle = run(plan)          # plan from toolkit.pipeline.plan.make_plan (every check already done)

Work happens in a staged folder moved into place only when complete. A float file that fails
parity is kept, with its report and the first diverging layer, in `<bundle>.failed/`."""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.pipeline import optional_stages
from toolkit.models.artifact import Artifact
from toolkit.pipeline.edge_steps import Made, Outcome
from toolkit.pipeline.edges import Edge, edges_for, keeps
from toolkit.pipeline.records import RunRecords
from toolkit.core.errors import EdgeShrinkError


class StageClock:
    """Wall time per stage name (stages may repeat: times add up)."""

    def __init__(self, progress: bool):
        self.seconds: dict[str, float] = {}
        self.progress = progress

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.progress:
            print(f"[edgeshrink] {name} ...", flush=True)
        t0 = time.perf_counter()
        yield
        self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)


class ParityFailure(EdgeShrinkError):
    """A converted float file does not compute what its torch model computes."""


@dataclass
class Family:
    """One model (dense or pruned) and the files made from it."""

    stage: str
    model: object
    torch_out: np.ndarray
    macs: int
    params: int
    onnx: Optional[Path] = None
    jobs: dict = field(default_factory=dict)  # background conversions started at export, by edge job
    made_by: dict = field(default_factory=dict)  # edge key -> the converter that made the file (when not the edge's own)


class Runner:
    """Builds one bundle's files in `work`; `run()` below drives it. Stages return what they made
    (files and records); the runner alone keeps it: `artifacts`, `outputs` and `records` (from
    which toolkit.pipeline.manifest assembles the manifest)."""

    def __init__(self, plan, *, task, work: Path, jobs: list, clock: StageClock):
        self.plan, self.task, self.work, self.jobs, self.clock = plan, task, work, jobs, clock
        self.target = plan.target
        self.name = plan.card.name
        self.shape = plan.input_shape
        self.threads = plan.target.bench_threads
        self.artifacts: list[Artifact] = []
        self.outputs: dict[str, np.ndarray] = {}
        self.records = RunRecords()
        self.calib01 = self.calib_nchw = None
        self.families: dict[str, Family] = {}

    def artifact(self, name: str) -> Artifact:
        """The record of one file made so far ("pruned-tflite-int8")."""
        return next(a for a in self.artifacts if a.name == name)

    # ---- families -------------------------------------------------------------------------
    def load_dense(self, model=None) -> Family:
        """The dense model (given, or from the plan's weights), saved portably and evaluated."""
        from toolkit.models.checkpoint import save_checkpoint
        from toolkit.prune.prune import count_macs_params
        from toolkit.pipeline.plan import load_dense
        from toolkit.models.reparameterize import reparameterize
        from toolkit.prune.macs import count_macs

        plan = self.plan
        with self.clock("load checkpoint"):
            model = (load_dense(plan) if model is None else copy.deepcopy(model)).eval()
            model, reparam = reparameterize(model, input_shape=self.shape, count_macs=count_macs)  # before pruning/export
            self.records.reparameterization = reparam or None
            save_checkpoint(self.work / f"{self.name}_dense.pt", model, plan.source.architecture,
                            plan.source.arguments, {"source_sha256": plan.checkpoint_sha256})
            macs, params = count_macs_params(model, self.shape)
        with self.clock("verify"):
            ref = self.task.torch_outputs(model)
        self.outputs["dense-torch-fp32"] = ref
        self.record(self.work / f"{self.name}_dense.pt", stage="dense", fmt="torch", precision="fp32",
                    macs=macs, params=params, metrics=self.task.metrics(ref, ref))
        return Family("dense", model, ref, macs, params)

    def pruned(self, dense: Family) -> Family:
        """The pruned, fine-tuned model: from the cache or the card's published checkpoints when
        the exact settings match, else pruned and fine-tuned now."""
        from toolkit.models.checkpoint import save_checkpoint
        from toolkit.prune.prune import count_macs_params

        with self.clock("prune"):
            model, history = self._prune_or_dense(dense) if self.plan.structured else self._unpruned(dense)
        self._split_finetune_time(history)
        if self.plan.sparsity:
            finetune = self.finetuner(dense.model, self.plan.sparsity_finetune_epochs)
            model, self.records.sparsify = optional_stages.sparsify_or_reuse(
                self, model, base_key=self.records.prune_cache["key"], finetune=finetune)
        self.records.prune_history = history
        macs, params = count_macs_params(model, self.shape)  # the same counter as the dense figures
        self.records.macs_fraction = macs / dense.macs
        save_checkpoint(self.work / f"{self.name}_pruned.pt", model, self.plan.source.architecture,
                        self.plan.source.arguments, {"pruning": self.pruning_config(), "history": history})
        with self.clock("verify"):
            out = self.task.torch_outputs(model)
        self.outputs["pruned-torch-fp32"] = out
        self.record(self.work / f"{self.name}_pruned.pt", stage="pruned", fmt="torch", precision="fp32", macs=macs,
                    params=params, parent="dense-torch-fp32", metrics=self.task.metrics(out, dense.torch_out))
        return Family("pruned", model, out, macs, params)

    def pruning_config(self) -> dict:
        """The pruning settings that ran: the latency-budget search's choice, else the plan's."""
        return (self.records.latency_budget or {}).get("chosen") or self.plan.pruning.model_dump()

    def _split_finetune_time(self, history: list) -> None:
        """Fine-tuning inside the pruning loop is timed as its own stage (none when the model was reused)."""
        finetune_seconds = sum((h.get("finetune") or {}).get("seconds", 0.0) for h in history[1:])
        if self.records.prune_cache["hit"]:
            finetune_seconds = 0.0  # the reused model's fine-tuning happened in an earlier run
        self.clock.seconds["prune"] = round(self.clock.seconds["prune"] - finetune_seconds, 2)
        self.clock.add("fine-tune", finetune_seconds)

    def _prune_or_dense(self, dense: Family):
        """Pruning never blocks the bundle: when it is refused (unsafe, untraceable, over its work
        budget, an unreachable target), the run goes on with the dense model and says why."""
        from toolkit.prune.prune import UnreachableTarget
        from toolkit.prune.safety import PruningRefused

        try:
            return self._prune_or_reuse(dense)
        except UnreachableTarget as exc:  # pruned as far as the model allows, and the report says so
            reason = str(exc)
            try:
                return optional_stages.pruned_as_far_as_allowed(self, dense, exc)
            except PruningRefused as again:
                reason = f"{reason}; pruning to {exc.reached:.0%} was refused too: {again}"
        except PruningRefused as exc:
            reason = str(exc)
        if self.plan.progress:
            print(f"[edgeshrink] pruning skipped, going on with the dense model: {reason}", flush=True)
        model, history = self._unpruned(dense)
        self.records.pruning_skipped = {"reason": reason,
                                        "switch": "--no-structured (API structured=False) skips channel pruning"}
        return model, history

    def _prune_or_reuse(self, dense: Family, *, target_macs: Optional[float] = None):
        from toolkit.prune.cache import find_pruned, prune_cache_key, store_pruned
        from toolkit.prune.prune import prune

        plan, dense_model = self.plan, dense.model
        cfg = plan.pruning if target_macs is None else plan.pruning.model_copy(update={"target_macs": target_macs})
        if plan.fps and target_macs is None:
            cfg, self.records.latency_budget = optional_stages.budget_config(self, dense_model)
        if cfg is None:  # the dense model already meets the latency budget
            model, history = self._unpruned(dense)
            self.records.prune_cache = {**self.records.prune_cache, "budget_met_by_dense": True}
            return model, history
        data = getattr(self.task, "key_description", None) or self.task.data_description()  # the full held-out set's
        key = prune_cache_key(plan.checkpoint_sha256, cfg, plan.input, data,
                              seed=plan.seed, never_prune=plan.card.never_prune)
        found = find_pruned(plan.card, key, source=plan.source) if plan.cache else None
        if found is not None:
            model, history, published = found
            self.records.prune_cache = {"key": key, "hit": True, **({"published": published} if published else {})}
            return model, history
        grad = self.task.grad_batches() if cfg.importance == "taylor" else None
        import torch

        example = torch.from_numpy(np.ascontiguousarray(self.task.example_batch(2), dtype=np.float32))
        result = prune(copy.deepcopy(dense_model), example_input=example, cfg=cfg, never_prune=plan.card.never_prune,
                       finetune=self.finetuner(dense_model), grad_batches=grad, progress=plan.progress)
        self.records.prune_excluded, self.records.prune_protected_outputs = result.excluded, result.protected_outputs
        if plan.cache:
            store_pruned(key, result.model, plan.source, result.history)
        self.records.prune_cache = {"key": key, "hit": False}
        return result.model, result.history

    def _unpruned(self, dense: Family):
        """No channel pruning (plan.structured False, or the dense model meets the FPS budget)."""
        self.records.prune_cache = {"key": None, "hit": False, "structured": False}
        return copy.deepcopy(dense.model), [{"step": 0, "macs": dense.macs, "params": dense.params, "macs_fraction": 1.0}]

    def finetuner(self, dense_model, epochs: Optional[int] = None):
        """finetune(model, step) for the pruning loops: the task's fine-tuning with distillation."""
        cfg, teacher = self.plan.pruning, copy.deepcopy(dense_model).eval()
        epochs = cfg.finetune_epochs if epochs is None else epochs

        def finetune(model, step: int) -> dict:
            t0 = time.perf_counter()
            result = self.task.finetune(model, epochs=epochs, lr=cfg.finetune_lr, distill=cfg.distill,
                                        teacher=teacher, seed=self.plan.seed + step, progress=self.plan.progress)
            return {**result, "seconds": round(time.perf_counter() - t0, 2)}

        return finetune

    # ---- conversion edges (toolkit.pipeline.edges rows, their steps in toolkit.pipeline.edge_steps) ----
    def calibration(self) -> None:
        """Real training images for INT8 calibration: NHWC in [0, 1] (onnx2tf) and normalised NCHW (ORT)."""
        with self.clock("calibration data"):
            x01 = self.task.calibration_nhwc(self.plan.calibration_size, self.plan.seed)
            if len(x01) == 0:
                raise EdgeShrinkError("calibration set is empty: the training split yielded no images; check the data folder")
            spec = self.plan.input
            nchw = ((x01 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)).transpose(0, 3, 1, 2)
            self.calib01, self.calib_nchw = x01, np.ascontiguousarray(nchw, dtype=np.float32)

    def export(self, family: Family) -> None:
        """ONNX export now; the background jobs of the family's edges (onnx2tf) start in worker processes."""
        from toolkit.convert.torch_to_onnx import torch_to_onnx
        from toolkit.pipeline.edge_steps import BACKGROUND

        with self.clock("export onnx"):
            model = self._delegate_friendly(family)
            family.onnx = torch_to_onnx(model, self.shape, self.work / f"{self.name}_{family.stage}_fp32.onnx")
        background = [e for e in edges_for(self.target, family.stage) if e.background]
        for job in dict.fromkeys(e.job for e in background):
            started = BACKGROUND[job](self, family, edges=[e for e in background if e.job == job])
            if started is not None:
                self.jobs.append(started)
                family.jobs[job] = started

    def _delegate_friendly(self, family: Family):
        """For XNNPACK targets, a copy with hard-sigmoid/hard-swish in forms XNNPACK runs (ReLU6, ADD,
        MUL): otherwise they split the TFLite file into many partitions. Verified like every file."""
        if self.target.runtime.delegate != "xnnpack":
            return family.model
        from toolkit.convert.graph_rewrite import rewrite_for_delegates

        model, changes = rewrite_for_delegates(copy.deepcopy(family.model))
        self.records.keep(family.stage, {"graph_rewrites": changes})
        return model

    def finish(self, family: Family) -> None:
        """Produce, check and verify every remaining file of one family, in edge order. An edge's
        after-step (the parity retry with the other TFLite converter, the INT8 fallback) may
        replace the file just verified."""
        from toolkit.pipeline.edge_steps import AFTER, CONVERTERS

        made: dict[str, Path] = {}
        for edge in edges_for(self.target, family.stage):
            if edge.key not in made:  # one converter call may make several edges' files
                job = family.jobs.pop(edge.job, None)
                self._keep(family, CONVERTERS[edge.converter](self, family, edge=edge, made=made, job=job), made)
            if not self._checked(edge, family, made):
                continue
            if keeps(self.target, edge):
                self._verify_and_record(edge, family, made[edge.key])
                for step in edge.after:
                    self._after(edge, family, made, AFTER[step](self, family, edge=edge, made=made))
        if "onnx" not in self.target.formats:
            family.onnx.unlink()

    def _keep(self, family: Family, result: Made, made: dict) -> None:
        """Keep what a step made: its files, which converter made them, its records."""
        made.update(result.files)
        if result.converter:
            family.made_by.update(dict.fromkeys(result.files, result.converter))
        self.records.keep(family.stage, result.records)

    def _after(self, edge: Edge, family: Family, made: dict, outcome: Optional[Outcome]) -> None:
        if outcome is None:
            return
        self._keep(family, Made(outcome.files, outcome.records, outcome.converter), made)
        if edge.key in outcome.files:
            self.replace(edge, family, made[edge.key], checked=outcome.checked, verified=outcome.verified)

    def replace(self, edge: Edge, family: Family, path: Path, *, checked: bool, verified=None) -> None:
        """A file made again (a fallback): the old file's record and outputs give way to the new
        file's, checked (unless its step did) and verified like any file (unless its step did:
        `verified`, what verify_file returned)."""
        name = f"{family.stage}-{edge.key}"
        self.artifacts = [a for a in self.artifacts if a.name != name]
        self.outputs.pop(name, None)
        if not checked:
            self._check(edge, path)
        self._verify_and_record(edge, family, path, verified=verified)

    def _checked(self, edge: Edge, family: Family, made: dict) -> bool:
        """Check the edge's file. One that fails is recovered by the edge's RECOVER step when it has
        one (a TFLite INT8 file: the other converter's, or none with the reason); False when the
        file was dropped."""
        from toolkit.pipeline.edge_steps import RECOVER

        try:
            self._check(edge, made[edge.key])
            return True
        except EdgeShrinkError as exc:
            if not edge.recover:
                raise
            outcome = RECOVER[edge.recover](self, family, edge=edge, made=made, error=exc,
                                            check=functools.partial(self._check, edge))
        self._keep(family, Made(outcome.files, outcome.records, outcome.converter), made)
        return edge.key in made

    def _check(self, edge: Edge, path: Path) -> None:
        from toolkit.pipeline.edge_steps import CHECKS

        if edge.check:
            CHECKS[edge.check](self, path)

    def verify_file(self, edge: Edge, family: Family, path: Path) -> tuple:
        """(outputs, metrics, parity) of one of the edge's files on the run's evaluation data."""
        from toolkit.runtime.verify import verify

        source = family.torch_out if edge.precision == "fp32" else None
        with self.clock("verify"):
            return verify(path, edge.format, edge.precision, self.task, reference=self.outputs["dense-torch-fp32"],
                          source_torch_outputs=source, threads=self.threads, progress=self.plan.progress,
                          desc=f"{family.stage} {edge.format} {edge.precision}")

    def _verify_and_record(self, edge: Edge, family: Family, path: Path, *, verified=None) -> None:
        name = f"{family.stage}-{edge.key}"
        outputs, metrics, parity = verified or self.verify_file(edge, family, path)
        self.outputs[name] = outputs
        delegate = self.delegate_report(path) if edge.format == "tflite" else {}
        self.record(path, stage=family.stage, fmt=edge.format, precision=edge.precision, macs=family.macs,
                    params=family.params, parent=f"{family.stage}-{edge.source}", metrics=metrics, parity=parity,
                    converter=family.made_by.get(edge.key, edge.converter), delegate=delegate)

    def delegate_report(self, path: Path) -> dict:
        """Partitions and the ops left outside the target's delegate (and its variants)."""
        from toolkit.runtime.delegate import delegate_report

        runtime = self.target.runtime
        if runtime.delegate not in ("xnnpack", "gpu", "nnapi"):
            return {}
        report = delegate_report(path, delegate=runtime.delegate, threads=self.threads)
        variants = {v: delegate_report(path, delegate=v) for v in runtime.delegate_variants if v != runtime.delegate}
        return {**report, **({"variants": variants} if variants else {})}

    # ---- records --------------------------------------------------------------------------
    def record(self, path: Path, *, stage: str, fmt: str, precision: str, macs: int, params: int,
               parent: Optional[str] = None, metrics: Optional[dict] = None, parity: Optional[dict] = None,
               converter: Optional[str] = None, delegate: Optional[dict] = None) -> Artifact:
        art = Artifact.of_file(self.work, path, name=f"{stage}-{fmt}-{precision}", stage=stage, format=fmt,
                               precision=precision, macs=macs, params=params, parent=parent, metrics=metrics or {},
                               parity=parity or {}, converter=converter, delegate=delegate or {})
        self.artifacts.append(art)
        return art

    def parity_gate(self) -> None:
        """Every float file must compute what its torch model computes (relative to the output scale)."""
        from toolkit.runtime.verify import PARITY_RTOL

        bad = [a for a in self.artifacts if a.parity and not a.parity["ok"]]
        if bad:
            worst = max(bad, key=lambda a: a.parity["max_rel_error"])
            raise ParityFailure(f"numerical parity failed for {', '.join(a.name for a in bad)} (relative error "
                                f"{worst.parity['max_rel_error']:.2e} > {PARITY_RTOL:.0e} of the output "
                                "scale vs torch); the converter changed the model")

    def build(self, dense_model=None) -> None:
        """Every file the target asks for: dense family, pruning, pruned family; then the gates."""
        dense = self.families["dense"] = self.load_dense(dense_model)
        self.calibration()
        self.export(dense)
        pruned = self.families["pruned"] = self.pruned(dense)
        self.export(pruned)
        self.finish(dense)
        self.finish(pruned)
        self.artifacts.sort(key=lambda a: a.stage != "dense")  # stable: dense rows first, each family in edge order
        self.parity_gate()
        if self.plan.bench:
            from toolkit.pipeline.benchmarks import benchmark_artifacts

            self.artifacts = benchmark_artifacts(self)
        if self.plan.sparsity:
            self.records.sparsity = optional_stages.sparsity_report(self, self.records.sparsify)
        declared = self.task.extra_sizes()
        if declared and self.plan.bench:
            from toolkit.pipeline.full_size import full_size_benchmarks

            self.records.full_slice_benchmarks = full_size_benchmarks(self, self.task, declared)
        self.records.task_extras = self.task.extras(self)


@contextlib.contextmanager
def _background_jobs():
    """The run's background conversions; on any error or interrupt the children are killed at once."""
    jobs: list = []
    try:
        yield jobs
    finally:
        for job in jobs:
            job.kill()


@contextlib.contextmanager
def _card_dir_for_workers(card):
    """Worker processes (benchmarks, the litert-torch child) rebuild checkpoints whose architecture
    may be `file.py:factory` relative to the card: they accept exactly the card's architecture and
    find it through EDGESHRINK_CARD_ARCHITECTURE / EDGESHRINK_CARD_DIR. The card's code calling
    sys.exit() or os._exit() during the run is a one-line error, not a silent exit 0."""
    from toolkit.models.architectures import card_code

    with card_code(card.architecture, card.base_dir):
        yield


def run(plan, *, model=None):
    """Run a plan; returns the `Bundle`. `model` is the dense nn.Module itself (Python API) instead
    of the plan's weights file. On any error nothing is left in the output folder, except a
    parity failure's files in `<bundle>.failed/`."""
    from toolkit.core.atomic import staged_folder
    from toolkit.pipeline.manifest import Bundle, keep_failed, write_bundle_files
    from toolkit.tasks.registry import load_task
    from toolkit.train.loop import seed_everything

    import torch

    clock = StageClock(plan.progress)
    with clock("load data"):
        task = load_task(plan.card, plan.input, plan.data, plan.progress)
    torch.set_num_threads(max(1, plan.train_threads or plan.target.bench_threads))
    seed_everything(plan.seed)
    with staged_folder(plan.bundle_path) as work, _background_jobs() as jobs, _card_dir_for_workers(plan.card):
        runner = Runner(plan, task=task, work=work, jobs=jobs, clock=clock)
        try:
            runner.build(model)
        except ParityFailure as exc:
            failed = keep_failed(runner, plan.bundle_path, str(exc))
            raise EdgeShrinkError(f"{exc}; files and report kept in {failed}") from None
        write_bundle_files(runner)
    return Bundle.open(plan.bundle_path)
