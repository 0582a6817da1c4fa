"""Data-parallel training under torchrun: process-group setup, batch sharding, rank-0 duties.

`torchrun` (``python -m torch.distributed.run``) starts N copies of the same command and sets
RANK / WORLD_SIZE / LOCAL_RANK; `init_from_env()` turns that into a `DistContext` (gloo on CPU,
NCCL on GPUs). Every rank walks the same global batch order (same seed) and keeps its own
contiguous slice of each global batch (per-process batch = global / N), so with gradient
averaging a step sees the same samples as one process with the whole batch. BatchNorm uses the
statistics of the *global* batch (`global_batchnorm`), so 1 and N processes train the same
function up to float rounding. Only rank 0 writes checkpoints, logs and shows progress bars.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

from toolkit.core.errors import EdgeShrinkError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"  # none | gloo | nccl

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        """This rank's contiguous slice of a global batch; refuses a batch N does not divide."""
        if global_batch % self.world_size:
            raise EdgeShrinkError(
                f"global batch {global_batch} is not divisible by {self.world_size} processes; pass a --batch-size that is a multiple of --nproc")
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


SINGLE = DistContext()


def under_torchrun() -> bool:
    """True inside a process started by torchrun."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init_from_env() -> DistContext:
    """Join the process group torchrun describes (idempotent); a plain process gets SINGLE."""
    if not under_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's `obj` on every rank."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def wrap_model(model, ctx: DistContext):
    """DistributedDataParallel around `model` (gradients averaged over ranks); the model itself
    when single-process. BatchNorm layers switch to global-batch statistics."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    global_batchnorm(model, True)
    if ctx.backend == "nccl":
        import torch

        model.to(torch.device("cuda", ctx.local_rank))
        return DDP(model, device_ids=[ctx.local_rank])
    return DDP(model)


def unwrap(model):
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(model, "module", model)


def global_batchnorm(model, on: bool) -> None:
    """Switch every BatchNorm2d of `model` to (or back from) statistics over the global batch.
    torch's SyncBatchNorm refuses CPU tensors, so this swaps the class in place: same
    parameters and buffers, same state_dict keys."""
    import torch.nn as nn

    global_cls = _global_bn_class()
    for module in model.modules():
        if on and type(module) is nn.BatchNorm2d:
            module.__class__ = global_cls
        elif not on and type(module) is global_cls:
            module.__class__ = nn.BatchNorm2d


def _global_bn_forward(self, x):
    import warnings

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the differentiable all_reduce is marked deprecated
        from torch.distributed.nn.functional import all_reduce
    if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or not self.track_running_stats, self.momentum or 0.0, self.eps)
    count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
    c = x.shape[1]
    n = stats[-1]
    mean, var = stats[:c] / n, stats[c:2 * c] / n - (stats[:c] / n) ** 2
    with torch.no_grad():
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
        self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
    y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
    return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


_GLOBAL_BN: list = []


def _global_bn_class():
    """BatchNorm2d with global-batch statistics, built on first use (keeps this module torch-free)."""
    if not _GLOBAL_BN:
        import torch.nn as nn

        _GLOBAL_BN.append(type("GlobalBatchNorm2d", (nn.BatchNorm2d,), {"forward": _global_bn_forward}))
    return _GLOBAL_BN[0]


def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    """The argument list that starts `python -m toolkit <module_args>` on `nproc` local processes."""
    if nproc < 1:
        raise EdgeShrinkError(f"--nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
            "-m", "toolkit", *module_args]


def without_nproc(args: Sequence[str]) -> list[str]:
    """`args` minus `--nproc N` / `--nproc=N` (torchrun's own parser would read it as an
    ambiguous abbreviation of --nproc-per-node; the children know N from WORLD_SIZE)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(nproc: int, module_args: Sequence[str], env: dict | None = None) -> int:
    """Run `edgeshrink <module_args>` under torchrun on this machine; returns its exit status."""
    return subprocess.run(torchrun_command(nproc, without_nproc(module_args)), env=env, check=False).returncode
