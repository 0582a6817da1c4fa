"""Fold what a model computes from its weights alone into constants, for litert-torch.

torch.export keeps every op of the forward, including those that depend on parameters and buffers
only: timm's relative position biases (a bias table gathered by a fixed index, or an MLP over fixed
log-coordinates), position embeddings resized or expanded, weights reshaped or scaled. litert-torch
converts them as run-time ops (GATHER_ND, FULLY_CONNECTED on constants, ...), which XNNPACK does
not delegate (timm's ViT-RelPos: 9 GATHER_ND outside the partition in FP32 and INT8). The ONNX path
has this done by the TorchScript exporter's constant folding.

`fold_constants(program)` evaluates, once, every node of the exported graph whose inputs are all
weights, buffers, constants or other such nodes (random ops excepted), stores each value that the
rest of the graph reads as a buffer, and exports the folded module again. Values over
`max_elements` are left to run time (a broadcast bias could otherwise bloat the file)."""

from __future__ import annotations

RANDOM_OPS = ("rand", "normal", "bernoulli", "dropout", "uniform", "multinomial", "empty")


def _is_random(node) -> bool:
    name = str(node.target).lower()
    return any(word in name for word in RANDOM_OPS)


def _attribute(module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _constant_values(graph_module, *, max_elements: int) -> dict:
    """{node: value} of every get_attr node and every call_function node computed from them alone."""
    import torch
    from torch.fx.node import map_arg

    values: dict = {}
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            values[node] = _attribute(graph_module, node.target)
        elif node.op == "call_function" and not _is_random(node) and all(n in values for n in node.all_input_nodes):
            args = map_arg(node.args, lambda n: values[n])
            kwargs = map_arg(node.kwargs, lambda n: values[n])
            try:
                with torch.no_grad():
                    value = node.target(*args, **kwargs)
            except Exception:  # noqa: BLE001 - an op that cannot run eagerly here stays in the graph
                continue
            if isinstance(value, torch.Tensor) and value.numel() > max_elements:
                continue
            values[node] = value
    return values


def fold_module(graph_module, *, max_elements: int = 1 << 22) -> int:
    """Fold `graph_module` (an unlifted exported module: weights as get_attr) in place. Returns how
    many computed values became buffers."""
    import torch

    values = _constant_values(graph_module, max_elements=max_elements)
    folded = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node not in values or not isinstance(values[node], torch.Tensor):
            continue
        readers = [user for user in node.users if user not in values]
        if not readers:
            continue
        name = f"_edgeshrink_folded_{folded}"
        graph_module.register_buffer(name, values[node].detach().clone().contiguous())
        with graph_module.graph.inserting_before(node):
            constant = graph_module.graph.get_attr(name)
        for reader in readers:
            reader.replace_input_with(node, constant)
        folded += 1
    if folded:
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
    return folded


def edited_program(program, example, edit) -> tuple[object, int]:
    """(`program` exported again after `edit(module)` changed its unlifted module in place, how many
    changes `edit` made); the program itself when it made none or anything failed: the edits are
    optimisations, and the program as exported still converts."""
    import torch

    try:
        module = program.module()
        changed = edit(module)
        if not changed:
            return program, 0
        with torch.no_grad():
            return torch.export.export(module, (example,)), changed
    except Exception:  # noqa: BLE001 - an optimisation: the program as exported still converts
        return program, 0


def fold_constants(program, example) -> tuple[object, int]:
    """(program with weight-only computations folded into constants, how many values were folded);
    the program itself when nothing folds."""
    return edited_program(program, example, fold_module)
