"""Bicubic resizes and uneven adaptive average pools as two matrix products with constant
matrices, for export.

TFLite has no bicubic resize: onnx2tf turns ONNX's cubic Resize into `FlexResizeBicubic`, which no
device runtime here loads, and litert-torch's gathers miss torch's outputs (CrossViT's 240 -> 224
branch scaling: relative error 1e-4, parity fails). A bicubic resize of a fixed-size image is linear
and separable: out = A_h @ x @ A_w^T. The matrices are torch's own weights, read off by resizing
identity matrices (a float32 re-derivation of its kernel differs by 1e-5 of the input scale).
`resizes_as_matrices(model, example)` runs the model once eagerly to read the matrices of every
bicubic resize it makes, then, while active (around torch.onnx.export and torch.export),
F.interpolate computes those resizes of 4-D float inputs (without antialias) as constant matrix
products: transposes and FULLY_CONNECTED layers with constant weights, which XNNPACK delegates in
FP32 and INT8. Every other resize is torch's own.

Adaptive average pools whose output size does not divide the input's (VGG's and AlexNet's 7x7 or
6x6 from the 2x2 map of a small input: windows that are uneven or overlap) are linear and separable
the same way and are computed alike, with window matrices (1 / window length over each window): the
TorchScript ONNX exporter refuses them, and litert-torch's lowering left ai-edge-quantizer an op it
could not quantize (timm VGG-11).

`F.unfold` (nn.Unfold: im2col; TNT's pixel embedding, VOLO's outlook attention) of a 4-D float map is
a grouped convolution with one-hot kernels, one output channel per (channel, kernel cell), in unfold's
order: the TorchScript exporter writes it as GATHERs of computed indices, which XNNPACK does not take
(TNT: GATHER 2 outside the partition). The one-hot weights are built eagerly too; the products are
exact (each output is one input times 1 plus zeros). Its inverse `F.fold` (col2im, VOLO) sums each
kernel cell's map into the output at the cell's offset: litert-torch lowered it to a scatter it
cannot convert. It is computed as zero pads and sums of those maps on the strided grid, one sum per
stride phase, interleaved by a pixel shuffle (DEPTH_TO_SPACE) and cropped (equal strides only); for
litert-torch only."""

from __future__ import annotations

import contextlib


def _axis_key(size_in: int, size_out: int, factor, align_corners: bool, recompute) -> tuple:
    return (size_in, size_out, None if factor is None else float(factor), bool(align_corners), bool(recompute))


def _axis_matrix(interpolate, key: tuple):
    """(size_in, size_out) float32 tensor W with v @ W = torch's 1-D bicubic resize of v, read off
    by resizing the rows of an identity matrix (along W; H stays 1 -> 1, which bicubic keeps)."""
    import torch

    size_in, size_out, factor, align_corners, recompute = key
    eye = torch.eye(size_in).reshape(size_in, 1, 1, size_in)
    with torch.no_grad():
        if factor is None:
            rows = interpolate(eye, size=(1, size_out), mode="bicubic", align_corners=align_corners)
        else:
            rows = interpolate(eye, scale_factor=(1.0, factor), mode="bicubic", align_corners=align_corners,
                               recompute_scale_factor=recompute or None)
    return rows.reshape(size_in, size_out).contiguous()


def _resize_keys(x, size, scale_factor, align_corners, recompute) -> tuple | None:
    """(rows key, cols key) of a 2-D bicubic resize of 4-D `x`, or None when this form does not cover it."""
    import math

    if x.dim() != 4 or not x.is_floating_point() or (size is None) == (scale_factor is None):
        return None
    in_h, in_w = int(x.shape[2]), int(x.shape[3])
    if size is not None:
        out_h, out_w = (tuple(size) if isinstance(size, (tuple, list)) else (size, size))
        factors = (None, None)
    else:
        factors = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        out_h, out_w = (math.floor(s * float(f)) for s, f in zip((in_h, in_w), factors))
    return (_axis_key(in_h, int(out_h), factors[0], align_corners, recompute),
            _axis_key(in_w, int(out_w), factors[1], align_corners, recompute))


