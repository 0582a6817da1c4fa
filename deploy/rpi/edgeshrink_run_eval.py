"""Evaluation for edgeshrink_run.py: classify images / video / camera frames (top-k, end-to-end
time, accuracy against a truth folder) and score a bundle's held-out eval pack.

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy,
edgeshrink_common and the two sibling modules loaded before it (Pillow only for --save-images)."""

import sys
import time
from pathlib import Path

import edgeshrink_common as C
import numpy as np
from edgeshrink_run_inputs import sources
from edgeshrink_run_model import Model, score_kind


def classify(model: Model, args, names: list, truth_pairs: list) -> dict:
    """Decode -> resize -> prepare -> invoke -> top-k for every input; end-to-end time includes decode."""
    predictions, skipped, e2e, kind = [], [], [], None
    hits = {"top1": 0, "topk": 0, "images": 0}
    for name, truth, decode in sources(args, truth_pairs):
        t0 = time.perf_counter()
        try:
            rgb = C.resize_bilinear(decode(), model.height, model.width)
        except (ValueError, OSError) as exc:
            skipped.append({"input": name, "reason": str(exc)[:200]})
            print(f"skipped {name}: {str(exc)[:120]}", file=sys.stderr)
            continue
        out = model.invoke(model.tensor(rgb[None]))[0].reshape(-1)
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
            save_annotated(rgb, rec, Path(args.save_images), name)
        print(f"{name}: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in rec["top"]))
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


def save_annotated(rgb, prediction: dict, folder: Path, name: str) -> None:
    """The model-size input with its top prediction written on it (needs Pillow)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        print("note: --save-images needs Pillow; skipped", file=sys.stderr)
        return
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb).resize((max(224, rgb.shape[1]), max(224, rgb.shape[0])), Image.NEAREST)
    top = prediction["top"][0]
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 16], fill=(0, 0, 0))
    draw.text((3, 2), f"{top['label']} {top['score']:.2f}", fill=(255, 255, 0))
    stem = Path(name.replace("[", "_").replace("]", "").replace(":", "_")).stem
    img.save(folder / f"{stem}_pred.png")


def eval_pack(model: Model, pack_path, manifest: dict, artifact: dict) -> dict:
    """Accuracy (classification) or pooled slice Dice (segmentation) on `edgeshrink eval-pack` data."""
    pack = np.load(pack_path)
    images, truth = pack["images"], pack["labels"]
    if manifest.get("task", "classification") == "classification":
        preds = np.array([C.top_k(model.invoke(model.tensor(images[i:i + 1]))[0].reshape(-1), 1)[0]
                          for i in range(len(images))])
        top1 = float((preds == truth).mean())
        expected = (artifact.get("metrics") or {}).get("top1")
        print(f"held-out top-1 {100 * top1:.2f}% on {len(truth)} images"
              + (f" (manifest: {100 * expected:.2f}%)" if expected is not None else ""))
        return {"top1": top1, "images": int(len(truth)), "manifest_top1": expected}
    pred = np.concatenate([model.invoke(C.quantize_input(s.transpose(1, 2, 0)[None], model.inp))[0].argmax(-1) for s in images])
    dice = {}
    for c, name in list(enumerate(manifest.get("labels", [])))[1:]:
        pm, tm = pred == c, truth == c
        d = pm.sum() + tm.sum()
        dice[name] = 1.0 if d == 0 else float(2 * (pm & tm).sum() / d)
    print(f"pooled slice Dice: {dice}")
    return {"slice_dice": dice, "slices": int(len(images))}
