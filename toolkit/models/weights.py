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

    from toolkit.core.files import CHECKPOINT_MAX_BYTES, require_file

    require_file(path, "checkpoint", "train one with `edgeshrink train` or fix the path", CHECKPOINT_MAX_BYTES)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise EdgeShrinkError(f"checkpoint {path} is unreadable as weights-only PyTorch file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:80] if str(exc) else ''}); give a state_dict saved with torch.save") from None


# where training scripts nest the weights, most likely first (timm, Lightning, DataParallel scripts, ...)
NEST_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")


def _is_state_dict(value) -> bool:
    import torch

    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def _unnest(payload, path: Path, key: Optional[str]) -> dict:
    """The name -> tensor mapping of a payload: under `key` when given, else the payload itself or
    the one nested state_dict it holds (`{"state_dict": ...}`, `{"model": ...}`, `{"net": ...}`)."""
    if key:
        if not isinstance(payload, dict) or key not in payload:
            found = list(payload)[:6] if isinstance(payload, dict) else type(payload).__name__
            raise EdgeShrinkError(f"checkpoint {path} has no key {key!r} (top-level keys: {found}); fix checkpoint.key "
                                  "in the card, or remove it to find the weights automatically")
        payload = payload[key]
        if not _is_state_dict(payload):
            raise EdgeShrinkError(f"checkpoint {path}: {key!r} is not a state_dict of tensors; fix checkpoint.key in the card")
        return payload
    if _is_state_dict(payload):
        return payload
    nested = [k for k, v in payload.items() if _is_state_dict(v)] if isinstance(payload, dict) else []
    preferred = [k for k in NEST_KEYS if k in nested]
    if len(nested) == 1 or preferred:
        return payload[(preferred or nested)[0]]
    if nested:
        raise EdgeShrinkError(f"checkpoint {path} holds several state_dicts ({', '.join(map(repr, nested[:5]))}); set "
                              "checkpoint.key in the card to the one to load")
    found = f"top-level keys {list(payload)[:6]}" if isinstance(payload, dict) else type(payload).__name__
    raise EdgeShrinkError(f"checkpoint {path} is not a state_dict of tensors ({found}); save model.state_dict() with "
                          "torch.save, or set checkpoint.key in the card to where the weights are nested")


def _strip(state_dict: dict, prefix: str) -> dict:
    """`state_dict` with `prefix` removed from its keys and from its `_metadata` (module versions,
    which BatchNorm and MNASNet read): the wrapper's own entry goes, `module` becomes the root."""
    from collections import OrderedDict

    metadata = getattr(state_dict, "_metadata", None)
    if not prefix:
        return state_dict
    out = OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state_dict.items())
    if metadata is not None:
        out._metadata = OrderedDict((("" if k == prefix[:-1] else k[len(prefix):]), v)
                                    for k, v in metadata.items() if k == prefix[:-1] or k.startswith(prefix))
    return out


def common_prefix(state_dict: dict, expected) -> str:
    """The dotted prefix every key shares (DataParallel's `module.`, a wrapper's `model.`, ...), or the
    leading part of it, whose removal makes the most keys names of the model ('' when none helps)."""
    expected = set(expected)
    parts = [k.split(".")[:-1] for k in state_dict]
    shared = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        shared.append(level[0])
    best, best_hits = "", sum(k in expected for k in state_dict)
    for i in range(1, len(shared) + 1):
        prefix = ".".join(shared[:i]) + "."
        hits = sum(k[len(prefix):] in expected for k in state_dict)
        if hits > best_hits:
            best, best_hits = prefix, hits
    return best


def plain_state_dict(payload, path: Path, *, key: Optional[str] = None, strip_prefix: Optional[str] = None,
                     expected=None) -> dict:
    """The tensors of a plain state_dict payload, unnested (from `key`, or the one nested state_dict
    found) and with `strip_prefix` removed (or, given the model's `expected` keys and no prefix, the
    prefix all keys share when removing it makes them the model's names)."""
    state = _unnest(payload, path, key)
    if strip_prefix:
        state = _strip(state, strip_prefix)
    elif expected is not None:
        state = _strip(state, common_prefix(state, expected))
    return state


def check_finite(state_dict: dict, source: str) -> None:
    """Refuse weights holding NaN or Inf: every later stage (calibration, parity) would fail obscurely."""
    import torch

    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise EdgeShrinkError(f"{source} holds non-finite values (NaN or Inf) in {name!r} ({bad} of {tensor.numel()}); "
                                  "the weights are damaged or training diverged: use another checkpoint")


