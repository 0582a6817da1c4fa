"""Zoo benchmark: every torchvision classifier (random weights, small input) through
prune -> forward shape check -> checkpoint reload (bit-exact) -> ONNX export -> onnxruntime parity.

Each stage of each model is recorded as ok / refused (a one-line EdgeShrinkError: the toolkit
declined safely) / failed (anything else: a bug to fix) / skipped, with seconds and MACs before
and after. Prints a table last and writes zoo.json (atomically, after every model).
    edgeshrink zoo [--models a,b] [--size 64] [--out dist/zoo]      (or: make zoo)"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.work_limit import WorkLimitExceeded, cpu_time_box

STAGES = ("build", "prune", "forward", "reload", "onnx", "parity")
# inception_v3 needs >= 75 px; AlexNet / VGG end in an adaptive pool to 6x6 / 7x7 that ONNX exports
# only when it divides the feature map evenly, i.e. at 224 px
_MIN_SIZE = {"inception_v3": 96, "alexnet": 224, **{f"vgg{d}{bn}": 224 for d in (11, 13, 16, 19) for bn in ("", "_bn")}}
_DIVISOR = {"vit_h_14": 14, "maxvit_t": 224}  # a multiple of the patch size; MaxViT: 7x7 partitions at /32


def zoo_models() -> list[str]:
    """Names of torchvision's classification models."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def input_size_for(name: str, size: int) -> int:
    """The input side used for `name`: at least `size`, raised where the architecture needs it."""
    side = max(size, _MIN_SIZE.get(name, 0))
    divisor = _DIVISOR.get(name, 1)
    return -(-side // divisor) * divisor


def build_zoo_model(name: str, side: int):
    """A random-weight torchvision classifier built for `side` px inputs (ViTs / MaxViT get their
    image size argument). Returns (model, arguments)."""
    import torchvision

    arguments: dict = {}
    if name.startswith("vit_"):
        arguments["image_size"] = side
    if name.startswith("maxvit"):
        arguments["input_size"] = (side, side)
    if name == "inception_v3":
        arguments["aux_logits"] = False  # eval output is the logits either way; aux needs >= 299 px
        arguments["init_weights"] = True
    if name == "googlenet":
        arguments["aux_logits"] = False
        arguments["init_weights"] = True
    model = torchvision.models.get_model(name, weights=None, **arguments).eval()
    _randomize_zero_layers(model)
    return model, arguments


def _randomize_zero_layers(model) -> None:
    """Give all-zero conv/linear weights (torchvision zero-initialises ViT heads) small random
    values, so that outputs are not identically zero and parity compares something."""
    import torch
    import torch.nn as nn

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)


def _run_stage(row: dict, stage: str, work: Callable[[], Optional[str]]) -> bool:
    """Run one stage, recording status, seconds and message in `row`. Returns True when ok."""
    started = time.monotonic()
    try:
        note = work()
        entry = {"status": "ok", **({"message": note} if note else {})}
    except EdgeShrinkError as exc:
        entry = {"status": "refused", "message": str(exc)}
    except Exception as exc:  # a failure anywhere else is the finding this benchmark exists for
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        entry = {"status": "failed", "message": f"{type(exc).__name__}: {first}"[:300]}
    entry["seconds"] = round(time.monotonic() - started, 2)
    row["stages"][stage] = entry
    return entry["status"] == "ok"


def _skip_rest(row: dict, reason: str) -> None:
    for stage in STAGES:
        row["stages"].setdefault(stage, {"status": "skipped", "message": reason, "seconds": 0.0})


