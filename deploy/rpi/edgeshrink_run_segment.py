"""Segmentation for edgeshrink_run.py: a segmentation bundle's model run on images (PNG/JPEG/TIFF,
grey or colour), .npy arrays, NIfTI volumes (.nii/.nii.gz, sliced along the manifest's axis), video
and camera frames; label masks written (PNG with the label values + a colour overlay PNG; a NIfTI
mask with the input's affine and header for volumes); and the held-out eval pack scored with the
host's Dice and HD95 (3-D, per class per case, averaged over cases, then over classes).

Preprocessing is the host's (toolkit/data/nifti.py): each volume (or image, or frame) is z-scored
on its own (input.scaling 'zscore_volume'), then every slice is centre-padded into the model's
HxW; a slice larger than that is first shrunk to fit (bilinear) and its mask enlarged back
(nearest). Slices run in batches when the model can be resized to a batch (checked against batch 1
once), else one by one.

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy and
the sibling modules (nibabel only for NIfTI files, Pillow/OpenCV only to decode images)."""

import sys
import time
from pathlib import Path

import edgeshrink_common as C
import edgeshrink_run_images as I
import numpy as np
from edgeshrink_run_inputs import OutputStems, camera_frames, kind_of, list_inputs, load_array, video_frames

BATCH = 8
CHUNK = 64  # slices normalised and padded at a time (bounds memory for large volumes)
MAX_VOXELS = 1 << 28  # 1 GiB as float32


