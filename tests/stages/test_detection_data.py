"""Detection data: COCO JSON, YOLO txt and VOC XML of the same images load to the same boxes;
the class list is checked against the card; hidden files are ignored; boxes outside the image are
clipped or dropped and counted; broken annotation files are one-line errors. And mAP: perfect
detections score 1.0, known partial cases their known value, crowd regions are ignored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.stages.detection_helpers import CLASSES, DECODING, write_all_formats, write_coco
from toolkit.core.errors import EdgeShrinkError


def card(root, fmt=None, labels=CLASSES, **extra):
    from toolkit.config.cards import card_from_dict

    dataset = {"root": str(root), **({"format": fmt} if fmt else {})}
    return card_from_dict({"name": "det", "architecture": "tiny.py:build", "task": "detection", "dataset": dataset,
                           "input": {"size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3}, "metric": "map50",
                           "labels": labels, "detection": DECODING, **extra}, root)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return write_all_formats(tmp_path_factory.mktemp("det-data"))


def splits_of(root, fmt=None, labels=CLASSES):
    from toolkit.data.detection_datasets import detection_splits

    return detection_splits(card(root, fmt, labels), root=None, synthetic=False)


def test_three_formats_give_the_same_boxes_labels_and_sizes(roots):
    loaded = {fmt: splits_of(root) for fmt, root in roots.items()}  # the format is detected from the files
    for split in (0, 1):
        reference = loaded["coco"][split]
        assert reference.format == "coco" and reference.classes == CLASSES
        for fmt in ("yolo", "voc"):
            other = loaded[fmt][split]
            assert other.format == fmt and other.classes == CLASSES and len(other) == len(reference)
            by_name = {s.path.name: s for s in other.samples}
            for s in reference.samples:
                o = by_name[s.path.name]
                assert (o.width, o.height) == (s.width, s.height)
                assert o.labels.tolist() == s.labels.tolist()
                np.testing.assert_allclose(o.boxes, s.boxes, atol=1e-3)
    assert loaded["coco"][0].report["boxes"] == sum(len(s.boxes) for s in loaded["coco"][0].samples) > 12


def test_pixels_any_mode_and_size_are_stretched_to_the_input(roots):
    from toolkit.data.detection_datasets import decode_for_training, decode_resized

    train, _ = splits_of(roots["voc"])
    pixels = decode_resized(train, 64, 48)
    assert pixels.shape == (len(train), 64, 48, 3) and pixels.dtype == np.uint8
    images, boxes, labels = decode_for_training(train, 60)
    assert all(max(i.shape[:2]) <= 60 and i.shape[2] == 3 for i in images)
    first = train.samples[0]
    scale = images[0].shape[1] / first.width
    np.testing.assert_allclose(boxes[0], first.boxes * scale, rtol=0.02)
    assert labels[0].tolist() == first.labels.tolist()


def test_class_list_must_match_the_card(roots):
    with pytest.raises(EdgeShrinkError, match="same names in another order"):
        splits_of(roots["coco"], labels=["dog", "cat"])
    with pytest.raises(EdgeShrinkError, match="unexpected"):
        splits_of(roots["yolo"], labels=["cat"])
    with pytest.raises(EdgeShrinkError, match=r"class\(es\) \['dog'\] that are not the card's labels"):
        splits_of(roots["voc"], labels=["cat", "horse"])
    assert splits_of(roots["voc"], labels=[])[0].classes == ["cat", "dog"]  # no labels: the names found, sorted


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(tmp_path):
    from tests.stages.detection_helpers import dataset_items

    items = dataset_items(2, seed=5)
    width, height = items[0]["size"]
    items[0]["boxes"] = [[-5, -5, 10, 10], [5, 5, 5, 20], [width + 1, 0, width + 9, 9], [2, 2, width + 30, 12]]
    items[0]["labels"] = [0, 1, 0, 1]
    root = write_coco(tmp_path / "coco", {"train": items, "val": items[1:]})
    (root / "images" / ".DS_Store").write_bytes(b"junk")
    (root / "images" / "._img_000.jpg").write_bytes(b"junk")
    train, _ = splits_of(root)
    first = train.samples[0]
    assert first.boxes.tolist() == [[0, 0, 10, 10], [2, 2, width, 12]]
    assert first.labels.tolist() == [0, 1]
    r = train.report
    assert (r["boxes_clipped"], r["boxes_dropped_no_area"], r["boxes_dropped_outside"]) == (2, 1, 1)


def test_hidden_files_are_ignored_in_yolo_and_voc_folders(tmp_path):
    from tests.stages.detection_helpers import dataset_items, write_voc, write_yolo

    splits = {"train": dataset_items(3, seed=3), "val": dataset_items(2, seed=4)}
    yolo = write_yolo(tmp_path / "yolo", splits)
    (yolo / "images" / "train" / "._img_000.jpg").write_bytes(b"\x00\x05junk")
    train, _ = splits_of(yolo)
    assert len(train) == 3 and train.report["hidden_files_ignored"] == 1
    voc = tmp_path / "voc_split"
    for split, items in splits.items():
        write_voc(voc / split, {split: items})
        (voc / split / "ImageSets").rename(voc / split / ".unused")
    (voc / "train" / "Annotations" / "._x.xml").write_text("junk")
    train, _ = splits_of(voc, "voc")
    assert len(train) == 3 and train.report["hidden_files_ignored"] == 1


@pytest.mark.parametrize("damage, words", [
    (lambda r: (r / "annotations" / "instances_train.json").write_text("{not json"), "not valid JSON"),
    (lambda r: (r / "annotations" / "instances_train.json").write_text(json.dumps({"images": []})), "needs lists"),
    (lambda r: _edit(r, lambda d: d["annotations"][0].update(category_id=9)), "category_id 9"),
    (lambda r: _edit(r, lambda d: d["annotations"][0].update(bbox=[1, 2])), r"not \[x, y, width, height\]"),
    (lambda r: _edit(r, lambda d: d["images"][0].update(width=999)), "fix the annotation's width/height"),
    (lambda r: _edit(r, lambda d: d["images"][0].update(file_name="../../etc/passwd")), "relative path inside"),
    (lambda r: (r / "images" / "img_000.jpg").unlink(), "is not under"),
])
def test_broken_coco_files_are_one_line_errors(tmp_path, damage, words):
    from tests.stages.detection_helpers import dataset_items

    root = write_coco(tmp_path / "coco", {"train": dataset_items(3, seed=1), "val": dataset_items(1, seed=2)})
    damage(root)
    with pytest.raises(EdgeShrinkError, match=words) as err:
        splits_of(root)
    assert "\n" not in str(err.value)


def _edit(root, change):
    path = root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_broken_yolo_and_voc_files_are_one_line_errors(roots, tmp_path):
    import shutil

    yolo = tmp_path / "yolo"
    shutil.copytree(roots["yolo"], yolo)
    label = sorted((yolo / "labels" / "train").iterdir())[0]
    label.write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(EdgeShrinkError, match=r":1: expected 'class cx cy w h'"):
        splits_of(yolo)
    label.write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(EdgeShrinkError, match="class 7 is not one of the 2 class names"):
        splits_of(yolo)
    voc = tmp_path / "voc"
    shutil.copytree(roots["voc"], voc)
    xml = sorted((voc / "Annotations").iterdir())[0]
    xml.write_text('<!DOCTYPE x [<!ENTITY a "aaaa">]><annotation>&a;</annotation>')
    with pytest.raises(EdgeShrinkError, match="DOCTYPE or entities"):
        splits_of(voc)
    xml.write_text("<annotation><object><name>cat</name></object></annotation>")
    with pytest.raises(EdgeShrinkError, match="without <name> or <bndbox>"):
        splits_of(voc)
    with pytest.raises(EdgeShrinkError, match="no detection annotations I know"):
        splits_of(tmp_path)


def test_map_of_perfect_partial_and_crowd_cases(roots):
    from toolkit.tasks.detection_metrics import coco_map

    _, val = splits_of(roots["coco"])
    truth = [{"boxes": s.boxes, "scores": np.ones(len(s.boxes)), "labels": s.labels} for s in val.samples]
    assert coco_map(val.samples, CLASSES, truth) == {"map50": 1.0, "map": 1.0, "map75": 1.0}
    nothing = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)} for _ in val.samples]
    assert coco_map(val.samples, CLASSES, nothing)["map50"] == 0.0
    shifted = [dict(d, boxes=d["boxes"] + np.array([0, 0, 0.6, 0]) * (d["boxes"][:, 2:3] - d["boxes"][:, 0:1]))
               for d in truth]  # IoU 1/1.6 = 0.625: a hit at 0.5, a miss at 0.75
    result = coco_map(val.samples, CLASSES, shifted)
    assert result["map50"] == 1.0 and result["map75"] == 0.0 and 0.2 < result["map"] < 0.4
    wrong_class = [dict(d, labels=1 - d["labels"]) for d in truth]
    assert coco_map(val.samples, CLASSES, wrong_class)["map50"] == 0.0
    crowd = [s for s in val.samples]
    crowd[0].ignore[:] = True  # detections on ignore regions are neither hits nor false positives
    try:
        extra = [dict(d) for d in truth]
        assert coco_map(crowd, CLASSES, extra)["map50"] == 1.0
    finally:
        crowd[0].ignore[:] = False
