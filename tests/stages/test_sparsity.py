"""Unstructured magnitude sparsity: schedules, scopes, masks through fine-tuning, and the zeros
that survive into real ONNX / TFLite files (real converters, real interpreter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.models.architectures import create_model
from toolkit.core.errors import EdgeShrinkError
from toolkit.sparsity import sparsify, sparsity_report
from toolkit.sparsity.magnitude import cubic_schedule, prunable_layers

SHAPE = (1, 3, 64, 64)


def _tiny(seed=0):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    return create_model("mobilenet_v3_small", num_classes=4, width_mult=0.5).eval()


def test_cubic_schedule_follows_zhu_and_gupta():
    s = cubic_schedule(0.8, 4)
    assert s[-1] == pytest.approx(0.8) and all(a < b for a, b in zip(s, s[1:]))
    assert s[0] == pytest.approx(0.8 - 0.8 * (1 - 1 / 4) ** 3)  # big steps first, small at the end
    assert s[0] - 0 > s[-1] - s[-2]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_oneshot_reaches_the_target_and_leaves_output_and_depthwise_dense(scope):
    model = _tiny()
    layers = prunable_layers(model)
    assert "classifier.3" not in layers and "features.1.block.0.0" not in layers  # output, depthwise
    model, record = sparsify(model, sparsity=0.7, scope=scope)
    assert record["prunable_zero_fraction"] == pytest.approx(0.7, abs=1e-3)
    if scope == "layer":
        assert all(abs(r["sparsity"] - 0.7) < 0.01 for r in record["layers"].values())
    modules = dict(model.named_modules())
    assert int((modules["classifier.3"].weight == 0).sum()) == 0
    assert int((modules["features.1.block.0.0"].weight == 0).sum()) == 0
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in model.state_dict())  # permanent
    assert not model(torch.randn(*SHAPE)).isnan().any()


def test_gradual_keeps_masked_weights_zero_while_fine_tuning():
    from toolkit.tasks.classification import classification_loss, train_batches
    from toolkit.data.imagefolder import synthetic_split
    from toolkit.data.preprocess import InputSpec
    from toolkit.train.loop import TrainConfig, train_loop

    model = _tiny()
    data = synthetic_split(4, 8, 64, 64, seed=1)
    batches, steps = train_batches(data, InputSpec(64, 64), 16, 0, augment=False)
    seen = []

    def finetune(m, step):
        before = {n: (mod.weight_mask == 0) for n, mod in m.named_modules() if hasattr(mod, "weight_mask")}
        train_loop(m, TrainConfig(epochs=1, batch_size=16, lr=1e-2), batches=batches, steps_per_epoch=steps,
                   loss_fn=classification_loss(0.0, 0.0, 1.0), evaluate=lambda _: {"acc": 0.0}, score_key="acc",
                   progress=False)
        mods = dict(m.named_modules())
        seen.append(all(bool((mods[n].weight_orig * mods[n].weight_mask)[z].abs().sum() == 0) for n, z in before.items()))
        return {"step": step}

    model, record = sparsify(model, sparsity=0.8, schedule="gradual", steps=3, finetune=finetune)
    assert seen == [True, True, True]  # fine-tuning never revives a pruned weight
    achieved = [s["achieved"] for s in record["steps"]]
    assert achieved == sorted(achieved) and achieved[-1] == pytest.approx(0.8, abs=1e-3)
    assert [s["finetune"] for s in record["steps"]] == [{"step": 1}, {"step": 2}, {"step": 3}]


def test_after_structured_pruning_and_portable_reload(tmp_path):
    from toolkit.models.checkpoint import load_checkpoint, save_checkpoint
    from toolkit.config.pruning import PruneConfig
    from toolkit.prune.prune import prune_model

    model = _tiny()
    model, _ = prune_model(model, input_shape=SHAPE, cfg=PruneConfig(scope="uniform", target_macs=0.6, steps=1, round_to=8),
                           never_prune=["classifier.3"], finetune=None, progress=False)
    model, record = sparsify(model, sparsity=0.5, scope="layer")
    assert record["prunable_zero_fraction"] == pytest.approx(0.5, abs=1e-2)
    save_checkpoint(tmp_path / "s.pt", model, "mobilenet_v3_small", {"num_classes": 4, "width_mult": 0.5})
    reloaded, _ = load_checkpoint(tmp_path / "s.pt")
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reloaded(x))


def test_refusals():
    with pytest.raises(EdgeShrinkError, match="sparsity must be in"):
        sparsify(_tiny(), sparsity=1.2)
    with pytest.raises(EdgeShrinkError, match="unknown sparsity scope"):
        sparsify(_tiny(), sparsity=0.5, scope="uniform")
    with pytest.raises(EdgeShrinkError, match="oneshot takes steps=1"):
        sparsify(_tiny(), sparsity=0.5, steps=3)
    with pytest.raises(EdgeShrinkError, match="does not exist"):
        sparsity_report("missing.tflite", "tflite")


def test_zeros_survive_export_to_onnx_and_tflite(tmp_path):
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.runtime.tflite import TFLiteRunner
    from toolkit.sparsity.xnnpack import NO_SPEEDUP, measure_sparse_speedup, sparse_tflite

    model, record = sparsify(_tiny(), sparsity=0.75)
    onnx_path = torch_to_onnx(model, SHAPE, tmp_path / "m.onnx")
    calib = np.random.default_rng(0).random((8, 64, 64, 3), dtype=np.float32)
    tfl = onnx_to_tflite(onnx_path, tmp_path, calib, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    onnx_r, fp32_r, int8_r = (sparsity_report(onnx_path, "onnx"), sparsity_report(tfl.float32, "tflite"),
                              sparsity_report(tfl.int8, "tflite"))
    for r in (onnx_r, fp32_r):  # BatchNorm folding scales weights; zeros stay zeros
        assert r["prunable_zero_fraction"] == pytest.approx(record["prunable_zero_fraction"], abs=0.01)
        assert r["gzip_bytes"] < 0.6 * r["raw_bytes"] and not r["unread_layers"]
    assert int8_r["prunable_zero_fraction"] >= record["prunable_zero_fraction"] - 0.01  # + values rounded to 0
    dense = sparsity_report(torch_to_onnx(_tiny(), SHAPE, tmp_path / "dense.onnx"), "onnx")
    assert dense["prunable_zero_fraction"] < 0.01 and dense["gzip_ratio"] > onnx_r["gzip_ratio"] + 0.2
    sparse = sparse_tflite(onnx_path, tmp_path / "m_sparse.tflite")
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(TFLiteRunner(sparse, 1)(x), TFLiteRunner(tfl.float32, 1)(x), atol=1e-4)
    timing = measure_sparse_speedup(tfl.float32, sparse, runs=10, repeats=1)
    assert timing["densify_ops"] > 0 and timing["dense_p50_ms"] > 0
    assert timing["verdict"] == NO_SPEEDUP or timing["verdict"].startswith("sparse kernels")
    from toolkit.sparsity.bundle_section import bundle_sparsity_fields

    fields = bundle_sparsity_fields(record, {"onnx": (onnx_path, "onnx"), "fp32": (tfl.float32, "tflite"),
                                             "int8": (tfl.int8, "tflite")}, sparse_timing=timing)
    assert fields["files"]["int8"]["kernels"] == NO_SPEEDUP and fields["files"]["onnx"]["kernels"] == NO_SPEEDUP
    assert fields["files"]["fp32"]["kernels"] == timing["verdict"] and fields["target_sparsity"] == 0.75
