"""Lottery tickets (Frankle & Carbin 2019; late rewinding, Frankle et al. 2020) against their
controls and against pruning at initialisation (SNIP, Lee et al. 2019; GraSP, Wang et al. 2020).

One run: train the dense model (saving its weights at iteration k, the rewind point), then for
round r = 1..N prune `rate` of the remaining weights globally by magnitude, rewind the
survivors to iteration k and retrain. At every sparsity the run also trains, for the same number
of epochs and with the same batch order:
- reinit: the ticket's mask on a fresh random initialisation;
- snip / grasp: masks scored on a few real training batches at initialisation, trained from it;
- magnitude: the trained dense model pruned once by magnitude, then fine-tuned.
Before every evaluation BatchNorm statistics are re-estimated on `bn_batches` training batches
(the same for all methods). Pruned layers are those `toolkit.sparsity` prunes by default (conv/linear; not the output layer,
not depthwise convs). Writes config.json, lottery.json, lottery.md and lottery.png.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError

METHODS = ("ticket", "reinit", "snip", "grasp", "magnitude")


@dataclass(frozen=True)
class LotteryConfig:
    """Everything a lottery run does (written as config.json)."""

    model: str  # a model card or a registered architecture
    rounds: int = 3
    epochs: int = 2
    rewind_iter: int = 0
    rate: float = 0.2  # share of the remaining weights pruned per round
    size: int = 64
    batch_size: int = 64
    lr: float = 3e-3
    width_mult: Optional[float] = None  # architecture argument override
    methods: tuple = METHODS
    score_batches: int = 4  # real batches for SNIP / GraSP scores
    bn_batches: int = 16  # training batches that re-estimate BatchNorm statistics before each evaluation
    train_images: Optional[int] = None  # a fixed random subset of the training set (speed)
    val_images: Optional[int] = None  # a fixed random subset of the validation set (speed)
    data: Optional[str] = None
    synthetic_data: bool = False
    seed: int = 0
    out: str = "runs/lottery"
    threads: Optional[int] = None

    def __post_init__(self):
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise EdgeShrinkError(f"unknown lottery method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
        if self.rounds < 1 or self.epochs < 1 or not 0 < self.rate < 1 or self.rewind_iter < 0:
            raise EdgeShrinkError("lottery: rounds >= 1, epochs >= 1, 0 < rate < 1 and rewind-iter >= 0 are required")
        object.__setattr__(self, "methods", tuple(self.methods))


def sparsity_at(round_: int, rate: float) -> float:
    """Share of prunable weights removed after `round_` rounds of pruning `rate` of the rest."""
    return 1 - (1 - rate) ** round_


@dataclass
class _Setup:
    cfg: LotteryConfig
    architecture: str
    arguments: dict
    train: object
    val: object
    spec: object
    data: dict


def _setup(cfg: LotteryConfig, progress: bool) -> _Setup:
    """Architecture + arguments (card or registry) and the train/val splits at cfg.size."""
    from toolkit.models.architectures import list_models
    from toolkit.config.cards import list_cards, load_card
    from toolkit.data.imagefolder import load_image_split, synthetic_split
    from toolkit.data.datasets import dataset_root
    from toolkit.data.preprocess import InputSpec
    from toolkit.tasks.registry import card_input_spec

    card = load_card(cfg.model) if cfg.model in list_cards() else None
    if card is None and cfg.model not in list_models():
        raise EdgeShrinkError(f"lottery: {cfg.model!r} is neither a model card ({', '.join(list_cards())}) nor an architecture ({', '.join(list_models())})")
    if cfg.synthetic_data:
        classes = len(card.labels) if card else 4
        train, val = synthetic_split(classes, 24, cfg.size, cfg.size, seed=1), synthetic_split(classes, 8, cfg.size, cfg.size, seed=2)
    else:
        if card is None and not cfg.data:
            raise EdgeShrinkError("lottery: an architecture name needs --data DIR (ImageFolder train/ and val/) or --synthetic-data")
        root = Path(cfg.data) if cfg.data else dataset_root(card, None)
        train, val = (load_image_split(root, s, cfg.size, cfg.size, progress) for s in ("train", "val"))
    if cfg.train_images:
        train = train.subset(cfg.train_images, seed=cfg.seed)
    if cfg.val_images:
        val = val.subset(cfg.val_images, seed=cfg.seed)
    architecture = card.architecture if card else cfg.model
    arguments = dict(card.arguments) if card else {"num_classes": len(train.classes)}
    if cfg.width_mult is not None:
        arguments["width_mult"] = cfg.width_mult
    spec = card_input_spec(card) if card else InputSpec(cfg.size, cfg.size)
    spec = InputSpec(cfg.size, cfg.size, mean=spec.mean, std=spec.std)
    data = {"source": train.source, "synthetic": bool(train.synthetic), "train_images": len(train),
            "val_images": len(val), "size": cfg.size}
    return _Setup(cfg, architecture, arguments, train, val, spec, data)


def _fresh(s: _Setup, seed: int):
    import torch

    from toolkit.models.architectures import create_model

    torch.manual_seed(seed)
    return create_model(s.architecture, **s.arguments)


def _train(s: _Setup, model, masks: Optional[dict], *, epochs: Optional[int] = None, snapshot_at: Optional[int] = None,
           progress: bool = False) -> tuple[float, Optional[dict]]:
    """Train (masked weights held at zero) with the run's fixed batch order; returns (val top-1,
    the state_dict after `snapshot_at` optimizer steps, if asked)."""
    from toolkit.tasks.classification import classification_loss, top1, torch_logits, train_batches
    from toolkit.sparsity.magnitude import apply_masks, make_permanent, prunable_layers
    from toolkit.train.loop import TrainConfig, train_loop

    cfg = s.cfg
    if masks:
        apply_masks(prunable_layers(model), masks)
    tc = TrainConfig(epochs=epochs or cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, warmup_epochs=0.3,
                     label_smoothing=0.0, seed=cfg.seed)
    batches, steps = train_batches(s.train, s.spec, cfg.batch_size, cfg.seed)
    if snapshot_at is not None and snapshot_at > tc.epochs * steps:
        raise EdgeShrinkError(f"--rewind-iter {snapshot_at} is past the end of dense training ({tc.epochs * steps} steps); use a smaller value")
    snap = {0: copy.deepcopy(model.state_dict())} if snapshot_at == 0 else {}

    def grab(step, m):
        if step == snapshot_at:
            snap[0] = copy.deepcopy(m.state_dict())

    train_loop(model, tc, batches=batches, steps_per_epoch=steps, loss_fn=classification_loss(0.0, 0.0, 1.0),
               evaluate=lambda m: {"train_only": 0.0}, score_key="train_only", progress=False,
               step_callback=grab)
    make_permanent(model)
    recalibrate_batchnorm(model, batches(0), cfg.bn_batches)
    acc = top1(torch_logits(model, s.val, s.spec), s.val.labels)
    _log(progress, f"trained {tc.epochs} epoch(s) at sparsity {_zero_share(model):.3f}: val top-1 {acc:.4f}")
    return acc, snap.get(0)


def recalibrate_batchnorm(model, batches, count: int) -> None:
    """Re-estimate BatchNorm running statistics as a plain average over `count` training
    batches (no weight changes). torchvision's MobileNetV3 uses momentum 0.01, so after short
    trainings the running statistics still lag the weights; every method gets the same step."""
    import itertools

    import torch
    import torch.nn as nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or count <= 0:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for x, _ in itertools.islice(batches, count):
            model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


def _zero_share(model) -> float:
    from toolkit.sparsity.magnitude import layer_sparsity, prunable_layers

    return layer_sparsity(prunable_layers(model))["__total__"]["sparsity"]


def _score_batches(s: _Setup):
    import torch

    from toolkit.data.preprocess import normalize_nhwc_uint8

    sub = s.train.subset(s.cfg.score_batches * s.cfg.batch_size, seed=s.cfg.seed + 7)
    for i in range(0, len(sub), s.cfg.batch_size):
        yield (torch.from_numpy(normalize_nhwc_uint8(sub.images[i:i + s.cfg.batch_size], s.spec)),
               torch.from_numpy(sub.labels[i:i + s.cfg.batch_size]))


def init_scores(s: _Setup, model, method: str) -> dict:
    """Per-layer saliency at initialisation (higher = keep). SNIP: |g * w|. GraSP: -(-w * Hg),
    i.e. the weights whose removal least reduces gradient flow are removed first."""
    import torch
    import torch.nn.functional as F

    from toolkit.sparsity.magnitude import prunable_layers

    net = _twice_differentiable(copy.deepcopy(model).train())
    layers = prunable_layers(net)
    weights = [m.weight for m in layers.values()]
    if method == "snip":
        total = [torch.zeros_like(w) for w in weights]
        for x, y in _score_batches(s):
            grads = torch.autograd.grad(F.cross_entropy(net(x), y), weights)
            total = [t + g for t, g in zip(total, grads)]
        return {n: (g * w).abs().detach() for n, g, w in zip(layers, total, weights)}
    temperature = 200.0  # GraSP's softened logits
    g_sum = [torch.zeros_like(w) for w in weights]
    for x, y in _score_batches(s):
        grads = torch.autograd.grad(F.cross_entropy(net(x) / temperature, y), weights)
        g_sum = [a + b for a, b in zip(g_sum, grads)]
    hg = [torch.zeros_like(w) for w in weights]
    for x, y in _score_batches(s):
        grads = torch.autograd.grad(F.cross_entropy(net(x) / temperature, y), weights, create_graph=True)
        z = sum((g * gs.detach()).sum() for g, gs in zip(grads, g_sum))
        hg = [a + b for a, b in zip(hg, torch.autograd.grad(z, weights))]
    return {n: (w * h).detach() for n, w, h in zip(layers, weights, hg)}  # = -(GraSP score): keep the largest


def _twice_differentiable(net):
    """Swap Hardsigmoid/Hardswish (no double backward in torch) for the same functions written
    with clamp, so GraSP's Hessian-gradient product runs; the scoring copy only."""
    import torch
    import torch.nn as nn

    class HardSigmoid(nn.Module):
        def forward(self, x):
            return torch.clamp(x + 3, 0, 6) / 6

    class HardSwish(nn.Module):
        def forward(self, x):
            return x * torch.clamp(x + 3, 0, 6) / 6

    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Hardsigmoid):
                setattr(parent, name, HardSigmoid())
            elif isinstance(child, nn.Hardswish):
                setattr(parent, name, HardSwish())
    return net


