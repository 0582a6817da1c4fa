"""Where a model comes from: an architecture spec + arguments (a `ModelSource`) and a weights file.

Weights are an EdgeShrink checkpoint (architecture + channel spec + state_dict; pruned models
reload bit-exactly) or a plain PyTorch state_dict file (.pt/.pth/.th), optionally nested under a
key and with a prefix such as `module.` stripped. Files always load with `weights_only=True`. A
state_dict that does not fit the architecture is a one-line error naming the first mismatching key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from toolkit.core.errors import EdgeShrinkError


@dataclass(frozen=True)
class ModelSource:
    """How to build a fresh model: `architecture` (registered name, `module:factory` or
    `file.py:factory` relative to `base_dir`) called with `arguments`."""

    architecture: str
    arguments: dict = field(default_factory=dict)
    base_dir: Optional[str] = None

    def build(self):
        from toolkit.models.architectures import build_model

        return build_model(self.architecture, dict(self.arguments), Path(self.base_dir) if self.base_dir else None)


def _torch_load(path: Path):
    import torch

    if not path.is_file():
        raise EdgeShrinkError(f"checkpoint {path} does not exist; train one with `edgeshrink train` or fix the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise EdgeShrinkError(f"checkpoint {path} is unreadable as weights-only PyTorch file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); give a state_dict saved with torch.save") from None


def plain_state_dict(payload, path: Path, *, key: Optional[str] = None, strip_prefix: Optional[str] = None) -> dict:
    """The tensors of a plain state_dict payload, unnested from `key` and with `strip_prefix` removed."""
    import torch

    if key:
        if not isinstance(payload, dict) or key not in payload:
            found = list(payload)[:6] if isinstance(payload, dict) else type(payload).__name__
            raise EdgeShrinkError(f"checkpoint {path} has no key {key!r} (top-level keys: {found}); fix checkpoint.key in the card")
        payload = payload[key]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise EdgeShrinkError(f"checkpoint {path} is not a state_dict of tensors; set checkpoint.key in the card "
                              "(e.g. state_dict) if the weights are nested")
    if strip_prefix:
        payload = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in payload.items()}
    return dict(payload)


def fit_state_dict(model, state_dict: dict, source: str) -> None:
    """Load `state_dict` strictly into `model`; the first missing, unexpected or mis-shaped key is a one-line error."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state_dict:
            raise EdgeShrinkError(f"{source} does not fit the architecture: key {name!r} is missing "
                                  f"({len(state_dict)} keys in the file, {len(expected)} in the model); check the "
                                  "architecture arguments or checkpoint.strip_prefix")
        if tuple(state_dict[name].shape) != tuple(tensor.shape):
            raise EdgeShrinkError(f"{source} does not fit the architecture: {name!r} has shape "
                                  f"{tuple(state_dict[name].shape)} in the file, {tuple(tensor.shape)} in the model; "
                                  "check the architecture arguments (e.g. num_classes)")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise EdgeShrinkError(f"{source} does not fit the architecture: unexpected key {unexpected[0]!r}; "
                              "check the architecture or checkpoint.strip_prefix (e.g. 'module.')")
    model.load_state_dict(state_dict, strict=True)


def load_weights(source: ModelSource, path: Path, *, key: Optional[str] = None, strip_prefix: Optional[str] = None):
    """The model of `source` with the weights of `path` (eval mode). Returns (model, meta dict)."""
    from toolkit.models.checkpoint import FORMAT, apply_channel_spec

    path = Path(path)
    payload = _torch_load(path)
    model = source.build()
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        apply_channel_spec(model, payload["channel_spec"], payload["state_dict"])
        _restore_metadata(payload)
        fit_state_dict(model, payload["state_dict"], f"checkpoint {path}")
        return model.eval(), dict(payload.get("meta") or {})
    fit_state_dict(model, plain_state_dict(payload, path, key=key, strip_prefix=strip_prefix), f"checkpoint {path}")
    return model.eval(), {}


def _restore_metadata(payload: dict) -> None:
    """Re-attach `state_dict._metadata` (module versions, e.g. MNASNet's) when the checkpoint kept it."""
    from collections import OrderedDict

    meta = payload.get("state_dict_metadata")
    if meta is not None:
        sd = OrderedDict(payload["state_dict"])
        sd._metadata = OrderedDict((k, dict(v)) for k, v in meta.items())
        payload["state_dict"] = sd
