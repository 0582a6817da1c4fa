"""The manifest as a declared, typed model, and the records stages return to the runner.

A stage returns what it made (files plus a record); the runner alone keeps the records
(`RunRecords`) and `toolkit.pipeline.manifest` assembles `Manifest` from them. Unknown keys are
errors everywhere (a typo or an undeclared section fails the run that writes it, and a bundle
that holds one is refused when read). `Manifest.to_json()` is manifest.json, key for key; the
model also reads like that dict (`bundle.manifest["artifacts"]`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from toolkit.models.artifact import Artifact

MANIFEST_SCHEMA = "edgeshrink-manifest/1"
Json = dict[str, Any]


class Record(BaseModel):
    """Base of every manifest section: unknown keys refused, no coercion, frozen. Fields named in
    OPTIONAL are left out of the JSON while unset (None), as the bundle has always written them."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in self.OPTIONAL and v is None)}

    def to_json(self) -> Json:
        """Plain JSON data (floats as written: a NaN metric stays NaN)."""
        return self.model_dump(mode="python", by_alias=True)


class Baseline(Record):
    """The dense FP32 file every speed-up and metric drop is measured against."""

    file: str
    format: str
    precision: str
    macs: int
    params: int
    size_bytes: int
    metrics: Json
    latency_ms: Json
    fps: Optional[float]


class PruneCache(Record):
    """Where the pruned, fine-tuned model came from (this run, the cache or a published file)."""

    OPTIONAL = ("published", "structured", "budget_met_by_dense")
    key: Optional[str]
    hit: bool
    published: Optional[str] = None
    structured: Optional[bool] = None
    budget_met_by_dense: Optional[bool] = None


class PruningSkipped(Record):
    """Why channel pruning was refused (the run went on with the dense model) and the switch that skips it."""

    reason: str
    switch: str


class Pruning(Record):
    """The pruning that ran: its settings, per-step history and what it kept."""

    config: Json
    history: list[Json]
    macs_fraction: Optional[float]
    cache: Optional[PruneCache]
    excluded: list[Any]
    protected_outputs: list[Any]
    skipped: Optional[PruningSkipped]


class TfliteChoice(Record):
    """Which TFLite converter made a family's files, and why not the chosen one when it fell back."""

    OPTIONAL = ("fallback_reason", "fallback_failed", "int8", "int8_dropped", "int8_partitions")
    primary: str
    used: str
    fallback_reason: Optional[str] = None
    fallback_failed: Optional[str] = None
    # the INT8 file from the other converter: the first one's failed its check, or XNNPACK ran it in more partitions
    int8: Optional["TfliteChoice"] = None
    int8_dropped: Optional[str] = None  # no INT8 file: why (both converters' INT8 files failed their check)
    int8_partitions: Optional[Json] = None  # the first INT8 file kept although split: the other converter's was not fewer


class SpeedupRequest(Record):
    """`--fps 2x`: the factor and the dense FP32 p50 it was measured against."""

    speedup: float
    dense_fp32_p50_ms: float


class LatencyBudget(Record):
    """The latency-budget search (`--fps`) and whether the deployed file met the budget."""

    OPTIONAL = ("request", "deployed", "precision")
    budget_ms: float
    budget_fps: float
    margin: float
    threads: int
    chosen: Optional[Json]
    chosen_probe: Json
    dense: Json
    probes: list[Json]
    calibration: Json
    lut: Json
    seconds: Json
    note: str
    precision: str = "fp32"  # the measured files' precision: int8 in a run (the file it deploys)
    request: Optional[SpeedupRequest] = None
    deployed: Optional[Json] = None


class Sparsify(Record):
    """The unstructured-sparsity step: its cache key, whether it was reused, its record."""

    key: str
    hit: bool
    record: Json


class SourceCheckpoint(Record):
    path: str
    sha256: Optional[str]


class DeviceFile(Record):
    file: str
    sha256: str


class Deploy(Record):
    """What the device runs and how it is reached; `host_estimate` once a device measured the choice."""

    OPTIONAL = ("selection", "host_estimate", "end_to_end")
    artifact: str
    engine: str
    delegate: str
    delegate_variants: list[str]
    threads: int
    fp16: bool
    transport: str
    remote_dir: str
    select: str
    python: str
    benchmark: Json
    budget: Json
    device: Json
    selection: Optional[Json] = None
    host_estimate: Optional[Json] = None
    end_to_end: Optional[Json] = None  # the deployed file through the device script on this host (decode to result)


