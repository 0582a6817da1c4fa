"""Data folders a user really has: hidden folders, missing classes, broken images, odd image modes,
images edited in place; NIfTI volumes that are unreadable, NaN, mislabelled or misshaped."""

from __future__ import annotations

import numpy as np
import pytest

from tests.hostile.conftest import assert_error_line
from toolkit.core.errors import EdgeShrinkError


def _folder(root, split="train", classes=("cat", "dog"), per_class=2, size=(20, 24)):
    from PIL import Image

    for c, name in enumerate(classes):
        d = root / split / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((*size, 3), 60 * c + 10 * i, np.uint8)).save(d / f"{i}.jpg")
    return root


def _load(root, split="train", classes=None):
    from toolkit.data.imagefolder import load_image_split

    return load_image_split(root, split, 16, 16, progress=False, classes=classes)


def test_hidden_checkpoint_folder_in_val_is_ignored(tmp_path, henv):
    _folder(_folder(tmp_path), "val")
    (tmp_path / "val" / ".ipynb_checkpoints").mkdir()
    val = _load(tmp_path, "val", classes=["cat", "dog"])
    assert val.classes == ["cat", "dog"] and sorted(set(val.labels.tolist())) == [0, 1]


@pytest.mark.parametrize("val_classes, words", [(("cat",), "missing: ['dog']"), (("cat", "dog", "emu"), "extra: ['emu']"),
                                                (("cat", "dgo"), "labels would shift")], ids=["missing", "extra", "renamed"])
def test_val_classes_must_match_training_classes(tmp_path, henv, val_classes, words):
    _folder(_folder(tmp_path), "val", classes=val_classes)
    with pytest.raises(EdgeShrinkError) as exc:
        _load(tmp_path, "val", classes=["cat", "dog"])
    assert_error_line(exc, words)


def _truncated(path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("make", [_truncated, lambda p: p.write_bytes(b""), lambda p: p.write_text("not an image\n"),
                                  lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))],
                         ids=["truncated-jpeg", "zero-bytes", "text-named-jpg", "png-header-only"])
def test_broken_image_is_refused_naming_the_file(tmp_path, henv, make):
    _folder(tmp_path)
    make(tmp_path / "train" / "dog" / "broken.jpg")
    with pytest.raises(EdgeShrinkError) as exc:
        _load(tmp_path)
    assert_error_line(exc, "broken.jpg", "cannot be decoded")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "LA", "CMYK"])
def test_any_image_mode_is_accepted_as_rgb(tmp_path, henv, mode):
    from PIL import Image

    _folder(tmp_path)
    arr = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50 if mode == "I;16" else None
    img = Image.fromarray(arr, "I;16") if arr is not None else Image.new("RGB", (40, 30), (200, 30, 90)).convert(mode)
    img.save(tmp_path / "train" / "dog" / ("odd.tiff" if mode == "CMYK" else "odd.png"))
    if mode == "CMYK":
        (tmp_path / "train" / "dog" / "odd.tiff").rename(tmp_path / "train" / "dog" / "odd.jpg")
        img.save(tmp_path / "train" / "dog" / "odd.jpg")
    split = _load(tmp_path)
    assert split.images.shape == (5, 16, 16, 3) and split.images.dtype == np.uint8


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["edited", "edited-mtime-preserved"])
def test_image_edited_in_place_is_decoded_again(tmp_path, henv, keep_mtime):
    import os

    from PIL import Image

    _folder(tmp_path)
    first = _load(tmp_path)
    target = tmp_path / "train" / "cat" / "0.jpg"
    stat = target.stat()
    noisy = np.random.default_rng(1).integers(200, 255, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(target)  # another picture, another byte size
    if keep_mtime:
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # `cp -p` / rsync -t keep the old mtime
    second = _load(tmp_path)
    assert not np.array_equal(first.images, second.images)
    assert second.images[0].mean() > 200


def test_no_images_at_all_is_one_line(tmp_path, henv):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(EdgeShrinkError) as exc:
        _load(tmp_path)
    assert_error_line(exc, "no images")


# ---- NIfTI -------------------------------------------------------------------------------------

def _msd(root, cases=5, shape=(6, 10, 12)):
    import nibabel as nib

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(cases):
        img = rng.normal(100, 20, shape).astype(np.float32)
        lab = (rng.random(shape) * 3).astype(np.uint8)
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / "images" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labels" / f"case_{i:03d}.nii.gz")
    return root


def _held_and_train(names):
    from toolkit.data.nifti import case_split

    train, held = case_split(names, held_out=2)
    return train[0], held[0]


NAMES = [f"case_{i:03d}" for i in range(5)]


def _spoil(root, case, how):
    import nibabel as nib

    img_path, lab_path = root / "images" / f"{case}.nii.gz", root / "labels" / f"{case}.nii.gz"
    if how == "unreadable":
        img_path.write_bytes(b"\x1f\x8b garbage")
    elif how == "nan":
        img = np.asarray(nib.load(str(img_path)).dataobj).copy()
        img[0, 0, 0] = np.nan
        nib.save(nib.Nifti1Image(img, np.eye(4)), img_path)
    elif how == "labels-out-of-range":
        nib.save(nib.Nifti1Image(np.full((6, 10, 12), 7, np.uint8), np.eye(4)), lab_path)
    elif how == "shape-mismatch":
        nib.save(nib.Nifti1Image(np.zeros((6, 10, 11), np.uint8), np.eye(4)), lab_path)
    elif how == "no-label":
        lab_path.unlink()


SPOILS = ["unreadable", "nan", "labels-out-of-range", "shape-mismatch", "no-label"]
SPOIL_WORDS = {"unreadable": "unreadable", "nan": "NaN", "labels-out-of-range": "outside 0..2",
               "shape-mismatch": "differs from label shape", "no-label": "no label file"}


@pytest.mark.parametrize("how", SPOILS)
def test_bad_held_out_case_stops_the_run(tmp_path, how):
    from toolkit.data.nifti import load_msd

    root = _msd(tmp_path)
    _, held = _held_and_train(NAMES)
    _spoil(root, held, how)
    with pytest.raises(EdgeShrinkError) as exc:
        load_msd(root, 3, held_out=2, progress=False)
    assert_error_line(exc, "held-out", held, SPOIL_WORDS[how])


@pytest.mark.parametrize("how", SPOILS)
def test_bad_training_case_is_skipped_and_reported(tmp_path, how):
    from toolkit.data.nifti import load_msd

    root = _msd(tmp_path)
    train, held = _held_and_train(NAMES)
    _spoil(root, train, how)
    vs = load_msd(root, 3, held_out=2, progress=False)
    assert train not in [v.name for v in vs.train] and len(vs.train) == 2 and len(vs.held_out) == 2
    assert len(vs.problems) == 1 and train in vs.problems[0] and SPOIL_WORDS[how].lower() in vs.problems[0].lower()
    assert all(np.isfinite(v.image).all() for v in vs.train + vs.held_out)
