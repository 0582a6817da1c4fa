"""Command line: `edgeshrink <command>` (also `python -m toolkit`)."""

from __future__ import annotations

import argparse
import sys

from toolkit.core.errors import EdgeShrinkError, os_error_line


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`edgeshrink: error: ...`, exit 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"edgeshrink: error: {self.prog}: {message}; see `{self.prog} --help`\n")


def _number(kind, low=None, high=None, *, low_open=False):
    """An argparse type: a finite `kind` in [low, high] (low excluded with low_open)."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad_low = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or bad_low or (high is not None and value > high):
            rng = f"{'>' if low_open else '>='} {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {rng}")
        return value

    parse.__name__ = kind.__name__
    return parse


SEED = _number(int, 0, 2**32 - 1)


def _user_path(text: str) -> str:
    """A path argument with a leading ~ / ~user expanded (a quoted '~/x' must not create a folder named ~)."""
    import os

    path = os.path.expanduser(text)
    if path.startswith("~"):
        raise argparse.ArgumentTypeError(f"{text!r} starts with ~ but names no known user; write the folder out in full")
    return path


COUNT = _number(int, 0)          # epochs, ...
POSITIVE = _number(int, 1)       # sizes, runs
THREADS = _number(int, 1, 256)   # more only crashes the OpenMP runtime (toolkit.pipeline.options.MAX_THREADS)


def _cmd_train(args) -> int:
    from pathlib import Path

    from toolkit.config.cards import load_card
    from toolkit.train.distributed import launch, under_torchrun
    from toolkit.train.loop import TrainConfig
    from toolkit.pipeline.train_card import train_card

    if args.nproc > 1 and not under_torchrun():  # start N copies of this command under torchrun
        import sys

        return launch(args.nproc, sys.argv[1:])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    card = load_card(args.model)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                      label_smoothing=args.label_smoothing, seed=args.seed)
    out = Path(args.out or f"runs/train-{card.name}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, an unwritable place: say so before training for an hour
        raise EdgeShrinkError(f"cannot create output folder {out} ({exc.strerror or type(exc).__name__}); "
                              "choose a writable --out") from None
    prov = train_card(card, cfg, out, data=args.data, synthetic=args.synthetic_data, resume=args.resume)
    if prov:  # rank 0
        print(f"final checkpoint: {out / 'last.pt'}  sha256={prov['sha256']}")
    return 0


def _cmd_run(args) -> int:
    import time

    from toolkit.api import plan, run
    from toolkit.pipeline.options import given_options

    if args.host:
        from toolkit.delivery.remote import parse_host

        from toolkit.delivery.remote import check_known_hosts

        parse_host(args.host)  # a malformed HOST or unusable --known-hosts fails before any work
        check_known_hosts(args.known_hosts)
    if args.plan:
        if args.model:
            raise EdgeShrinkError("give --plan or --model, not both (a plan already names its model)")
        run_plan = _replay(args)
    elif args.model:
        run_plan = plan(args.model, target=args.target, **given_options(args))
    else:
        raise EdgeShrinkError("edgeshrink run needs --model NAME_OR_CARD.yaml (or --plan config.json)")
    t0 = time.perf_counter()
    bundle = run(run_plan).path
    print((bundle / "report.md").read_text())
    print(f"wrote {bundle} in {time.perf_counter() - t0:.0f} s")
    if args.host:
        from toolkit.delivery.compare import collect_rows, format_rows
        from toolkit.delivery.remote import deliver_and_benchmark

        deliver_and_benchmark(bundle, args.host, args.remote_python, args.ssh_key, args.known_hosts)
        print(format_rows(collect_rows([bundle])))
    return 0


def _replay(args):
    """The plan of `--plan config.json`, with the options a replay may change (--out, --no-bench,
    --quiet, --no-cache, --train-threads); any other run flag is refused, not ignored."""
    from toolkit.pipeline.options import changeable_on_replay, flag_of, given_options
    from toolkit.pipeline.plan import load_plan_file, with_options

    given = given_options(args)
    fixed = [name for name in given if name not in changeable_on_replay()]
    if fixed:
        allowed = ", ".join(flag_of(name) for name in changeable_on_replay())
        raise EdgeShrinkError(f"{flag_of(fixed[0])} cannot change a replayed plan (with --plan only {allowed}); "
                              "make a new plan with --model")
    return with_options(load_plan_file(args.plan), **given)


def _csv(text: str, kind, what: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise EdgeShrinkError(f"{what} must be a comma-separated list, e.g. {'0.3,0.4,0.5' if kind is float else 'uniform,global'}; got {text!r}") from None


def _cmd_sweep(args) -> int:
    from toolkit.core.paths import DIST_DIR
    from toolkit.studies.sweep import SweepOptions, run_sweep

    opts = SweepOptions(model=args.model, target=args.target, scopes=_csv(args.scopes, str, "--scopes"),
                        macs=_csv(args.macs, float, "--macs"), finetune_epochs=args.finetune_epochs,
                        repeats=args.repeats, out_root=args.out or str(DIST_DIR), data=args.data,
                        synthetic_data=args.synthetic_data, checkpoint=args.checkpoint, seed=args.seed,
                        progress=not args.quiet)
    out = run_sweep(opts)
    print((out / "sweep.md").read_text())
    print(f"wrote {out}")
    return 0


def _cmd_deliver(args) -> int:
    from pathlib import Path

    from toolkit.delivery.compare import collect_rows, format_rows
    from toolkit.delivery.remote import deliver_and_benchmark

    deliver_and_benchmark(Path(args.bundle), args.host, args.remote_python, args.ssh_key, args.known_hosts)
    print(format_rows(collect_rows([Path(args.bundle)])))
    return 0


def _cmd_compare(args) -> int:
    from pathlib import Path

    from toolkit.delivery.compare import collect_rows, format_rows

    print(format_rows(collect_rows([Path(b) for b in args.bundles])))
    return 0


def _cmd_eval_pack(args) -> int:
    from pathlib import Path

    from toolkit.pipeline.device_files import write_eval_pack
    from toolkit.config.cards import load_card
    from toolkit.tasks.registry import card_input_spec, load_task

    from toolkit.tasks.registry import DataRef

    card = load_card(args.model)
    out = Path(args.out or f"dist/{card.name}-heldout.npz")
    if out.suffix != ".npz" or out.is_dir():
        raise EdgeShrinkError(f"--out {out} must name a .npz file (e.g. dist/{card.name}-heldout.npz), not a folder")
    task = load_task(card, card_input_spec(card), DataRef(args.data, args.synthetic_data))
    try:
        path = write_eval_pack(task, out)
    except OSError as exc:
        raise EdgeShrinkError(f"cannot write {out} ({exc.strerror or type(exc).__name__}); choose a writable --out") from None
    print(f"wrote {path} ({task.eval_count()} held-out items)")
    return 0


def _cmd_publish(args) -> int:
    from pathlib import Path

    from toolkit.delivery.publish import publish_checkpoint, publish_pruned

    if args.bundle:
        path = publish_pruned(Path(args.bundle))
        print(f"published {path}; its card now lists it under `pruned` (runs with the same settings skip fine-tuning)")
        return 0
    if not (args.model and args.run):
        raise EdgeShrinkError("publish needs --model M --run DIR (a dense training run) or --bundle dist/M-T (a pruned model)")
    path = publish_checkpoint(args.model, Path(args.run))
    print(f"published {path}; card models/{args.model}.yaml updated (checkpoint sha256 + provenance)")
    return 0


def _cmd_models(args) -> int:
    """List the cards; a broken card file is reported in one line on stderr, the good ones still listed."""
    from toolkit.models.architectures import list_models
    from toolkit.config.cards import list_cards, load_card

    print("model cards (models/*.yaml):")
    broken = 0
    for name in list_cards():
        try:
            card = load_card(name)
        except EdgeShrinkError as exc:
            broken += 1
            print(f"edgeshrink: skipped broken model card: {exc}", file=sys.stderr)
            continue
        ck = card.checkpoint_path()
        state = "checkpoint ok" if ck and ck.is_file() else "no checkpoint"
        print(f"  {name:28s} {card.architecture:20s} {card.task:15s} {card.input.size[0]}x{card.input.size[1]}  {state}")
    print("architectures:", ", ".join(list_models()))
    return 2 if broken else 0


def _cmd_targets(args) -> int:
    """List the profiles; a broken profile file is reported in one line on stderr, the good ones still listed."""
    from toolkit.config.targets import list_targets, load_target

    broken = 0
    for name in list_targets():
        try:
            t = load_target(name)
        except EdgeShrinkError as exc:
            broken += 1
            print(f"edgeshrink: skipped broken target profile: {exc}", file=sys.stderr)
            continue
        print(f"  {name:18s} {t.device.soc:22s} {t.runtime.engine}/{t.runtime.delegate:8s} {'+'.join(t.precisions):9s} "
              f"{t.deploy.transport:5s} {t.description}")
    return 2 if broken else 0


def _cmd_validate(args) -> int:
    """`ok PATH` on stdout per valid file, one `invalid ...` line on stderr per bad one; exit 2 when any is bad."""
    from pathlib import Path

    from toolkit.core.paths import targets_dir
    from toolkit.config.targets import validate_target_file

    files = [Path(f) for f in args.files] or sorted(targets_dir().glob("*.yaml"))
    failed = 0
    for f in files:
        try:
            validate_target_file(f)
            print(f"ok      {f}")
        except EdgeShrinkError as exc:
            failed += 1
            print(f"edgeshrink: invalid {exc}", file=sys.stderr)
    return 2 if failed else 0


def _cmd_bench(args) -> int:
    from pathlib import Path

    from toolkit.delivery.rebench import bench_bundle, format_bench_table

    result = bench_bundle(Path(args.bundle), args.threads, args.min_runs, args.min_seconds)
    print(format_bench_table(result))
    print(f"wrote {Path(args.bundle) / 'bench.json'}")
    return 0


def _ssh_args(p, required: bool = False) -> None:
    p.add_argument("--host", required=required, help="user@host[:port]: deliver the bundle over SSH and benchmark there")
    p.add_argument("--remote-python", help="python on the device (default: the profile's runtime.python)")
    p.add_argument("--ssh-key", type=_user_path, help="private key (default: your SSH agent/config, or $EDGESHRINK_SSH_KEY)")
    p.add_argument("--known-hosts", type=_user_path,
                   help="known_hosts file to use (in an existing folder: the device's host key is stored and checked there)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model card's architecture on its dataset")
    p.add_argument("--model", required=True)
    p.add_argument("--data", help="dataset folder (default: $EDGESHRINK_DATA_DIR/<card dataset>)")
    p.add_argument("--synthetic-data", action="store_true", help="use a small generated dataset (labelled synthetic)")
    p.add_argument("--epochs", type=COUNT, default=30)
    p.add_argument("--batch-size", type=POSITIVE, default=64)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument("--lr", type=_number(float, 0, low_open=True), default=3e-3)
    p.add_argument("--weight-decay", type=_number(float, 0), default=0.05)
    p.add_argument("--warmup-epochs", type=_number(float, 0), default=1.0)
    p.add_argument("--label-smoothing", type=_number(float, 0, 1), default=0.1)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", type=_user_path, help="output folder (default runs/train-<model>)")
    p.add_argument("--threads", type=THREADS, help="torch CPU threads (default: all cores)")
    p.add_argument("--nproc", type=POSITIVE, default=1, help="data-parallel processes on this machine (torchrun; --batch-size is the global batch)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt (also automatic when it matches this config)")
    p.set_defaults(func=_cmd_train)


def _add_run(sub) -> None:
    from toolkit.pipeline.options import add_run_flags

    p = sub.add_parser("run", help="prune, quantize, convert, verify and benchmark a model for a target")
    p.add_argument("--model", help="a card name (models/<name>.yaml) or the path of a card .yaml file")
    p.add_argument("--plan", help="replay a run: a bundle's config.json")
    p.add_argument("--target", default="host")
    add_run_flags(p)  # one flag per run option (toolkit.pipeline.options.RunOptions)
    _ssh_args(p)
    p.set_defaults(func=_cmd_run)


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="latency (and optionally accuracy) of pruning settings before a full run")
    p.add_argument("--model", required=True)
    p.add_argument("--target", default="host")
    p.add_argument("--scopes", default="uniform,global", help="comma-separated: uniform, global")
    p.add_argument("--macs", default="0.3,0.4,0.5", help="comma-separated MAC fractions to keep")
    p.add_argument("--finetune-epochs", type=COUNT, default=0, help="fine-tune each point and report its accuracy")
    p.add_argument("--repeats", type=POSITIVE, default=2, help="interleaved benchmark repeats (lowest p50 kept)")
    p.add_argument("--out", default=None, type=_user_path, help="output root (default: dist/)")
    p.add_argument("--data")
    p.add_argument("--synthetic-data", action="store_true")
    p.add_argument("--checkpoint")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_sweep)


def _add_deliver(sub) -> None:
    p = sub.add_parser("deliver", help="copy a bundle to a device over SSH, check hashes, benchmark, pull results")
    p.add_argument("bundle")
    _ssh_args(p, required=True)
    p.set_defaults(func=_cmd_deliver)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="one table over bundles and their device results")
    p.add_argument("bundles", nargs="+")
    p.set_defaults(func=_cmd_compare)


def _add_eval_pack(sub) -> None:
    p = sub.add_parser("eval-pack", help="write the held-out set as .npz for on-device accuracy checks")
    p.add_argument("--model", required=True)
    p.add_argument("--data")
    p.add_argument("--synthetic-data", action="store_true")
    p.add_argument("--out", type=_user_path)
    p.set_defaults(func=_cmd_eval_pack)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="re-benchmark every file of a bundle (table + bench.json)")
    p.add_argument("bundle")
    p.add_argument("--threads", type=THREADS)
    p.add_argument("--min-runs", type=POSITIVE, default=100)
    p.add_argument("--min-seconds", type=_number(float, 0, 3600), default=5.0)
    p.set_defaults(func=_cmd_bench)


def _add_publish(sub) -> None:
    p = sub.add_parser("publish", help="commit a trained dense checkpoint (--run) or a bundle's pruned one (--bundle) to its card")
    p.add_argument("--model", help="card name (with --run)")
    p.add_argument("--run", help="training output folder (holds last.pt, history.json and provenance.json)")
    p.add_argument("--bundle", help="an `edgeshrink run` output folder whose pruned, fine-tuned model to publish")
    p.set_defaults(func=_cmd_publish)


def build_parser() -> argparse.ArgumentParser:
    """The `edgeshrink` parser: one small `_add_<command>` function per subcommand."""
    parser = _Parser(prog="edgeshrink", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_run, _add_sweep, _add_deliver, _add_compare, _add_eval_pack, _add_bench, _add_publish, _add_others):
        add(sub)
    return parser


def _add_others(sub) -> None:
    """lottery, sparsity and zoo (registered by their own modules), models, targets, validate."""
    from toolkit.studies.lottery import register_cli as lottery_cli
    from toolkit.studies.sparsity_study import register_cli as sparsity_cli

    from toolkit.studies.zoo import register_cli as zoo_cli

    lottery_cli(sub)
    sparsity_cli(sub)
    zoo_cli(sub)
    sub.add_parser("models", help="list model cards and architectures").set_defaults(func=_cmd_models)
    sub.add_parser("targets", help="list target profiles").set_defaults(func=_cmd_targets)
    p = sub.add_parser("validate", help="validate target profile files (default: all in targets/)")
    p.add_argument("files", nargs="*")
    p.set_defaults(func=_cmd_validate)


def _terminate_like_interrupt() -> None:
    """SIGTERM (what `timeout` and `kill` send) unwinds like Ctrl-C: staged folders and workers are cleaned up."""
    import os
    import signal

    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:  # a forked worker (image decoding pool): die as SIGTERM means
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _terminate_like_interrupt()
    try:
        return args.func(args)
    except EdgeShrinkError as exc:
        print(f"edgeshrink: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeshrink: interrupted; partial outputs removed", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a read-only place, a quota: the system said no, in one line
        print(f"edgeshrink: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