class Manifest(Record):
    """manifest.json: the record devices read. Sections a run did not make are absent from the JSON.
    Per-family sections (graph_rewrites, onnx2tf_options, tflite_converters, litert_torch,
    onnx_int8_same_on_every_cpu, int8_fallback, int8_requantized) map a family ("dense", "pruned") to its record."""

    OPTIONAL = ("reparameterization", "graph_rewrites", "onnx_rewrites", "latency_budget", "sparsify", "onnx2tf_options",
                "tflite_converters", "litert_torch", "onnx_int8_same_on_every_cpu", "int8_fallback", "int8_requantized", "sparsity",
                "full_slice_benchmarks", "task_extras", "deploy", "device_files")
    schema_id: str = Field(MANIFEST_SCHEMA, alias="schema")
    model: str
    architecture: str
    task: str
    target: str
    labels: list[str]
    input: Json
    data: Json
    primary_metric: str
    baseline: Baseline
    artifacts: list[Artifact]
    pruning: Pruning
    reparameterization: Optional[Json] = None
    graph_rewrites: Optional[dict[str, Any]] = None
    onnx_rewrites: Optional[dict[str, list[str]]] = None  # ONNX ops onnx2tf got in delegate-friendly forms
    latency_budget: Optional[LatencyBudget] = None
    sparsify: Optional[Sparsify] = None
    onnx2tf_options: Optional[dict[str, list[str]]] = None
    tflite_converters: Optional[dict[str, TfliteChoice]] = None
    litert_torch: Optional[dict[str, Json]] = None
    onnx_int8_same_on_every_cpu: Optional[dict[str, Json]] = None
    int8_fallback: Optional[dict[str, Json]] = None
    int8_requantized: Optional[dict[str, Json]] = None  # ADD inputs requantized for XNNPACK (convert.int8_add_scales)
    sparsity: Optional[Json] = None
    full_slice_benchmarks: Optional[Json] = None
    task_extras: Optional[Json] = None
    source_checkpoint: SourceCheckpoint
    stage_seconds: dict[str, float]
    device: Json
    versions: dict[str, str]
    deploy: Optional[Deploy] = None
    device_files: Optional[list[DeviceFile]] = None

    # read like the manifest.json dict it writes: manifest["artifacts"], manifest.get("sparsity")
    def __getitem__(self, key: str):
        return self.to_json()[key]

    def get(self, key: str, default=None):
        return self.to_json().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_json()

    def artifact(self, name: str) -> Optional[Artifact]:
        """The record of one produced file ("pruned-tflite-int8"), or None."""
        return next((a for a in self.artifacts if a.name == name), None)


class FailedManifest(Record):
    """manifest.json of a run that failed parity (its files kept in `<bundle>.failed/`)."""

    schema_id: str = Field(MANIFEST_SCHEMA, alias="schema")
    failed: str
    artifacts: list[Artifact]
    diagnoses: dict[str, Json]


PER_FAMILY = ("graph_rewrites", "onnx_rewrites", "onnx2tf_options", "tflite_converters", "litert_torch", "onnx_int8_same_on_every_cpu",
              "int8_fallback", "int8_requantized")


@dataclass
class RunRecords:
    """The records stages returned, as the runner kept them (the runner is the only writer).
    `per_family[section][stage]` holds the per-family sections named in PER_FAMILY."""

    prune_history: list = field(default_factory=list)
    prune_cache: Optional[dict] = None
    prune_excluded: list = field(default_factory=list)
    prune_protected_outputs: list = field(default_factory=list)
    pruning_skipped: Optional[dict] = None
    macs_fraction: Optional[float] = None
    reparameterization: Optional[dict] = None
    latency_budget: Optional[dict] = None
    sparsify: Optional[dict] = None
    sparsity: Optional[dict] = None
    full_slice_benchmarks: Optional[dict] = None
    task_extras: dict = field(default_factory=dict)
    per_family: dict = field(default_factory=lambda: {name: {} for name in PER_FAMILY})

    def keep(self, stage: str, records: dict) -> None:
        """Store a stage's per-family records ({section: record}) for family `stage`; a None record
        removes the family's entry of that section."""
        unknown = set(records) - set(PER_FAMILY)
        if unknown:
            raise ValueError(f"undeclared manifest sections {sorted(unknown)}; declare them in toolkit.pipeline.records")
        for section, record in records.items():
            if record is None:  # the family's files no longer have what an earlier record said
                self.per_family[section].pop(stage, None)
            else:
                self.per_family[section][stage] = record

    def of_family(self, section: str, stage: str):
        return self.per_family[section].get(stage)
