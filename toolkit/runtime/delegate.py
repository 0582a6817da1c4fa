"""What a delegate really takes from a .tflite file, measured by loading it, not assumed.

XNNPACK: LiteRT's interpreter applies it by default; each DELEGATE node it adds replaces one
connected partition of the original ops. The interpreter keeps the replaced nodes in its node list
(`_get_ops_details()`), so a partition's members are found by walking back from the DELEGATE
node's outputs to its inputs. Ops in no partition run in LiteRT's reference/optimised kernels and
split the graph: every undelegated op between two delegated regions costs a partition boundary.

GPU and NNAPI cannot be judged offline: "unknown offline". (LiteRT 2.1.0's bundled model analyzer
has a GPU-compatibility mode, but it passes CUMSUM and FLOOR_MOD, which the GPU delegate refuses,
so its verdict is not reported as a measurement.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

DELEGATES = ("xnnpack", "gpu", "nnapi")


def _interpreter(path: Path, threads: int, delegated: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.AUTO if delegated else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(model_path=str(path), num_threads=threads, experimental_op_resolver_type=kind)
    interp.allocate_tensors()
    return interp


def _partition_members(ops: list[dict]) -> list[set[int]]:
    """Original op indices replaced by each DELEGATE node (walk back from outputs to inputs)."""
    originals = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {int(t): o["index"] for o in originals for t in o["outputs"]}
    by_index = {o["index"]: o for o in originals}
    partitions = []
    for node in (o for o in ops if o["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in node["inputs"]}
        members: set[int] = set()
        stack = [int(t) for t in node["outputs"]]
        while stack:
            t = stack.pop()
            op = producer.get(t)
            if t in boundary or op is None or op in members:
                continue
            members.add(op)
            stack.extend(int(i) for i in by_index[op]["inputs"] if i >= 0)
        partitions.append(members)
    return partitions


def xnnpack_report(tflite_path: str | Path, threads: int = 1) -> dict:
    """Partitions and delegated/undelegated op counts of XNNPACK on this file (as loaded by LiteRT)."""
    interp = _interpreter(Path(tflite_path), threads, delegated=True)
    ops = interp._get_ops_details()
    originals = {o["index"]: o["op_name"] for o in ops if o["op_name"] != "DELEGATE"}
    partitions = _partition_members(ops)
    inside = set().union(*partitions) if partitions else set()
    left = Counter(name for i, name in originals.items() if i not in inside)
    return {"name": "xnnpack", "partitions": len(partitions), "delegated_ops": len(inside),
            "undelegated_ops": dict(sorted(left.items())), "total_ops": len(originals)}


def delegate_report(tflite_path: str | Path, *, delegate: str = "xnnpack", threads: int = 1) -> dict:
    """{name, partitions, delegated_ops, undelegated_ops: {OP_TYPE: count}, total_ops} for `delegate`.
    xnnpack is measured by loading the file with LiteRT; gpu and nnapi are "unknown offline" (they
    need the device). Refuses unknown delegate names and missing files."""
    path = Path(tflite_path)
    if not path.is_file():
        raise EdgeShrinkError(f"no TFLite file at {path}; convert the model first")
    if delegate == "xnnpack":
        return xnnpack_report(path, threads)
    if delegate in ("gpu", "nnapi"):
        return {"name": delegate, "partitions": "unknown offline", "delegated_ops": "unknown offline",
                "undelegated_ops": {}, "total_ops": len(_interpreter(path, 1, False)._get_ops_details())}
    raise EdgeShrinkError(f"unknown delegate {delegate!r}; use one of {', '.join(DELEGATES)}")