def _by_matrices(x, rows, cols):
    """x (N, C, H, W) resized along W with cols (W, W') and along H with rows (H, H'), as products
    of 2-D views: onnx2tf reads a 4-D MatMul in its NHWC layout and fails; 2-D ones it keeps."""
    n, c, h, w = x.shape
    y = (x.reshape(n * c * h, w) @ cols.to(x.dtype)).reshape(n, c, h, -1).transpose(2, 3)  # (N, C, W', H)
    out_w = y.shape[2]
    z = (y.reshape(n * c * out_w, h) @ rows.to(x.dtype)).reshape(n, c, out_w, -1)  # (N, C, W', H')
    return z.transpose(2, 3)


def _window_matrix(size_in: int, size_out: int):
    """(size_in, size_out) float32 tensor W with v @ W = the 1-D adaptive average pool of v: output i
    averages inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1 (torch's windows)."""
    import torch

    matrix = torch.zeros(size_in, size_out)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[start:end, i] = 1.0 / (end - start)
    return matrix


def _uneven_pool_keys(x, output_size) -> tuple | None:
    """((in_h, out_h), (in_w, out_w)) of a 4-D adaptive average pool whose windows are uneven or
    overlap on some axis (an output size that does not divide the input's, e.g. VGG's 2x2 -> 7x7), else None."""
    if x.dim() != 4 or not x.is_floating_point():
        return None
    sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    pairs = tuple((int(n), int(n) if o is None else int(o)) for n, o in zip(x.shape[2:], sizes))
    return pairs if any(n % o for n, o in pairs) else None


def _unfold_key(x, kernel_size, dilation, padding, stride) -> tuple | None:
    """(channels, kernel, dilation, padding, stride), each a pair, of an unfold of a 4-D float map, else None."""
    def pair(v):
        return tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v), int(v))

    if x.dim() != 4 or not x.is_floating_point():
        return None
    return int(x.shape[1]), pair(kernel_size), pair(dilation), pair(padding), pair(stride)


def _one_hot_kernels(channels: int, kernel: tuple):
    """(channels * kh * kw, 1, kh, kw) float32: output channel c * kh * kw + m picks kernel cell m of channel c."""
    import torch

    cells = kernel[0] * kernel[1]
    return torch.eye(cells).reshape(cells, 1, *kernel).repeat(channels, 1, 1, 1)


def _unfold_by_conv(x, key: tuple, weight):
    import torch.nn.functional as F

    channels, _, dilation, padding, stride = key
    y = F.conv2d(x, weight.to(x.dtype), stride=stride, padding=padding, dilation=dilation, groups=channels)
    return y.reshape(y.shape[0], y.shape[1], -1)


