"""Output parity relative to the reference's own scale (numpy only, usable on devices).

An absolute threshold (e.g. max error <= 1e-4) is wrong both ways: logits of scale 1e9 fail on
float32 rounding, outputs of scale 1e-15 pass while being 100% wrong. Here each output's error
is divided by its reference scale, max(|reference|)."""

from __future__ import annotations

from typing import Sequence


def _as_list(arrays) -> list:
    import numpy as np

    if isinstance(arrays, dict):
        arrays = list(arrays.values())
    if isinstance(arrays, (list, tuple)):
        return [np.asarray(a) for a in arrays]
    return [np.asarray(arrays)]


def compare_item(output, reference, *, rtol: float = 1e-3, atol_floor: float = 1e-6) -> dict:
    """One output against its reference: max_abs_error, scale (max |reference|), tolerance
    (rtol * scale, or atol_floor when the reference is all zeros), max_rel_error, ok, shape.
    Different shapes or non-finite values are not ok."""
    import numpy as np

    out, ref = np.asarray(output, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if out.shape != ref.shape:
        return {"shape": list(ref.shape), "ok": False, "max_abs_error": float("inf"), "max_rel_error": float("inf"),
                "scale": float(np.max(np.abs(ref))) if ref.size else 0.0, "tolerance": 0.0,
                "reason": f"shape {list(out.shape)} != reference {list(ref.shape)}"}
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    error = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    tolerance = rtol * scale if scale > 0 else atol_floor
    finite = bool(np.all(np.isfinite(out)) and np.all(np.isfinite(ref)))
    relative = error / scale if scale > 0 else error / atol_floor * rtol
    return {"shape": list(ref.shape), "ok": finite and error <= tolerance, "max_abs_error": error,
            "max_rel_error": relative if finite else float("inf"), "scale": scale, "tolerance": tolerance}


def compare_outputs(outputs, reference, *, rtol: float = 1e-3, atol_floor: float = 1e-6) -> dict:
    """Compare `outputs` with `reference` (an array, or a list/tuple/dict of arrays, matched in
    order). Returns {max_abs_error, max_rel_error, scale, tolerance, ok, items}; the top-level
    figures are those of the worst item (by relative error). A different number of outputs is
    not ok."""
    outs, refs = _as_list(outputs), _as_list(reference)
    items = [compare_item(o, r, rtol=rtol, atol_floor=atol_floor) for o, r in zip(outs, refs, strict=False)]
    if len(outs) != len(refs) or not items:
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"), "scale": 0.0, "tolerance": 0.0,
                "ok": False, "items": items, "reason": f"{len(outs)} outputs, reference has {len(refs)}"}
    worst = max(items, key=lambda item: item["max_rel_error"])
    return {"max_abs_error": max(item["max_abs_error"] for item in items), "max_rel_error": worst["max_rel_error"],
            "scale": worst["scale"], "tolerance": worst["tolerance"], "ok": all(item["ok"] for item in items),
            "items": items}


def summary(result: dict) -> str:
    """One line, e.g. 'ok: max rel error 6.1e-07 (abs 3.2e-06 at scale 5.2e+00, tol 5.2e-03)'."""
    state = "ok" if result["ok"] else "MISMATCH"
    return (f"{state}: max rel error {result['max_rel_error']:.2g} (abs {result['max_abs_error']:.2g} "
            f"at scale {result['scale']:.2g}, tol {result['tolerance']:.2g})")


__all__: Sequence[str] = ("compare_outputs", "compare_item", "summary")