def with_legacy_buffers(state_dict: dict, expected: dict) -> dict:
    """`state_dict` with the BatchNorm `num_batches_tracked` buffers that files saved before PyTorch
    0.4.1 lack taken from the model's defaults (what PyTorch's own load_state_dict does)."""
    from collections import OrderedDict

    legacy = [n for n in expected if n not in state_dict and n.rsplit(".", 1)[-1] == "num_batches_tracked"]
    if not legacy:
        return state_dict
    metadata = getattr(state_dict, "_metadata", None)
    filled = OrderedDict(state_dict)
    filled.update({n: expected[n].clone() for n in legacy})
    if metadata is not None:
        filled._metadata = metadata
    return filled


def _prefix_hint(key: str, names) -> Optional[str]:
    """The prefix of `key` whose removal gives one of `names`, or None."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        if ".".join(parts[i:]) in names:
            return ".".join(parts[:i]) + "."
    return None


def fit_state_dict(model, state_dict: dict, source: str) -> None:
    """Load `state_dict` strictly into `model` after checking every key and shape, as PyTorch's
    load_state_dict would accept it: BatchNorm `num_batches_tracked` buffers that legacy files lack
    take the model's defaults. The first missing, unexpected or mis-shaped key is a one-line error
    naming the key, both shapes and the fix (strip_prefix only where it would help); nothing is
    loaded then. NaN or Inf weights are refused."""
    check_finite(state_dict, source)
    expected = model.state_dict()
    state_dict = with_legacy_buffers(state_dict, expected)
    file_keys = list(state_dict)
    for name, tensor in expected.items():
        if name not in state_dict:
            prefixed = next((k for k in file_keys if k.endswith(f".{name}")), None)
            hint = (f"the file has {prefixed!r}: set checkpoint.strip_prefix: {prefixed[:-len(name)]!r} in the card"
                    if prefixed else "check the architecture and its arguments: the file is of another model")
            raise EdgeShrinkError(f"{source} does not fit the architecture: key {name!r} is missing "
                                  f"({len(state_dict)} keys in the file, {len(expected)} in the model); {hint}")
        got, want = tuple(state_dict[name].shape), tuple(tensor.shape)
        if got != want:
            last = [n for n in expected if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))][-2:]
            if name in last and got[1:] == want[1:] and got:
                fix = f"the file's last layer has {got[0]} outputs: set arguments num_classes: {got[0]} in the card"
            else:
                fix = "check the architecture and its arguments (e.g. num_classes, width): the file may be of another model"
            raise EdgeShrinkError(f"{source} does not fit the architecture: {name!r} has shape {got} in the file, "
                                  f"{want} in the model; {fix}")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        prefix = _prefix_hint(unexpected[0], expected)
        hint = (f"set checkpoint.strip_prefix: {prefix!r} in the card" if prefix
                else "check the architecture and its arguments: the file is of another model")
        raise EdgeShrinkError(f"{source} does not fit the architecture: unexpected key {unexpected[0]!r}; {hint}")
    model.load_state_dict(state_dict, strict=True)


def load_weights(source: ModelSource, path: Path, *, key: Optional[str] = None, strip_prefix: Optional[str] = None):
    """The model of `source` with the weights of `path` (eval mode). Returns (model, meta dict).
    A plain state_dict is found under `key` (or the one nested state_dict) and has `strip_prefix`
    (or the prefix every key shares, e.g. DataParallel's `module.`) removed."""
    from toolkit.models.checkpoint import FORMAT, apply_channel_spec

    path = Path(path)
    payload = _torch_load(path)
    model = source.build()
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        check_finite(payload["state_dict"], f"checkpoint {path}")
        from toolkit.models.reparameterize import rebuild_deploy_form

        model = rebuild_deploy_form(model, payload)  # saved in its fused deploy-time form
        apply_channel_spec(model, payload["channel_spec"], payload["state_dict"])
        _restore_metadata(payload)
        fit_state_dict(model, payload["state_dict"], f"checkpoint {path}")
        return model.eval(), dict(payload.get("meta") or {})
    state = plain_state_dict(payload, path, key=key, strip_prefix=strip_prefix, expected=model.state_dict())
    fit_state_dict(model, state, f"checkpoint {path}")
    return model.eval(), {}


def _restore_metadata(payload: dict) -> None:
    """Re-attach `state_dict._metadata` (module versions, e.g. MNASNet's) when the checkpoint kept it."""
    from collections import OrderedDict

    meta = payload.get("state_dict_metadata")
    if meta is not None:
        sd = OrderedDict(payload["state_dict"])
        sd._metadata = OrderedDict((k, dict(v)) for k, v in meta.items())
        payload["state_dict"] = sd
