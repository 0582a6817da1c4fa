"""Device profiles: `targets/<name>.yaml`, validated by a strict schema (unknown keys are errors)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from toolkit.core.errors import EdgeShrinkError, unknown_name
from toolkit.core.paths import REPO_ROOT, targets_dir
from toolkit.config.pruning import PruneConfig
from toolkit.core.schema import Strict, load_yaml, validate_data


class Device(Strict):
    soc: str
    arch: Literal["x86_64", "aarch64", "armv7l"]
    cores: int = Field(ge=1, le=1024)
    memory_gb: float = Field(gt=0, le=65536)
    accelerator: Optional[str] = None


class Runtime(Strict):
    engine: Literal["tflite", "onnxruntime", "tensorrt"]
    delegate: Literal["none", "xnnpack", "gpu", "nnapi", "cuda", "tensorrt"] = "none"
    delegate_variants: list[Literal["xnnpack", "gpu", "nnapi"]] = []  # extra delegates the device benchmark also runs
    threads: int = Field(default=2, ge=1, le=1024)
    fp16: bool = False
    python: str = "python3"  # interpreter on the device


class Quantization(Strict):
    calibration_size: int = Field(default=256, le=1_000_000)
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    io_dtype: Literal["int8", "uint8"] = "int8"
    # ONNX QDQ integer types: s8s7 (7-bit weights: no int16 saturation on CPUs without VNNI, same
    # result everywhere), u8u8 (fully fused on onnxruntime CPU, fastest there), s8s8 (the old default)
    onnx_scheme: Literal["s8s7", "s8s8", "u8u8"] = "s8s7"
    # When the INT8 TFLite file misses the deploy gate: re-quantize with more calibration images,
    # then protect the most sensitive layers (16-bit activations, then float; toolkit.quantize.int8_fallback)
    fallback: bool = True
    fallback_float: bool = True  # false: only integer protections (16-bit activations)
    fallback_max_layers: int = Field(default=16, ge=1, le=4096)

    @field_validator("calibration_size")
    @classmethod
    def _calib(cls, v):
        if v < 1:
            raise ValueError("calibration set is empty; use >= 1 (>= 200 real images recommended)")
        return v


# The TFLite converters by name: a profile's conversion.tflite, a card's and a run's tflite_converter
TfliteConverter = Literal["onnx2tf", "litert-torch"]


class Conversion(Strict):
    """Which converter makes the TFLite files (toolkit.pipeline.tflite_converters), and whether the other
    one is tried when it fails or its FP32 file fails parity."""

    tflite: TfliteConverter = "onnx2tf"
    fallback: bool = True


class Benchmark(Strict):
    warmup: int = Field(default=10, ge=0, le=100_000)
    min_runs: int = Field(default=50, ge=1, le=1_000_000)
    min_seconds: float = Field(default=2.0, ge=0, le=3600)
    threads: Optional[int] = Field(default=None, ge=1, le=1024)
    # benchmark processes per file, files interleaved in each round; a file keeps its median-p50
    # process (host latency on a small VM can be bimodal: measured 0.45 or 1.05 ms for one file)
    repeats: int = Field(default=3, ge=1, le=100)


class Budget(Strict):
    target_fps: float = Field(gt=0, le=1e6)
    max_model_mb: Optional[float] = Field(default=None, gt=0, le=1e6)


def remote_dir_problem(value) -> Optional[str]:
    """Why `value` cannot be a device's deploy.remote_dir (None when it can): it must name a dedicated
    folder, `~/<folder>` or an absolute path at least two levels below `/`, with no `.` / `..`
    components; never `/`, the home folder itself or a folder above it (a bundle is mirrored, with
    deletions, into `<remote_dir>/<bundle name>`)."""
    if not isinstance(value, str) or not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "is empty or holds control characters"
    if value != "~" and not value.startswith(("~/", "/")):
        return "must start with ~/ or / (~user and relative folders are not allowed)"
    parts = [p for p in value.split("/")[1:] if p]
    if any(p in (".", "..") for p in parts):
        return "contains a '.' or '..' component"
    if len(parts) < (1 if value.startswith("~") else 2):
        return "is /, the home folder itself or a top-level folder, not a dedicated folder"
    return None


class Deploy(Strict):
    transport: Literal["local", "ssh", "adb"]
    remote_dir: str = "~/edgeshrink"  # a dedicated folder on the device; bundles go to <remote_dir>/<bundle name>
    artifact: str = "pruned-tflite-int8"  # the preferred file (select: fixed deploys exactly this one)
    select: Literal["fastest", "fixed"] = "fastest"  # fastest: the fastest file that passes the gate

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir(cls, v):
        problem = remote_dir_problem(v)
        if problem:
            raise ValueError(f"{problem}; use a dedicated folder such as ~/edgeshrink or /opt/edgeshrink")
        return v


class Gate(Strict):
    """What a file must show to be deployed."""

    max_metric_drop: float = 0.015  # primary metric (top1 / dice) at most this far below the dense FP32 file
    require_full_delegation: bool = False  # every op on the target's delegate (one partition)

    @field_validator("max_metric_drop")
    @classmethod
    def _drop(cls, v):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"must be between 0 and 1, got {v}")
        return v


class TargetProfile(Strict):
    name: str
    description: str
    device: Device
    runtime: Runtime
    formats: list[Literal["onnx", "tflite"]]
    precisions: list[Literal["fp32", "int8"]]
    input_size: Optional[tuple[int, int]] = None
    pruning: PruneConfig = PruneConfig()
    quantization: Quantization = Quantization()
    conversion: Conversion = Conversion()
    benchmark: Benchmark = Benchmark()
    budget: Budget
    deploy: Deploy
    gate: Gate = Gate()

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, v):
        if v is not None and (min(v) < 8 or max(v) > 4096):
            raise ValueError(f"must be two sizes between 8 and 4096 pixels, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.runtime.engine == "tflite" and "tflite" not in self.formats:
            raise ValueError("runtime.engine is tflite but formats does not include tflite")
        if self.runtime.engine in ("onnxruntime", "tensorrt") and "onnx" not in self.formats:
            raise ValueError(f"runtime.engine is {self.runtime.engine} but formats does not include onnx")
        if self.runtime.engine == "tensorrt" and self.device.accelerator is None:
            raise ValueError("runtime.engine tensorrt needs device.accelerator (an NVIDIA GPU)")
        if self.runtime.delegate in ("cuda", "tensorrt") and self.runtime.engine == "tflite":
            raise ValueError(f"delegate {self.runtime.delegate} is not a TFLite delegate; use xnnpack, gpu or nnapi")
        if self.runtime.delegate in ("gpu", "nnapi", "xnnpack") and self.runtime.engine != "tflite":
            raise ValueError(f"delegate {self.runtime.delegate} is a TFLite delegate but runtime.engine is {self.runtime.engine}")
        p = self.pruning
        if p.finetune_epochs < 0 or p.finetune_lr <= 0 or not 0.0 <= p.distill <= 1.0:
            raise ValueError("pruning needs finetune_epochs >= 0, finetune_lr > 0 and distill in [0, 1], got "
                             f"{p.finetune_epochs}, {p.finetune_lr}, {p.distill}")
        if self.runtime.threads > self.device.cores:
            raise ValueError(f"runtime.threads={self.runtime.threads} exceeds device.cores={self.device.cores}")
        if self.runtime.delegate_variants and self.runtime.engine != "tflite":
            raise ValueError("runtime.delegate_variants are TFLite delegates; the engine is not tflite")
        fmt = self.deploy.artifact.split("-")[1:2]
        if fmt and fmt[0] not in self.formats:
            raise ValueError(f"deploy.artifact {self.deploy.artifact} needs format {fmt[0]}, which formats does not include")
        prec = self.deploy.artifact.split("-")[-1]
        if prec in ("fp32", "int8") and prec not in self.precisions:
            raise ValueError(f"deploy.artifact {self.deploy.artifact} needs precision {prec}, which precisions does not include")
        if self.deploy.transport == "adb" and self.device.arch == "x86_64":
            raise ValueError("deploy.transport adb is for Android devices (arm), not an x86_64 device")
        return self

    @property
    def bench_threads(self) -> int:
        return self.benchmark.threads or self.runtime.threads


def list_targets() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.yaml"))


def validate_target_file(path) -> TargetProfile:
    """Validate one profile file; the file name (stem) must equal its `name`."""
    from pathlib import Path

    path = Path(path)
    try:
        shown = str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        shown = str(path)
    profile = validate_data(TargetProfile, load_yaml(path, "target profile"), shown)
    if profile.name != path.stem:
        raise EdgeShrinkError(f"{shown}: profile says name '{profile.name}' but the file is named '{path.stem}'; make them match")
    return profile


# Short names people type for a device family -> the profile they get (said on stderr when used).
TARGET_ALIASES = {"jetson": "jetson-orin-nano", "pi": "rpi5", "raspberry-pi": "rpi5"}


def resolve_target_alias(name: str, *, say=None) -> str:
    """The profile name behind `name`: an alias (`jetson`) names the current profile of its family,
    unless a profile file of that very name exists. `say(message)` is told when an alias was used."""
    if name in TARGET_ALIASES and not (targets_dir() / f"{name}.yaml").is_file():
        actual = TARGET_ALIASES[name]
        if say is not None:
            say(f"target '{name}' is an alias of the '{actual}' profile (targets/{actual}.yaml)")
        return actual
    return name


def load_target(name: str) -> TargetProfile:
    """Read targets/<name>.yaml (or the profile an alias such as `jetson` names, said on stderr);
    unknown names get "did you mean"; a name with a path in it is refused (`../elsewhere/x` must
    not load a file outside targets/)."""
    import sys

    from toolkit.config.cards import SAFE_NAME

    name = resolve_target_alias(name, say=lambda m: print(f"[edgeshrink] {m}", file=sys.stderr, flush=True))
    path = targets_dir() / f"{name}.yaml"
    if not SAFE_NAME.match(name or "") or ".." in name or not path.is_file():
        raise unknown_name("target", name, list_targets())
    return validate_target_file(path)
