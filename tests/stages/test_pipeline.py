"""The whole pipeline on a tiny real model: every converter, every runtime, manifest and report."""

from __future__ import annotations

import json

import pytest

from toolkit.core.errors import EdgeShrinkError


@pytest.fixture(scope="module")
def bundle(workspace, tmp_path_factory):
    import os

    from tests.conftest import build_bundle

    os.environ["EDGESHRINK_MODELS_DIR"] = str(workspace / "models")
    os.environ["EDGESHRINK_TARGETS_DIR"] = str(workspace / "targets")
    try:
        out = tmp_path_factory.mktemp("dist")
        return build_bundle("tiny_mnv3", "tiny", str(out), synthetic_data=True,
                                       progress=False)
    finally:
        del os.environ["EDGESHRINK_MODELS_DIR"], os.environ["EDGESHRINK_TARGETS_DIR"]


def test_bundle_holds_every_file_with_matching_hashes(bundle):
    from toolkit.models.checkpoint import sha256_file

    manifest = json.loads((bundle / "manifest.json").read_text())
    names = {a["name"] for a in manifest["artifacts"]}
    assert names == {"dense-torch-fp32", "dense-onnx-fp32", "dense-tflite-fp32", "pruned-torch-fp32",
                     "pruned-onnx-fp32", "pruned-onnx-int8", "pruned-tflite-fp32", "pruned-tflite-int8"}
    for a in manifest["artifacts"]:
        assert sha256_file(bundle / a["file"]) == a["sha256"], a["file"]
        assert a["size_bytes"] == (bundle / a["file"]).stat().st_size
        assert set(a["latency_ms"]) >= {"p50", "p90", "p99"} and a["fps"] > 0
        assert "top1" in a["metrics"] and "agreement_top1" in a["metrics"]
    assert not list(bundle.parent.glob(".*partial*"))