def _fold_geometry(cols, output_size, *, kernel_size, dilation, padding, stride) -> tuple | None:
    """((H, W), kernel, dilation, padding, stride, (Lh, Lw)) of a fold of 3-D float columns with equal
    strides, else None."""
    def pair(v):
        return tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v), int(v))

    size, kernel, dilation, padding, stride = (pair(v) for v in (output_size, kernel_size, dilation, padding, stride))
    if cols.dim() != 3 or not cols.is_floating_point() or stride[0] != stride[1] or cols.shape[1] % (kernel[0] * kernel[1]):
        return None
    blocks = tuple((size[a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1 for a in (0, 1))
    if blocks[0] * blocks[1] != cols.shape[2] or min(blocks) < 1:
        return None
    return size, kernel, dilation, padding, stride, blocks


def _fold_by_shifts(cols, geometry: tuple):
    """F.fold of `cols` (B, C * kh * kw, Lh * Lw): kernel cell (i, j)'s map lands at rows ly * s + i * dh - ph;
    with i * dh - ph = q * s + r, maps of one phase (r_h, r_w) are summed on the block grid shifted by q
    (zero pads), the phases interleaved by a pixel shuffle, then cropped to the output."""
    import torch
    import torch.nn.functional as F

    size, kernel, dilation, padding, stride, blocks = geometry
    s = stride[0]
    b = cols.shape[0]
    channels = cols.shape[1] // (kernel[0] * kernel[1])
    maps = cols.reshape(b, channels, kernel[0] * kernel[1], blocks[0] * blocks[1])  # 4-D: converters keep its layout
    offsets = [[(i * dilation[a] - padding[a]) for i in range(kernel[a])] for a in (0, 1)]
    shifts = [[o // s for o in axis] for axis in offsets]
    low = [min(axis) for axis in shifts]
    grid = [max(shifts[a]) - low[a] + blocks[a] for a in (0, 1)]
    phases: dict = {}
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            top, left = shifts[0][i] - low[0], shifts[1][j] - low[1]
            cell = maps.narrow(2, i * kernel[1] + j, 1).reshape(b, channels, blocks[0], blocks[1])  # Slice, not Gather
            placed = F.pad(cell, (left, grid[1] - blocks[1] - left, top, grid[0] - blocks[0] - top))
            key = (offsets[0][i] % s, offsets[1][j] % s)
            phases[key] = placed if key not in phases else phases[key] + placed
    zero = torch.zeros_like(next(iter(phases.values())))
    full = torch.stack([phases.get((r, c), zero) for r in range(s) for c in range(s)], 2)
    full = F.pixel_shuffle(full.reshape(b, channels * s * s, grid[0], grid[1]), s) if s > 1 else full[:, :, 0]
    start = [-low[a] * s for a in (0, 1)]
    short = [max(0, start[a] + size[a] - full.shape[2 + a]) for a in (0, 1)]
    if any(short):
        full = F.pad(full, (0, short[1], 0, short[0]))
    return full[:, :, start[0]:start[0] + size[0], start[1]:start[1] + size[1]]


def _unfold_patches(unfolds: dict) -> tuple:
    """(recording, replacing) factories for F.unfold: the eager run stores each unfold's one-hot
    kernels in `unfolds`; the export computes those unfolds as grouped convolutions."""
    def recording(original):
        def unfold(input, kernel_size, dilation=1, padding=0, stride=1):  # noqa: PLR0917 - torch's signature
            key = _unfold_key(input, kernel_size, dilation, padding, stride)
            if key is not None and key not in unfolds:
                unfolds[key] = _one_hot_kernels(key[0], key[1])
            return original(input, kernel_size, dilation, padding, stride)
        return unfold

    def replacing(original):
        def unfold(input, kernel_size, dilation=1, padding=0, stride=1):  # noqa: PLR0917 - torch's signature
            key = _unfold_key(input, kernel_size, dilation, padding, stride)
            if key not in unfolds:
                return original(input, kernel_size, dilation, padding, stride)
            return _unfold_by_conv(input, key, unfolds[key])
        return unfold

    return recording, replacing


def _fold_patches(folds: set, *, enabled: bool) -> tuple:
    """(recording, replacing) factories for F.fold: the eager run records each fold's geometry in
    `folds` (when `enabled`); the export computes those folds as shifted sums."""
    def geometry_of(input, output_size, kernel_size, dilation, padding, stride):  # noqa: PLR0917 - torch's signature
        return _fold_geometry(input, output_size, kernel_size=kernel_size, dilation=dilation, padding=padding,
                              stride=stride)

    def recording(original):
        def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):  # noqa: PLR0917 - torch's signature
            geometry = geometry_of(input, output_size, kernel_size, dilation, padding, stride)
            if geometry is not None and enabled:
                folds.add(geometry)
            return original(input, output_size, kernel_size, dilation, padding, stride)
        return fold

    def replacing(original):
        def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):  # noqa: PLR0917 - torch's signature
            geometry = geometry_of(input, output_size, kernel_size, dilation, padding, stride)
            if geometry not in folds:
                return original(input, output_size, kernel_size, dilation, padding, stride)
            return _fold_by_shifts(input, geometry)
        return fold

    return recording, replacing


@contextlib.contextmanager
def _patched(**replacements):
    """torch.nn.functional's functions named by the keywords replaced by what each factory makes of the original."""
    import torch.nn.functional as F

    originals = {name: getattr(F, name) for name in replacements}
    for name, factory in replacements.items():
        setattr(F, name, factory(originals[name]))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(F, name, original)


@contextlib.contextmanager
def resizes_as_matrices(model, example, *, folds_as_sums: bool = False):
    """Inside the block, F.interpolate computes the bicubic resizes that `model(example)` makes
    (4-D float inputs, no antialias) and F.adaptive_avg_pool2d its uneven adaptive average pools as
    constant matrix products, F.unfold its unfolds as one-hot grouped convolutions and, with
    `folds_as_sums` (litert-torch's export), F.fold its folds as shifted sums; restored after. Yields how
    many distinct resizes, pools, unfolds and folds were found. (onnx2tf misplaces the axes of the fold
    form's reshapes of an unfold's columns, so the ONNX export keeps torch's own fold.)"""
    import torch

    matrices: dict = {}
    pools: dict = {}  # read off eagerly: made while tracing, they would be traced ops instead of constants

    def keys_of(input, *, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias):
        if mode != "bicubic" or antialias:
            return None
        return _resize_keys(input, size, scale_factor, align_corners, recompute_scale_factor)

    def recording(original):
        def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,  # noqa: PLR0917 - torch's signature
                        recompute_scale_factor=None, antialias=False):
            keys = keys_of(input, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                           recompute_scale_factor=recompute_scale_factor, antialias=antialias)
            for key in keys or ():
                if key not in matrices:
                    matrices[key] = _axis_matrix(original, key)
            return original(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
        return interpolate

    def replacing(original):
        def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,  # noqa: PLR0917 - torch's signature
                        recompute_scale_factor=None, antialias=False):
            keys = keys_of(input, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                           recompute_scale_factor=recompute_scale_factor, antialias=antialias)
            if keys is None or not all(key in matrices for key in keys):
                return original(input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias)
            return _by_matrices(input, matrices[keys[0]], matrices[keys[1]])
        return interpolate

    def recording_pool(original):
        def adaptive_avg_pool2d(input, output_size):
            keys = _uneven_pool_keys(input, output_size)
            if keys is not None and keys not in pools:
                pools[keys] = tuple(_window_matrix(n, o) for n, o in keys)
            return original(input, output_size)
        return adaptive_avg_pool2d

    def replacing_pool(original):
        def adaptive_avg_pool2d(input, output_size):
            keys = _uneven_pool_keys(input, output_size)
            if keys not in pools:
                return original(input, output_size)
            rows, cols = pools[keys]
            return _by_matrices(input, rows, cols)
        return adaptive_avg_pool2d

    unfolds: dict = {}
    folds: set = set()
    recording_unfold, replacing_unfold = _unfold_patches(unfolds)
    recording_fold, replacing_fold = _fold_patches(folds, enabled=folds_as_sums)
    with _patched(interpolate=recording, adaptive_avg_pool2d=recording_pool, unfold=recording_unfold,
                  fold=recording_fold), torch.no_grad():
        model(example)
    if not matrices and not pools and not unfolds and not folds:
        yield 0
        return
    with _patched(interpolate=replacing, adaptive_avg_pool2d=replacing_pool, unfold=replacing_unfold, fold=replacing_fold):
        yield len(matrices) + len(pools) + len(unfolds) + len(folds)
