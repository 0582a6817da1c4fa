"""The file matrix as data: one row per conversion edge (source -> format/precision).

The runner walks these rows for each model family (dense, pruned). A row names its steps by keys
of the tables in toolkit.pipeline.edge_steps (converter, check, after, background job), so adding
a format is adding a row and its converter there, not another branch in the runner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Edge:
    """Produces `<stage>-<format>-<precision>` from `source` with `converter`.

    converter: key of edge_steps.CONVERTERS; job: edges with the same job come out of one converter
    call (onnx2tf writes FP32 and INT8 at once); background: that job starts in a worker process at
    export (edge_steps.BACKGROUND) while the parent verifies and prunes; check: key of
    edge_steps.CHECKS, a structural check of the produced file; after: keys of edge_steps.AFTER,
    steps run in turn once the kept file is verified, each of which may replace it (the other
    converter's file, a fallback); stages: families that get this file."""

    format: str
    precision: str
    source: str
    converter: str
    job: str
    background: bool = False
    check: Optional[str] = None
    after: tuple[str, ...] = ()
    recover: Optional[str] = None  # key of edge_steps.RECOVER: what to do when the file fails its check
    stages: tuple[str, ...] = ("dense", "pruned")

    @property
    def key(self) -> str:
        return f"{self.format}-{self.precision}"


EDGES: tuple[Edge, ...] = (
    Edge("onnx", "fp32", source="torch-fp32", converter="torch_to_onnx", job="export"),
    Edge("onnx", "int8", source="onnx-fp32", converter="onnx_to_qdq_int8", job="qdq", stages=("pruned",)),
    Edge("tflite", "fp32", source="onnx-fp32", converter="onnx_to_tflite", job="onnx2tf", background=True,
         check="builtin_ops", after=("parity_retry",)),
    Edge("tflite", "int8", source="onnx-fp32", converter="onnx_to_tflite", job="onnx2tf", background=True,
         check="full_integer", after=("fewer_partitions", "int8_fallback"), recover="int8_other_converter",
         stages=("pruned",)),
)


def edges_for(target, stage: str) -> list[Edge]:
    """The edges a target asks for in one family, in verification order. ONNX FP32 is always made
    (every other file comes from it) and kept only when the target lists the onnx format."""
    wanted = []
    for edge in EDGES:
        if stage not in edge.stages or edge.precision not in target.precisions:
            continue
        if edge.format in target.formats or edge.key == "onnx-fp32":
            wanted.append(edge)
    return wanted


def keeps(target, edge: Edge) -> bool:
    """Whether the produced file stays in the bundle (intermediates are removed)."""
    return edge.format in target.formats