def test_manifest_baseline_and_pruning(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    base = m["baseline"]
    assert base["file"].endswith("_dense_fp32.tflite")
    assert {"macs", "params", "size_bytes", "metrics", "latency_ms"} <= set(base)
    pruned = {a["name"]: a for a in m["artifacts"]}["pruned-tflite-int8"]
    assert pruned["macs"] <= 0.6 * base["macs"]
    assert pruned["size_bytes"] * 3 < base["size_bytes"]
    assert m["data"]["synthetic"] is True
    assert m["input"]["layout"]["tflite"] == "NHWC" and m["input"]["mean"] == [0.485, 0.456, 0.406]
    assert m["versions"]["torch"] and m["stage_seconds"]["prune"] >= 0


def test_float_files_are_in_parity_and_agree(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    for a in m["artifacts"]:
        if a["precision"] == "fp32" and a["format"] != "torch":
            assert a["parity"]["ok"] and a["parity"]["max_abs_error"] <= 1e-4
            twin = f"{a['stage']}-torch-fp32"
            assert a["metrics"]["top1"] == {x["name"]: x for x in m["artifacts"]}[twin]["metrics"]["top1"]


def test_int8_tflite_is_full_integer(bundle):
    from toolkit.runtime.tflite_check import float_compute_ops, io_dtypes

    q = next(bundle.glob("*_pruned_int8.tflite"))
    assert float_compute_ops(q) == [] and io_dtypes(q) == ("int8", "int8")


def test_every_file_is_benchmarked_in_interleaved_rounds_and_keeps_the_median(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    for a in m["artifacts"]:
        runs = a["p50_runs"]
        assert len(runs) == 2 and a["latency_ms"]["p50"] == pytest.approx(sorted(runs)[1], abs=1e-4)


def test_int8_onnx_is_shown_to_compute_the_same_sums_with_and_without_vnni(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    r = m["onnx_int8_same_on_every_cpu"]["pruned"]
    assert r["scheme"] == "s8s7" and r["rows"] > 0 and r["rows_can_saturate"] == 0 and r["same_on_every_cpu"]
    assert isinstance(r["host_vnni"], bool) and m["device"]["isa"]["vnni"] == r["host_vnni"]
    assert "with and without VNNI" in (bundle / "report.md").read_text()


def test_report_plot_and_config(bundle):
    report = (bundle / "report.md").read_text()
    assert "SYNTHETIC DATA" in report and "host numbers" in report and "p50 ms" in report
    png = (bundle / "tradeoffs.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    config = json.loads((bundle / "config.json").read_text())
    assert config["card"]["name"] == "tiny_mnv3" and config["pruning"]["target_macs"] == 0.6


def test_report_says_which_converter_made_each_file(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    converters = {a["name"]: a["converter"] for a in m["artifacts"] if a["format"] == "tflite"}
    assert set(converters.values()) == {"onnx2tf"}
    assert m["tflite_converters"]["pruned"] == {"primary": "onnx2tf", "used": "onnx2tf"}
    assert "| onnx2tf |" in (bundle / "report.md").read_text()


def test_unavailable_converter_falls_back_to_the_other_and_says_why(use_workspace, tmp_path, monkeypatch):
    from tests.conftest import build_bundle

    monkeypatch.setenv("EDGESHRINK_LITERT_VENV", str(tmp_path / "no-such-venv"))
    out = build_bundle("tiny_mnv3", "tiny", tmp_path, synthetic_data=True, progress=False, bench=False,
                       finetune_epochs=0, tflite_converter="litert-torch")
    m = json.loads((out / "manifest.json").read_text())
    chosen = m["tflite_converters"]["pruned"]
    assert chosen["primary"] == "litert-torch" and chosen["used"] == "onnx2tf"
    assert "make setup-litert" in chosen["fallback_reason"]
    assert {a["converter"] for a in m["artifacts"] if a["format"] == "tflite"} == {"onnx2tf"}
    assert "made by **onnx2tf** instead of litert-torch" in (out / "report.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["target"]["conversion"] == {"tflite": "litert-torch", "fallback": True}  # the replay chooses the same


def test_failed_run_leaves_no_partial_output(use_workspace, tmp_path):
    from tests.conftest import build_bundle

    out = tmp_path / "dist"
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(EdgeShrinkError, match="unreadable"):
        build_bundle("tiny_mnv3", "tiny", str(out), checkpoint=str(bad),
                                synthetic_data=True, progress=False)
    with pytest.raises(EdgeShrinkError, match="calibration set is empty"):
        build_bundle("tiny_mnv3", "tiny", str(out), calibration_size=0,
                                synthetic_data=True, progress=False)
    with pytest.raises(EdgeShrinkError, match="does not exist"):
        build_bundle("tiny_mnv3", "tiny", str(out), data=str(tmp_path / "none"),
                                progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_bench_command_writes_json(bundle):
    from toolkit.delivery.rebench import bench_bundle, format_bench_table

    result = bench_bundle(bundle, threads=1, min_runs=5, min_seconds=0.1, warmup=1)
    assert (bundle / "bench.json").is_file() and len(result["rows"]) == 8
    base = [r for r in result["rows"] if r["file"] == result["baseline"]][0]
    assert base["speedup_vs_baseline"] == 1.0
    assert "x faster" in format_bench_table(result)


def test_sweep_measures_every_point_with_accuracy(use_workspace, tmp_path):
    from toolkit.studies.sweep import SweepOptions, run_sweep

    out = run_sweep(SweepOptions(model="tiny_mnv3", target="tiny", scopes=("uniform", "global"), macs=(0.5,),
                                 finetune_epochs=1, repeats=2, out_root=str(tmp_path), synthetic_data=True,
                                 progress=False))
    result = json.loads((out / "sweep.json").read_text())
    rows = {r["point"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "uniform-0.5", "global-0.5"}
    assert rows["dense"]["speedup"] == 1.0 and rows["dense"]["macs_fraction"] == 1.0
    for name in ("uniform-0.5", "global-0.5"):
        r = rows[name]
        assert r["macs_fraction"] <= 0.5 and len(r["p50_ms_repeats"]) == 2 and r["p50_ms"] == min(r["p50_ms_repeats"])
        assert 0.0 <= r["top1"] <= 1.0 and r["finetune_epochs"] == 1
    assert result["versions"]["torch"] and result["data"]["synthetic"] is True
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json", "sweep.md", "sweep.png"]
    assert "| global-0.5 |" in (out / "sweep.md").read_text()


def test_sweep_rejects_bad_points(use_workspace, tmp_path):
    from toolkit.studies.sweep import SweepOptions, run_sweep

    with pytest.raises(EdgeShrinkError, match="between 0 and 1"):
        run_sweep(SweepOptions(model="tiny_mnv3", target="tiny", macs=(1.5,), out_root=str(tmp_path), progress=False))
    with pytest.raises(EdgeShrinkError, match="scope"):
        run_sweep(SweepOptions(model="tiny_mnv3", target="tiny", scopes=("globl",), out_root=str(tmp_path), progress=False))
    assert list(tmp_path.iterdir()) == []


def test_published_pruned_checkpoint_replaces_fine_tuning(bundle, workspace, tmp_path, monkeypatch):
    """A card's `pruned` entry with the run's settings key is loaded instead of fine-tuning again
    (a fresh clone's first deploy); a tampered file is refused by sha256."""
    import shutil

    import yaml

    from toolkit.models.checkpoint import sha256_file
    from tests.conftest import build_bundle

    manifest = json.loads((bundle / "manifest.json").read_text())
    key = manifest["pruning"]["cache"]["key"]
    models = tmp_path / "models"
    shutil.copytree(workspace / "models", models)
    pruned = shutil.copy(bundle / "tiny_mnv3_pruned.pt", tmp_path / "published.pt")
    card = yaml.safe_load((models / "tiny_mnv3.yaml").read_text())
    card["pruned"] = [{"path": str(pruned), "sha256": sha256_file(pruned), "key": key}]
    (models / "tiny_mnv3.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setenv("EDGESHRINK_MODELS_DIR", str(models))
    monkeypatch.setenv("EDGESHRINK_TARGETS_DIR", str(workspace / "targets"))
    monkeypatch.setenv("EDGESHRINK_CACHE_DIR", str(tmp_path / "empty-cache"))
    again = build_bundle("tiny_mnv3", "tiny", str(tmp_path / "dist"),
                                    synthetic_data=True, bench=False, progress=False)
    m2 = json.loads((again / "manifest.json").read_text())
    assert m2["pruning"]["cache"] == {"key": key, "hit": True, "published": str(pruned)}
    assert m2["stage_seconds"]["fine-tune"] == 0.0
    top1 = lambda m: {a["name"]: a["metrics"]["top1"] for a in m["artifacts"]}["pruned-torch-fp32"]
    assert top1(m2) == top1(manifest)
    assert "published" in (again / "report.md").read_text()

    with open(pruned, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(EdgeShrinkError, match="sha256"):
        build_bundle("tiny_mnv3", "tiny", str(tmp_path / "dist2"),
                                synthetic_data=True, bench=False, progress=False)


def test_publish_refuses_synthetic_bundles(bundle, use_workspace):
    from toolkit.delivery.publish import publish_pruned

    with pytest.raises(EdgeShrinkError, match="synthetic"):
        publish_pruned(bundle)


def test_sparsity_run_reports_zeros_present_in_every_pruned_file(use_workspace, tmp_path):
    """`--sparsity 0.8` after channel pruning: the deployed file really holds the zeros, and the
    report says what they buy (raw vs gzip size; kernels)."""
    from tests.conftest import build_bundle

    bundle = build_bundle("tiny_mnv3", "tiny", tmp_path, synthetic_data=True, finetune_epochs=0, sparsity=0.8,
                          sparsity_steps=2, sparsity_finetune_epochs=0, bench=False, progress=False,
                          max_metric_drop=1.0)
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = manifest["sparsity"]["files"]
    assert set(files) >= {"pruned-tflite-fp32", "pruned-tflite-int8", "pruned-onnx-fp32"}
    assert all(f["prunable_zero_fraction"] >= 0.79 for f in files.values())
    assert all(f["gzip_bytes"] < f["raw_bytes"] for f in files.values())
    assert files["pruned-tflite-int8"]["kernels"] == "no speed-up: dense kernels"
    deployed = manifest["deploy"]["selection"]["artifact"]
    assert deployed.startswith("pruned-") and files[deployed]["prunable_zero_fraction"] >= 0.79
    assert "Unstructured sparsity" in (bundle / "report.md").read_text()
    config = json.loads((bundle / "config.json").read_text())
    assert config["sparsity"] == 0.8 and config["sparsity_steps"] == 2


@pytest.mark.slow
def test_fps_budget_run_meets_the_budget_and_draws_the_frontier(use_workspace, tmp_path):
    """`--fps F`: the least pruning that meets F is searched before fine-tuning; the bundle says
    whether the deployed file met it, with the frontier plot beside the table."""
    from tests.conftest import build_bundle

    dense = build_bundle("tiny_mnv3", "tiny", tmp_path / "dense", synthetic_data=True, finetune_epochs=0,
                         progress=False)
    dense_p50 = json.loads((dense / "manifest.json").read_text())["baseline"]["latency_ms"]["p50"]
    fps = 1000.0 / (0.8 * dense_p50)
    bundle = build_bundle("tiny_mnv3", "tiny", tmp_path / "fps", synthetic_data=True, finetune_epochs=0,
                          progress=False, fps=fps)
    manifest = json.loads((bundle / "manifest.json").read_text())
    budget = manifest["latency_budget"]
    assert abs(budget["budget_fps"] - fps) < 1e-6 and budget["deployed"]["artifact"]
    assert budget["deployed"]["met"] is True
    assert budget["precision"] == "int8"  # the search measured the INT8 files the run deploys
    assert (bundle / "frontier.png").is_file() and "Latency budget" in (bundle / "report.md").read_text()


@pytest.mark.slow
def test_litert_torch_as_the_chosen_converter_makes_verified_files(use_workspace, tmp_path):
    """Needs `make setup-litert` (make test-slow builds it): the profile's choice overridden to
    litert-torch; its files are verified like onnx2tf's (parity, full-integer INT8)."""
    from tests.conftest import build_bundle

    out = build_bundle("tiny_mnv3", "tiny", tmp_path, synthetic_data=True, progress=False, bench=False,
                       finetune_epochs=0, tflite_converter="litert-torch")
    m = json.loads((out / "manifest.json").read_text())
    assert m["tflite_converters"]["pruned"] == {"primary": "litert-torch", "used": "litert-torch"}
    tflite = [a for a in m["artifacts"] if a["format"] == "tflite"]
    assert {a["converter"] for a in tflite} == {"litert-torch"} and len(tflite) == 3
    assert all(a["parity"]["ok"] for a in tflite if a["precision"] == "fp32")
    assert m["litert_torch"]["pruned"]["versions"]["litert-torch"] == "0.10.0"
