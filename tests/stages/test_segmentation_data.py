"""Bring your own segmentation data: every layout loads from tiny fixtures, splits at case level
(no case on both sides), honours the card's split, refuses undeclared label values in one line and
ignores hidden files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from toolkit.core.errors import EdgeShrinkError

SHAPE = (4, 10, 12)
AFFINE = np.diag([1.5, 0.8, 2.0, 1.0])


def _volume(seed: int, shape=SHAPE):
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    label[1:3, 2:6, 3:7] = 1
    label[1:3, 6:8, 3:7] = 2
    return rng.normal(100, 20, shape).astype(np.float32) + 30 * label, label


def _save(path: Path, arr, affine=AFFINE):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def _nifti(root: Path, cases: int = 5, images="images", labels="labels") -> Path:
    for i in range(cases):
        image, label = _volume(i)
        _save(root / images / f"case_{i:03d}.nii.gz", image)
        _save(root / labels / f"case_{i:03d}.nii.gz", label)
    return root


def _msd(root: Path, cases: int = 5) -> Path:
    _nifti(root, cases, "imagesTr", "labelsTr")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Toy", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": cases, "training": [{"image": f"./imagesTr/case_{i:03d}.nii.gz",
                                            "label": f"./labelsTr/case_{i:03d}.nii.gz"} for i in range(cases)]}))
    (root / "imagesTr" / "._case_000.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # as in the MSD tar
    (root / "labelsTr" / "._case_000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (root / "imagesTs").mkdir()
    return root


def _nnunet(root: Path, cases: int = 4) -> Path:
    for i in range(cases):
        image, label = _volume(i)
        _save(root / "imagesTr" / f"pat{i}_0000.nii.gz", image)
        _save(root / "imagesTr" / f"pat{i}_0001.nii.gz", image * 0.5 + 7)
        _save(root / "labelsTr" / f"pat{i}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "zone": 1, "lesion": 2},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


def _pairs(root: Path, patients=("alice", "bob", "carol", "dave"), slices: int = 3, mask_value: int = 255) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for p in patients:
        for s in range(slices):
            mask = np.zeros((16, 20), np.uint8)
            mask[4:10, 5:12] = mask_value
            image = np.clip(rng.normal(80, 10, (16, 20)) + (mask > 0) * 90, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / f"{p}_slice_{s:02d}.png")
            Image.fromarray(mask).save(root / "masks" / f"{p}_slice_{s:02d}.png")
    (root / "images" / ".DS_Store").write_bytes(b"junk")
    (root / "images" / "._alice_slice_00.png").write_bytes(b"\x00\x05\x16\x07")
    return root


def _source(root, **kw):
    from toolkit.data.segmentation_data import SegmentationSource

    kw.setdefault("labels", ("background", "anterior", "posterior"))
    return SegmentationSource(root=Path(root), **kw)


def _load(root, **kw):
    from toolkit.data.segmentation_data import load_segmentation

    return load_segmentation(_source(root, **kw), progress=False)


def _cases(volumes) -> set:
    return {v.case for v in volumes}


def _disjoint(vs) -> None:
    assert vs.train and vs.held_out and not _cases(vs.train) & _cases(vs.held_out)


# ---- layouts -------------------------------------------------------------------------------------

def test_plain_nifti_folders_load_with_spacing_and_affine(tmp_path):
    vs = _load(_nifti(tmp_path))
    _disjoint(vs)
    assert vs.layout == "nifti" and len(vs.train) + len(vs.held_out) == 5 and len(vs.held_out) == 1  # default 0.2
    v = vs.held_out[0]
    assert v.spacing == pytest.approx((1.5, 0.8, 2.0)) and np.allclose(v.affine, AFFINE) and v.label.max() == 2
    assert "last 1 held out" in vs.split


def test_msd_download_layout_reads_dataset_json_and_skips_resource_forks(tmp_path):
    vs = _load(_msd(tmp_path), labels=())
    _disjoint(vs)
    assert vs.layout == "msd" and vs.labels == ["background", "Anterior", "Posterior"] and vs.modalities == ["MRI"]
    assert len(vs.train) + len(vs.held_out) == 5 and not vs.problems  # the ._ files were never read


def test_nnunet_raw_layout_stacks_channels(tmp_path):
    vs = _load(_nnunet(tmp_path), labels=(), channels=2)
    _disjoint(vs)
    assert vs.layout == "nnunet" and vs.labels == ["background", "zone", "lesion"] and vs.modalities == ["T2", "ADC"]
    v = vs.train[0]
    assert v.image.shape == SHAPE + (2,) and v.label.shape == SHAPE
    assert np.allclose(v.image.mean(axis=(0, 1, 2)), 0, atol=1e-5)  # each channel z-scored on its own
    from toolkit.data.nifti import slices_of

    images, labels = slices_of(v, (16, 16))
    assert images.shape == (SHAPE[0], 2, 16, 16) and labels.shape == (SHAPE[0], 16, 16)


def test_nnunet_case_missing_a_channel_is_one_line(tmp_path):
    _nnunet(tmp_path)
    (tmp_path / "imagesTr" / "pat2_0001.nii.gz").unlink()
    with pytest.raises(EdgeShrinkError, match="case pat2 has channel files") as exc:
        _load(tmp_path, labels=(), channels=2)
    assert "\n" not in str(exc.value)


def test_channel_count_must_match_the_card(tmp_path):
    _nnunet(tmp_path)
    with pytest.raises(EdgeShrinkError, match="2 channel.*input.channels is 1"):
        _load(tmp_path, labels=(), channels=1)


def test_2d_pairs_group_slices_of_one_patient_on_one_side(tmp_path):
    vs = _load(_pairs(tmp_path), labels=("background", "lesion"), label_values=(0, 255), held_out=2,
               scaling="divide255", mean=(0.5,), std=(0.25,))
    _disjoint(vs)
    assert vs.layout == "pairs" and vs.spacing_unit == "px"
    assert _cases(vs.train) | _cases(vs.held_out) == {"alice", "bob", "carol", "dave"}
    assert len(vs.held_out) == 6 and len(vs.train) == 6  # 2 patients x 3 slices each side
    v = vs.train[0]
    assert v.image.shape == (1, 16, 20) and set(np.unique(v.label)) == {0, 1}  # 255 -> label index 1
    assert v.image.min() < 0  # (x/255 - 0.5) / 0.25


def test_2d_pairs_from_a_list_file_with_case_column(tmp_path):
    _pairs(tmp_path, mask_value=1)
    names = sorted(p.name for p in (tmp_path / "images").glob("[!.]*.png"))
    lines = ["# image mask case"] + [f"images/{n}, masks/{n}, {'A' if n < 'c' else 'B'}" for n in names]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    vs = _load(tmp_path, list_file="pairs.txt", labels=("background", "lesion"))
    assert _cases(vs.train) | _cases(vs.held_out) == {"A", "B"}
    _disjoint(vs)


def test_list_file_paths_must_stay_in_the_data_folder(tmp_path):
    _pairs(tmp_path, mask_value=1)
    (tmp_path / "pairs.txt").write_text("../outside.png masks/alice_slice_00.png\n")
    with pytest.raises(EdgeShrinkError, match="leaves the data folder"):
        _load(tmp_path, list_file="pairs.txt", labels=("background", "lesion"))


def test_case_pattern_from_the_card(tmp_path):
    from toolkit.data.segmentation_split import case_key, compile_case_pattern

    default = compile_case_pattern(None)
    assert case_key("hippocampus_001_slice_012", default, given=False) == "hippocampus_001"
    assert case_key("PAT7-z33", default, given=False) == "PAT7"
    assert case_key("img_0042", default, given=False) == "img_0042"  # no slice marker: its own case
    mine = compile_case_pattern(r"^(\w+?)_\d+$")
    assert case_key("p12_007", mine, given=True) == "p12"
    with pytest.raises(EdgeShrinkError, match="does not match dataset.case_pattern"):
        case_key("nounderscore", mine, given=True)


def test_layout_not_recognised_is_one_line(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(EdgeShrinkError, match="no segmentation layout") as exc:
        _load(tmp_path)
    assert "\n" not in str(exc.value)
    with pytest.raises(EdgeShrinkError, match="needs"):
        _load(_nifti(tmp_path / "n"), layout="msd")


# ---- splits --------------------------------------------------------------------------------------

@pytest.mark.parametrize("held_out, expected", [(None, 2), (0.5, 4), (3, 3), (("case_001", "case_004"), 2)])
def test_card_split_is_honoured(tmp_path, held_out, expected):
    vs = _load(_nifti(tmp_path, cases=8), held_out=held_out)
    _disjoint(vs)
    assert len(vs.held_out) == expected and len(vs.train) == 8 - expected
    if isinstance(held_out, tuple):
        assert sorted(_cases(vs.held_out)) == list(held_out) and "listed in the card" in vs.split


def test_smallest_data_two_cases_one_each_side(tmp_path):
    vs = _load(_nifti(tmp_path, cases=2), held_out=0.9)
    assert len(vs.train) == 1 and len(vs.held_out) == 1


@pytest.mark.parametrize("cases, held_out, words", [(1, None, "at least 2"), (4, 4, "between 1 and 3"),
                                                    (4, ("case_009",), "not in the data"),
                                                    (2, ("case_000", "case_001"), "at least one case to train")])
def test_impossible_splits_are_one_line(tmp_path, cases, held_out, words):
    _nifti(tmp_path, cases=cases)
    with pytest.raises(EdgeShrinkError, match=words) as exc:
        _load(tmp_path, held_out=held_out)
    assert "\n" not in str(exc.value)


def test_split_does_not_depend_on_listing_order_and_is_seeded():
    from toolkit.data.segmentation_split import split_cases

    names = [f"c{i:02d}" for i in range(30)]
    a = split_cases(names)
    assert split_cases(list(reversed(names))) == a and len(a[1]) == 6


# ---- label values --------------------------------------------------------------------------------

def test_undeclared_label_value_is_one_line_naming_file_and_value(tmp_path):
    _nifti(tmp_path, cases=4)
    image, label = _volume(0)
    label[0, 0, 0] = 5
    _save(tmp_path / "labels" / "case_002.nii.gz", label)
    with pytest.raises(EdgeShrinkError) as exc:
        _load(tmp_path, held_out=("case_002",))
    msg = str(exc.value)
    assert "\n" not in msg and "case_002.nii.gz" in msg and "value 5" in msg and "label_values" in msg
    vs = _load(tmp_path, held_out=("case_001",))  # the same file on the training side: skipped and reported
    assert len(vs.problems) == 1 and "value 5" in vs.problems[0] and "case_002" not in _cases(vs.train)


def test_declared_label_values_map_to_indices(tmp_path):
    _nifti(tmp_path, cases=3)
    image, label = _volume(0)
    for i in range(3):
        _save(tmp_path / "labels" / f"case_{i:03d}.nii.gz", (label * 100).astype(np.uint8))  # values 0, 100, 200
    vs = _load(tmp_path, label_values=(0, 100, 200))
    assert all(set(np.unique(v.label)) == {0, 1, 2} for v in vs.train + vs.held_out)
    with pytest.raises(EdgeShrinkError, match="value 100"):
        _load(tmp_path, held_out=("case_000",))


def test_png_mask_values_outside_declared_are_refused(tmp_path):
    _pairs(tmp_path, patients=("a", "b"), mask_value=255)
    with pytest.raises(EdgeShrinkError, match="value 255 outside 0..1"):
        _load(tmp_path, labels=("background", "lesion"))


def test_label_count_disagreeing_with_dataset_json_is_refused(tmp_path):
    with pytest.raises(EdgeShrinkError, match="card lists 2 labels but .*names 3"):
        _load(_msd(tmp_path), labels=("background", "hippocampus"))


# ---- the card and the task -----------------------------------------------------------------------

def _card(tmp_path, dataset: dict):
    from toolkit.config.cards import card_from_dict

    data = {"name": "toy_unet", "architecture": "unet", "arguments": {"in_channels": 1, "num_classes": 3},
            "task": "segmentation", "dataset": dataset, "metric": "dice", "labels": ["background", "anterior", "posterior"],
            "input": {"size": [16, 16], "channels": 1, "mean": [0.0], "std": [1.0], "scaling": "zscore_volume"}}
    return card_from_dict(data, tmp_path)


@pytest.mark.parametrize("bad", [0, 1.5, True, [], ["a", "a"]])
def test_card_refuses_impossible_held_out(tmp_path, bad):
    with pytest.raises(EdgeShrinkError, match="held_out"):
        _card(tmp_path, {"root": "data", "held_out": bad})


def test_task_reports_the_split_the_card_asked_for(tmp_path):
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task

    _msd(tmp_path / "data", cases=6)
    card = _card(tmp_path, {"root": "data", "held_out": 2})
    task = load_task(card, card_input_spec(card), DataRef(), progress=False)
    d = task.data_description()
    assert d["layout"] == "msd" and d["cases"] == {"train": 4, "held_out": 2} and len(d["held_out_cases"]) == 2
    assert d["modalities"] == ["MRI"] and "last 2 held out" in d["split"] and d["hd95_unit"] == "mm"
    assert task.eval_count() == 2 * SHAPE[0]


def test_task_metrics_score_each_case_in_mm(tmp_path):
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task

    _nifti(tmp_path / "data", cases=4)
    card = _card(tmp_path, {"root": "data", "held_out": 2})
    task = load_task(card, card_input_spec(card), DataRef(), progress=False)
    size = (16, 16)
    from toolkit.data.nifti import slices_of

    truth = np.concatenate([slices_of(v, size)[1] for v in task.volumes.held_out])
    perfect = np.eye(3, dtype=np.float32)[truth].transpose(0, 3, 1, 2)
    m = task.metrics(perfect, perfect)
    assert m["dice"] == 1.0 and m["hd95"] == 0.0 and m["agreement_pixels"] == 1.0
    assert [r["case"] for r in m["per_case"]] == task.held_out_cases()
    shifted = np.roll(perfect, 1, axis=2)  # one voxel along Y: 0.8 mm in these volumes
    m = task.metrics(shifted, perfect)
    assert m["hd95_anterior"] == pytest.approx(0.8) and m["dice"] < 1.0


def test_mask_nifti_keeps_the_source_affine(tmp_path):
    import nibabel as nib

    from toolkit.data.segmentation_data import load_segmentation, source_from_card
    from toolkit.tasks.segmentation_extras import save_mask_nifti

    _nifti(tmp_path / "data", cases=3)
    card = _card(tmp_path, {"root": "data"})
    vs = load_segmentation(source_from_card(card, tmp_path / "data"), progress=False)
    v = vs.held_out[0]
    save_mask_nifti(tmp_path / "mask.nii.gz", v.label, v)
    back = nib.load(str(tmp_path / "mask.nii.gz"))
    assert np.allclose(back.affine, AFFINE) and np.array_equal(np.asarray(back.dataobj), v.label)
    assert back.get_data_dtype() == np.uint8


def test_typical_held_out_mask_and_report_section(tmp_path):
    import nibabel as nib

    from toolkit.data.nifti import slices_of
    from toolkit.models.artifact import Artifact
    from toolkit.pipeline.report.segmentation import segmentation_lines
    from toolkit.tasks.registry import DataRef, card_input_spec, load_task
    from toolkit.tasks.segmentation_extras import write_typical_mask

    _nifti(tmp_path / "data", cases=6)
    card = _card(tmp_path, {"root": "data", "held_out": 3})
    task = load_task(card, card_input_spec(card), DataRef(), progress=False)
    truth = np.concatenate([slices_of(v, (16, 16))[1] for v in task.volumes.held_out])
    outputs = np.eye(3, dtype=np.float32)[truth].transpose(0, 3, 1, 2)
    outputs[: SHAPE[0]] = np.roll(outputs[: SHAPE[0]], 2, axis=3)  # the first case predicted 2 voxels off
    (tmp_path / "bundle").mkdir()
    written = write_typical_mask(tmp_path / "bundle", task, outputs, artifact="pruned-tflite-int8")
    assert written["case"] in task.held_out_cases() and written["dice"] == 1.0  # the median of (worse, 1, 1)
    back = nib.load(str(tmp_path / "bundle" / written["file"]))
    assert np.allclose(back.affine, AFFINE) and back.shape == SHAPE

    metrics = task.metrics(outputs, None)
    art = Artifact(name="pruned-tflite-int8", stage="pruned", format="tflite", precision="int8", file="m.tflite",
                   metrics=metrics)
    manifest = {"data": task.data_description(), "task_extras": {"held_out_mask": written}}
    text = "\n".join(segmentation_lines(manifest, [art]))
    worst = task.held_out_cases()[0]
    assert "3 training cases, 3 held out" in text and "| `m.tflite` | anterior |" in text
    assert text.index(f"| {worst} |") < text.index(f"| {task.held_out_cases()[1]} |")  # worst case first
    assert written["file"] in text and segmentation_lines(manifest, []) == []
