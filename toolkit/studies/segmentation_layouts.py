"""The hippocampus data (MSD Task04 as bundled: images/ + labels/) rewritten in the other folder
layouts users bring (toolkit.data.segmentation_layouts), each with a card beside it, so that each
goes through `edgeshrink train` and `edgeshrink run` with no source edit:

    python -m toolkit.studies.segmentation_layouts --data ../shared/data/hippocampus --out layouts --cases 40

- `msd/`:    imagesTr/ + labelsTr/ + dataset.json (the Decathlon download as unpacked)
- `nnunet/`: imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz + dataset.json (nnU-Net v2)
- `pairs/`:  images/<case>_slice_NNN.png + masks/<case>_slice_NNN.png: every sagittal slice (axis 0)
             of each case as an 8-bit PNG (per-volume min-max) and its mask (values 0, 1, 2)

and `<layout>.yaml`: the unet_hippocampus card's model, input and pruning with `dataset:` naming the
folder, its layout and a held-out fifth of the cases (split by case; for PNG pairs the case is the
part of the name before `_slice_`). The first `cases` cases in name order are used. Nothing is
written into the source folder; the output folder is built beside and moved into place when whole."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from toolkit.core.errors import EdgeShrinkError

LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}
CARD_LABELS = ["background", "anterior hippocampus", "posterior hippocampus"]


def _cases(data: Path, count: int) -> list[str]:
    images, labels = data / "images", data / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise EdgeShrinkError(f"{data} must hold images/ and labels/ (the bundled MSD hippocampus folder)")
    names = sorted(p.name[: -len(".nii.gz")] for p in images.glob("*.nii.gz")
                   if not p.name.startswith(".") and (labels / p.name).is_file())
    if len(names) < 2:
        raise EdgeShrinkError(f"{data} holds {len(names)} image/label pairs; at least 2 are needed")
    return names[:count]


def _nifti_layout(data: Path, out: Path, cases: list[str], *, image_suffix: str, meta: dict) -> Path:
    """imagesTr/<case><image_suffix>.nii.gz + labelsTr/<case>.nii.gz (files copied) + dataset.json."""
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True)
    for case in cases:
        shutil.copyfile(data / "images" / f"{case}.nii.gz", out / "imagesTr" / f"{case}{image_suffix}.nii.gz")
        shutil.copyfile(data / "labels" / f"{case}.nii.gz", out / "labelsTr" / f"{case}.nii.gz")
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return out


def write_msd(data: Path, out: Path, cases: list[str]) -> Path:
    """The Decathlon download: imagesTr/ + labelsTr/ + dataset.json with the training list."""
    meta = {"name": "Hippocampus", "modality": {"0": "MRI"}, "labels": LABELS, "numTraining": len(cases),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}
    return _nifti_layout(data, out, cases, image_suffix="", meta=meta)


def write_nnunet(data: Path, out: Path, cases: list[str]) -> Path:
    """nnU-Net raw: imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz + a v2 dataset.json."""
    meta = {"channel_names": {"0": "MRI"}, "labels": {v: int(k) for k, v in LABELS.items()},
            "numTraining": len(cases), "file_ending": ".nii.gz"}
    return _nifti_layout(data, out, cases, image_suffix="_0000", meta=meta)


def write_pairs(data: Path, out: Path, cases: list[str]) -> Path:
    """Every axis-0 slice of every case: 8-bit image PNG (per-volume min-max) + mask PNG (0, 1, 2)."""
    import nibabel as nib
    from PIL import Image

    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir(parents=True)
    for case in cases:
        image = np.asarray(nib.load(str(data / "images" / f"{case}.nii.gz")).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(str(data / "labels" / f"{case}.nii.gz")).dataobj).astype(np.uint8)
        low, high = float(image.min()), float(image.max())
        pixels = np.round((image - low) / max(high - low, 1e-6) * 255.0).astype(np.uint8)
        for i in range(image.shape[0]):
            Image.fromarray(pixels[i]).save(out / "images" / f"{case}_slice_{i:03d}.png")
            Image.fromarray(label[i]).save(out / "masks" / f"{case}_slice_{i:03d}.png")
    return out


WRITERS = {"msd": write_msd, "nnunet": write_nnunet, "pairs": write_pairs}


# The template's fine-tuning (10 epochs at lr 1e-3, distillation 0.3) is sized for its 208 training
# volumes (~230 optimizer steps per epoch). With 32 training cases (~36 steps per epoch), measured on
# the 40-case PNG pairs (dense Dice 0.868), the U-Net pruned to a third of its MACs ends at Dice
# 0.000 with the template's settings; at lr 3e-3 for 12 epochs it ends at 0.437 with distillation
# 0.3 (the posterior class never comes back) and at 0.868 without.
SMALL_DATA_FINETUNE = {"finetune_epochs": 12, "finetune_lr": 0.003, "distill": 0.0}


def card(layout: str, template: dict) -> dict:
    """The template card's model, input and pruning with this layout's data (fine-tuning sized for
    a few dozen cases); no checkpoint yet."""
    keep = ("architecture", "arguments", "task", "input", "metric", "never_prune")
    return {"name": f"unet_hippocampus_{layout}", **{k: template[k] for k in keep if k in template},
            "pruning": {**template.get("pruning", {}), **SMALL_DATA_FINETUNE},
            "labels": CARD_LABELS, "dataset": {"root": layout, "layout": layout, "held_out": 0.2}}


def write_layouts(data: Path, out: Path, *, cases: int, layouts=tuple(WRITERS)) -> dict:
    """Every layout's folder and card under `out` (staged, then moved into place); {layout: card path}."""
    import yaml

    from toolkit.config.cards import load_card

    if out.exists():
        raise EdgeShrinkError(f"{out} already exists; choose a new --out folder (nothing is overwritten)")
    names = _cases(data, cases)
    template = load_card("unet_hippocampus").model_dump(mode="json", exclude_none=True)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    written = {}
    for layout in layouts:
        WRITERS[layout](data, stage / layout, names)
        (stage / f"{layout}.yaml").write_text(yaml.safe_dump(card(layout, template), sort_keys=False))
        written[layout] = out / f"{layout}.yaml"
        print(f"{layout}: {len(names)} cases -> {out / layout}", flush=True)
    stage.rename(out)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolkit.studies.segmentation_layouts", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the bundled hippocampus folder (images/ + labels/)")
    p.add_argument("--out", required=True, help="a new folder for the layouts and their cards")
    p.add_argument("--cases", type=int, default=40, help="how many cases (first in name order)")
    p.add_argument("--layouts", default=",".join(WRITERS), help="comma-separated: msd, nnunet, pairs")
    args = p.parse_args(argv)
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    unknown = [s for s in layouts if s not in WRITERS]
    try:
        if unknown:
            raise EdgeShrinkError(f"--layouts takes {', '.join(WRITERS)}, got {', '.join(unknown)}")
        if args.cases < 2:
            raise EdgeShrinkError("--cases must be at least 2 (one case on each side of the split)")
        write_layouts(Path(args.data), Path(args.out), cases=args.cases, layouts=layouts)
    except EdgeShrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
