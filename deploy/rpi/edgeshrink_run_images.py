"""Images for edgeshrink_run.py: decoding (Pillow, else OpenCV) with a pixel cap checked from the
file header before any pixel is decoded, resizing, and PNG writing.

One resize whatever library is present: Pillow's BILINEAR (antialiased when shrinking), done by
Pillow itself when installed and otherwise by a vectorised numpy path that is bit-exact with it.
Segmentation gets float intensities (16-bit and float TIFF/PNG kept as they are), a float resize
with the same filter, a nearest-neighbour resize for label masks, and PNG files written with the
standard library (no Pillow needed for masks and overlays).

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy and
edgeshrink_common (Pillow / OpenCV are imported only when an image must be decoded)."""

import os
import struct
import zlib
from functools import lru_cache

import edgeshrink_common as C
import numpy as np

MAX_MEGAPIXELS = 25.0  # a 6000x6000 PNG compresses to 35 KB and decodes to 108 MB of RGB (1 GB with copies)
_PRECISION_BITS = 22  # Pillow's fixed-point resampling precision for 8-bit images
PALETTE = np.array([(0, 0, 0), (46, 204, 64), (255, 65, 54), (0, 116, 217), (255, 220, 0), (177, 13, 201),
                    (255, 133, 27), (57, 204, 204), (240, 18, 190), (1, 255, 112)], np.uint8)


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def _opencv(max_pixels: int):
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(int(max_pixels)))  # OpenCV's own cap, read at first use
    try:
        import cv2
    except ImportError:
        raise C.BundleError("reading image files needs Pillow or OpenCV (pip install pillow)") from None
    return cv2


