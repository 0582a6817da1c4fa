"""What must not be pruned, found before any real pruning: the output layers, attention blocks,
and layer groups whose pruning breaks the forward pass (found by dry runs on copies)."""

from __future__ import annotations

import re

from typing import Callable, Optional

from toolkit.core.errors import EdgeShrinkError

_UNTRACEABLE_HINT = "skip channel pruning for this model (CLI --no-structured, API structured=False)"


class PruningRefused(EdgeShrinkError):
    """Pruning cannot be done safely for this model (or within its work budget). The run goes on
    with the dense model and says why; the message names the switch that skips pruning."""


class BudgetSpent(PruningRefused):
    """The pruning work budget (WorkBudget) ran out: the whole prune stops, whatever part of the
    search it was in."""


class WorkBudget:
    """A budget of pruning work counted in trials (a dry-run prune of a copy, or one pruning
    sub-step), not seconds: the same command gives the same answer on a busy machine."""

    def __init__(self, max_trials: Optional[int]):
        self.max_trials = max_trials
        self.spent = 0

    def spend(self, doing: str, trials: int = 1) -> None:
        """Count `trials`; raise BudgetSpent once more than `max_trials` were needed."""
        self.spent += trials
        if self.max_trials is not None and self.spent > self.max_trials:
            raise BudgetSpent(f"pruning needed more than {self.max_trials} trials while {doing}; raise "
                                 f"pruning.max_trials (card or profile pruning block, CLI --prune-max-trials, "
                                 f"API max_trials=...) or {_UNTRACEABLE_HINT}")


def flat_outputs(output) -> list:
    """The tensors of a model output (tensor, tuple/list or dict of tensors), in order."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in flat_outputs(item)]
    return []


def output_shapes(model, example_input) -> list[tuple[int, ...]]:
    """Shapes of the model's output tensors for `example_input` (eval mode, no grad)."""
    import torch

    with torch.no_grad():
        return [tuple(t.shape) for t in flat_outputs(model(example_input))]


def find_output_layers(model, example_input) -> list[str]:
    """Names of the conv/linear layers that produce the model's outputs: for each output, the last
    executed layer whose output width equals the output's channel dimension."""
    import torch
    import torch.nn as nn

    executed: list[tuple[str, int]] = []
    layer_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, layer_types):
            width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name, width=width: executed.append((name, width))))
    try:
        with torch.no_grad():
            outputs = flat_outputs(model(example_input))
    finally:
        for handle in handles:
            handle.remove()
    found = []
    for out in outputs:
        channels = {out.shape[-1]} if out.dim() <= 3 else {out.shape[1]}
        for name, width in reversed(executed):
            if width in channels:
                if name not in found:
                    found.append(name)
                break
    return found + [name for name in traced_output_layers(model, example_input) if name not in found]


_SHAPE_ONLY = {"View", "Reshape", "ReshapeAlias", "UnsafeView", "Permute", "Transpose", "Cat", "Stack", "Clone",
               "Flatten", "Squeeze", "Unsqueeze", "Expand"}  # autograd nodes that move values, never mix channels


