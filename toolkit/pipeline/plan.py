"""A run, decided and checked before any work: `RunPlan`.

`make_plan(card, target=..., **overrides)` resolves the card (name or path), the target profile,
the pruning settings (profile, then card, then overrides), the input, the model source, the weights
and the data, and checks all of it (names, override keys, weights fit the architecture, deploy
artifact among the outputs) without loading data or converting anything. The plan is frozen; its
`to_json()` is the bundle's `config.json`, and `RunPlan.from_json` replays it
(`edgeshrink run --plan config.json`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError
from toolkit.tasks.registry import DataRef, card_input_spec
from toolkit.models.weights import ModelSource

PLAN_SCHEMA = "edgeshrink-plan/1"


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
        """The plan as JSON data (what `config.json` holds): the resolved card, profile, pruning,
        input and model source, and every run option at its place (toolkit.pipeline.options);
        `from_json` reads it back."""
        from toolkit.pipeline.options import options_of, write_options

        data = {"schema": PLAN_SCHEMA, "card_ref": self.card_ref, "card_dir": str(self.card.base_dir),
                "card": self.card.model_dump(mode="json"), "target": self.target.model_dump(mode="json"),
                "pruning": self.pruning.model_dump(mode="json"), "input": self.input.to_dict(),
                "source": asdict(self.source), "checkpoint_sha256": self.checkpoint_sha256, "data": asdict(self.data)}
        return write_options(options_of(self), data)

    @classmethod
    def from_json(cls, data: dict, source: str = "plan") -> "RunPlan":
        """Re-validate a written plan; a weights file changed since then is refused."""
        return plan_from_json(data, source)


def _pruning(card, target, prune_overrides: dict, options):
    """The pruning settings: the profile's, then the card's, then the run's (validated like a card)."""
    from toolkit.config.pruning import PruneConfig
    from toolkit.core.schema import validate_data
    from toolkit.pipeline.options import landing

    data = {**target.pruning.model_dump(), **card.pruning, **prune_overrides, **landing(options, "pruning.")}
    if "target_macs" in prune_overrides and "channel_ratio" not in prune_overrides:
        data["channel_ratio"] = None
    return validate_data(PruneConfig, data, f"{card.name}: pruning")


def _profile(profile, card, options):
    """The profile with the run's (or the card's) choices in it: the deploy gate's accuracy bound and
    the TFLite converter (validated like the file)."""
    from toolkit.config.targets import TargetProfile
    from toolkit.core.schema import validate_data
    from toolkit.pipeline.options import landing

    changes = landing(options, "target.")
    if options.tflite_converter is None and card.tflite_converter is not None:
        changes["conversion.tflite"] = card.tflite_converter
    if not changes:
        return profile
    data = profile.model_dump()
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value
    return validate_data(TargetProfile, data, f"{profile.name}: run options {sorted(changes)}")


def _check_budget(fps, pruning, prune_overrides: dict) -> None:
    """A latency budget chooses the pruning amount itself, with one-step magnitude pruning."""
    if fps is None:
        return
    if {"target_macs", "channel_ratio"} & set(prune_overrides):
        raise EdgeShrinkError("give --fps or a pruning amount (target_macs / channel_ratio), not both: the budget "
                              "search chooses the amount")
    if pruning.steps > 1 or pruning.importance == "taylor":
        raise EdgeShrinkError("--fps needs one-step pruning with l1/l2/bn_scale importance (the searched structure must be "
                              "the one fine-tuned); set pruning steps: 1")


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
    from toolkit.pipeline.options import plan_fields, split_overrides

    card_ref = card if isinstance(card, str) else card.name
    card = card if isinstance(card, ModelCard) else load_card(card)
    options, prune_overrides = split_overrides(overrides)
    profile = _profile(load_target(target), card, options)
    fps = profile.budget.target_fps if options.fps == "target" else options.fps
    pruning = _pruning(card, profile, prune_overrides, options)
    _check_budget(fps, pruning, prune_overrides)
    spec = card_input_spec(card)
    if profile.input_size:
        spec = replace(spec, height=profile.input_size[0], width=profile.input_size[1])
    source = ModelSource(card.architecture, dict(card.arguments), str(card.base_dir))
    ckpt, digest = _weights(card, options.checkpoint)
    fields = {**plan_fields(options), "out_root": str(options.out or DIST_DIR), "fps": fps,
              "calibration_size": options.calibration_size or profile.quantization.calibration_size}
    plan = RunPlan(card=card, target=profile, pruning=pruning, input=spec, source=source, checkpoint=str(ckpt),
                   checkpoint_sha256=digest, data=DataRef(options.data, options.synthetic_data, options.eval_limit), card_ref=card_ref,
                   **fields)
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
    from toolkit.tasks.registry import get_task

    counter = getattr(get_task(card.task), "output_classes", None)  # tasks whose class axis is not axis 1 (detection)
    outputs = int(out.shape[1]) if counter is None else counter(card, tuple(out.shape), tuple(shape))
    if card.labels and len(card.labels) != outputs:
        raise EdgeShrinkError(f"model '{card.name}' has {outputs} outputs but the card lists {len(card.labels)} labels; "
                              f"give exactly {outputs} labels, in output order (a label per output, none shifted)")
    wanted = card.arguments.get("num_classes")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0 and wanted != outputs:  # 0: no head
        raise EdgeShrinkError(f"model '{card.name}': the card's arguments say num_classes: {wanted} but its weights "
                              f"make a {outputs}-output model; set num_classes: {outputs} or use weights trained "
                              f"for {wanted} classes")


