"""Bad input gets a one-line error naming the problem and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from toolkit.core.errors import EdgeShrinkError
from toolkit.core.paths import TARGETS_DIR


def test_unknown_model_suggests_closest():
    from toolkit.config.cards import load_card

    with pytest.raises(EdgeShrinkError, match='did you mean "mobilenet_v3_small"'):
        load_card("mobilenet_v3_smal")


def test_unknown_target_suggests_closest():
    from toolkit.config.targets import load_target

    with pytest.raises(EdgeShrinkError, match='did you mean "host"'):
        load_target("hots")


def test_unknown_architecture_suggests_closest():
    from toolkit.models.architectures import create_model

    with pytest.raises(EdgeShrinkError, match='did you mean "mobilenet_v2"'):
        create_model("mobilenet_v2x")


@pytest.mark.parametrize("field,value", [("target_macs", 1.5), ("target_macs", 0.0), ("channel_ratio", -0.2)])
def test_ratio_out_of_range(field, value):
    from toolkit.config.pruning import PruneConfig
    from toolkit.core.schema import validate_data

    data = {"target_macs": None, field: value} if field == "channel_ratio" else {field: value}
    with pytest.raises(EdgeShrinkError, match="between 0 and 1"):
        validate_data(PruneConfig, data, "pruning")


def test_misspelt_target_key_is_rejected_with_hint(tmp_path):
    from toolkit.config.targets import validate_target_file

    data = yaml.safe_load(open(TARGETS_DIR / "host.yaml"))
    data["runtime"]["thraeds"] = data["runtime"].pop("threads")
    path = tmp_path / "host.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EdgeShrinkError, match=r"unknown key 'runtime.thraeds' \(did you mean \"threads\"\?\)"):
        validate_target_file(path)


def test_profile_name_must_match_file(tmp_path):
    from toolkit.config.targets import validate_target_file

    path = tmp_path / "rpi9.yaml"
    path.write_text(open(TARGETS_DIR / "host.yaml").read())
    with pytest.raises(EdgeShrinkError, match="file is named 'rpi9'"):
        validate_target_file(path)


def test_malformed_yaml_names_the_line(tmp_path):
    from toolkit.config.targets import validate_target_file

    path = tmp_path / "host.yaml"
    path.write_text("name: host\nruntime: {engine: tflite\n")
    with pytest.raises(EdgeShrinkError, match="not valid YAML"):
        validate_target_file(path)


def test_unreadable_checkpoint(tmp_path):
    from toolkit.models.checkpoint import load_checkpoint

    bad = tmp_path / "model.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(EdgeShrinkError, match="unreadable"):
        load_checkpoint(bad)
    with pytest.raises(EdgeShrinkError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_missing_data_folder(tmp_path):
    from toolkit.data.imagefolder import load_image_split

    with pytest.raises(EdgeShrinkError, match="does not exist; pass --data"):
        load_image_split(tmp_path / "nowhere", "train", 32, 32, progress=False)


def test_cli_error_is_one_line_and_leaves_no_dist(tmp_path):
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "toolkit", "run", "--model", "mobilenet_v3_smal", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeshrink: error: unknown model")
    assert not out.exists() or not any(out.iterdir())


def test_timing_summary_percentiles():
    import numpy as np

    from toolkit.runtime.timing import summarize_ms, time_calls

    s = summarize_ms(np.arange(1, 101, dtype=float))
    assert s["latency_ms"]["p50"] == pytest.approx(50.5)
    assert s["latency_ms"]["p99"] == pytest.approx(99.01)
    assert s["fps"] == pytest.approx(1000 / 50.5)
    r = time_calls(lambda: None, warmup=1, min_runs=7, min_seconds=0.0)
    assert r["runs"] == 7


def test_input_spec_round_trips():
    from toolkit.data.preprocess import InputSpec

    spec = InputSpec(96, 128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert InputSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


def test_every_shipped_profile_and_card_validates():
    from toolkit.config.cards import list_cards, load_card
    from toolkit.config.targets import list_targets, load_target

    assert "host" in list_targets()
    for name in list_targets():
        assert load_target(name).name == name
    for name in list_cards():
        assert load_card(name).name == name
