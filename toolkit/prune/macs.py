"""Cheap MAC counting: forward hooks on conv / linear / attention layers compute MACs from the
shapes they see. One forward pass per count (milliseconds at edge input sizes), unlike a full
operator profiler, so a MAC-budget search can count after every fine pruning step."""

from __future__ import annotations


def _conv_macs(module, inputs, output) -> int:
    kernel = 1
    for k in module.kernel_size:
        kernel *= int(k)
    per_output = (module.in_channels // module.groups) * kernel
    if type(module).__name__.startswith("ConvTranspose"):
        return int(inputs[0].numel()) * (module.out_channels // module.groups) * kernel
    return int(output.numel()) * per_output


def _attention_macs(module, inputs, output) -> int:
    query, key = inputs[0], inputs[1]
    embed = module.embed_dim
    q_tokens, k_tokens = query.numel() // embed, key.numel() // embed
    batch = 1 if query.dim() < 3 else (query.shape[0] if module.batch_first else query.shape[1])
    projections = (q_tokens + 2 * k_tokens) * embed * embed + q_tokens * embed * embed
    scores = 2 * q_tokens * (k_tokens // max(batch, 1)) * embed
    return int(projections + scores)


def layer_macs_hooks(model, totals: list) -> list:
    """Register MAC-counting hooks on `model`; each forward adds to `totals[0]`. Returns the hook
    handles (remove them when done)."""
    import torch.nn as nn

    def add(fn):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            totals[0] += fn(module, inputs, out)
        return hook

    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            handles.append(module.register_forward_hook(add(_conv_macs)))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(
                add(lambda m, i, o: int(o.numel()) * m.in_features)))
        elif isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_hook(add(_attention_macs)))
    return handles


def count_macs(model, example_input) -> int:
    """Multiply-accumulates of one forward pass of `model` on `example_input` (per batch item;
    conv, linear and nn.MultiheadAttention layers; the forward runs in eval mode, no grad)."""
    import torch

    totals = [0]
    handles = layer_macs_hooks(model, totals)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return totals[0] // max(int(example_input.shape[0]), 1)


def count_params(model) -> int:
    """Number of parameters (each shared tensor once)."""
    return int(sum(p.numel() for p in model.parameters()))
