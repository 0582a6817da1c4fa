"""The deploy zoo's table (toolkit.studies.deploy_zoo): one line per model, the reasons below it,
and the figures the zoo is judged by (bundles, pruned models, fully delegated INT8 files)."""

from __future__ import annotations

STAGES = ("build", "reparameterize", "prune", "onnx", "onnx2tf", "litert-torch", "parity", "int8", "partitions")
_SHORT = {"ok": "ok", "refused": "ref", "failed": "FAIL", "skipped": "-"}
_HEADS = ("build", "reparam", "prune", "onnx", "onnx2tf", "litert", "parity", "int8", "parts")


def _macs(row: dict) -> str:
    values = [row.get(k) for k in ("macs_dense", "macs_fused", "macs_pruned")]
    return "->".join(f"{v / 1e6:.1f}" for v in values if v) or "-"


def _line(row: dict) -> str:
    stages = row["stages"]
    cells = " ".join(f"{_SHORT.get(stages.get(s, {}).get('status'), '?'):<{len(h)}}" for s, h in zip(STAGES, _HEADS))
    parts = row.get("partitions") or {}
    parts_text = f"{parts.get('fp32', '-')}/{parts.get('int8', '-')}"
    return (f"{row['model'][:30]:<30} {row.get('size', 0):>3} {_macs(row):>22} {cells} {parts_text:>5} "
            f"{(row.get('converter') or '-'):<12} {'yes' if row.get('bundle') else 'no':<6} {row.get('seconds', 0):>6.0f}")


def reasons(rows: list[dict]) -> list[str]:
    """One line per refused or failed stage (and each skip that is not a consequence of one)."""
    lines = []
    for row in rows:
        for stage in STAGES:
            entry = row["stages"].get(stage) or {}
            if entry.get("status") in ("refused", "failed"):
                message = " ".join(str(entry.get("message", "")).split())
                lines.append(f"  {row['model']}: {stage} {entry['status']}: {message[:220]}")
    return lines


def figures(rows: list[dict]) -> dict:
    """Counts the zoo is judged by: models, verified bundles, pruned, INT8 files in one partition."""
    bundles = [r for r in rows if r.get("bundle")]
    one = [r for r in bundles if (r.get("partitions") or {}).get("int8") == 1]
    return {"models": len(rows), "bundles": len(bundles), "pruned": sum(r.get("model_checked") == "pruned" for r in rows),
            "reparameterised": sum("MACs" in str(r["stages"].get("reparameterize", {}).get("message", "")) for r in rows),
            "int8_one_partition": len(one), "by_converter": by_converter(rows)}


def by_converter(rows: list[dict]) -> dict:
    """Per converter, over the rows that verified every converter's files (row["converters"]):
    files made, FP32 files passing parity, verified bundles, INT8 files in one XNNPACK partition,
    and bundles only that converter verified. The default converter is chosen from these."""
    counts: dict = {}
    for row in rows:
        tried = row.get("converters") or {}
        for name, record in tried.items():
            c = counts.setdefault(name, {"made": 0, "parity": 0, "verified": 0, "int8_one_partition": 0, "only_one": 0})
            c["made"] += 1
            c["parity"] += record["parity"]["status"] == "ok"
            c["verified"] += bool(record["verified"])
            parts = record.get("partition_counts") or (row.get("partitions") if name == row.get("converter") else {})
            c["int8_one_partition"] += bool(record["verified"]) and (parts or {}).get("int8") == 1
            c["only_one"] += bool(record["verified"]) and sum(bool(o["verified"]) for o in tried.values()) == 1
    return counts


def format_table(rows: list[dict]) -> str:
    """The table: a header, one line per model, the reasons, the figures."""
    head = (f"{'model':<30} {'px':>3} {'MMACs dense->fused->pruned':>22} " + " ".join(_HEADS) +
            f" {'parts':>5} {'converter':<12} {'bundle':<6} {'s':>6}")
    lines = [head, "-" * len(head), *(_line(r) for r in rows)]
    why = reasons(rows)
    if why:
        lines += ["refused / failed:", *why]
    f = figures(rows)
    if rows:
        share = f"{f['bundles'] / f['models']:.0%}"
        delegated = f"{f['int8_one_partition'] / f['bundles']:.0%}" if f["bundles"] else "-"
        lines.append(f"{f['models']} models: {f['bundles']} verified bundles ({share}), {f['pruned']} pruned, "
                     f"{f['reparameterised']} reparameterised, INT8 in one XNNPACK partition: {f['int8_one_partition']} "
                     f"of the bundles ({delegated})")
        for name, c in f["by_converter"].items():
            lines.append(f"  {name}: made {c['made']}, FP32 parity {c['parity']}, verified {c['verified']} "
                         f"(the only one for {c['only_one']}), INT8 in one partition {c['int8_one_partition']}")
    return "\n".join(lines)
