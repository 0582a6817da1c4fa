"""Portable checkpoints: architecture name + arguments + per-layer channel spec + state_dict.

No module is ever pickled: loading rebuilds the registered architecture, resizes the layers a
pruning run changed (the channel spec), then loads the state_dict strictly, so a pruned model
reloads bit-exactly. Files load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from toolkit.errors import EdgeShrinkError

FORMAT = "edgeshrink-checkpoint/1"
_STRUCTURAL = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def channel_spec(model) -> dict[str, dict[str, int]]:
    """Structural sizes of every conv/linear/norm layer, keyed by module name."""
    import torch.nn as nn

    spec = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm)):
            spec[name] = {a: int(getattr(module, a)) for a in _STRUCTURAL if hasattr(module, a)}
            if isinstance(module, nn.GroupNorm):
                spec[name] = {"num_channels": module.num_channels, "num_groups": module.num_groups}
    return spec


def apply_channel_spec(model, spec: dict, state_dict: dict) -> None:
    """Resize layers of a fresh model to `spec`, with parameter shapes taken from `state_dict`."""
    import torch
    import torch.nn as nn

    modules = dict(model.named_modules())
    for name, attrs in spec.items():
        module = modules.get(name)
        if module is None:
            raise EdgeShrinkError(f"checkpoint layer {name!r} is not in the architecture; was it saved from another model?")
        for attr, value in attrs.items():
            setattr(module, attr, value)
        for pname, tensor in list(module.named_parameters(recurse=False)):
            shape = state_dict[f"{name}.{pname}" if name else pname].shape
            if tuple(tensor.shape) != tuple(shape):
                setattr(module, pname, nn.Parameter(torch.empty(shape, dtype=tensor.dtype)))
        for bname, tensor in list(module.named_buffers(recurse=False)):
            key = f"{name}.{bname}" if name else bname
            if tensor is not None and key in state_dict and tuple(tensor.shape) != tuple(state_dict[key].shape):
                module.register_buffer(bname, torch.empty_like(state_dict[key]))


def save_checkpoint(path: str | Path, model, architecture: str, arguments: dict, meta: dict | None = None) -> str:
    """Write the checkpoint atomically; returns its sha256."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "architecture": architecture,
        "arguments": dict(arguments),
        "channel_spec": channel_spec(model),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return sha256_file(path)


def read_checkpoint(path: str | Path) -> dict:
    """Load the payload; unreadable or foreign files give a one-line error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EdgeShrinkError(f"checkpoint {path} does not exist; train one with `edgeshrink train` or fix the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise EdgeShrinkError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}); re-download or retrain it"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgeShrinkError(f"checkpoint {path} is not an EdgeShrink checkpoint ({FORMAT}); save it with toolkit.checkpoint.save_checkpoint")
    return payload


def load_checkpoint(path: str | Path, expect_sha256: str | None = None):
    """Rebuild the model stored at `path` (eval mode). Returns (model, payload)."""
    from toolkit.architectures import create_model

    if expect_sha256 and Path(path).is_file():
        actual = sha256_file(path)
        if actual != expect_sha256:
            raise EdgeShrinkError(
                f"checkpoint {path} has sha256 {actual[:12]}…, the model card expects {expect_sha256[:12]}…; "
                "restore the file or update the card"
            )
    payload = read_checkpoint(path)
    model = create_model(payload["architecture"], **payload["arguments"])
    apply_channel_spec(model, payload["channel_spec"], payload["state_dict"])
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval(), payload