RESOLVED_AT_PLANNING = ("out", "calibration_size", "checkpoint")  # options a written plan always holds a value for


def plan_from_json(data: dict, source: str = "plan") -> RunPlan:
    """Rebuild a RunPlan from `to_json()` output (a bundle's config.json), with the checks of a fresh plan."""
    from toolkit.config.cards import card_from_dict
    from toolkit.data.preprocess import InputSpec
    from toolkit.config.pruning import PruneConfig
    from toolkit.core.schema import validate_data
    from toolkit.config.targets import TargetProfile
    from toolkit.pipeline.options import options_from_config, plan_fields

    if not isinstance(data, dict) or data.get("schema") != PLAN_SCHEMA:
        raise EdgeShrinkError(f"{source} is not an EdgeShrink plan ({PLAN_SCHEMA}); pass a bundle's config.json")
    options = options_from_config(data, source)  # every option, checked as a fresh plan checks it
    unset = [name for name in RESOLVED_AT_PLANNING if getattr(options, name) is None]
    if unset:
        raise EdgeShrinkError(f"{source}: {unset[0]} is null in a written plan; pass an unmodified config.json")
    try:
        card = card_from_dict(data["card"], Path(data["card_dir"]), f"{source}: card")
        plan = RunPlan(card=card, target=validate_data(TargetProfile, data["target"], f"{source}: target"),
                       pruning=validate_data(PruneConfig, data["pruning"], f"{source}: pruning"),
                       input=InputSpec.from_dict(data["input"]), source=ModelSource(**data["source"]),
                       checkpoint=options.checkpoint, checkpoint_sha256=data["checkpoint_sha256"],
                       data=DataRef(options.data, options.synthetic_data, options.eval_limit), card_ref=str(data["card_ref"]),
                       **plan_fields(options))
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeShrinkError(f"{source} is incomplete or malformed ({type(exc).__name__}: {exc}); "
                              "pass an unmodified config.json") from None
    _check_replayed(plan, source)
    return plan


def _check_replayed(plan: RunPlan, source: str) -> None:
    """A replayed plan's model is its card's, of the safe forms (checked before any import), its
    weights file is the one planned, and the budget search still fits its pruning."""
    from toolkit.models.architectures import check_architecture
    from toolkit.models.checkpoint import sha256_file

    card = plan.card
    if plan.source != ModelSource(card.architecture, dict(card.arguments), str(card.base_dir)):
        raise EdgeShrinkError(f"{source}: its model source ({plan.source.architecture!r}) is not its card's "
                              f"({card.architecture!r} in {card.base_dir}); pass an unmodified config.json or make a new plan")
    check_architecture(card.architecture, card.base_dir)
    if isinstance(plan.fps, str) and plan.fps == "target":
        raise EdgeShrinkError(f"{source}: fps 'target' is resolved when planning; pass an unmodified config.json")
    _check_budget(plan.fps, plan.pruning, {})
    if not Path(plan.checkpoint).is_file() or sha256_file(plan.checkpoint) != plan.checkpoint_sha256:
        raise EdgeShrinkError(f"{source}: weights file {plan.checkpoint} is missing or changed since the plan was "
                              "written; restore it or make a new plan")
    check_model_and_data(plan)


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
    """A copy of `plan` with run options changed: those a replay may change (out, bench, progress,
    cache, train_threads: `replay="changeable"` in toolkit.pipeline.options), checked like any option."""
    from toolkit.pipeline.options import changeable_on_replay, check_options, extra, options_of

    allowed = changeable_on_replay()
    bad = sorted(set(changes) - set(allowed))
    if bad:
        raise EdgeShrinkError(f"cannot change {bad} of a plan (only {', '.join(allowed)}); make a new plan instead")
    merged = check_options({**options_of(plan).model_dump(), **changes})
    if any(getattr(merged, name) is None for name in RESOLVED_AT_PLANNING):
        raise EdgeShrinkError(f"a plan always has {', '.join(RESOLVED_AT_PLANNING)}; give a value, not None")
    return replace(plan, **{extra(name)["at"]: getattr(merged, name) for name in changes})


def load_dense(plan):
    """The plan's dense model: its architecture with its weights file (eval mode)."""
    from toolkit.models.weights import load_weights

    ck = plan.card.checkpoint
    from_card = ck is not None and str(plan.card.checkpoint_path()) == plan.checkpoint
    model, _ = load_weights(plan.source, Path(plan.checkpoint), key=ck.key if from_card else None,
                            strip_prefix=ck.strip_prefix if from_card else None)
    return model