class Segmenter:
    """The bundle's segmentation model with the manifest's labels, slice axis and normalisation."""

    def __init__(self, model, manifest: dict):
        spec = manifest.get("input") or {}
        self.model, self.scaling = model, spec.get("scaling", "divide255")
        if self.scaling not in ("zscore_volume", "divide255"):
            raise SystemExit(f"error: manifest input.scaling {self.scaling!r} is unknown to this script; rebuild the bundle")
        self.mean = np.asarray(spec.get("mean") or [0.0], np.float32)
        self.std = np.asarray(spec.get("std") or [1.0], np.float32)
        self.axis = int((manifest.get("data") or {}).get("slice_axis", 0))
        shape = [int(s) for s in model.out["shape"]]
        hw = (model.height, model.width)
        if len(shape) == 4 and tuple(shape[1:3]) == hw:
            self.class_axis = 3
        elif len(shape) == 4 and tuple(shape[2:4]) == hw:
            self.class_axis = 1
        else:
            raise SystemExit(f"error: the model's output {shape} is not a label map of its {hw[0]}x{hw[1]} input; "
                             "this is not a segmentation model")
        self.classes = shape[self.class_axis]
        labels = [str(v) for v in manifest.get("labels") or []]
        self.labels = labels if len(labels) == self.classes else [str(i) for i in range(self.classes)]
        self.batched = None  # unknown until checked on the first multi-slice input

    # --- preprocessing --------------------------------------------------------------------------------

    def normalise(self, arr) -> np.ndarray:
        """One whole volume / image / frame -> float32, z-scored on its own as the host does it
        (toolkit/data/nifti.py read_pair) when the manifest's scaling is 'zscore_volume'."""
        image = np.asarray(arr, dtype=np.float32)
        if not np.all(np.isfinite(image)):
            raise ValueError("holds NaN or infinite values")
        if self.scaling == "zscore_volume":
            std = image.std()
            image = (image - image.mean()) / (std if std > 0 else 1.0)
        return image

    def per_slice(self, sl) -> np.ndarray:
        """HxWxC -> model values: as it is after a z-score, else (x/255 - mean) / std per channel."""
        return sl if self.scaling == "zscore_volume" else (sl / 255.0 - self.mean) / self.std

    def channels(self, sl) -> np.ndarray:
        """One HxW or HxWx3 slice -> HxWxC for the model (grey from colour, or grey repeated)."""
        sl = np.asarray(sl, np.float32)
        if self.model.channels == 1:
            return I.grey(sl)[..., None]
        if sl.ndim == 2:
            return np.repeat(sl[..., None], self.model.channels, axis=2)
        if sl.shape[2] != self.model.channels:
            raise ValueError(f"has {sl.shape[2]} channels; the model takes {self.model.channels}")
        return sl

    def fit(self, sl):
        """(model-size canvas, geometry): centre-padded as the host pads; shrunk first when too big."""
        H, W = self.model.height, self.model.width
        h, w = sl.shape[:2]
        nh, nw = h, w
        if h > H or w > W:
            s = min(H / h, W / w)
            nh, nw = max(1, min(H, round(h * s))), max(1, min(W, round(w * s)))
            sl = I.resize_float(sl, nh, nw)
        oy, ox = (H - nh) // 2, (W - nw) // 2
        canvas = np.zeros((H, W, sl.shape[2]), np.float32)
        canvas[oy:oy + nh, ox:ox + nw] = sl
        return canvas, (oy, ox, nh, nw, h, w)

    @staticmethod
    def unfit(labels, geo) -> np.ndarray:
        oy, ox, nh, nw, h, w = geo
        m = labels[oy:oy + nh, ox:ox + nw]
        return m if (nh, nw) == (h, w) else I.resize_nearest(m, h, w)

    # --- inference ------------------------------------------------------------------------------------

    def _run(self, x) -> np.ndarray:
        """(n, H, W, C) model values, n <= the model's batch (zero-padded up to it) -> (n, H, W) labels."""
        n, b = len(x), self.model.batch
        if n < b:
            x = np.concatenate([x, np.zeros((b - n,) + x.shape[1:], np.float32)])
        raw = self.model.invoke_raw(self.model.tensor_from_values(x))
        return raw.argmax(axis=self.class_axis).astype(np.uint8)[:n]  # argmax of raw = of dequantized values

    def predict(self, x) -> np.ndarray:
        """(N, H, W, C) model values -> (N, H, W) uint8 labels, in batches when the model allows it."""
        done, start = [], 0
        if self.batched is None and len(x) > 1:
            self.model.set_batch(1)
            reference = self._run(x[:1])
            ok = self.model.set_batch(BATCH)
            if ok:
                first = self._run(x[:BATCH])
                ok = np.array_equal(first[0], reference[0])
                done, start = ([first], len(first)) if ok else ([reference], 1)
            else:
                done, start = [reference], 1
            self.batched = ok
        step = BATCH if self.batched else 1
        self.model.set_batch(step)
        for s in range(start, len(x), step):
            done.append(self._run(x[s:s + step]))
        return np.concatenate(done) if done else np.zeros((0,) + x.shape[1:3], np.uint8)

    def image(self, arr) -> np.ndarray:
        """One image/frame/slice (HxW or HxWx3 intensities) -> HxW uint8 mask at its own size."""
        canvas, geo = self.fit(self.per_slice(self.normalise(self.channels(arr))))
        return self.unfit(self.predict(canvas[None])[0], geo)

    def volume(self, vol) -> np.ndarray:
        """A 3-D volume -> its mask (same shape): z-scored whole, sliced along the manifest's axis."""
        if not -3 <= self.axis < 3:
            raise SystemExit(f"error: manifest data.slice_axis {self.axis} is not an axis of a 3-D volume")
        v = self.normalise(np.moveaxis(np.asarray(vol), self.axis, 0))
        masks = []
        for s in range(0, len(v), CHUNK):
            fitted = [self.fit(self.per_slice(self.channels(sl))) for sl in v[s:s + CHUNK]]
            labels = self.predict(np.stack([f[0] for f in fitted]))
            masks += [self.unfit(lab, f[1]) for lab, f in zip(labels, fitted)]
        return np.moveaxis(np.stack(masks), 0, self.axis)

    def counts(self, mask, voxel_ml=None) -> dict:
        out = {}
        for c in range(1, self.classes):
            n = int((mask == c).sum())
            out[self.labels[c]] = {"pixels": n, **({"ml": n * voxel_ml} if voxel_ml else {})}
        return out


# --- files -------------------------------------------------------------------------------------------

def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise C.BundleError("NIfTI volumes (.nii/.nii.gz) need nibabel (pip install nibabel)") from None
    return nibabel


