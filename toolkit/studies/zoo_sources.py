"""What the deploy zoo runs: timm's families (the smallest classifier of every `timm.models`
module, toolkit.studies.timm_families) and MONAI's 2-D segmentation networks, random weights.

Each entry builds its model for a given input side and says how a checkpoint names it
(`architecture` + `arguments`, so a worker process can rebuild it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

SOURCES = ("timm", "monai")
# models the default test suite runs (hard cases: re-parameterisation, exact GELU, attention,
# InstanceNorm + PReLU); `make zoo SOURCE=timm ZOO_MODELS=...` runs any of them by name
HARD = ("mobileone_s0", "repvgg_a0", "fastvit_t8", "efficientvit_b0", "mixnet_s", "ghostnetv2_100",
        "mobilevitv2_050", "monai_unet", "monai_basic_unet", "monai_attention_unet")
MONAI_CLASSES = 3
TIMM_CLASSES = 10


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: `architecture(**arguments)` builds it; `sized` names the argument that takes
    the input side (timm's img_size) when the model has one."""

    name: str
    family: str
    source: str
    architecture: str
    arguments: dict = field(default_factory=dict)
    channels: int = 3
    task: str = "classification"
    sized: Optional[str] = None

    def build(self, side: int):
        """The model (eval mode, seeded random weights) for `side` px inputs; returns (model, arguments)."""
        import torch

        from toolkit.models.architectures import build_model

        arguments = dict(self.arguments)
        if self.sized:
            arguments[self.sized] = side
        torch.manual_seed(0)
        try:
            model = build_model(self.architecture, arguments)
        except Exception:  # noqa: BLE001 - the model takes no size argument: build it without
            if not self.sized:
                raise
            arguments.pop(self.sized)
            torch.manual_seed(0)
            model = build_model(self.architecture, arguments)
        trained_like_scales(model)
        return model.eval(), arguments


def trained_like_scales(model) -> list[str]:
    """Draw the parameters initialised at (near) zero from U(0.1, 1) instead (seeded), biases
    excepted; returns their names. timm zero-initialises the last BatchNorm of a residual branch
    and starts layer scales at 1e-6 or 1e-5, a trained net never keeps them there, and in an INT8
    file they give a branch 10^6 times smaller than the tensor it is added to or multiplied with,
    which XNNPACK refuses (the scale ratio of ADD/MUL): a fact about initialisation, not about the
    deployed model that the zoo stands in for."""
    import torch

    generator = torch.Generator().manual_seed(0)
    drawn = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or not parameter.is_floating_point() or parameter.numel() == 0:
                continue
            if float(parameter.abs().max()) < 1e-3:
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.9 + 0.1)
                drawn.append(name)
    return drawn


def timm_entry(model: str, family: str = "") -> ZooEntry:
    """A timm classifier, random weights, TIMM_CLASSES outputs."""
    return ZooEntry(name=model, family=family or model, source="timm", architecture="timm:create_model",
                    arguments={"model_name": model, "num_classes": TIMM_CLASSES, "pretrained": False}, sized="img_size")


def timm_entries() -> list[ZooEntry]:
    """The smallest model of every timm family (one per `timm.models` module)."""
    from toolkit.studies.timm_families import families

    return [timm_entry(model, module) for module, model in families().items()]


def monai_entries() -> list[ZooEntry]:
    """MONAI's 2-D segmentation networks, small widths, 1 input channel, MONAI_CLASSES outputs."""
    common = {"spatial_dims": 2, "in_channels": 1, "out_channels": MONAI_CLASSES}
    nets = {
        "monai_unet": ("UNet", {**common, "channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 2}),
        "monai_basic_unet": ("BasicUNet", {**common, "features": (16, 16, 32, 64, 128, 16)}),
        "monai_attention_unet": ("AttentionUnet", {**common, "channels": (16, 32, 64, 128), "strides": (2, 2, 2)}),
        "monai_segresnet": ("SegResNet", {**common, "init_filters": 8}),
        "monai_flexible_unet": ("FlexibleUNet", {**common, "backbone": "efficientnet-b0", "pretrained": False}),
    }
    return [ZooEntry(name=name, family=cls, source="monai", architecture=f"monai.networks.nets:{cls}",
                     arguments=args, channels=1, task="segmentation") for name, (cls, args) in nets.items()]


def entries(source: str, names: Optional[list[str]] = None) -> list[ZooEntry]:
    """The zoo of `source`: "timm" is every timm family and then MONAI's segmentation zoo, "monai"
    the latter alone; or only `names` (zoo names, or any timm model name, so that a hard case
    outside the family list can be run). Refuses an unknown source or name in one line."""
    from toolkit.core.errors import unknown_name

    if source not in SOURCES:
        raise unknown_name("zoo source", source, ("torchvision",) + SOURCES)
    zoo = (timm_entries() if source == "timm" else []) + monai_entries()
    if not names:
        return zoo
    known = {e.name: e for e in zoo + monai_entries()}
    chosen = []
    for name in names:
        if name not in known and not _is_timm_model(name):
            raise unknown_name(f"{source} zoo model (or timm model name)", name, known)
        chosen.append(known.get(name) or timm_entry(name))
    return chosen


def _is_timm_model(name: str) -> bool:
    import timm

    return name in timm.list_models()
