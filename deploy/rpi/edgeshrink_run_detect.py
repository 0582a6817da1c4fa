"""Detection for edgeshrink_run.py: a detection bundle's model run on images, folders, .npy
arrays, video and camera frames; detections printed as JSON lines (label, score, box in the
original image's pixels) and, with --out, each input written with its boxes drawn; the held-out
eval pack scored with the host's COCO-style mAP.

The model file ends at its heads: its raw output (1, priors, 4 + C) is decoded and suppressed by
edgeshrink_detect.py, the same file the host verified every model file with, using the parameters
of the manifest's `task_extras.detection` block. Preprocessing is the classifier's: the image is
stretched to the model input (Pillow's BILINEAR or its numpy twin), normalised with the manifest's
mean/std; boxes scale back per axis. End-to-end time covers decode, resize, inference, box
decoding and NMS.

Loaded by edgeshrink_run.py, which checks this file's sha256 inside a bundle; needs only numpy and
the sibling modules (Pillow to draw boxes, Pillow/OpenCV to decode images)."""

import json
import sys
import time
from pathlib import Path

import edgeshrink_common as C
import edgeshrink_detect as D
import numpy as np
from edgeshrink_run_eval import prepare, read_pack
from edgeshrink_run_inputs import OutputStems, sources

PACK_KEYS = ("images", "image_sizes", "box_image", "boxes", "box_labels", "box_ignore")
NOT_DECODING = ("input_hw", "labels", "raw_output", "examples_image")


def decoding(manifest: dict, model) -> tuple:
    """(checked decoding parameters, label names) from the manifest; a bundle without them is refused."""
    block = (manifest.get("task_extras") or {}).get("detection") or manifest.get("detection")
    if not isinstance(block, dict):
        raise SystemExit("error: this detection bundle's manifest has no task_extras.detection block; rebuild the bundle")
    try:
        spec = D.check_decoding({k: v for k, v in block.items() if k not in NOT_DECODING})
        D.check_raw(np.zeros([int(s) for s in model.out["shape"]], np.float32), spec, model.height, model.width)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    labels = [str(v) for v in block.get("labels") or manifest.get("labels") or []]
    return spec, labels


def _draw(image, found: dict, labels: list, threshold: float, path: Path) -> None:
    """`image` (H x W x 3 uint8) with the detections over `threshold` drawn, as PNG (Pillow)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        print("note: drawing boxes needs Pillow; --out skipped", file=sys.stderr)
        return
    img = Image.fromarray(image if image.ndim == 3 else image[..., 0]).convert("RGB")
    draw = ImageDraw.Draw(img)
    for rec in D.as_records(found, labels, threshold):
        draw.rectangle(rec["box"], outline=(230, 40, 40), width=max(2, round(max(img.size) / 300)))
        draw.text((rec["box"][0] + 3, rec["box"][1] + 2), f"{rec['label']} {rec['score']:.2f}", fill=(230, 40, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def detect(model, args, manifest: dict) -> dict:
    """Detections for every input: {"detections": [{"input", "image_size", "boxes": [...]}], "skipped",
    "end_to_end_ms"}; with --out an image per input with its boxes drawn."""
    spec, labels = decoding(manifest, model)
    priors = D.make_priors(spec, model.height, model.width)
    results, skipped, e2e, stems = [], [], [], OutputStems()
    for name, _, load in sources(args, [], model):
        started = time.perf_counter()
        try:
            image = load()
            if image.dtype != np.uint8:
                raise ValueError("detection takes pixels (uint8), not normalised float arrays")
            raw = model.invoke(prepare(model, image))[0]
        except (ValueError, OSError) as exc:
            skipped.append({"input": name, "reason": str(exc)[:200]})
            print(f"skipped {name}: {str(exc)[:160]}")
            continue
        found = D.postprocess(raw, spec, input_hw=(model.height, model.width), image_hw=image.shape[:2], priors=priors)
        e2e.append((time.perf_counter() - started) * 1000.0)
        shown = D.as_records(found, labels, spec["draw_threshold"])
        results.append({"input": name, "image_size": [int(image.shape[1]), int(image.shape[0])], "boxes": shown})
        print(json.dumps(results[-1]))
        if args.out:
            _draw(image, found, labels, spec["draw_threshold"], Path(args.out) / f"{stems.stem(Path(name).name)}_boxes.png")
    if skipped and not results:
        raise SystemExit(f"error: no input could be read ({len(skipped)} skipped; {skipped[0]['input']}: "
                         f"{skipped[0]['reason']})")
    out = {"detections": results, "skipped": skipped, "skipped_count": len(skipped),
           "min_score_shown": spec["draw_threshold"]}
    if e2e:
        out["end_to_end_ms"] = C.percentiles(e2e)
        out["end_to_end_fps"] = 1000.0 / out["end_to_end_ms"]["p50"] if out["end_to_end_ms"]["p50"] else None
    return out


def open_pack(path) -> dict:
    """The arrays of a detection eval pack from `edgeshrink eval-pack` (a regular .npz file)."""
    arrays = read_pack(path)
    if not set(PACK_KEYS) <= set(arrays) or len(arrays["images"]) != len(arrays["image_sizes"]):
        raise SystemExit(f"error: {path} is not a detection eval pack ({', '.join(PACK_KEYS)}); make it on the host "
                         "with `edgeshrink eval-pack --model NAME`")
    return arrays


def eval_pack(model, pack: dict, manifest: dict, artifact: dict) -> dict:
    """COCO-style mAP on the held-out pack (images as the host fed them, boxes in original pixels),
    computed as the host's pycocotools does; the manifest's figures printed beside it."""
    spec, _ = decoding(manifest, model)
    images = pack["images"]
    if images.ndim != 4 or images.dtype != np.uint8 or tuple(images.shape[1:]) != (model.height, model.width, model.channels):
        raise SystemExit(f"error: the eval pack holds {images.dtype} images of shape {list(images.shape[1:])}; this model "
                         f"takes {model.height}x{model.width}x{model.channels}: make the pack for this bundle's model")
    priors, hw = D.make_priors(spec, model.height, model.width), (model.height, model.width)
    found = [D.postprocess(model.invoke(model.tensor(images[i:i + 1]))[0], spec, input_hw=hw,
                           image_hw=tuple(int(v) for v in pack["image_sizes"][i]), priors=priors)
             for i in range(len(images))]
    truth = [{"boxes": pack["boxes"][pack["box_image"] == i], "labels": pack["box_labels"][pack["box_image"] == i],
              "ignore": pack["box_ignore"][pack["box_image"] == i]} for i in range(len(images))]
    result = D.coco_map(truth, found, spec["num_classes"], spec["max_detections"])
    expected = artifact.get("metrics") or {}
    print(f"held-out mAP@0.5 {result['map50']:.4f}, mAP@0.5:0.95 {result['map']:.4f} on {len(images)} images"
          + (f" (manifest: {expected['map50']:.4f}, {expected.get('map', float('nan')):.4f})" if "map50" in expected else ""))
    return {**result, "images": int(len(images)), "boxes": int((~pack["box_ignore"]).sum()),
            "manifest_map50": expected.get("map50"), "manifest_map": expected.get("map")}
