"""Target profiles are strict data: ten malformed ones are each rejected with a clear message."""

from __future__ import annotations

import copy

import pytest
import yaml

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.paths import TARGETS_DIR

BASE = yaml.safe_load((TARGETS_DIR / "rpi4.yaml").read_text())


def mutate(path: str, value=None, delete=False):
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if delete:
        del node[last]
    else:
        node[last] = value
    return data


def rename(path: str, new: str):
    data = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[new] = node.pop(last)
    return data


CASES = [
    ("typo top-level", rename("precisions", "precision"), r"unknown key 'precision' \(did you mean \"precisions\"\?\)"),
    ("typo nested", rename("runtime.threads", "thread"), r"unknown key 'runtime.thread' \(did you mean \"threads\"\?\)"),
    ("typo pruning", rename("pruning.target_macs", "target_mac"), r"unknown key 'pruning.target_mac'"),
    ("wrong type", mutate("runtime.threads", "four"), r"'runtime.threads' .*integer"),
    ("bad enum", mutate("runtime.engine", "tensorflow"), r"'runtime.engine'"),
    ("ratio out of range", mutate("pruning.target_macs", 1.7), r"between 0 and 1"),
    ("empty calibration", mutate("quantization.calibration_size", 0), r"calibration set is empty"),
    ("missing key", mutate("budget", delete=True), r"missing required key 'budget'"),
    ("engine without format", mutate("formats", ["onnx"]), r"engine is tflite but formats does not include tflite"),
    ("threads over cores", mutate("runtime.threads", 16), r"exceeds device.cores"),
    ("tflite delegate on tensorrt", mutate("runtime.engine", "tensorrt"), r"(needs device.accelerator|formats)"),
    ("adb on x86", mutate("deploy.transport", "adb") | {"device": BASE["device"] | {"arch": "x86_64"}}, r"adb is for Android"),
]


@pytest.mark.parametrize("name,data,message", CASES, ids=[c[0] for c in CASES])
def test_malformed_profile_rejected(tmp_path, name, data, message):
    from toolkit.config.targets import validate_target_file

    path = tmp_path / "rpi4.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EdgeShrinkError, match=message) as info:
        validate_target_file(path)
    assert "\n" not in str(info.value) and "rpi4.yaml" in str(info.value)


def test_name_contradicting_file_is_rejected(tmp_path):
    from toolkit.config.targets import validate_target_file

    path = tmp_path / "jetson-nano.yaml"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(EdgeShrinkError, match="profile says name 'rpi4' but the file is named 'jetson-nano'"):
        validate_target_file(path)


def test_required_profiles_exist_and_validate():
    from toolkit.config.targets import list_targets, load_target

    names = set(list_targets())
    assert {"host", "rpi4", "rpi5", "android", "jetson-orin-nano", "jetson-nano"} <= names
    assert load_target("android").runtime.delegate_variants == ["gpu", "nnapi"]
    assert load_target("jetson-orin-nano").runtime.engine == "tensorrt"
