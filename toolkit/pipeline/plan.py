"""A run, decided and checked before any work: `RunPlan`.

`make_plan(card, target=..., **overrides)` resolves the card (name or path), the target profile,
the pruning settings (profile, then card, then overrides), the input, the model source, the weights
and the data, and checks all of it (names, override keys, weights fit the architecture, deploy
artifact among the outputs) without loading data or converting anything. The plan is frozen; its
`to_json()` is the bundle's `config.json`, and `RunPlan.from_json` replays it
(`edgeshrink run --plan config.json`)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError, did_you_mean
from toolkit.tasks.registry import DataRef, card_input_spec
from toolkit.models.weights import ModelSource

PLAN_SCHEMA = "edgeshrink-plan/1"
MAX_THREADS = 256  # more threads than that only crashes the OpenMP runtime (it segfaults at 100000)
BOOLEAN_OPTIONS = ("bench", "progress", "cache", "structured", "synthetic_data")
RUN_OPTIONS = ("finetune_epochs", "calibration_size", "data", "synthetic_data", "checkpoint", "seed", "train_threads",
               "bench", "progress", "cache", "out", "sparsity", "sparsity_schedule", "sparsity_steps", "sparsity_finetune_epochs", "structured", "fps",
               "max_metric_drop", "tflite_converter")


@dataclass(frozen=True)
class RunPlan:
    """Everything one run needs, validated. Build it with `make_plan`; run it with `toolkit.run`."""

    card: object            # ModelCard
    target: object          # TargetProfile
    pruning: object         # PruneConfig
    input: object           # InputSpec
    source: ModelSource
    checkpoint: Optional[str]
    checkpoint_sha256: Optional[str]
    data: DataRef = field(default_factory=DataRef)
    calibration_size: int = 256
    seed: int = 0
    train_threads: Optional[int] = None
    bench: bool = True
    progress: bool = True
    cache: bool = True
    out_root: str = "dist"
    card_ref: str = ""
    sparsity: Optional[float] = None      # unstructured magnitude sparsity after channel pruning (e.g. 0.8)
    sparsity_schedule: str = "gradual"    # gradual (Zhu & Gupta cubic, fine-tuning between steps) | oneshot
    sparsity_steps: int = 4
    sparsity_finetune_epochs: int = 2     # fine-tuning after each sparsity step
    structured: bool = True               # channel pruning first (False: only the sparsity, if any)
    fps: Optional[float] = None           # latency budget: search the pruning level that meets it

    @property
    def bundle_name(self) -> str:
        return f"{self.card.name}-{self.target.name}"

    @property
    def bundle_path(self) -> Path:
        return Path(self.out_root) / self.bundle_name

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.input.channels, self.input.height, self.input.width)

    def to_json(self) -> dict:
        """The plan as JSON data (what `config.json` holds); `from_json` reads it back."""
        return {"schema": PLAN_SCHEMA, "card_ref": self.card_ref, "card_dir": str(self.card.base_dir),
                "card": self.card.model_dump(mode="json"), "target": self.target.model_dump(mode="json"),
                "pruning": self.pruning.model_dump(mode="json"), "input": self.input.to_dict(),
                "source": asdict(self.source), "checkpoint": self.checkpoint,
                "checkpoint_sha256": self.checkpoint_sha256, "data": asdict(self.data),
                "calibration_size": self.calibration_size, "seed": self.seed, "train_threads": self.train_threads,
                "bench": self.bench, "progress": self.progress, "cache": self.cache, "out_root": self.out_root,
                "sparsity": self.sparsity, "sparsity_schedule": self.sparsity_schedule,
                "sparsity_steps": self.sparsity_steps, "sparsity_finetune_epochs": self.sparsity_finetune_epochs,
                "structured": self.structured, "fps": self.fps}

    @classmethod
    def from_json(cls, data: dict, source: str = "plan") -> "RunPlan":
        """Re-validate a written plan; a weights file changed since then is refused."""
        return plan_from_json(data, source)


def _split_overrides(overrides: dict) -> tuple[dict, dict]:
    """(run options, pruning overrides); an unknown key is an error with "did you mean"."""
    from toolkit.config.pruning import PruneConfig

    run, prune = {}, {}
    for key, value in overrides.items():
        if key in RUN_OPTIONS:
            run[key] = value
        elif key in PruneConfig.model_fields:
            prune[key] = value
        else:
            choices = list(RUN_OPTIONS) + list(PruneConfig.model_fields)
            raise EdgeShrinkError(f"unknown option {key!r}{did_you_mean(key, choices)}; choose from {', '.join(choices)}")
    return run, prune


def _pruning(card, target, prune_overrides: dict, finetune_epochs):
    from toolkit.config.pruning import PruneConfig
    from toolkit.core.schema import validate_data

    data = {**target.pruning.model_dump(), **card.pruning, **prune_overrides}
    if "target_macs" in prune_overrides and "channel_ratio" not in prune_overrides:
        data["channel_ratio"] = None
    if finetune_epochs is not None:
        if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
            raise EdgeShrinkError(f"finetune_epochs must be an integer >= 0, got {finetune_epochs!r}")
        data["finetune_epochs"] = finetune_epochs
    return validate_data(PruneConfig, data, f"{card.name}: pruning")


def _checks(run: dict) -> None:
    seed = run.get("seed", 0)
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise EdgeShrinkError(f"seed must be an integer in 0..2^32-1, got {seed!r}")
    calib = run.get("calibration_size")
    if calib is not None and (not isinstance(calib, int) or calib < 1):
        raise EdgeShrinkError(f"calibration set is empty (calibration_size {calib}); use >= 1 (>= 200 recommended)")
    sparsity = run.get("sparsity")
    if sparsity is not None and (not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0):
        raise EdgeShrinkError(f"sparsity must be a fraction between 0 and 1 (e.g. 0.8), got {sparsity!r}")
    if run.get("sparsity_schedule", "gradual") not in ("gradual", "oneshot"):
        raise EdgeShrinkError(f"sparsity_schedule must be gradual or oneshot, got {run['sparsity_schedule']!r}")
    sft = run.get("sparsity_finetune_epochs", 2)
    if not isinstance(sft, int) or not 0 <= sft <= 1000:
        raise EdgeShrinkError(f"sparsity_finetune_epochs must be an integer >= 0, got {sft!r}")
    steps = run.get("sparsity_steps", 4)
    if not isinstance(steps, int) or not 1 <= steps <= 100:
        raise EdgeShrinkError(f"sparsity_steps must be an integer 1..100, got {steps!r}")
    fps = run.get("fps")
    if isinstance(fps, str) and fps.endswith("x") and fps[:-1].replace(".", "", 1).isdigit() and float(fps[:-1]) > 0:
        fps = None  # a speed-up over the dense FP32 file, e.g. "2x": resolved when the run measures it
    if fps is not None and fps != "target" and (not isinstance(fps, (int, float)) or not 0 < fps < 1e6 or fps != fps):
        raise EdgeShrinkError(f"fps must be a positive number of frames per second, got {fps!r}")
    threads = run.get("train_threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= MAX_THREADS):
        raise EdgeShrinkError(f"train_threads must be an integer 1..{MAX_THREADS}, got {threads!r}; the machine has "
                              f"{os.cpu_count()} cores: use at most that many")
    for flag in BOOLEAN_OPTIONS:
        if flag in run and not isinstance(run[flag], bool):
            raise EdgeShrinkError(f"{flag} must be true or false, got {run[flag]!r}; write a JSON/Python boolean, "
                                  "not a string or number")


def _with_gate(profile, max_metric_drop):
    """The profile with its deploy gate's accuracy bound overridden (validated like the file)."""
    from toolkit.core.schema import validate_data
    from toolkit.config.targets import TargetProfile

    data = profile.model_dump()
    data["gate"]["max_metric_drop"] = max_metric_drop
    return validate_data(TargetProfile, data, f"{profile.name}: --max-metric-drop")