def traced_output_layers(model, example_input) -> list[str]:
    """Names of the conv/linear layers whose outputs reach a model output only through reshapes,
    permutes and concatenations: e.g. a detector's box and class convs of every level, flattened
    and concatenated into one (N, priors, 4 + C) output. Their output channels are what the output
    means, so pruning must keep them whole."""
    import torch
    import torch.nn as nn

    produced, handles = {}, []

    def note(name: str):
        def hook(module, inputs, output) -> None:  # returns None: the output is left as it is
            if torch.is_tensor(output) and output.grad_fn is not None:
                produced.setdefault(output.grad_fn, name)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
            handles.append(module.register_forward_hook(note(name)))
    try:
        with torch.enable_grad():
            outputs = flat_outputs(model(example_input))
    finally:
        for handle in handles:
            handle.remove()
    found, seen = [], set()
    stack = [t.grad_fn for t in reversed(outputs) if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in produced:
            found.append(produced[node])
        elif type(node).__name__.rstrip("0123456789").removesuffix("Backward") in _SHAPE_ONLY:
            stack.extend(n for n, _ in reversed(node.next_functions) if n is not None)
    return found


# a matmul (the @ operator between operands, not a decorator), einsum, softmax, attention kernels
_TOKEN_MIXING = re.compile(r"matmul|bmm|einsum|scaled_dot_product|softmax|[\w)\]][ \t]*@[ \t]*[\w(]")


def _mixes_tokens(module) -> bool:
    """Whether a module named like attention may mix tokens: its class's code, or the file that
    defines it (torchvision's Swin calls a module-level window-attention function), holds a matmul,
    einsum, softmax or scaled_dot_product_attention. True when the source cannot be read. An
    attention *gate* (MONAI's AttentionBlock: convolutions and a sigmoid) does not."""
    import inspect

    try:
        sources = [inspect.getsource(type(module)), inspect.getsource(inspect.getmodule(type(module)))]
    except (OSError, TypeError):
        return True
    code = "\n".join(line.split("#")[0] for source in sources for line in source.splitlines())  # comments dropped
    return bool(_TOKEN_MIXING.search(code))


def attention_layers(model) -> tuple[list[str], list[tuple[str, str]]]:
    """(names of nn.MultiheadAttention layers, [(name, class) of other attention blocks]): modules
    named like attention whose forward mixes tokens (`_mixes_tokens`)."""
    import torch.nn as nn

    standard, foreign = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            standard.append(name)
        elif "attention" in type(module).__name__.lower() and _mixes_tokens(module) and not any(
                isinstance(m, nn.MultiheadAttention) for m in module.modules()):
            if not any(name.startswith(f"{f}.") for f, _ in foreign):
                foreign.append((name, type(module).__name__))
    return standard, foreign


def refuse_foreign_attention(model) -> None:
    """Refuse (one line, before any tracing) models with attention blocks other than
    nn.MultiheadAttention: Torch-Pruning's graph build on them runs for minutes and many GB."""
    _, foreign = attention_layers(model)
    if foreign:
        name, cls = foreign[0]
        raise PruningRefused(
            f"pruning refused: {type(model).__name__} has {len(foreign)} attention block(s) ({cls} at {name!r}) "
            f"whose token reshapes Torch-Pruning cannot trace safely; {_UNTRACEABLE_HINT}")


def describe_failure(exc: BaseException) -> str:
    """One line: exception type and the first line of its message (shortened)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, MemoryError) and not text:
        text = "needed more than 3/4 of the free memory (toolkit.core.memory)"
    return f"{type(exc).__name__}: {text}"[:200]


def check_forward(model, example_input, expected: list[tuple[int, ...]]) -> Optional[str]:
    """None when the forward runs and its output shapes equal `expected`; else the reason."""
    try:
        shapes = output_shapes(model, example_input)
    except Exception as exc:  # any failure of the pruned forward is a finding, not a crash
        return f"forward fails after pruning ({describe_failure(exc)})"
    if shapes != expected:
        return f"output shape changes from {expected} to {shapes}"
    return None


def find_breaking_roots(trial: Callable[[list[str]], Optional[str]], roots: list[str],
                        budget: WorkBudget) -> list[dict]:
    """Bisect `roots` (the groups' root layer names) for those whose pruning makes `trial` fail.
    `trial(allowed)` prunes only the groups rooted at `allowed` on a copy and returns a failure
    reason or None. Returns [{"layer", "reason"}] to exclude."""
    budget.spend("searching for layer groups that break the forward")
    reason = trial(roots)
    if reason is None:
        return []
    if len(roots) == 1:
        return [{"layer": roots[0], "reason": reason}]
    half = len(roots) // 2
    bad = find_breaking_roots(trial, roots[:half], budget) + find_breaking_roots(trial, roots[half:], budget)
    bad_names = {b["layer"] for b in bad}
    allowed = [r for r in roots if r not in bad_names]
    budget.spend("searching for layer groups that break the forward")
    if trial(allowed) is None:
        return bad
    kept: list[str] = []
    for root in allowed:  # each half passes alone but not together: add groups one at a time
        budget.spend("searching for layer groups that break the forward")
        reason = trial(kept + [root])
        if reason is None:
            kept.append(root)
        else:
            bad.append({"layer": root, "reason": f"breaks the forward together with other groups ({reason})"})
    return bad