def header_size(path):
    """(width, height) from a PNG, GIF, BMP, JPEG or WebP header without decoding; None when unknown."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:6] in (b"GIF87a", b"GIF89a"):
                return struct.unpack("<HH", head[6:10])
            if head[:2] == b"BM" and len(head) >= 26:
                w, h = struct.unpack("<ii", head[18:26])
                return abs(w), abs(h)
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                kind = head[12:16]
                if kind == b"VP8X":
                    return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
                if kind == b"VP8 ":
                    w, h = struct.unpack("<HH", head[26:30])
                    return w & 0x3FFF, h & 0x3FFF
                if kind == b"VP8L":
                    bits = int.from_bytes(head[21:25], "little")
                    return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
                return None
            if head[:2] != b"\xff\xd8":
                return None
            f.seek(2)
            for _ in range(10000):  # JPEG: walk the markers to the first start-of-frame
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
                    continue
                length = struct.unpack(">H", f.read(2))[0]
                if marker[1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    h, w = struct.unpack(">xHH", f.read(5))
                    return w, h
                f.seek(length - 2, 1)
    except (OSError, struct.error):
        return None
    return None


def _too_big(w: int, h: int, max_pixels: int) -> str:
    return (f"{w}x{h} pixels ({w * h / 1e6:.1f} MP) is above the {max_pixels / 1e6:g} MP cap; downscale it "
            "first (or raise --max-megapixels)")


def decode(path, mode: str = "RGB", max_pixels: int = int(MAX_MEGAPIXELS * 1e6)):
    """An image file as an array: mode 'RGB' -> HxWx3 uint8; 'intensity' -> float32 HxW for grey
    images (16-bit and float kept as they are) or HxWx3 for colour ones. Images above `max_pixels`
    are refused before decoding (a JPEG is decoded at a reduced scale by Pillow instead).
    Raises ValueError for a file that cannot be read or is too big."""
    size = header_size(path)
    if size and size[0] * size[1] > max_pixels and not (_pillow() and size and _is_jpeg(path)):
        raise ValueError(_too_big(size[0], size[1], max_pixels))
    Image = _pillow()
    if Image is not None:
        try:
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels and img.format == "JPEG":
                    img.draft("L" if img.mode == "L" else "RGB", _draft_size(w, h, max_pixels))
                if img.size[0] * img.size[1] > max_pixels:
                    raise ValueError(_too_big(w, h, max_pixels))
                return _from_pillow(img, mode)
        except ValueError:
            raise
        except Exception as exc:  # Pillow raises many types for broken files
            if "DecompressionBomb" in type(exc).__name__:
                raise ValueError(_too_big(*(size or (0, 0)), max_pixels) if size else "image too large") from None
            raise ValueError(f"not a readable image ({exc.__class__.__name__})") from None
    cv2 = _opencv(max_pixels)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if mode == "intensity" else cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("not a readable image (OpenCV)")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[:, :, ::-1])
    return arr.astype(np.float32) if mode == "intensity" else arr


def _is_jpeg(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\xff\xd8"
    except OSError:
        return False


def _draft_size(w: int, h: int, max_pixels: int):
    for scale in (2, 4, 8):
        if (w / scale) * (h / scale) <= max_pixels:
            return -(-w // scale), -(-h // scale)
    return -(-w // 8), -(-h // 8)


def _from_pillow(img, mode: str):
    if mode == "RGB":
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if img.mode in ("L", "I", "F") or img.mode.startswith("I;16"):
        return np.asarray(img).astype(np.float32)
    return np.asarray(img.convert("RGB")).astype(np.float32)


def grey(arr):
    """HxWx3 -> HxW float32 luma (ITU-R 601, as Pillow's 'L'), computed in numpy for every decoder."""
    a = np.asarray(arr, np.float32)
    if a.ndim == 2 or a.shape[2] == 1 or (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
        return a if a.ndim == 2 else a[..., 0]  # grey stored as RGB stays exactly grey
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


# --- resize ------------------------------------------------------------------------------------------

@lru_cache(maxsize=32)
def _taps(in_size: int, out_size: int):
    """(indices, float weights), each (out_size, K): Pillow's BILINEAR triangle filter, widened when
    shrinking (antialiased), computed exactly as Pillow does but for every output pixel at once."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    center = (np.arange(out_size) + 0.5) * scale
    lo = np.maximum((center - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    x = lo[:, None] + np.arange(int((hi - lo).max()))[None, :]
    w = np.where(x < hi[:, None], np.maximum(0.0, 1.0 - np.abs((x - center[:, None] + 0.5) / support)), 0.0)
    total = w.sum(1, keepdims=True)
    w = np.where(total != 0.0, w / np.where(total == 0.0, 1.0, total), w)
    return np.minimum(x, in_size - 1), w


@lru_cache(maxsize=32)
def _fixed_taps(in_size: int, out_size: int):
    x, w = _taps(in_size, out_size)
    scaled = w * (1 << _PRECISION_BITS)
    return x, np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)


def _pass_u8(arr, axis: int, out_size: int):
    x, w = _fixed_taps(arr.shape[axis], out_size)  # int32 is enough: 255 * 2**22 * (1 + rounding) < 2**31
    src = arr.astype(np.int32)
    acc = np.full(src.shape[:axis] + (out_size,) + src.shape[axis + 1:], 1 << (_PRECISION_BITS - 1), np.int32)
    shape = [1] * src.ndim
    shape[axis] = out_size
    for k in range(x.shape[1]):
        acc += np.take(src, x[:, k], axis=axis) * w[:, k].reshape(shape)
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_numpy(img, height: int, width: int):
    """HxW[xC] uint8 -> height x width, bit-exact with Pillow's resize(BILINEAR): horizontal pass,
    then vertical, each rounded to 8 bits."""
    out = np.asarray(img, dtype=np.uint8)
    if out.shape[1] != width:
        out = _pass_u8(out, 1, width)
    if out.shape[0] != height:
        out = _pass_u8(out, 0, height)
    return out


def resize_bilinear(img, height: int, width: int):
    """HxWx3 (or HxW) uint8 -> height x width, Pillow's BILINEAR: by Pillow when installed, else numpy
    (bit-exact), so results never depend on which image library decoded the file."""
    img = np.asarray(img, dtype=np.uint8)
    if img.shape[:2] == (height, width):
        return img
    Image = _pillow()
    if Image is None or not (img.ndim == 2 or img.shape[2] in (1, 3)):
        return resize_numpy(img, height, width)
    squeeze = img.ndim == 3 and img.shape[2] == 1
    out = np.asarray(Image.fromarray(img[..., 0] if squeeze else img).resize((width, height), Image.BILINEAR))
    return out[..., None] if squeeze else out


def resize_float(arr, height: int, width: int):
    """HxW[xC] float -> height x width with the same antialiased bilinear filter, in float32."""
    out = np.asarray(arr, np.float32)
    for axis, size in ((1, width), (0, height)):
        if out.shape[axis] != size:
            x, w = _taps(out.shape[axis], size)
            shape = [1] * out.ndim
            shape[axis] = size
            out = sum(np.take(out, x[:, k], axis=axis) * w[:, k].reshape(shape).astype(np.float32)
                      for k in range(x.shape[1]))
    return np.asarray(out, np.float32)


def resize_nearest(mask, height: int, width: int):
    """Label mask -> height x width, nearest neighbour (labels stay labels)."""
    ys = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.int64), mask.shape[0] - 1)
    xs = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.int64), mask.shape[1] - 1)
    return mask[ys][:, xs]


# --- PNG output -------------------------------------------------------------------------------------

def write_png(path, arr) -> None:
    """HxW (grey) or HxWx3 (RGB) uint8 as an 8-bit PNG, with the standard library alone."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    h, w = arr.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), arr.reshape(h, -1)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if arr.ndim == 2 else 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b"")
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def display_grey(arr):
    """Any intensities -> HxW uint8 for viewing (1st..99th percentile stretched)."""
    a = grey(arr)
    lo, hi = (np.percentile(a, (1, 99)) if a.size else (0.0, 1.0))
    if hi <= lo:
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=1.0))
    return np.clip((a - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)


def overlay(image, mask, min_side: int = 256):
    """The image in grey with each foreground label tinted in its colour (half transparent), enlarged
    by a whole factor (nearest) so that small slices are visible."""
    base = np.repeat(display_grey(image)[..., None], 3, axis=2).astype(np.float32)
    colours = PALETTE[np.asarray(mask, np.int64) % len(PALETTE)].astype(np.float32)
    fg = (np.asarray(mask) > 0)[..., None]
    out = np.where(fg, 0.45 * base + 0.55 * colours, base).astype(np.uint8)
    factor = max(1, min(8, -(-min_side // max(1, min(out.shape[:2])))))
    return np.repeat(np.repeat(out, factor, axis=0), factor, axis=1) if factor > 1 else out