def _with_converter(profile, converter: str):
    """The profile with the TFLite converter chosen by the card or the run (validated like the file)."""
    from toolkit.core.schema import validate_data
    from toolkit.config.targets import TargetProfile

    data = profile.model_dump()
    data["conversion"]["tflite"] = converter
    return validate_data(TargetProfile, data, f"{profile.name}: tflite_converter")


def _weights(card, checkpoint: Optional[str]) -> tuple[Optional[Path], Optional[str]]:
    """(weights file, sha256); the card's file must match the card's sha256 when it gives one."""
    from toolkit.models.checkpoint import sha256_file

    path = Path(checkpoint).expanduser() if checkpoint else card.checkpoint_path()
    if path is None:
        raise EdgeShrinkError(f"model card '{card.name}' has no checkpoint; train one (`edgeshrink train --model "
                              f"{card.name}`), add `checkpoint: {{path: weights.pt}}` to the card, or pass --checkpoint")
    from toolkit.core.files import CHECKPOINT_MAX_BYTES, require_file

    require_file(path, "checkpoint", "fix the card's checkpoint.path or --checkpoint", CHECKPOINT_MAX_BYTES)
    digest = sha256_file(path)
    if not checkpoint and card.checkpoint.sha256 and digest != card.checkpoint.sha256:
        raise EdgeShrinkError(f"{path} does not match the sha256 in the card '{card.name}'; restore it "
                              "(git checkout) or republish with `edgeshrink publish`")
    return path, digest


