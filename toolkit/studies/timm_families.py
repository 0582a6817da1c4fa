"""The timm families of the zoo: the smallest classifier of every `timm.models` module.

A module of `timm.models` that registers models is one architecture family (`timm.list_modules()`:
resnet, efficientnet, fastvit, ...). Its smallest model is found by building each of its models on
torch's "meta" device (no memory, no weights: ~2 minutes for all of timm) and counting parameters.
The result is kept as data, `timm_families.json`, regenerated with

    python -m toolkit.studies.timm_families            (rewrites the file for the installed timm)

`families()` reads it and computes any module the file lacks (a newer timm), so the zoo always
covers every family of the installed timm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

FAMILIES_FILE = Path(__file__).with_name("timm_families.json")


def family_modules() -> list[str]:
    """The `timm.models` modules that register models (one family each)."""
    import timm

    return sorted(timm.list_modules())


def parameter_count(name: str) -> Optional[int]:
    """Parameters of timm model `name` (random weights), built on the meta device; None when it cannot be built so."""
    import warnings

    import timm
    import torch

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
    except Exception:  # noqa: BLE001 - a model that does not build on meta is left out of the choice
        return None
    return int(sum(p.numel() for p in model.parameters()))


def smallest_per_module(modules: Optional[list[str]] = None, *, progress: bool = False) -> dict[str, dict]:
    """{module: {"model": its smallest model, "params": its parameter count, "models": how many it
    registers}} for `modules` (default: every family). A module none of whose models builds on the
    meta device gets its first model (params None)."""
    import timm

    chosen = {}
    for module in modules or family_modules():
        names = timm.list_models(module=module)
        counted = sorted((n, name) for name in names if (n := parameter_count(name)) is not None)
        params, model = counted[0] if counted else (None, names[0])
        chosen[module] = {"model": model, "params": params, "models": len(names)}
        if progress:
            print(f"{module:<28} {model:<40} {params or 0:>12,}", flush=True)
    return chosen


def families(*, path: Path = FAMILIES_FILE) -> dict[str, str]:
    """{module: smallest model} for every family of the installed timm: from `path`, plus any
    module the file lacks (computed now). Modules timm no longer has are left out."""
    stored = json.loads(path.read_text())["families"] if path.is_file() else {}
    modules = family_modules()
    missing = [m for m in modules if m not in stored]
    fresh = smallest_per_module(missing) if missing else {}
    return {m: (stored.get(m) or fresh[m])["model"] for m in modules}


def write_families(path: Path = FAMILIES_FILE, *, progress: bool = True) -> dict:
    """Recompute every family's smallest model and write `path` (with the timm version)."""
    import timm

    data = {"timm": timm.__version__, "how": "python -m toolkit.studies.timm_families",
            "families": smallest_per_module(progress=progress)}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


if __name__ == "__main__":
    written = write_families()
    print(f"wrote {FAMILIES_FILE} ({len(written['families'])} families, timm {written['timm']})")
