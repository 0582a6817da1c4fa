"""report.md for segmentation runs: the case-level split, Dice and HD95 per class for every file,
the worst held-out cases of the deployed file, and the NIfTI mask written into the bundle."""

from __future__ import annotations

import numpy as np

WORST = 5


def _num(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _classes(per_case: list[dict]) -> list[str]:
    return [k[len("dice_"):] for k in per_case[0] if k.startswith("dice_")]


def class_rows(artifact, unit: str) -> list[str]:
    """One row per class of one file: Dice mean / worst, HD95 mean / median / worst, undefined count."""
    per_case = artifact.metrics["per_case"]
    rows = []
    for c in _classes(per_case):
        dice = [r[f"dice_{c}"] for r in per_case]
        hd = [r[f"hd95_{c}"] for r in per_case if r.get(f"hd95_{c}") is not None]
        rows.append(f"| `{artifact.file}` | {c} | {np.mean(dice):.4f} | {min(dice):.4f} | "
                    f"{_num(np.mean(hd) if hd else None, '.2f')} | {_num(np.median(hd) if hd else None, '.2f')} | "
                    f"{_num(max(hd) if hd else None, '.2f')} | {len(per_case) - len(hd)} |")
    return rows


def worst_rows(artifact, dense, unit: str) -> list[str]:
    """The held-out cases of `artifact` with the lowest mean Dice, beside the dense model's Dice."""
    per_case = artifact.metrics["per_case"]
    classes = _classes(per_case)
    dense_dice = {r["case"]: r["dice"] for r in (dense.metrics.get("per_case") or [])} if dense else {}
    head = ["case", "Dice"] + [f"Dice {c}" for c in classes] + [f"HD95 {c} ({unit})" for c in classes] + ["dense FP32 Dice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(per_case, key=lambda r: r["dice"])[:WORST]:
        cells = [r["case"], f"{r['dice']:.4f}", *(f"{r[f'dice_{c}']:.4f}" for c in classes),
                 *(_num(r.get(f"hd95_{c}"), ".2f") for c in classes), _num(dense_dice.get(r["case"]), ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _deployed(manifest: dict, scored: dict):
    chosen = ((manifest.get("deploy") or {}).get("selection") or {}).get("artifact")
    for name in (chosen, "pruned-tflite-int8"):
        if name in scored:
            return scored[name]
    return list(scored.values())[-1]


def segmentation_lines(manifest: dict, artifacts) -> list[str]:
    """The report section; empty when no file was scored per case."""
    scored = {a.name: a for a in artifacts if a.metrics.get("per_case")}
    if not scored:
        return []
    data = manifest.get("data") or {}
    unit = data.get("hd95_unit", "mm")
    cases = data.get("cases") or {}
    lines = [f"## Held-out cases: Dice and HD95 per class (HD95 in {unit})", "",
             f"Split at case level: {cases.get('train', '?')} training cases, {cases.get('held_out', '?')} held out "
             f"({data.get('split', 'see manifest.json')}); every figure is a mean over held-out cases. HD95 is "
             "undefined where exactly one of prediction and truth has the class (counted, left out of the means).", "",
             "| file | class | Dice mean | Dice worst | HD95 mean | HD95 median | HD95 worst | HD95 undefined |",
             "|---|---|---|---|---|---|---|---|"]
    for a in scored.values():
        lines += class_rows(a, unit)
    shown = _deployed(manifest, scored)
    lines += ["", f"Worst {min(WORST, len(shown.metrics['per_case']))} held-out cases of `{shown.file}` (lowest mean Dice):", ""]
    lines += worst_rows(shown, scored.get("dense-torch-fp32"), unit)
    mask = (manifest.get("task_extras") or {}).get("held_out_mask") or manifest.get("held_out_mask")
    if mask:
        lines += ["", f"Predicted mask of held-out case `{mask['case']}` by `{mask['artifact']}` (Dice {mask['dice']:.4f}, "
                      f"the median case): `{mask['file']}`, with the affine and header of `{mask['image']}`; "
                      "open both in a viewer."]
    return lines + [""]