def make_plan(card, *, target: str = "host", **overrides) -> RunPlan:
    """Resolve and check a whole run. `card` is a card name, a card file path or a ModelCard."""
    from toolkit.config.cards import ModelCard, load_card
    from toolkit.core.paths import DIST_DIR
    from toolkit.config.targets import load_target

    card_ref = card if isinstance(card, str) else card.name
    card = card if isinstance(card, ModelCard) else load_card(card)
    profile = load_target(target)
    run, prune_overrides = _split_overrides(overrides)
    _checks(run)
    if run.get("max_metric_drop") is not None:
        profile = _with_gate(profile, run["max_metric_drop"])
    converter = run.get("tflite_converter") or card.tflite_converter
    if converter is not None:
        profile = _with_converter(profile, converter)
    if run.get("fps") == "target":
        run["fps"] = profile.budget.target_fps
    if run.get("fps") is not None and ({"target_macs", "channel_ratio"} & set(prune_overrides)):
        raise EdgeShrinkError("give --fps or a pruning amount (target_macs / channel_ratio), not both: the budget "
                              "search chooses the amount")
    pruning = _pruning(card, profile, prune_overrides, run.get("finetune_epochs"))
    if run.get("fps") is not None and (pruning.steps > 1 or pruning.importance == "taylor"):
        raise EdgeShrinkError("--fps needs one-step pruning with l1/l2/bn_scale importance (the searched structure must be "
                              "the one fine-tuned); set pruning steps: 1")
    spec = card_input_spec(card)
    if profile.input_size:
        spec = replace(spec, height=profile.input_size[0], width=profile.input_size[1])
    source = ModelSource(card.architecture, dict(card.arguments), str(card.base_dir))
    ckpt, digest = _weights(card, run.get("checkpoint"))
    plan = RunPlan(card=card, target=profile, pruning=pruning, input=spec, source=source, checkpoint=str(ckpt),
                   checkpoint_sha256=digest, data=DataRef(run.get("data"), bool(run.get("synthetic_data", False))),
                   calibration_size=run.get("calibration_size") or profile.quantization.calibration_size,
                   seed=run.get("seed", 0), train_threads=run.get("train_threads"), bench=run.get("bench", True),
                   progress=run.get("progress", True), cache=run.get("cache", True),
                   out_root=str(run.get("out") or DIST_DIR), card_ref=card_ref, sparsity=run.get("sparsity"),
                   sparsity_schedule=run.get("sparsity_schedule", "gradual"), sparsity_steps=run.get("sparsity_steps", 4),
                   sparsity_finetune_epochs=run.get("sparsity_finetune_epochs", 2),
                   structured=bool(run.get("structured", True)), fps=run.get("fps"))
    check_model_and_data(plan)
    return plan


def check_model_and_data(plan) -> None:
    """What a fresh and a replayed plan both check before any work: the weights fit the architecture
    (finite, every key and shape), the model runs on the planned input and has one output per label
    and per `num_classes`, and the data's class folders are the card's labels."""
    from toolkit.models.architectures import card_code
    from toolkit.tasks.registry import preflight_task

    with card_code(plan.card.architecture, plan.card.base_dir):  # its code's sys.exit/os._exit: a one-line error
        model = load_dense(plan)  # the weights must fit the architecture before any data is read
        check_outputs(plan, model)
    preflight_task(plan.card, plan.data)


def check_outputs(plan, model) -> None:
    """One dry forward at the planned input: the model must run on it, and its class dimension
    (logits (N, K) or per-pixel scores (N, K, H, W)) must equal the card's labels and num_classes."""
    import torch

    card = plan.card
    shape = plan.input_shape
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(shape))
    except Exception as exc:  # a model rejects an input with many error types
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise EdgeShrinkError(f"model '{card.name}' cannot run on its planned input {list(shape)} "
                              f"({type(exc).__name__}: {first}); fix the card's input (size, channels) or the "
                              "architecture arguments") from None
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        return  # not a class-score tensor: nothing to count
    outputs = int(out.shape[1])
    if card.labels and len(card.labels) != outputs:
        raise EdgeShrinkError(f"model '{card.name}' has {outputs} outputs but the card lists {len(card.labels)} labels; "
                              f"give exactly {outputs} labels, in output order (a label per output, none shifted)")
    wanted = card.arguments.get("num_classes")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0 and wanted != outputs:  # 0: no head
        raise EdgeShrinkError(f"model '{card.name}': the card's arguments say num_classes: {wanted} but its weights "
                              f"make a {outputs}-output model; set num_classes: {outputs} or use weights trained "
                              f"for {wanted} classes")


