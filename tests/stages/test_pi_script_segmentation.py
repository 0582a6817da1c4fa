"""deploy/rpi/edgeshrink_run.py on a real segmentation bundle: a tiny U-Net briefly trained on the
synthetic volumes, run through the pipeline (convert, INT8, verify, bundle), then the bundle's own
script run as a subprocess in a venv holding only numpy + ai-edge-litert + Pillow + nibabel:
--bench, a PNG slice, a NIfTI volume, the held-out eval pack. Masks are compared with the host's
own preprocessing (toolkit/data/nifti.py) run through the host's TFLite runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

SIZE = 32
LABELS = ["background", "anterior hippocampus", "posterior hippocampus"]


def _train_tiny_unet(steps: int = 40):
    import torch

    from toolkit.data.nifti import slices_of, synthetic_volumes
    from toolkit.models.architectures import create_model
    from toolkit.tasks.segmentation import seg_loss

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("unet", in_channels=1, num_classes=3, base=8, depth=3)
    pairs = [slices_of(v, (SIZE, SIZE)) for v in synthetic_volumes(30, seed=1)[:24]]  # the task's training cases
    x = torch.from_numpy(np.concatenate([p[0] for p in pairs]))
    y = torch.from_numpy(np.concatenate([p[1] for p in pairs]))
    opt, loss_fn, gen = torch.optim.Adam(model.parameters(), 1e-2), seg_loss(), torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=gen)
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """(bundle folder, eval pack, card) for a tiny U-Net on 32x32 synthetic slices, target 'tiny'."""
    from tests.conftest import TINY_TARGET, build_bundle
    from toolkit.config.cards import load_card
    from toolkit.models.checkpoint import save_checkpoint, sha256_file
    from toolkit.pipeline.device_files import write_eval_pack
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task

    root = tmp_path_factory.mktemp("seg")
    models, targets = root / "models", root / "targets"
    models.mkdir()
    targets.mkdir()
    arguments = {"in_channels": 1, "num_classes": 3, "base": 8, "depth": 3}
    ckpt = models / "tiny_unet.pt"
    save_checkpoint(ckpt, _train_tiny_unet(), "unet", arguments)
    card = {"name": "tiny_unet", "architecture": "unet", "arguments": arguments, "task": "segmentation",
            "dataset": "synthetic", "metric": "dice", "labels": LABELS, "never_prune": ["head"],
            "input": {"size": [SIZE, SIZE], "channels": 1, "mean": [0.0], "std": [1.0], "scaling": "zscore_volume"},
            "checkpoint": {"path": str(ckpt), "sha256": sha256_file(ckpt)}}
    (models / "tiny_unet.yaml").write_text(yaml.safe_dump(card))
    (targets / "tiny.yaml").write_text(yaml.safe_dump(TINY_TARGET))
    env = {"EDGESHRINK_MODELS_DIR": str(models), "EDGESHRINK_TARGETS_DIR": str(targets)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        # no channel pruning: the device script does not care, and the run stays short
        bundle = build_bundle("tiny_unet", "tiny", str(root / "dist"), synthetic_data=True, finetune_epochs=0,
                              calibration_size=16, bench=False, progress=False, structured=False)
        c = load_card("tiny_unet")
        pack = write_eval_pack(load_task(c, card_input_spec(c), DataRef(None, True), False), root / "heldout.npz")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return bundle, pack


@pytest.fixture(scope="module")
def seg_python(tmp_path_factory):
    """A clean venv with the device pins + Pillow (PNG input) + nibabel (NIfTI input)."""
    venv = tmp_path_factory.mktemp("segpi") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "numpy==1.26.4", "ai-edge-litert==2.1.0", "pillow==11.3.0", "nibabel==5.3.2"], check=True)
    return venv / "bin" / "python"


def run(python, bundle, *args, cwd=None):
    return subprocess.run([str(python), str(bundle / "edgeshrink_run.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def deployed(bundle: Path) -> dict:
    m = manifest_of(bundle)
    return next(a for a in m["artifacts"] if a["name"] == m["deploy"]["artifact"])


def host_masks(bundle: Path, volume_zscored: np.ndarray) -> np.ndarray:
    """The host's path: axis-0 slices centre-padded (toolkit.data.nifti), the deployed file run by
    toolkit.runtime.tflite.TFLiteRunner at batch 1, argmax, padding cropped (restack)."""
    from toolkit.data.nifti import Volume, restack, slices_of
    from toolkit.runtime.tflite import TFLiteRunner

    images, _ = slices_of(Volume("v", volume_zscored, np.zeros(volume_zscored.shape, np.uint8)), (SIZE, SIZE))
    runner = TFLiteRunner(bundle / deployed(bundle)["file"], 1)
    pred = np.concatenate([runner(images[i:i + 1]) for i in range(len(images))]).argmax(1)
    return restack(pred, volume_zscored.shape, (SIZE, SIZE))


def zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


def held_out_volume(index: int = 0):
    from toolkit.data.nifti import synthetic_volumes

    return synthetic_volumes(30, seed=1)[24 + index]


def test_bundle_readme_tells_segmentation_commands(seg):
    bundle, _ = seg
    readme = (bundle / "README.md").read_text()
    assert "--out masks/" in readme and ".nii.gz" in readme and "--eval-pack" in readme
    assert "--top-k" not in readme and "sliced along axis 0" in readme
    m = manifest_of(bundle)
    assert m["task"] == "segmentation" and m["labels"] == LABELS and m["data"]["slice_axis"] == 0
    assert m["input"]["scaling"] == "zscore_volume"
    assert {"edgeshrink_run_segment.py", "edgeshrink_run_images.py"} <= {f["file"] for f in m["device_files"]}


def test_bench_takes_the_model_input_shape(seg, seg_python, tmp_path):
    bundle, _ = seg
    out = tmp_path / "bench.json"
    proc = run(seg_python, bundle, "--bench", "--runs", "3", "--seconds", "0", "--warmup", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["latency_ms"]["p50"] > 0 and r["task"] == "segmentation"
    assert r["input"]["channels"] == 1 and r["input"]["height"] == SIZE and r["sha256"] == deployed(bundle)["sha256"]


def test_png_slice_gives_mask_and_overlay_equal_to_the_host(seg, seg_python, tmp_path):
    from PIL import Image

    bundle, _ = seg
    v = held_out_volume(0)
    sl = v.image[6]  # a slice through both structures
    pixels = np.round((sl - sl.min()) / np.ptp(sl) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "slice.png")
    Image.fromarray(np.stack([pixels] * 3, axis=2)).save(tmp_path / "slice_rgb.png")  # grey stored as RGB
    out = tmp_path / "r.json"
    proc = run(seg_python, bundle, "--input", tmp_path / "slice.png", tmp_path / "slice_rgb.png", "--out",
               tmp_path / "masks", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert [Path(s["input"]).name for s in r["segmentations"]] == ["slice.png", "slice_rgb.png"]
    expected = host_masks(bundle, zscore(pixels)[None])[0]
    for rec in r["segmentations"]:
        mask = np.asarray(Image.open(rec["mask"]))
        assert mask.shape == pixels.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
        assert np.array_equal(mask, expected)
        overlay = Image.open(rec["overlay"])
        assert overlay.mode == "RGB" and overlay.width >= 4 * pixels.shape[1]
        assert rec["labels"][LABELS[1]]["pixels"] == int((mask == 1).sum())
    truth = v.label[6]
    for c in (1, 2):  # a trained model: the mask finds the structures, so the slicing/normalisation are right
        assert 2 * ((expected == c) & (truth == c)).sum() / ((expected == c).sum() + (truth == c).sum()) > 0.7


def test_nifti_volume_gives_a_nifti_mask_with_the_same_affine(seg, seg_python, tmp_path):
    import nibabel as nib

    from toolkit.data.nifti import read_pair

    bundle, _ = seg
    v = held_out_volume(1)
    raw = np.round(v.image * 250 + 900).astype(np.int16)  # scanner-like integers: the script z-scores them
    affine = np.array([[0.0, 0.0, 1.5, -30.0], [0.9, 0.0, 0.0, 12.0], [0.0, 1.1, 0.0, -7.5], [0, 0, 0, 1]])
    img = nib.Nifti1Image(raw, affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"edgeshrink test volume"
    nib.save(img, tmp_path / "case.nii.gz")
    nib.save(nib.Nifti1Image(v.label, affine), tmp_path / "case_label.nii.gz")
    out = tmp_path / "r.json"
    proc = run(seg_python, bundle, "--input", tmp_path / "case.nii.gz", "--out", tmp_path / "masks", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    rec = r["segmentations"][0]
    assert rec["mask"].endswith("case_mask.nii.gz") and Path(rec["overlay"]).is_file()
    assert r["batched"] is True  # the slices ran in batches (checked equal to batch 1 on the first slice)
    mask_img = nib.load(rec["mask"])
    mask = np.asarray(mask_img.dataobj)
    assert np.allclose(mask_img.affine, affine) and mask_img.header.get_xyzt_units()[0] == "mm"
    assert mask.shape == raw.shape and mask_img.get_data_dtype() == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}
    assert bytes(mask_img.header["descrip"]).rstrip(b"\0") == b"edgeshrink test volume"
    host = read_pair(tmp_path / "case.nii.gz", tmp_path / "case_label.nii.gz", 3)  # the host's reading + z-score
    assert np.array_equal(mask, host_masks(bundle, host.image))
    ml = float(np.prod(img.header.get_zooms())) / 1000.0
    assert rec["labels"][LABELS[2]]["ml"] == pytest.approx(int((mask == 2).sum()) * ml)


def test_eval_pack_dice_equals_the_manifest(seg, seg_python, tmp_path):
    bundle, pack = seg
    out = tmp_path / "r.json"
    proc = run(seg_python, bundle, "--eval-pack", pack, "--json", out)
    assert proc.returncode == 0, proc.stderr
    acc = json.loads(out.read_text())["accuracy"]
    metrics = deployed(bundle)["metrics"]
    assert metrics["dice"] > 0.5  # a trained model: the figure means something
    for key in ("dice", "dice_anterior", "dice_posterior", "hd95_anterior", "hd95_posterior"):
        assert acc[key] == pytest.approx(metrics[key], abs=1e-4), key  # HD95: the same numpy boundary distances
    m = manifest_of(bundle)
    assert [c["case"] for c in acc["per_case"]] == m["data"]["held_out_cases"] and acc["cases"] == 6
    assert all({"dice", "dice_anterior", "dice_posterior"} <= set(c) for c in acc["per_case"])
    assert acc["slices"] == m["data"]["eval_images"] and "held-out Dice" in proc.stdout


def test_old_eval_pack_without_case_ids_is_pooled_with_a_note(seg, seg_python, tmp_path):
    bundle, pack = seg
    with np.load(pack) as p:
        np.savez(tmp_path / "old.npz", images=p["images"], labels=p["labels"])
    proc = run(seg_python, bundle, "--eval-pack", tmp_path / "old.npz", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "no case ids" in proc.stderr and "pooled_slice_dice" in json.loads((tmp_path / "r.json").read_text())["accuracy"]


def test_npy_slices_and_volumes_and_refusals(seg, seg_python, tmp_path):
    bundle, _ = seg
    v = held_out_volume(2)
    np.save(tmp_path / "slice.npy", v.image[5])
    np.save(tmp_path / "volume.npy", v.image)
    proc = run(seg_python, bundle, "--input", tmp_path / "slice.npy", tmp_path / "volume.npy", "--out", tmp_path / "m",
               "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    recs = json.loads((tmp_path / "r.json").read_text())["segmentations"]
    vol_mask = np.load(recs[1]["mask"])
    assert vol_mask.shape == v.image.shape and np.array_equal(vol_mask, host_masks(bundle, zscore(v.image)))
    (tmp_path / "empty").mkdir()
    for args, expected in ((["--input", tmp_path / "empty"], "holds no"),
                           (["--truth", tmp_path], "for classifiers"),
                           (["--input", tmp_path / "nope.nii.gz"], "does not exist")):
        bad = run(seg_python, bundle, *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and expected in lines[0], bad.stderr


def test_nifti_without_nibabel_is_one_line_naming_the_package(seg, seg_python, tmp_path):
    bundle, _ = seg
    (tmp_path / "x.nii").write_bytes(b"\0" * 400)
    code = ("import runpy, sys; sys.modules['nibabel'] = None; script = sys.argv.pop(1); sys.argv[0] = script; "
            "runpy.run_path(script, run_name='__main__')")
    proc = subprocess.run([str(seg_python), "-c", code, str(bundle / "edgeshrink_run.py"), "--input", str(tmp_path / "x.nii")],
                          capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "pip install nibabel" in lines[0], proc.stderr
