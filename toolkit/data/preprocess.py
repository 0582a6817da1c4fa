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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
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
