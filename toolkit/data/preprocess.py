"""The one preprocessing definition shared by training, calibration, evaluation and devices.

Images are decoded to RGB uint8, resized (bilinear, PIL) to the model's input size, then
normalised as (x / 255 - mean) / std. The manifest carries the same fields so a device runner
reproduces it with numpy alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SIDE = 4096  # pixels per side: a 4096x4096 float image is already 200 MB per channel triple


def input_problem(height, width, channels, mean, std) -> str | None:
    """Why an input description cannot be used (None: it can). Cards (at validation) and every
    InputSpec (fresh plans, replayed config.json, the Python API) go through this one check."""
    import math

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not (whole(height) and whole(width)) or not (8 <= height <= MAX_SIDE and 8 <= width <= MAX_SIDE):
        return f"input.size must be two whole numbers between 8 and {MAX_SIDE} pixels, got {[height, width]}; fix input.size"
    if not whole(channels) or channels not in (1, 3):
        return f"input.channels must be 1 (grey) or 3 (RGB), got {channels!r}; fix input.channels"
    for name, values in (("mean", mean), ("std", std)):
        if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return f"input.{name} must be a list of numbers, got {values!r}; fix input.{name}"
        if len(values) != channels:
            return (f"input.{name} has {len(values)} values but input.channels is {channels}; give one {name} "
                    f"per channel")
        if not all(math.isfinite(v) for v in values):
            return f"input.{name} must be finite numbers, got {list(values)}; fix input.{name}"
    if not all(v > 0 for v in std):
        return f"input.std must be positive (inputs are divided by it), got {list(std)}; fix input.std"
    return None


@dataclass(frozen=True)
class InputSpec:
    """Input of a model: size, channels, normalisation and the layout each format expects."""

    height: int
    width: int
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: str = "bilinear"
    scaling: str = "divide255"  # divide255: x/255 then mean/std; zscore_volume: per-volume z-score first
    color: str = "RGB"
    layout: dict = field(default_factory=lambda: {"torch": "NCHW", "onnx": "NCHW", "tflite": "NHWC"})

    def __post_init__(self):
        from toolkit.core.errors import EdgeShrinkError

        problem = input_problem(self.height, self.width, self.channels, self.mean, self.std)
        if problem:
            raise EdgeShrinkError(problem)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        d = dict(d)
        d["mean"], d["std"] = (tuple(d[k]) if isinstance(d[k], list) else d[k] for k in ("mean", "std"))
        return cls(**d)


def normalize_nhwc_uint8(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 NHWC images -> float32 NCHW normalised tensor data (torch/ONNX layout)."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def resize_image(path_or_image, height: int, width: int, *, interpolation: str = "bilinear",
                 channels: int = 3) -> np.ndarray:
    """Decode one image file (or take a PIL image) of any size and mode; return HxWxC uint8
    (RGB for 3 channels, grey for 1), resized with `interpolation` (PIL bilinear/bicubic/nearest)."""
    from PIL import Image

    img = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    img = img.convert("RGB" if channels == 3 else "L")
    if img.size != (width, height):
        method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[interpolation]
        img = img.resize((width, height), method)
    arr = np.asarray(img, dtype=np.uint8)
    return arr if arr.ndim == 3 else arr[..., None]
