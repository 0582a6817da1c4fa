"""Shared by the delegate-form tests: a user's own net (source code beside a card) converted by
litert-torch for an XNNPACK target, checked to be full-integer in one partition; either converter's
files checked for one partition and FP32 parity."""

from __future__ import annotations

import numpy as np
import torch


def assert_litert_int8_one_partition(tmp_path, source: str, architecture: str) -> None:
    """Write `source` as the file `architecture` names ("file.py:Class"), convert the seeded model
    at 32 px with 8 calibration images, and assert: INT8 full-integer (XNNPACK's float DIV/SQRT
    islands excepted), FP32 and INT8 one XNNPACK partition with nothing left out, FP32 parity."""
    from toolkit.convert.checkpoint_to_litert import checkpoint_to_litert
    from toolkit.models.architectures import build_model, card_code
    from toolkit.models.checkpoint import save_checkpoint
    from toolkit.runtime.tflite_check import XNNPACK_FLOAT_ISLAND_OPS, require_full_integer

    (tmp_path / architecture.split(":")[0]).write_text(source)
    with card_code(architecture, tmp_path):
        torch.manual_seed(0)
        model = build_model(architecture, {}).eval()
        save_checkpoint(tmp_path / "m.pt", model, architecture, {})
        calibration = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
        out = checkpoint_to_litert(tmp_path / "m.pt", (1, 3, 32, 32), tmp_path / "litert", calibration,
                                   mean=(0.5,) * 3, std=(0.25,) * 3, delegate_rewrites=True)
    require_full_integer(out.int8, "int8", float_ops=XNNPACK_FLOAT_ISLAND_OPS)
    assert_one_partition_and_parity(model, out, calibration)


def assert_one_partition_and_parity(model, out, calibration) -> None:
    """FP32 and INT8 files of `out` (a converter's result) one XNNPACK partition with nothing left
    out, and the FP32 file within 1e-4 of `model` on two calibration images (mean 0.5, std 0.25)."""
    from toolkit.runtime.delegate import delegate_report
    from toolkit.runtime.tflite import TFLiteRunner

    for path in (out.float32, out.int8):
        report = delegate_report(path)
        assert (report["partitions"], report["undelegated_ops"]) == (1, {}), (path.name, report)
    x = (calibration[:2] - 0.5) / 0.25
    with torch.no_grad():
        reference = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    runner = TFLiteRunner(out.float32, threads=1)
    got = np.concatenate([runner(x[i:i + 1].transpose(0, 3, 1, 2)) for i in range(2)])
    assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()