def zoo_one(name: str, *, size: int = 64, work_dir: Path, target_macs: float = 0.6,
            prune_trials: int = 60, cnn_prune_trials: int = 600, max_params: int = 700_000_000) -> dict:
    """Run one model through every stage; returns its row (never raises for a model's failure).
    A refused prune continues with the dense model, so export and parity are still checked.
    Models with attention get `prune_trials` pruning trials (dry runs + pruning sub-steps) to be pruned or
    refused, CNNs `cnn_prune_trials`: work counted, not seconds, so a busy machine gives the same table."""
    import torch

    side = input_size_for(name, size)
    row: dict = {"model": name, "size": side, "stages": {}, "excluded": [], "protected_outputs": []}
    state: dict = {}
    example = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    built = _run_stage(row, "build", lambda: _build(state, row, name=name, side=side, example=example, max_params=max_params))
    if not built:
        _skip_rest(row, "model not built")
        return row
    pruned_ok = _run_stage(row, "prune", lambda: _prune(state, row, name=name, side=side, example=example,
                                                        target_macs=target_macs, prune_trials=prune_trials,
                                                        cnn_prune_trials=cnn_prune_trials))
    if not pruned_ok:  # a refused or failed prune may leave the model half-way: continue dense
        state["model"], _ = _fresh_model(name, side)
    _run_stage(row, "forward", lambda: _forward(state, row, example))
    _run_stage(row, "reload", lambda: _reload(state, name, work_dir, example))
    _run_stage(row, "onnx", lambda: _export(state, name, work_dir, side))
    _run_stage(row, "parity", lambda: _parity(state, example))
    row["model_checked"] = "pruned" if pruned_ok else "dense"
    return row


def _fresh_model(name: str, side: int):
    """The dense model as the build stage makes it (same seed, so the same weights). Returns (model, arguments)."""
    import torch

    torch.manual_seed(0)
    return build_zoo_model(name, side)


def _build(state: dict, row: dict, *, name: str, side: int, example, max_params: int) -> None:
    """Build stage: the dense model, its output on `example`, its parameters and MACs. Refuses a
    model over `max_params` parameters (one line)."""
    import torch

    from toolkit.prune.macs import count_macs, count_params

    model, state["arguments"] = _fresh_model(name, side)
    row["params_dense"] = count_params(model)
    if row["params_dense"] > max_params:
        raise EdgeShrinkError(f"{name} has {row['params_dense'] / 1e6:.0f} M parameters, over the zoo's "
                              f"{max_params / 1e6:.0f} M cap; raise --max-params to include it")
    with torch.no_grad():
        state["dense_out"] = model(example)
    row["macs_dense"] = count_macs(model, example)
    state["model"] = model


def _prune_once(model, *, example, target: float, prune_trials: int, cnn_prune_trials: int):
    """One uniform one-step prune of `model` to `target` of its MACs, with a work budget by its kind
    (attention or CNN). Returns the PruneResult; raises UnreachableTarget / EdgeShrinkError."""
    from toolkit.config.pruning import PruneConfig
    from toolkit.prune.prune import prune
    from toolkit.prune.safety import attention_layers

    trials = prune_trials if any(attention_layers(model)) else cnn_prune_trials
    cfg = PruneConfig(target_macs=target, steps=1, scope="uniform", round_to=8, max_trials=trials)
    return prune(model, example_input=example, cfg=cfg, progress=False)


def _prune(state: dict, row: dict, *, name: str, side: int, example, target_macs: float,
           prune_trials: int, cnn_prune_trials: int) -> Optional[str]:
    """Prune stage: to `target_macs`, or, when that is out of reach, as far as the model allows
    (from a fresh dense model) and say so. Returns the stage's note (None when there is nothing to say)."""
    from toolkit.prune.prune import UnreachableTarget

    attempt = functools.partial(_prune_once, example=example, prune_trials=prune_trials,
                                cnn_prune_trials=cnn_prune_trials)
    note = ""
    try:
        result = attempt(state["model"], target=target_macs)
    except UnreachableTarget as exc:  # prune as far as the model allows, and say so
        state["model"], _ = _fresh_model(name, side)
        result = attempt(state["model"], target=exc.reachable_target)
        note = f"target {target_macs:.0%} unreachable, pruned to the most allowed ({exc.reached:.0%}); "
    row["excluded"], row["protected_outputs"] = result.excluded, result.protected_outputs
    excluded = f"{len(result.excluded)} group(s) excluded" if result.excluded else ""
    return (note + excluded).strip("; ") or None


