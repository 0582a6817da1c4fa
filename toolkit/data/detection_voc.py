"""Pascal VOC XML detection annotations.

`Annotations/<id>.xml` and `JPEGImages/<image>` with the split's ids in `ImageSets/Main/<split>.txt`,
or a split folder `<split>/Annotations/` + `<split>/JPEGImages/` (every XML file in it). Boxes are
VOC's 1-based inclusive corners (x1 = xmin - 1, x2 = xmax in 0-based pixel edges); `difficult`
objects are ignore regions. VOC files carry no class list: the card's labels are the classes (else
the sorted names of the training split), and a name outside them is an error. XML with a DOCTYPE or
entity declarations is refused (entity expansion can blow up memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.core.errors import EdgeShrinkError
from toolkit.data.detection_records import DetectionSplit, image_size, make_sample, new_report, safe_relative
from toolkit.data.imagefolder import IMAGE_SUFFIXES

VOC_XML_MAX_BYTES = 1 << 20


def split_files(root: Path, split: str, report: dict) -> tuple[list[Path], Path]:
    """(annotation files of the split, the folder its images are in)."""
    from toolkit.core.files import read_bytes_capped

    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if listing.is_file():
        text = read_bytes_capped(listing, "VOC split list", "write one image id per line").decode("utf-8", "replace")
        ids = [line.split()[0] for line in text.splitlines() if line.strip()]
        return [root / "Annotations" / f"{safe_relative(i, str(listing))}.xml" for i in ids], root / "JPEGImages"
    folder = root / split / "Annotations"
    if folder.is_dir():
        files = []
        for f in sorted(folder.iterdir()):
            if f.name.startswith("."):
                report["hidden_files_ignored"] += 1
            elif f.suffix.lower() == ".xml":
                files.append(f)
        return files, root / split / "JPEGImages"
    raise EdgeShrinkError(f"VOC dataset {root} has no list for split '{split}' (ImageSets/Main/{split}.txt) nor a "
                          f"{split}/Annotations folder; check --data and the card's dataset")


def parse_xml(path: Path):
    """The parsed XML root of one annotation file (regular file, <= 1 MB, no DTD or entities)."""
    import xml.etree.ElementTree as ET

    from toolkit.core.files import read_bytes_capped

    raw = read_bytes_capped(path, "VOC annotation", "replace it with a VOC XML file", VOC_XML_MAX_BYTES)
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise EdgeShrinkError(f"VOC annotation {path} declares a DOCTYPE or entities, which are refused; remove them")
    try:
        return ET.fromstring(raw)
    except ET.ParseError as exc:
        raise EdgeShrinkError(f"VOC annotation {path} is not valid XML ({exc}); fix or re-export it") from None


def _number(node, tag: str, path: Path) -> float:
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise EdgeShrinkError(f"VOC annotation {path}: <{tag}> is {text!r}, not a number; fix the file") from None


def objects(root_node, path: Path) -> list[tuple[str, list, bool]]:
    """[(class name, [x1, y1, x2, y2] in 0-based pixel edges, difficult)] of one annotation."""
    found = []
    for obj in root_node.iter("object"):
        name, box = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        if not name or box is None:
            raise EdgeShrinkError(f"VOC annotation {path}: an <object> without <name> or <bndbox>; fix the file")
        xmin, ymin, xmax, ymax = (_number(box, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        found.append((name, [xmin - 1, ymin - 1, xmax, ymax], (obj.findtext("difficult") or "0").strip() == "1"))
    return found


def _image_file(folder: Path, xml_root, xml_path: Path) -> Path:
    named = (xml_root.findtext("filename") or "").strip()
    if named and (folder / safe_relative(named, str(xml_path))).is_file():
        return folder / named
    for suffix in sorted(IMAGE_SUFFIXES):
        if (folder / f"{xml_path.stem}{suffix}").is_file():
            return folder / f"{xml_path.stem}{suffix}"
    raise EdgeShrinkError(f"VOC annotation {xml_path}: its image ({named or xml_path.stem + '.*'}) is not in {folder}; "
                          "add it or remove the annotation")


def _stated_size(xml_root, path: Path) -> Optional[tuple[int, int]]:
    size = xml_root.find("size")
    if size is None or size.find("width") is None:
        return None
    return int(_number(size, "width", path)), int(_number(size, "height", path))


def voc_class_names(root: Path, split: str) -> list[str]:
    """Sorted class names used in a split (for a card without labels)."""
    files, _ = split_files(root, split, new_report())
    return sorted({name for f in files for name, _, _ in objects(parse_xml(f), f)})


def load_voc_split(root: Path, split: str, classes: list) -> DetectionSplit:
    """The split's images and boxes, numbered by `classes`; refuses unknown class names, sizes that
    disagree with the image files, missing images and malformed XML."""
    report, samples = new_report(), []
    files, image_folder = split_files(root, split, report)
    index = {name: i for i, name in enumerate(classes)}
    for xml_path in files:
        xml_root = parse_xml(xml_path)
        image = _image_file(image_folder, xml_root, xml_path)
        size, stated = image_size(image), _stated_size(xml_root, xml_path)
        if stated is not None and stated != tuple(size):
            raise EdgeShrinkError(f"VOC annotation {xml_path} says {stated[0]}x{stated[1]} pixels but {image.name} is "
                                  f"{size[0]}x{size[1]}; fix the annotation's <size> (or the image)")
        objs = objects(xml_root, xml_path)
        unknown = sorted({name for name, _, _ in objs if name not in index})
        if unknown:
            raise EdgeShrinkError(f"VOC annotation {xml_path} has class(es) {unknown[:4]} that are not the card's labels "
                                  f"{list(classes)[:6]}; add them to the card's labels or fix the file")
        samples.append(make_sample(str(image.relative_to(root)), path=image, size=size,
                                   boxes=np.array([b for _, b, _ in objs], np.float64).reshape(-1, 4),
                                   labels=[index[n] for n, _, _ in objs], ignore=[d for _, _, d in objs], report=report))
    if not samples:
        raise EdgeShrinkError(f"VOC dataset {root} lists no images for split '{split}'; check the split")
    return DetectionSplit(samples, list(classes), str(root), "voc", report)
