"""Portable checkpoints: architecture name + arguments + per-layer channel spec + state_dict.

No module is ever pickled: loading rebuilds the registered architecture, resizes the layers a
pruning run changed (the channel spec), then loads the state_dict strictly, so a pruned model
reloads bit-exactly. Files load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from toolkit.core.errors import EdgeShrinkError

FORMAT = "edgeshrink-checkpoint/1"
_STRUCTURAL = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def channel_spec(model) -> dict[str, dict]:
    """Structural sizes of every conv/linear/norm layer, keyed by module name."""
    import torch.nn as nn

    spec = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
            spec[name] = {a: int(getattr(module, a)) for a in _STRUCTURAL if hasattr(module, a)}
        elif isinstance(module, nn.GroupNorm):
            spec[name] = {"num_channels": module.num_channels, "num_groups": module.num_groups}
        elif isinstance(module, nn.LayerNorm):
            spec[name] = {"normalized_shape": [int(d) for d in module.normalized_shape]}
        elif isinstance(module, nn.MultiheadAttention):
            spec[name] = {"embed_dim": int(module.embed_dim), "kdim": int(module.kdim), "vdim": int(module.vdim),
                          "head_dim": int(module.head_dim)}
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
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for name, module in modules.items():  # every tensor a pruning run resized (also layer scales, tokens)
        for pname, tensor in list(module.named_parameters(recurse=False)):
            key = f"{name}.{pname}" if name else pname
            if key in state_dict and tuple(tensor.shape) != tuple(state_dict[key].shape):
                setattr(module, pname, nn.Parameter(torch.empty(state_dict[key].shape, dtype=tensor.dtype)))
        for bname, tensor in list(module.named_buffers(recurse=False)):
            key = f"{name}.{bname}" if name else bname
            if tensor is not None and key in state_dict and tuple(tensor.shape) != tuple(state_dict[key].shape):
                module.register_buffer(bname, torch.empty_like(state_dict[key]))


def _plain_metadata(state_dict) -> dict:
    """`state_dict._metadata` (per-module versions, e.g. MNASNet's) as plain nested dicts."""
    metadata = getattr(state_dict, "_metadata", None) or {}
    return {str(k): {str(a): v for a, v in dict(v).items()} for k, v in metadata.items()}


def with_metadata(state_dict: dict, metadata: dict | None):
    """An OrderedDict copy of `state_dict` carrying `metadata` as `_metadata` (what load_state_dict reads)."""
    from collections import OrderedDict

    restored = OrderedDict(state_dict)
    if metadata:
        restored._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())
    return restored


def save_checkpoint(path: str | Path, model, architecture: str, arguments: dict, meta: dict | None = None) -> str:
    """Write the checkpoint atomically; returns its sha256."""

    from toolkit.models.reparameterize import deploy_form_record

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    payload = {
        "format": FORMAT,
        "architecture": architecture,
        "arguments": dict(arguments),
        **deploy_form_record(model),  # loading fuses/folds the fresh model before the state_dict
        "channel_spec": channel_spec(model),
        "state_dict": {k: v.detach().clone() for k, v in state.items()},
        "state_dict_metadata": _plain_metadata(state),
        "meta": dict(meta or {}),
    }
    from toolkit.core.atomic import save_torch

    save_torch(payload, path)
    return sha256_file(path)


def read_checkpoint(path: str | Path) -> dict:
    """Load the payload; unreadable or foreign files give a one-line error."""
    import torch

    from toolkit.core.files import CHECKPOINT_MAX_BYTES, require_file

    path = require_file(Path(path), "checkpoint", "train one with `edgeshrink train` or fix the path",
                        CHECKPOINT_MAX_BYTES)  # a folder, FIFO or device says so
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise EdgeShrinkError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}); re-download or retrain it"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgeShrinkError(f"checkpoint {path} is not an EdgeShrink checkpoint ({FORMAT}); save it with toolkit.models.checkpoint.save_checkpoint")
    return payload