def _forward(state: dict, row: dict, example) -> None:
    """Forward stage: the (pruned) model keeps the dense output shape; records its MACs and output."""
    import torch

    from toolkit.prune.macs import count_macs

    with torch.no_grad():
        out = state["model"](example)
    if tuple(out.shape) != tuple(state["dense_out"].shape):
        raise RuntimeError(f"output shape {tuple(out.shape)} != dense {tuple(state['dense_out'].shape)}")
    row["macs_pruned"] = count_macs(state["model"], example)
    state["reference"] = out


def _reload(state: dict, name: str, work_dir: Path, example) -> None:
    import torch

    from toolkit.models.checkpoint import load_checkpoint, save_checkpoint

    path = work_dir / f"{name}.pt"
    save_checkpoint(path, state["model"], name, state["arguments"])
    reloaded, _ = load_checkpoint(path, factory=lambda **args: build_zoo_model(name, example.shape[-1])[0])
    with torch.no_grad():
        if not torch.equal(reloaded(example), state["model"](example)):
            raise RuntimeError("reloaded checkpoint does not reproduce the outputs bit-exactly")
    path.unlink()


def _export(state: dict, name: str, work_dir: Path, side: int) -> None:
    from toolkit.convert.torch_to_onnx import torch_to_onnx

    state["onnx"] = torch_to_onnx(state["model"], (2, 3, side, side), work_dir / f"{name}.onnx")


def _parity(state: dict, example) -> str:
    import onnxruntime as ort

    from toolkit.runtime.parity import compare_outputs, summary

    if "onnx" not in state or "reference" not in state:
        raise EdgeShrinkError("no ONNX file or torch reference to compare; see the earlier stages")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(state["onnx"]), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    result = compare_outputs(outputs[0], state["reference"].numpy())
    state["onnx"].unlink()
    if not result["ok"]:
        raise RuntimeError(f"onnxruntime differs from torch: {summary(result)}")
    return summary(result)