def plan_from_json(data: dict, source: str = "plan") -> RunPlan:
    """Rebuild a RunPlan from `to_json()` output (a bundle's config.json)."""
    from toolkit.config.cards import card_from_dict
    from toolkit.models.checkpoint import sha256_file
    from toolkit.data.preprocess import InputSpec
    from toolkit.config.pruning import PruneConfig
    from toolkit.core.schema import validate_data
    from toolkit.config.targets import TargetProfile

    if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
        raise EdgeShrinkError(f"{source} is not an EdgeShrink plan ({PLAN_SCHEMA}); pass a bundle's config.json")
    try:
        card = card_from_dict(data["card"], Path(data["card_dir"]), f"{source}: card")
        plan = RunPlan(card=card, target=validate_data(TargetProfile, data["target"], f"{source}: target"),
                       pruning=validate_data(PruneConfig, data["pruning"], f"{source}: pruning"),
                       input=InputSpec.from_dict(data["input"]), source=ModelSource(**data["source"]),
                       checkpoint=data["checkpoint"], checkpoint_sha256=data["checkpoint_sha256"],
                       data=DataRef(**data["data"]), calibration_size=data["calibration_size"],
                       seed=data["seed"], train_threads=data["train_threads"], bench=data["bench"],
                       progress=data["progress"], cache=data["cache"], out_root=str(data["out_root"]),
                       card_ref=str(data["card_ref"]), sparsity=data.get("sparsity"),
                       sparsity_schedule=data.get("sparsity_schedule", "gradual"),
                       sparsity_steps=data.get("sparsity_steps", 4), structured=data.get("structured", True),
                       sparsity_finetune_epochs=data.get("sparsity_finetune_epochs", 2),
                       fps=data.get("fps"))
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeShrinkError(f"{source} is incomplete or malformed ({type(exc).__name__}: {exc}); "
                              "pass an unmodified config.json") from None
    # the model is the card's (the card's architecture wins) and only of the safe forms, checked before any import
    from toolkit.models.architectures import check_architecture

    if plan.source != ModelSource(card.architecture, dict(card.arguments), str(card.base_dir)):
        raise EdgeShrinkError(f"{source}: its model source ({plan.source.architecture!r}) is not its card's "
                              f"({card.architecture!r} in {card.base_dir}); pass an unmodified config.json or make a new plan")
    check_architecture(card.architecture, card.base_dir)
    # the same checks as a fresh plan: values are taken as written (no bool("no") == True)
    _checks({"seed": plan.seed, "calibration_size": plan.calibration_size, "train_threads": plan.train_threads,
             "sparsity": plan.sparsity, "sparsity_schedule": plan.sparsity_schedule, "sparsity_steps": plan.sparsity_steps,
             "sparsity_finetune_epochs": plan.sparsity_finetune_epochs, "fps": plan.fps, "bench": plan.bench,
             "progress": plan.progress, "cache": plan.cache, "structured": plan.structured,
             "synthetic_data": plan.data.synthetic})
    if plan.checkpoint and (not Path(plan.checkpoint).is_file() or sha256_file(plan.checkpoint) != plan.checkpoint_sha256):
        raise EdgeShrinkError(f"{source}: weights file {plan.checkpoint} is missing or changed since the plan was "
                              "written; restore it or make a new plan")
    check_model_and_data(plan)
    return plan


def load_plan_file(path: str) -> RunPlan:
    """Read a plan (a bundle's config.json) from disk; malformed JSON is a one-line error."""
    import json

    from toolkit.core.files import read_bytes_capped

    p = Path(path)
    raw = read_bytes_capped(p, "plan", "pass a bundle's config.json")  # a regular file of at most 1 MB
    try:
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EdgeShrinkError(f"cannot read plan {p} ({type(exc).__name__}); pass a bundle's config.json") from None
    return plan_from_json(data, str(p))


def with_options(plan: RunPlan, **changes) -> RunPlan:
    """A copy of `plan` with run options changed (out_root, bench, progress, cache)."""
    allowed = {"out_root", "bench", "progress", "cache", "train_threads"}
    bad = set(changes) - allowed
    if bad:
        raise EdgeShrinkError(f"cannot change {sorted(bad)} of a plan; make a new plan instead")
    _checks({k: v for k, v in changes.items() if k != "out_root"})
    return replace(plan, **changes)


def load_dense(plan):
    """The plan's dense model: its architecture with its weights file (eval mode)."""
    from toolkit.models.weights import load_weights

    ck = plan.card.checkpoint
    from_card = ck is not None and str(plan.card.checkpoint_path()) == plan.checkpoint
    model, _ = load_weights(plan.source, Path(plan.checkpoint), key=ck.key if from_card else None,
                            strip_prefix=ck.strip_prefix if from_card else None)
    return model