def read_nifti(path):
    """(nibabel image, float32 3-D data); ValueError for a file that is not a readable 3-D volume."""
    nib = _nibabel()
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as exc:  # nibabel raises many types for broken files
        raise ValueError(f"not a readable NIfTI ({type(exc).__name__}: {str(exc)[:80]})") from None
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise ValueError(f"is a {len(shape)}-D image of shape {list(shape)}; a 3-D volume is expected")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise ValueError(f"holds {np.prod(shape) / 1e6:.0f} M voxels, above this script's {MAX_VOXELS / 1e6:.0f} M")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape[:3])
    except Exception as exc:
        raise ValueError(f"not a readable NIfTI ({type(exc).__name__}: {str(exc)[:80]})") from None
    return img, data


def write_nifti(img, mask, path, classes: int) -> None:
    """The mask as uint8 labels with the input's affine and header (no intensity scaling)."""
    out = img.__class__(np.asarray(mask, np.uint8), img.affine, img.header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0, 0.0)
    if "cal_max" in out.header:
        out.header["cal_min"], out.header["cal_max"] = 0, classes - 1
    _nibabel().save(out, str(path))


class Writer(OutputStems):
    """Output names under one folder: <stem>_mask.png / _overlay.png / _mask.nii.gz, never twice the same."""

    def __init__(self, folder):
        super().__init__()
        self.folder = Path(folder)

    def pngs(self, stem: str, image, mask) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = {"mask": self.folder / f"{stem}_mask.png", "overlay": self.folder / f"{stem}_overlay.png"}
        I.write_png(paths["mask"], mask)
        I.write_png(paths["overlay"], I.overlay(image, mask))
        return {k: str(v) for k, v in paths.items()}


def _volume_record(seg, writer, name, data, mask, *, img=None) -> dict:
    stem = writer.stem(name)
    writer.folder.mkdir(parents=True, exist_ok=True)
    along = np.moveaxis(mask, seg.axis, 0)
    best = int(np.argmax((along > 0).reshape(len(along), -1).sum(1)))  # the slice with most foreground
    rec = {"input": name, "shape": list(mask.shape), "slice_axis": seg.axis}
    rec.update(writer.pngs(stem, np.moveaxis(data, seg.axis, 0)[best], along[best]))
    rec["overlay_slice"] = best
    if img is not None:
        path = writer.folder / f"{stem}_mask{'.nii.gz' if name.lower().endswith('.gz') else '.nii'}"
        write_nifti(img, mask, path, seg.classes)
        zooms = img.header.get_zooms()[:3]
        rec.update(mask=str(path), labels=seg.counts(mask, float(np.prod(zooms)) / 1000.0))
    else:
        path = writer.folder / f"{stem}_mask.npy"
        np.save(path, mask)
        rec.update(mask=str(path), labels=seg.counts(mask))
    return rec


def _items(seg, args):
    """(name, kind, loader) for every input: kind 'image' (HxW[x3] intensities) or 'volume'."""
    cap = int(args.max_megapixels * 1e6)
    for path in list_inputs(args.input):
        kind = kind_of(path)
        if kind == "video":
            for name, rgb in video_frames(str(path), args.max_frames):
                yield f"{path.name}:{name}", "image", (lambda a=rgb: a)
        elif kind == "nifti":
            yield path.name, "volume", (lambda p=path: read_nifti(p))
        elif kind == "npy":
            arr = load_array(path)
            rgb = arr.ndim == 3 and arr.shape[2] == 3 and seg.model.channels == 3
            if arr.ndim == 2 or rgb or (arr.ndim == 3 and arr.shape[2] == 1):
                yield path.name, "image", (lambda a=arr, rgb=rgb: a if a.ndim == 2 or rgb else a[..., 0])
            elif arr.ndim == 3:
                yield path.name, "volume", (lambda a=arr: (None, a))
            else:
                raise SystemExit(f"error: {path} has shape {list(arr.shape)}; pass an HxW slice or a 3-D volume")
        else:
            yield str(path), "image", (lambda p=path: I.decode(p, "intensity", cap))
    if args.camera is not None:
        for name, rgb in camera_frames(args.camera, args.max_frames):
            yield name, "image", (lambda a=rgb: a)