def _write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def format_table(rows: list[dict]) -> str:
    """The zoo as a fixed-width table: one line per model, one column per stage."""
    head = f"{'model':<22} {'px':>3} " + " ".join(f"{s:<8}" for s in STAGES) + f" {'MMACs':>16} {'excl':>4} {'s':>6}"
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = " ".join(f"{row['stages'].get(s, {}).get('status', '-'):<8}" for s in STAGES)
        dense, pruned = row.get("macs_dense"), row.get("macs_pruned")
        macs = f"{dense / 1e6:.1f}->{pruned / 1e6:.1f}" if dense and pruned else "-"
        lines.append(f"{row['model']:<22} {row['size']:>3} {cells} {macs:>16} {len(row['excluded']):>4} "
                     f"{row.get('seconds', 0):>6.1f}")
    counts = {s: sum(r["stages"].get(s, {}).get("status") == "ok" for r in rows) for s in STAGES}
    lines.append(f"ok per stage ({len(rows)} models): " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    return "\n".join(lines)


def run_zoo(models: Optional[list[str]] = None, *, size: int = 64, out: str | Path = "dist/zoo",
            progress: bool = True, model_cpu_limit_s: float = 900.0, prune_trials: int = 60,
            cnn_prune_trials: int = 600, max_params: int = 700_000_000) -> list[dict]:
    """Run `models` (default: every torchvision classifier) through the zoo stages; each model gets
    `model_cpu_limit_s` CPU seconds (toolkit.core.work_limit: work, not wall-clock time). Writes
    `out`/zoo.json after every model, prints the table last, returns the rows.
    Refuses unknown model names (one line)."""
    import torch

    known = zoo_models()
    names = models or known
    unknown = [n for n in names if n not in known]
    if unknown:
        from toolkit.core.errors import unknown_name
        raise unknown_name("torchvision classifier", unknown[0], known)
    out = Path(out)
    rows: list[dict] = []
    for name in names:
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as work:
            try:
                with cpu_time_box(model_cpu_limit_s):
                    row = zoo_one(name, size=size, work_dir=Path(work), prune_trials=prune_trials,
                                  cnn_prune_trials=cnn_prune_trials, max_params=max_params)
            except WorkLimitExceeded:
                row = {"model": name, "size": input_size_for(name, size), "stages": {}, "excluded": []}
                _skip_rest(row, f"model spent the zoo's {model_cpu_limit_s:.0f} CPU seconds")
                row["stages"]["build"] = {"status": "failed", "message": "CPU limit", "cpu_seconds": model_cpu_limit_s}
        row["seconds"] = round(time.monotonic() - started, 2)
        rows.append(row)
        _write_json_atomic(out / "zoo.json", {"size": size, "threads": torch.get_num_threads(), "models": rows})
        if progress:
            print(format_table([row]).splitlines()[2], flush=True)
    print(format_table(rows))
    return rows


def _cmd_zoo(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if args.source != "torchvision":  # timm families + MONAI segmentation nets through the deploy chain
        from toolkit.studies.deploy_zoo import run_deploy_zoo

        rows = run_deploy_zoo(args.source, models, size=args.size, out=args.out, progress=not args.quiet, redo=args.redo,
                              trials=args.prune_budget, cnn_trials=args.cnn_prune_budget, cpu_limit_s=args.cpu_limit)
        print(f"wrote {Path(args.out) / f'zoo_{args.source}.json'}")
        return 0 if not any(s.get("status") == "failed" for r in rows for s in r["stages"].values()) else 1
    rows = run_zoo(models, size=args.size, out=args.out, progress=not args.quiet, model_cpu_limit_s=args.cpu_limit,
                   prune_trials=args.prune_budget, cnn_prune_trials=args.cnn_prune_budget,
                   max_params=int(args.max_params * 1e6))
    print(f"wrote {Path(args.out) / 'zoo.json'}")
    return 0 if not any(s.get("status") == "failed" for r in rows for s in r["stages"].values()) else 1


def register_cli(subparsers) -> None:
    """Add `edgeshrink zoo [--models a,b] [--size N] [--out DIR]` to an argparse subparsers object."""
    p = subparsers.add_parser("zoo", help="prune/reload/export/parity check over torchvision's classifiers, or the "
                              "deploy chain over timm's families and MONAI's segmentation nets (--source timm)")
    p.add_argument("--source", default="torchvision", choices=("torchvision", "timm", "monai"),
                   help="torchvision classifiers (prune/reload/ONNX parity), or timm families + MONAI 2-D segmentation "
                        "nets (timm) / MONAI alone (monai) through reparameterise/prune/ONNX/TFLite/INT8/parity/partitions")
    p.add_argument("--models", default=None, help="comma-separated model names (default: the whole zoo of the source)")
    p.add_argument("--redo", action="store_true", help="timm/monai: run models again that zoo_<source>.json already holds")
    p.add_argument("--size", type=int, default=64, help="input side in px (raised where a model needs it)")
    p.add_argument("--out", default="dist/zoo", help="folder for zoo.json")
    p.add_argument("--cpu-limit", type=float, default=900.0,
                   help="CPU seconds (work, not wall-clock time) per conversion child (timm/monai) or per model "
                        "(torchvision) before it is stopped")
    p.add_argument("--prune-budget", type=int, default=60,
                   help="pruning trials (dry runs + pruning sub-steps) a model with attention gets to be pruned or refused")
    p.add_argument("--cnn-prune-budget", type=int, default=600, help="pruning trials a CNN gets to be pruned")
    p.add_argument("--max-params", type=float, default=700.0, help="skip models over this many million parameters")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--quiet", action="store_true", help="no per-model lines, only the final table")
    p.set_defaults(func=_cmd_zoo)


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m toolkit.studies.zoo ...`: the zoo subcommand on its own."""
    import argparse

    import sys

    class OneLineParser(argparse.ArgumentParser):
        def error(self, message):  # one line on stderr, exit 2, like `edgeshrink`
            self.exit(2, f"edgeshrink: error: zoo: {message}; see `python -m toolkit.studies.zoo --help`\n")

    parser = OneLineParser(prog="python -m toolkit.studies.zoo")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["zoo", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.func(args)
    except EdgeShrinkError as exc:
        print(f"edgeshrink: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
