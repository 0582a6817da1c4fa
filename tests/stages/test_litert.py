"""The second TFLite converter: litert-torch in its own venv (.venv-litert), run as a child process.

The conversion test is slow and needs `make setup-litert` (the default run never needs that venv);
the refusal test runs by default."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.core.errors import EdgeShrinkError


def test_refuses_in_one_line_with_the_install_command_when_the_converter_venv_is_missing(tmp_path, monkeypatch):
    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert

    monkeypatch.setenv("EDGESHRINK_LITERT_VENV", str(tmp_path / "no-such-venv"))
    with pytest.raises(EdgeShrinkError, match="make setup-litert") as err:
        checkpoint_to_litert(tmp_path / "model.pt", (1, 1, 32, 32), tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_child_converts_and_the_main_runtime_verifies_fp32_parity_and_full_integer_int8(tmp_path):
    """A U-Net whose INT8 constants exceed 256 KB (ai-edge-quantizer then stores them past the
    flatbuffer's end): both files load and run in this venv's ai-edge-litert, FP32 matches torch,
    INT8 is full-integer with int8 input/output and mostly agrees with torch."""
    import torch

    from toolkit.models.architectures import create_model
    from toolkit.models.checkpoint import save_checkpoint
    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert
    from toolkit.runtime.tflite_check import io_dtypes, require_full_integer
    from toolkit.runtime.parity import compare_outputs
    from toolkit.runtime.tflite import TFLiteRunner

    torch.manual_seed(0)
    arguments = {"in_channels": 1, "num_classes": 3, "base": 16, "depth": 3}
    model = create_model("unet", **arguments).eval()
    save_checkpoint(tmp_path / "unet.pt", model, "unet", arguments)
    rng = np.random.default_rng(0)
    calib = rng.random((16, 32, 32, 1), dtype=np.float32)
    out = checkpoint_to_litert(tmp_path / "unet.pt", (1, 1, 32, 32), tmp_path / "litert", calib, mean=(0.5,), std=(0.25,))

    x = ((rng.random((8, 1, 32, 32), dtype=np.float32)) - 0.5) / 0.25
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    fp32, q8 = TFLiteRunner(out.float32, threads=1), TFLiteRunner(out.int8, threads=1)
    assert fp32.runtime["name"] == "ai-edge-litert"
    y32 = np.concatenate([fp32(x[i:i + 1]) for i in range(len(x))])
    assert compare_outputs(y32, ref, rtol=1e-4)["ok"]
    require_full_integer(out.int8, "int8")
    assert io_dtypes(out.int8) == ("int8", "int8")
    y8 = np.concatenate([q8(x[i:i + 1]) for i in range(len(x))])
    assert float((y8.argmax(1) == ref.argmax(1)).mean()) > 0.9
    assert out.record["versions"]["litert-torch"] == "0.10.0"
