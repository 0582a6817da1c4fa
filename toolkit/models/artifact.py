"""The record that flows through the pipeline and lands in manifest.json."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from toolkit.models.checkpoint import sha256_file


@dataclass(frozen=True)
class Artifact:
    """One produced model file and everything measured about it."""

    __pydantic_config__ = {"extra": "forbid"}  # a manifest's artifact with an unknown key is refused when read

    name: str               # e.g. "pruned-tflite-int8"
    stage: str              # dense | pruned
    format: str             # torch | onnx | tflite
    precision: str          # fp32 | int8
    file: str               # path relative to the bundle folder
    sha256: str = ""
    size_bytes: int = 0
    macs: int = 0
    params: int = 0
    parent: Optional[str] = None
    metrics: dict = field(default_factory=dict)
    parity: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    fps: Optional[float] = None
    peak_rss_mb: Optional[float] = None
    seconds: dict = field(default_factory=dict)
    converter: Optional[str] = None  # the converter that made the file (None: saved from torch)
    delegate: dict = field(default_factory=dict)  # {name, partitions, undelegated_ops} for TFLite files
    bench_error: Optional[str] = None  # why the host benchmark has no figure (e.g. timed out)
    p50_runs: list = field(default_factory=list)  # p50 of every benchmark process (latency_ms is the median one's)

    @classmethod
    def of_file(cls, bundle: Path, path: Path, **fields) -> "Artifact":
        rel = Path(path).resolve().relative_to(Path(bundle).resolve())
        return cls(file=str(rel), sha256=sha256_file(path), size_bytes=os.path.getsize(path), **fields)

    def with_(self, **changes) -> "Artifact":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
