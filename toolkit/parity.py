"""Numerical parity of a converted file against the model it came from, relative to the scale of
the reference outputs (an absolute 1e-4 means nothing for outputs of scale 1e-15 or 1e9)."""

from __future__ import annotations

import numpy as np


def compare_outputs(outputs: np.ndarray, reference: np.ndarray, *, rtol: float = 1e-4, atol_floor: float = 1e-6) -> dict:
    """Max abs error, max error relative to the reference's scale (max |reference|, floored at
    `atol_floor`), and ok = relative error <= rtol. Shapes must match."""
    out = np.asarray(outputs, np.float64)
    ref = np.asarray(reference, np.float64)
    if out.shape != ref.shape:
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"), "scale": None, "tolerance": rtol,
                "ok": False, "items": int(len(out)), "reason": f"shape {out.shape} != reference {ref.shape}"}
    if not np.all(np.isfinite(out)):
        return {"max_abs_error": float("inf"), "max_rel_error": float("inf"), "scale": None, "tolerance": rtol,
                "ok": False, "items": int(len(out)), "reason": "non-finite outputs"}
    err = np.abs(out - ref)
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, atol_floor)
    rel = float(err.max() / scale) if err.size else 0.0
    return {"max_abs_error": float(err.max()) if err.size else 0.0, "mean_abs_error": float(err.mean()) if err.size else 0.0,
            "max_rel_error": rel, "scale": scale, "tolerance": rtol, "ok": bool(rel <= rtol), "items": int(len(out))}