def load_checkpoint(path: str | Path, expect_sha256: str | None = None, *, factory=None, source=None):
    """Rebuild the model stored at `path` (eval mode) with `source.build()` (a card's ModelSource:
    the card's architecture wins over the one the file names), `factory(**arguments)`, or else the
    architecture the file names, only when that is registered or the running card's own
    (`checkpoint_architecture`: a weights file never chooses code to import). Returns (model, payload)."""
    from toolkit.models.architectures import build_stored

    if expect_sha256 and Path(path).is_file():
        actual = sha256_file(path)
        if actual != expect_sha256:
            raise EdgeShrinkError(
                f"checkpoint {path} has sha256 {actual[:12]}…, the model card expects {expect_sha256[:12]}…; "
                "restore the file or update the card"
            )
    from toolkit.models.weights import check_finite

    payload = read_checkpoint(path)
    check_finite(payload["state_dict"], f"checkpoint {path}")
    if source is not None:
        model = source.build()
    elif factory is not None:
        model = factory(**payload["arguments"])
    else:
        model = build_stored(payload, path)
    from toolkit.models.reparameterize import rebuild_deploy_form

    model = rebuild_deploy_form(model, payload)
    apply_channel_spec(model, payload["channel_spec"], payload["state_dict"])
    model.load_state_dict(with_metadata(payload["state_dict"], payload.get("state_dict_metadata")), strict=True)
    return model.eval(), payload


def load_state_dict_file(path: str | Path, *, key: str | None = None, strip_prefix: str | None = None) -> dict:
    """A plain PyTorch state_dict read with weights_only=True, optionally nested under `key`
    (e.g. "state_dict") and with `strip_prefix` (e.g. "module.") removed. Refuses unreadable
    files, a missing key and contents that are not a name -> tensor mapping (one-line errors)."""
    import torch

    from toolkit.core.files import CHECKPOINT_MAX_BYTES, require_file

    path = require_file(Path(path), "state_dict file", "fix the path", CHECKPOINT_MAX_BYTES)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or pickled-module files
        raise EdgeShrinkError(f"state_dict file {path} is unreadable with weights_only=True ({type(exc).__name__}); "
                              "save it with torch.save(model.state_dict(), path)") from None
    if key is not None:
        if not isinstance(loaded, dict) or key not in loaded:
            found = sorted(loaded)[:5] if isinstance(loaded, dict) else type(loaded).__name__
            raise EdgeShrinkError(f"state_dict file {path} has no entry {key!r} (found {found}); fix the key")
        loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise EdgeShrinkError(f"{path} does not hold a state_dict (name -> tensor); give key= for a nested one")
    metadata = getattr(loaded, "_metadata", None)
    if strip_prefix:
        loaded = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in loaded.items()}
        metadata = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in (metadata or {}).items()}
    return with_metadata(loaded, metadata)


def fit_state_dict(model, state_dict: dict, source: str):
    """Load `state_dict` into `model` strictly after checking every key and shape first; the
    first missing, unexpected or mis-shaped key is a one-line error (nothing is loaded then).
    Returns the model. Legacy files without BatchNorm `num_batches_tracked` take the model's
    defaults, as PyTorch's load_state_dict does; NaN or Inf weights are refused."""
    from toolkit.models.weights import check_finite, with_legacy_buffers

    check_finite(state_dict, source)
    expected = model.state_dict()
    state_dict = with_legacy_buffers(state_dict, expected)
    for name, tensor in expected.items():
        if name not in state_dict:
            prefixed = next((k for k in state_dict if k.endswith(f".{name}")), None)
            hint = (f"it has {prefixed!r}: pass strip_prefix={prefixed[:-len(name)]!r}" if prefixed
                    else "is it saved from another architecture?")
            raise EdgeShrinkError(f"{source} lacks weights for {name!r} of {type(model).__name__}; {hint}")
        if tuple(state_dict[name].shape) != tuple(tensor.shape):
            raise EdgeShrinkError(f"{source} has {name!r} of shape {tuple(state_dict[name].shape)}, the model expects "
                                  f"{tuple(tensor.shape)}; check the architecture arguments (e.g. num_classes)")
    for name in state_dict:
        if name not in expected:
            raise EdgeShrinkError(f"{source} has weights {name!r} that {type(model).__name__} does not have; "
                                  "is it saved from another architecture or with a prefix (strip_prefix)?")
    model.load_state_dict(with_metadata(state_dict, getattr(state_dict, "_metadata", None)), strict=True)
    return model