def segment(model, args, manifest: dict) -> dict:
    """Masks for every --input / --camera item, written under --out; per-input records for the JSON."""
    seg = Segmenter(model, manifest)
    writer = Writer(args.out or "masks")
    records, skipped, e2e = [], [], []
    for name, kind, load in _items(seg, args):
        t0 = time.perf_counter()
        try:
            if kind == "volume":
                img, data = load()
                rec = _volume_record(seg, writer, Path(name).name, data, seg.volume(data), img=img)
            else:
                data = load()
                mask = seg.image(data)
                rec = {"input": name, "shape": list(mask.shape), **writer.pngs(writer.stem(Path(name).name), data, mask),
                       "labels": seg.counts(mask)}
        except (ValueError, OSError) as exc:
            skipped.append({"input": name, "reason": str(exc)[:200]})
            print(f"skipped {name}: {str(exc)[:160]}")
            continue
        rec["ms"] = (time.perf_counter() - t0) * 1000.0
        e2e.append(rec["ms"])
        records.append(rec)
        found = ", ".join(f"{k} {v['pixels']}" for k, v in rec["labels"].items())
        print(f"{name}: {rec['mask']} ({found or 'no foreground'})")
    if skipped and not records:
        first = skipped[0]
        raise SystemExit(f"error: no input could be read ({len(skipped)} skipped; {first['input']}: {first['reason']})")
    result = {"segmentations": records, "skipped": skipped, "skipped_count": len(skipped),
              "batched": bool(seg.batched), "labels": seg.labels}
    if e2e:
        result["end_to_end_ms"] = C.percentiles(e2e)
    if skipped:
        print(f"{len(skipped)} input(s) skipped (unreadable); listed under 'skipped' in the JSON")
    return result


# --- eval pack ---------------------------------------------------------------------------------------

def dice_per_class(pred, truth, classes) -> dict:
    """The host's Dice (toolkit/tasks/segmentation_metrics.py): both empty counts as 1.0."""
    out = {}
    for c in classes:
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out[c] = 1.0 if denom == 0 else float(2.0 * np.logical_and(p, t).sum() / denom)
    return out


def _boundary(mask):
    """Voxels of a boolean mask with a face neighbour outside it (the array border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return padded[inner] & ~interior[inner]


def _nearest(points, targets):
    out = np.empty(len(points))
    step = max(1, (1 << 22) // max(1, len(targets)))
    for s in range(0, len(points), step):
        diff = points[s:s + step, None, :] - targets[None, :, :]
        out[s:s + step] = np.sqrt((diff * diff).sum(-1).min(1))
    return out


def surface_distances(pred, truth, spacing):
    """The host's boundary distances (toolkit/tasks/segmentation_metrics.py), numpy only: (pred ->
    truth, truth -> pred) in the spacing's units; empty arrays when both are empty, None when one is."""
    keep = [a for a in range(pred.ndim) if pred.shape[a] > 1]
    pred, truth, spacing = np.squeeze(pred), np.squeeze(truth), np.asarray(spacing, np.float64)[keep]
    if not pred.any() and not truth.any():
        return np.zeros(0), np.zeros(0)
    if not pred.any() or not truth.any():
        return None
    pe, te = np.argwhere(_boundary(pred)) * spacing, np.argwhere(_boundary(truth)) * spacing
    return _nearest(pe, te), _nearest(te, pe)


def case_scores(units, names) -> dict:
    """Dice and HD95 per class of one case from its (pred, truth, spacing) units, as the host scores them."""
    out = {}
    for c, name in names.items():
        inter = total = 0
        ab, ba, one_sided = [], [], False
        for pred, truth, spacing in units:
            p, t = pred == c, truth == c
            inter, total = inter + int(np.logical_and(p, t).sum()), total + int(p.sum() + t.sum())
            d = surface_distances(p, t, spacing) if spacing is not None else None
            one_sided |= d is None
            if d is not None:
                ab.append(d[0]), ba.append(d[1])
        out[f"dice_{name}"] = 1.0 if total == 0 else float(2.0 * inter / total)
        if spacing is not None:
            a, b = (np.concatenate(ab), np.concatenate(ba)) if ab else (np.zeros(0), np.zeros(0))
            hd = None if one_sided and not len(a) else (0.0 if not len(a) else float(max(np.percentile(a, 95), np.percentile(b, 95))))
            out[f"hd95_{name}"] = hd
    out["dice"] = float(np.mean([out[f"dice_{n}"] for n in names.values()]))
    return out


