"""Evaluation for edgeshrink_run.py: classify images / video / camera frames (top-k, end-to-end
time, accuracy against a truth folder), open a bundle's held-out eval pack and score a classifier on
it (a segmentation pack is scored by edgeshrink_run_segment).

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy,
edgeshrink_common and the sibling modules loaded before it (Pillow only for --save-images)."""

import os
import stat
import sys
import time
import zipfile
from pathlib import Path

import edgeshrink_common as C
import edgeshrink_run_images as I
import numpy as np
from edgeshrink_run_inputs import sources
from edgeshrink_run_model import Model, score_kind


def classify(model: Model, args, names: list, truth_pairs: list) -> dict:
    """Decode -> resize -> prepare -> invoke -> top-k for every input; end-to-end time includes decode."""
    if model.channels not in (1, 3):
        raise SystemExit(f"error: the model takes {model.channels}-channel input; this script classifies RGB (or grey) "
                         "images")
    out = [int(v) for v in model.out["shape"]]
    if len(out) == 4 and (model.height, model.width) in (tuple(out[1:3]), tuple(out[2:4])):
        raise SystemExit(f"error: the model's output {out} is a per-pixel map (segmentation); run it from its bundle, "
                         "whose manifest says the labels and normalisation")
    predictions, skipped, e2e, kind = [], [], [], None
    hits = {"top1": 0, "topk": 0, "images": 0}
    for name, truth, decode in sources(args, truth_pairs, model):
        t0 = time.perf_counter()
        try:
            x = decode()
            tensor = prepare(model, x)
        except (ValueError, OSError) as exc:
            skipped.append({"input": name, "reason": str(exc)[:200]})
            print(f"skipped {name}: {str(exc)[:160]}")
            continue
        out = model.invoke(tensor)[0].reshape(-1)
        kind = kind or score_kind(model, out)
        probs = out if kind.startswith("probabilities") else C.softmax(out)
        top = C.top_k(probs, args.top_k)
        e2e.append((time.perf_counter() - t0) * 1000.0)
        rec = {"input": name, "top": [{"label": names[i], "index": int(i), "score": float(probs[i])} for i in top]}
        if truth is not None:
            rec["truth"] = int(truth)
            hits["images"] += 1
            hits["top1"] += int(top[0] == truth)
            hits["topk"] += int(truth in top)
        predictions.append(rec)
        if args.save_images:
            save_annotated(x, model, rec, Path(args.save_images), name)
        print(f"{name}: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in rec["top"]))
    if skipped and not predictions:
        first = skipped[0]
        raise SystemExit(f"error: no input could be read ({len(skipped)} skipped; {first['input']}: {first['reason']})")
    result = {"predictions": predictions, "skipped": skipped, "skipped_count": len(skipped), "scores": kind}
    if e2e:
        result["end_to_end_ms"] = C.percentiles(e2e)
    if hits["images"]:
        n = hits["images"]
        result["accuracy"] = {"top1": hits["top1"] / n, f"top{args.top_k}": hits["topk"] / n, "images": n}
        print(f"accuracy on {n} images: top-1 {100 * hits['top1'] / n:.2f}%, top-{args.top_k} {100 * hits['topk'] / n:.2f}%")
    if skipped:
        print(f"{len(skipped)} input(s) skipped (unreadable); listed under 'skipped' in the JSON")
    return result


def prepare(model: Model, x: np.ndarray) -> np.ndarray:
    """Decoded pixels (uint8, any size: resized) or float model input (model size) -> the input tensor."""
    if x.dtype != np.uint8:
        return model.tensor_from_values(x[None])
    if model.channels == 1 and x.ndim == 3 and x.shape[2] == 3:
        x = np.round(I.grey(x)).astype(np.uint8)
    x = I.resize_bilinear(x, model.height, model.width)
    return model.tensor((x if x.ndim == 3 else x[..., None])[None])


def save_annotated(image, model: Model, prediction: dict, folder: Path, name: str) -> None:
    """The model-size input with its top prediction written on it (needs Pillow)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        print("note: --save-images needs Pillow; skipped", file=sys.stderr)
        return
    if image.dtype != np.uint8:
        return  # float model input: no picture to draw on
    rgb = I.resize_bilinear(image, model.height, model.width)
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb if rgb.ndim == 2 or rgb.shape[2] == 3 else rgb[..., 0]).convert("RGB")
    img = img.resize((max(224, img.width), max(224, img.height)), Image.NEAREST)
    top = prediction["top"][0]
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 16], fill=(0, 0, 0))
    draw.text((3, 2), f"{top['label']} {top['score']:.2f}", fill=(255, 255, 0))
    stem = Path(name.replace("[", "_").replace("]", "").replace(":", "_")).stem
    img.save(folder / f"{stem}_pred.png")


def read_pack(path) -> dict:
    """Every array of an `edgeshrink eval-pack` .npz, read only from a regular file and without
    pickles ({} when it is not an .npz); a file that cannot be read stops in one line."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
        pack = np.load(path, allow_pickle=False) if regular else None
        return {k: pack[k] for k in pack.files} if isinstance(pack, np.lib.npyio.NpzFile) else {}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SystemExit(f"error: cannot read the eval pack {path} ({getattr(exc, 'strerror', None) or str(exc)[:80]}); "
                         "make it on the host with `edgeshrink eval-pack --model NAME`") from None


def open_pack(path) -> dict:
    """The arrays of an `edgeshrink eval-pack` .npz (a regular file holding images and labels)."""
    arrays = read_pack(path)
    if not {"images", "labels"} <= set(arrays) or len(arrays["images"]) != len(arrays["labels"]):
        raise SystemExit(f"error: {path} is not an eval pack (images and labels of one length); make it on the host "
                         "with `edgeshrink eval-pack --model NAME`")
    return arrays


def eval_pack(model: Model, pack: dict, artifact: dict) -> dict:
    """Top-1 accuracy on a classification eval pack (uint8 NHWC images, resized as the host did)."""
    images, truth = pack["images"], pack["labels"]
    if images.ndim != 4 or images.dtype != np.uint8 or tuple(images.shape[1:]) != (model.height, model.width, model.channels):
        raise SystemExit(f"error: the eval pack holds {images.dtype} images of shape {list(images.shape[1:])}; this model "
                         f"takes {model.height}x{model.width}x{model.channels}: make the pack for this bundle's model")
    preds = np.array([C.top_k(model.invoke(model.tensor(images[i:i + 1]))[0].reshape(-1), 1)[0]
                      for i in range(len(images))])
    top1 = float((preds == truth).mean())
    expected = (artifact.get("metrics") or {}).get("top1")
    print(f"held-out top-1 {100 * top1:.2f}% on {len(truth)} images"
          + (f" (manifest: {100 * expected:.2f}%)" if expected is not None else ""))
    return {"top1": top1, "images": int(len(truth)), "manifest_top1": expected}