def masks_from_scores(scores: dict, sparsity: float) -> dict:
    """Global masks keeping the highest-scoring (1 - sparsity) of all scored weights."""
    import torch

    from toolkit.sparsity.magnitude import _keep_largest

    flat = torch.cat([v.flatten() for v in scores.values()])
    mask = _keep_largest(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for name, v in scores.items():
        out[name] = mask[start:start + v.numel()].view_as(v)
        start += v.numel()
    return out


def _magnitude_scores(model) -> dict:
    from toolkit.sparsity.magnitude import current_weight, prunable_layers

    return {n: current_weight(m).abs() for n, m in prunable_layers(model).items()}


def run_lottery(cfg: LotteryConfig, progress: bool = True) -> dict:
    """Run the experiment in cfg.out; returns the results (also lottery.json / .md / .png)."""
    import torch

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    s = _setup(cfg, progress)
    init = _fresh(s, cfg.seed)
    theta0 = copy.deepcopy(init.state_dict())
    dense = copy.deepcopy(init)
    dense_top1, rewind = _train(s, dense, None, snapshot_at=cfg.rewind_iter, progress=progress)
    _log(progress, f"dense top-1 {dense_top1:.4f}")
    rows, ticket = [], dense
    scores = {m: init_scores(s, init, m) for m in ("snip", "grasp") if m in cfg.methods}
    for r in range(1, cfg.rounds + 1):
        target = sparsity_at(r, cfg.rate)
        row = {"round": r, "sparsity": round(target, 4)}
        if {"ticket", "reinit"} & set(cfg.methods):  # iterative magnitude pruning of the previous ticket
            masks = masks_from_scores(_magnitude_scores(ticket), target)
            if "ticket" in cfg.methods or r < cfg.rounds:
                ticket = _fresh(s, cfg.seed)
                ticket.load_state_dict(rewind)
                row["ticket"], _ = _train(s, ticket, masks, progress=progress)
        if "reinit" in cfg.methods:
            row["reinit"], _ = _train(s, _fresh(s, cfg.seed + 1000 + r), masks, progress=progress)
        for method in ("snip", "grasp"):
            if method in cfg.methods:
                model = _fresh(s, cfg.seed)
                model.load_state_dict(theta0)
                row[method], _ = _train(s, model, masks_from_scores(scores[method], target), progress=progress)
        if "magnitude" in cfg.methods:
            model = copy.deepcopy(dense)
            row["magnitude"], _ = _train(s, model, masks_from_scores(_magnitude_scores(dense), target), progress=progress)
        if "ticket" not in cfg.methods:
            row.pop("ticket", None)
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        _log(progress, f"round {r}: {rows[-1]}")
    result = {"config": asdict(cfg), "architecture": s.architecture, "arguments": s.arguments, "data": s.data,
              "seeds": {"init_and_data_order": cfg.seed, "reinit": [cfg.seed + 1000 + r for r in range(1, cfg.rounds + 1)],
                        "score_batches": cfg.seed + 7},
              "dense_top1": round(dense_top1, 4), "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    _write_outputs(result, out)
    return result


def _log(progress: bool, text: str) -> None:
    if progress:
        print(f"[lottery] {text}", flush=True)


def format_table(result: dict) -> str:
    """Markdown: one row per sparsity, one column per method, plus the dense model."""
    methods = [m for m in METHODS if m in result["config"]["methods"]]
    lines = [f"| sparsity | {' | '.join(methods)} | dense |", "|---" * (len(methods) + 2) + "|"]
    for row in result["rows"]:
        cells = [f"{row[m]:.4f}" for m in methods]
        lines.append(f"| {row['sparsity'] * 100:.1f} % | {' | '.join(cells)} | {result['dense_top1']:.4f} |")
    c = result["config"]
    note = (f"{result['architecture']} {result['arguments']} at {c['size']} px, {c['epochs']} epochs per training, "
            f"rewind to iteration {c['rewind_iter']}, {c['rate'] * 100:.0f} % of the rest pruned per round, seed {c['seed']}, "
            f"data {result['data']['source']} ({result['data']['train_images']} train / {result['data']['val_images']} val"
            f"{', synthetic' if result['data']['synthetic'] else ''}); val top-1; {result['seconds']} s")
    return "\n".join(lines + ["", note])


def _write_outputs(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "lottery.json").write_text(json.dumps(result, indent=2))
    (out / "lottery.md").write_text(format_table(result) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["sparsity"] * 100 for r in result["rows"]]
    for m in METHODS:
        if m in result["config"]["methods"]:
            ax.plot(x, [r[m] for r in result["rows"]], marker="o", label=m)
    ax.axhline(result["dense_top1"], color="k", linestyle="--", label="dense")
    ax.set_xlabel("weights pruned (% of prunable)")
    ax.set_ylabel("val top-1")
    ax.set_title(f"{result['architecture']} at {result['config']['size']} px")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "lottery.png", dpi=120)
    plt.close(fig)


def register_cli(subparsers) -> None:
    """Add `edgeshrink lottery` to the CLI's subparsers."""
    p = subparsers.add_parser("lottery", help="lottery tickets vs random re-init, SNIP, GraSP and magnitude pruning")
    p.add_argument("--model", required=True, help="model card or architecture name")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="epochs of every training (dense, each round, each control)")
    p.add_argument("--rewind-iter", type=int, default=0, help="rewind survivors to this optimizer step (0 = initialisation)")
    p.add_argument("--rate", type=float, default=0.2, help="share of the remaining weights pruned per round")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width-mult", type=float)
    p.add_argument("--train-images", type=int, help="train on a fixed random subset of this many images")
    p.add_argument("--val-images", type=int, help="evaluate on a fixed random subset of this many images")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--data")
    p.add_argument("--synthetic-data", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="runs/lottery")
    p.set_defaults(func=_cmd_lottery)


def _cmd_lottery(args) -> int:
    cfg = LotteryConfig(model=args.model, rounds=args.rounds, epochs=args.epochs, rewind_iter=args.rewind_iter,
                        rate=args.rate, size=args.size, batch_size=args.batch_size, lr=args.lr,
                        width_mult=args.width_mult, train_images=args.train_images, val_images=args.val_images,
                        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), data=args.data,
                        synthetic_data=args.synthetic_data, seed=args.seed, threads=args.threads, out=args.out)
    print(format_table(run_lottery(cfg)))
    return 0