def _pack_cases(pack, pred, truth, H, W) -> dict:
    """{case key: [(pred, truth, spacing) of each of its volumes, cropped back to the volume's size]}."""
    keys = pack["case_keys"] if "case_keys" in pack else pack["cases"]
    spacing = pack["case_spacing"] if "case_spacing" in pack else [None] * len(keys)
    cases, start = {}, 0
    for key, n, shape, sp in zip(keys, pack["case_slices"], pack["case_shapes"], spacing):
        y, z = int(shape[1]), int(shape[2])
        oy, oz = (H - y) // 2, (W - z) // 2
        crop = (slice(start, start + int(n)), slice(oy, oy + y), slice(oz, oz + z))
        cases.setdefault(str(key), []).append((pred[crop], truth[crop], sp))
        start += int(n)
    return cases


def _means(per_case, names) -> dict:
    result = {f"dice_{n}": float(np.mean([r[f"dice_{n}"] for r in per_case])) for n in names.values()}
    result["dice"] = float(np.mean([result[f"dice_{n}"] for n in names.values()]))
    for n in names.values():
        hd = [r[f"hd95_{n}"] for r in per_case if r.get(f"hd95_{n}") is not None]
        if any(f"hd95_{n}" in r for r in per_case):
            result[f"hd95_{n}"] = float(np.mean(hd)) if hd else None
    return result


def eval_pack(model, pack: dict, manifest: dict, artifact: dict) -> dict:
    """Mean and per-class Dice (and HD95 where the pack has voxel spacings) per held-out case, as the
    manifest's figures were computed: slices run at batch 1 (the host's shape), masks cropped back to
    each volume's size, 3-D scores per class per case (the volumes of one case key pooled)."""
    seg = Segmenter(model, manifest)
    images, truth = pack["images"], pack["labels"]
    if images.ndim == 4 and images.shape[1] == model.channels and images.shape[3] != model.channels:
        images = images.transpose(0, 2, 3, 1)  # the host stores slices NCHW
    if images.ndim != 4 or tuple(images.shape[1:]) != (model.height, model.width, model.channels):
        raise SystemExit(f"error: the eval pack's slices are {list(images.shape[1:])}; this model takes "
                         f"{model.height}x{model.width}x{model.channels}: make the pack for this bundle's model")
    seg.batched = False
    pred = seg.predict(np.ascontiguousarray(images, np.float32))
    names = {c: seg.labels[c].split()[0].lower() if seg.labels[c].split() else str(c) for c in range(1, seg.classes)}
    expected = artifact.get("metrics") or {}
    if "cases" not in pack:
        pooled = dice_per_class(pred, truth, list(names))
        print("note: this eval pack has no case ids (an older `edgeshrink eval-pack`): Dice pooled over all slices, "
              "not comparable with the manifest's per-case figure", file=sys.stderr)
        return {"pooled_slice_dice": {names[c]: v for c, v in pooled.items()}, "slices": int(len(images))}
    cases = _pack_cases(pack, pred, truth, model.height, model.width)
    per_case = [{"case": key, **case_scores(units, names)} for key, units in cases.items()]
    result = _means(per_case, names)
    result.update(cases=len(per_case), slices=int(len(images)), per_case=per_case, manifest_dice=expected.get("dice"),
                  manifest_per_class={k: v for k, v in expected.items() if k.startswith(("dice_", "hd95_"))})
    classes = ", ".join(f"{n} {result[f'dice_{n}']:.4f}" + (f" HD95 {result[f'hd95_{n}']:.2f}" if result.get(f"hd95_{n}") is not None else "")
                        for n in names.values())
    print(f"held-out Dice {result['dice']:.4f} ({classes}) over {len(per_case)} cases, {len(images)} slices"
          + (f" (manifest: {expected['dice']:.4f})" if expected.get("dice") is not None else ""))
    return result
