"""Replayed plans and finished bundles that were truncated, emptied or edited: `run --plan`,
`bench`, `compare` and `publish` refuse them in one line and write nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.hostile.conftest import assert_refused, cli


@pytest.fixture
def plan_json(henv, tmp_path):
    """A valid config.json of the tiny card (its own copy of the weights) and the weights path."""
    import toolkit

    weights = tmp_path / "weights.pt"
    shutil.copy(f"{henv['EDGESHRINK_MODELS_DIR']}/tiny_mnv3.pt", weights)
    plan = toolkit.plan("tiny_mnv3", target="tiny", checkpoint=str(weights), synthetic_data=True, bench=False,
                        out=str(tmp_path / "out"))
    return plan.to_json(), weights


PLAN_EDITS = {
    "truncated": lambda text, data: text[: len(text) // 2],
    "empty-object": lambda text, data: "{}",
    "empty-file": lambda text, data: "",
    "a-list": lambda text, data: "[1, 2]",
    "binary": lambda text, data: "\udcff\x00",
    "no-card": lambda text, data: json.dumps({k: v for k, v in data.items() if k != "card"}),
    "seed-is-text": lambda text, data: json.dumps(dict(data, seed="zero")),
    "negative-seed": lambda text, data: json.dumps(dict(data, seed=-1)),
    "card-renamed-to-path": lambda text, data: json.dumps(dict(data, card=dict(data["card"], name="../../x"))),
    "target-with-nan": lambda text, data: json.dumps(dict(data, target=dict(data["target"], budget={"target_fps": "nan"}))),
    "unknown-pruning-key": lambda text, data: json.dumps(dict(data, pruning=dict(data["pruning"], tagret_macs=0.5))),
}


@pytest.mark.parametrize("edit", list(PLAN_EDITS))
def test_broken_plan_is_refused(plan_json, tmp_path, edit):
    data, _ = plan_json
    text = PLAN_EDITS[edit](json.dumps(data), data)
    (tmp_path / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    proc = cli("run", "--plan", tmp_path / "config.json", "--quiet")
    assert_refused(proc)
    assert not (tmp_path / "out").exists()


def test_plan_whose_weights_changed_is_refused(plan_json, tmp_path):
    data, weights = plan_json
    (tmp_path / "config.json").write_text(json.dumps(data))
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    proc = cli("run", "--plan", tmp_path / "config.json", "--quiet")
    assert_refused(proc, "changed since the plan was written")
    assert not (tmp_path / "out").exists()


# ---- bundles ----------------------------------------------------------------------------------

MANIFEST = {"model": "tiny_mnv3", "target": "tiny", "primary_metric": "top1", "deploy": {"artifact": "pruned-tflite-int8"},
            "input": {"channels": 3, "height": 64, "width": 64}, "baseline": {"file": "m_dense_fp32.tflite"},
            "data": {"synthetic": False, "source": "x"}, "pruning": {"cache": {"key": "k"}, "history": [], "config": {}},
            "artifacts": [{"name": "dense-tflite-fp32", "file": "m_dense_fp32.tflite", "format": "tflite",
                           "precision": "fp32", "stage": "dense", "metrics": {"top1": 0.5}, "size_bytes": 2048,
                           "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2}, "fps": 900.0}]}

BUNDLE_EDITS = {
    "no-manifest": None,
    "truncated-manifest": lambda: json.dumps(MANIFEST)[:100],
    "empty-manifest": lambda: "",
    "manifest-is-a-list": lambda: "[]",
    "manifest-without-artifacts": lambda: json.dumps({k: v for k, v in MANIFEST.items() if k != "artifacts"}),
    "artifacts-not-a-list": lambda: json.dumps(dict(MANIFEST, artifacts={"a": 1})),
    "artifact-without-metrics": lambda: json.dumps(dict(MANIFEST, artifacts=[{"name": "dense-tflite-fp32", "file": "x"}])),
}


def _bundle(tmp_path, edit):
    bundle = tmp_path / "tiny_mnv3-tiny"
    bundle.mkdir()
    if BUNDLE_EDITS[edit]:
        (bundle / "manifest.json").write_text(BUNDLE_EDITS[edit]())
    return bundle


@pytest.mark.parametrize("command", ["bench", "compare", "publish"])
@pytest.mark.parametrize("edit", list(BUNDLE_EDITS))
def test_broken_bundle_is_refused_by_bench_compare_publish(henv, tmp_path, command, edit):
    bundle = _bundle(tmp_path, edit)
    before = sorted(p.name for p in bundle.iterdir())
    proc = cli(*(["publish", "--bundle", bundle] if command == "publish" else [command, bundle]))
    assert_refused(proc)
    assert sorted(p.name for p in bundle.iterdir()) == before  # no bench.json, nothing published


def test_bench_refuses_a_bundle_whose_model_file_is_gone(henv, tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
    assert_refused(cli("bench", bundle), "m_dense_fp32.tflite")
    assert not (bundle / "bench.json").exists()


@pytest.mark.parametrize("results", ["{\"results\": [", "", "[1, 2]", "\x00\x01binary"], ids=["truncated", "empty", "list", "binary"])
def test_compare_refuses_a_broken_results_file_naming_it(henv, tmp_path, results):
    bundle = tmp_path / "b"
    (bundle / "results").mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps(MANIFEST))
    (bundle / "results" / "pi.json").write_text(results)
    assert_refused(cli("compare", bundle), "pi.json")


def test_compare_accepts_a_bundle_without_latency(henv, tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    art = {k: v for k, v in MANIFEST["artifacts"][0].items() if k not in ("latency_ms", "fps")}
    (bundle / "manifest.json").write_text(json.dumps(dict(MANIFEST, artifacts=[art])))
    proc = cli("compare", bundle)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    assert "0.5000" in proc.stdout


def test_publish_refuses_a_truncated_training_history(henv, tmp_path):
    from pathlib import Path

    from tests.conftest import TINY_CARD
    from toolkit.models.architectures import create_model
    from toolkit.models.checkpoint import save_checkpoint

    run = tmp_path / "run"
    save_checkpoint(run / "last.pt", create_model("mobilenet_v3_small", **TINY_CARD["arguments"]),
                    "mobilenet_v3_small", TINY_CARD["arguments"])
    (run / "provenance.json").write_text("{}")
    (run / "history.json").write_text('{"epochs": [')
    card = Path(henv["EDGESHRINK_MODELS_DIR"]) / "tiny_mnv3.yaml"
    before = card.read_text()
    assert_refused(cli("publish", "--model", "tiny_mnv3", "--run", run), "history.json")
    assert card.read_text() == before
