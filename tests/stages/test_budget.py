"""Prune to a latency budget on a tiny MobileNetV3-Small (width 0.5, 64 px, random weights, 1 thread):
a per-layer LUT measured on LiteRT/XNNPACK, the real converters (torch -> ONNX -> onnx2tf FP32) and
the real host benchmark. Latencies here are tens of microseconds on a shared machine, so the
assertions are about what a user relies on (the chosen file meets the budget when measured; an
unreachable budget is refused), with sane bounds on the prediction."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from toolkit.models.architectures import create_model
from toolkit.core.errors import EdgeShrinkError
from toolkit.config.pruning import PruneConfig

SHAPE = (1, 3, 64, 64)
SEARCH = {"input_shape": SHAPE, "threads": 1, "never_prune": ["classifier.3"], "progress": False,
          "round_tos": (8,), "floor": 0.3, "steps": 12, "margin": 0.1, "max_measurements": 1,
          "bench": {"warmup": 5, "min_runs": 30, "min_seconds": 0.5}}  # each measured file is an onnx2tf run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from toolkit.pipeline.budget import BENCH, measure_model
    from toolkit.bench.latency_lut import LatencyTable

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.5).eval()
    folder = tmp_path_factory.mktemp("lut")
    dense_ms = measure_model(model, SHAPE, 1, tmp_path_factory.mktemp("dense"), name="dense", bench=BENCH)
    return {"model": model, "folder": folder, "dense_ms": dense_ms,
            "table": LatencyTable(1, folder=folder, progress=False)}


@pytest.fixture(scope="module")
def searched(tiny):
    from toolkit.pipeline.budget import search_for_latency

    cfg = PruneConfig(importance="l2", scope="uniform", target_macs=0.5, steps=1, round_to=8)
    budget = 0.7 * tiny["dense_ms"]
    return budget, search_for_latency(tiny["model"], cfg=cfg, budget_ms=budget, table=tiny["table"], **SEARCH)


def test_search_meets_a_budget_with_a_measured_file(searched, tiny, tmp_path):
    from toolkit.pipeline.budget import frontier_table, plot_frontier

    budget, result = searched
    assert result.chosen is not None and 0.0 < result.chosen.target_macs < 1.0
    assert result.chosen.round_to == 8 and result.chosen.scope == "uniform"  # the rest of cfg is kept
    assert result.chosen_probe.measured_ms <= budget  # measured on the real file, not just predicted
    assert 2 <= len(result.measurements) <= 2 + 1  # dense + fastest calibrate; at most max_measurements more
    lighter_measured_hits = [p for p in result.probes if p.measured_ms is not None and p.measured_ms <= budget
                             and p.macs_fraction > result.chosen_probe.macs_fraction]
    assert not lighter_measured_hits  # the least pruning among the files that met it
    # The raw per-layer sum is within a sane factor of the real dense file; once calibrated on the
    # dense and fastest files, each prediction made before a file was measured is within 50 %.
    assert 1 / 3 < result.dense.lut_ms / tiny["dense_ms"] < 3
    fastest = min(result.probes, key=lambda p: p.lut_ms)
    assert fastest.measured_ms is not None
    for probe in result.measurements[1:]:
        if probe is not fastest:
            assert abs(probe.picked_at_ms - probe.measured_ms) < 0.5 * probe.measured_ms
    chosen = result.chosen_probe
    assert result.lut["entries"] > 20 and result.lut["build_seconds"] > 0
    table = frontier_table(result)
    assert "**chosen**" in table and f"{chosen.target_macs:g}" in table
    png = plot_frontier(result, tmp_path / "frontier.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    json.dumps(result.to_json())  # goes into the manifest as is, as its declared section
    from toolkit.pipeline.records import LatencyBudget

    assert LatencyBudget.model_validate(result.to_json()).to_json() == result.to_json()


def test_chosen_config_reproduces_the_measured_model(searched, tiny):
    from toolkit.bench.latency_lut import layer_specs
    from toolkit.prune.prune import prune_model

    _, result = searched
    pruned, history = prune_model(copy.deepcopy(tiny["model"]), input_shape=SHAPE, cfg=result.chosen,
                                  never_prune=["classifier.3"], progress=False)
    assert layer_specs(pruned, SHAPE) == result.chosen_probe.specs  # what the runner prunes is what was measured
    assert history[-1]["macs_fraction"] == pytest.approx(result.chosen_probe.macs_fraction)


def test_unreachable_budget_is_one_line_naming_the_fastest(tiny):
    from toolkit.pipeline.budget import search_for_latency

    cfg = PruneConfig(scope="uniform", target_macs=0.5, round_to=8)
    with pytest.raises(EdgeShrinkError) as info:
        search_for_latency(tiny["model"], cfg=cfg, budget_ms=0.05 * tiny["dense_ms"], table=tiny["table"], **SEARCH)
    message = str(info.value)
    assert "\n" not in message and "out of reach" in message and "fastest pruning level reaches" in message
    assert "lower the FPS target" in message


def test_lut_is_reused_from_disk_and_a_tampered_entry_is_measured_again(tiny):
    from toolkit.bench.latency_lut import LatencyTable, layer_specs

    specs = layer_specs(tiny["model"], SHAPE)
    first = tiny["table"].lookup(specs)
    again = LatencyTable(1, folder=tiny["folder"], progress=False)
    assert again.lookup(specs) == first
    assert again.stats["measured"] == 0 and again.stats["disk_hits"] == len(set(specs))
    entry = again._path(specs[0])
    data = json.loads(entry.read_text())
    data["ms"] = 1e6  # a forged figure: its checksum no longer matches
    entry.write_text(json.dumps(data))
    rebuilt = LatencyTable(1, folder=tiny["folder"], progress=False)
    values = rebuilt.lookup(specs)
    assert rebuilt.stats["measured"] == 1 and rebuilt.stats["rebuilt"] == 1
    assert values[0] < 1e3 and json.loads(entry.read_text())["ms"] == values[0]


def test_a_run_measures_int8_files_and_falls_back_to_litert_when_onnx2tf_fails(tmp_path):
    """`--fps` in a run measures the file a run deploys: the full-integer TFLite file, made as the run
    makes it. A detector whose FPN onnx2tf cannot convert (resize + add, the Penn-Fudan card's case)
    gets its files from litert-torch, and once onnx2tf has failed, the next level of the walk goes
    to litert-torch first."""
    from types import SimpleNamespace

    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from toolkit.config.targets import load_target
    from toolkit.data.preprocess import InputSpec
    from toolkit.models.detector import mobilenet_v3_detector
    from toolkit.pipeline.optional_stages import deployed_int8_file

    arguments = {"num_classes": 1, "variant": "small", "width_mult": 0.5, "neck_channels": 16}
    torch.manual_seed(0)
    model = mobilenet_v3_detector(**arguments).eval()
    plan = SimpleNamespace(input=InputSpec(64, 64), source=SimpleNamespace(architecture="mobilenet_v3_detector",
                                                                           arguments=arguments))
    runner = SimpleNamespace(target=load_target("host"), plan=plan, threads=1, shape=SHAPE,
                             calib01=np.random.default_rng(0).random((8, 64, 64, 3), dtype=np.float32))
    assert runner.target.conversion.tflite == "onnx2tf" and runner.target.conversion.fallback
    make = deployed_int8_file(runner)
    first = make(model, SHAPE, tmp_path, name="dense")
    assert (tmp_path / "dense.onnx").is_file() and (tmp_path / "dense.pt").is_file()  # onnx2tf tried, litert made it
    second = make(model, SHAPE, tmp_path, name="probe")
    assert not (tmp_path / "probe.onnx").exists() and (tmp_path / "probe.pt").is_file()
    for path in (first, second):
        interpreter = Interpreter(model_path=str(path))
        assert interpreter.get_input_details()[0]["dtype"] == np.int8
        assert interpreter.get_output_details()[0]["shape"].tolist() == [1, 8 * 8 + 4 * 4 + 2 * 2, 5]
