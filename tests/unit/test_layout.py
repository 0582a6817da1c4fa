"""A converted file's output in another axis order is put back into torch's order only when that is
provable; otherwise it fails parity with the reason, and no task metric raises on it."""

from types import SimpleNamespace

import numpy as np

from toolkit.runtime.layout import axis_orders, match_layout
from toolkit.runtime import verify as verify_module


def test_a_unique_axis_order_is_undone_and_said():
    torch_out = np.random.default_rng(0).normal(size=(2, 3, 8, 5)).astype(np.float32)
    nhwc = torch_out.transpose(0, 2, 3, 1)
    fixed, note = match_layout(nhwc, expected_shape=torch_out.shape)
    assert note["fixed"] and note["axes"] == [0, 3, 1, 2]
    np.testing.assert_array_equal(fixed, torch_out)


def test_when_c_equals_h_equals_w_parity_decides_between_orders():
    torch_out = np.random.default_rng(1).normal(size=(1, 4, 4, 4)).astype(np.float32)
    swapped = torch_out.transpose(0, 2, 3, 1)  # same shape, other order

    def agrees(candidate):
        return bool(np.allclose(candidate, torch_out))

    fixed, note = match_layout(swapped, expected_shape=torch_out.shape, agrees=agrees)
    assert note["fixed"]
    np.testing.assert_array_equal(fixed, torch_out)


def test_nothing_provable_is_left_alone_with_a_reason():
    out = np.zeros((1, 7, 3, 3), np.float32)
    kept, note = match_layout(out, expected_shape=(1, 2, 3, 3))
    assert kept is out and not note["fixed"] and "any axis order" in note["reason"]
    assert axis_orders((1, 2, 3), (1, 3, 2)) == [(0, 2, 1)]
    assert axis_orders((2, 3), (3, 2)) == []  # the batch axis never moves


def test_verify_fixes_the_layout_before_metrics_and_a_metric_never_raises(monkeypatch):
    torch_out = np.random.default_rng(2).normal(size=(3, 2, 6, 6)).astype(np.float32)

    class Seg:
        def metrics(self, outputs, reference):
            assert outputs.shape == reference.shape, "metrics saw the wrong layout"
            return {"dice": 1.0}

    monkeypatch.setattr(verify_module, "run_outputs", lambda *a, **k: torch_out.transpose(0, 2, 3, 1).copy())
    _, metrics, check = verify_module.verify("x.tflite", "tflite", "fp32", Seg(), reference=torch_out,
                                             source_torch_outputs=torch_out)
    assert check["ok"] and check["layout"]["fixed"] and metrics["dice"] == 1.0

    class Raises:
        def metrics(self, outputs, reference):
            raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(verify_module, "run_outputs", lambda *a, **k: np.zeros((3, 5), np.float32))
    _, metrics, check = verify_module.verify("x.tflite", "tflite", "int8", Raises(), reference=torch_out,
                                             source_torch_outputs=None)
    assert check == {} and metrics["metric_error"].startswith("not measured")
    from toolkit.pipeline.choose import gate_failures

    artifact = SimpleNamespace(metrics=metrics, delegate={}, parity={})
    gate = SimpleNamespace(max_metric_drop=0.01, require_full_delegation=False)
    assert gate_failures(artifact, dense_metric=0.9, metric="dice", gate=gate) == [metrics["metric_error"]]
