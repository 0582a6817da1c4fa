"""U-Net family: pruning through skip concatenations, real converters/runtimes, Dice, NIfTI checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.core.errors import EdgeShrinkError


def tiny_unet():
    from toolkit.models.architectures import create_model

    torch.manual_seed(0)
    return create_model("unet", in_channels=1, num_classes=3, base=8, depth=3).eval()


def test_dice_known_cases():
    from toolkit.tasks.segmentation_metrics import dice_per_class, mean_dice

    truth = np.zeros((4, 8, 8), np.uint8)
    truth[1:3, 2:5, 2:5] = 1
    truth[1:3, 5:7, 5:7] = 2
    assert dice_per_class(truth, truth, [1, 2]) == {1: 1.0, 2: 1.0}
    assert dice_per_class(np.zeros_like(truth), truth, [1, 2]) == {1: 0.0, 2: 0.0}
    half = truth.copy()
    half[1] = 0  # drop half of each structure: Dice = 2*0.5/(0.5+1) = 2/3
    assert dice_per_class(half, truth, [1, 2])[1] == pytest.approx(2 / 3)
    both_empty = dice_per_class(np.zeros_like(truth), np.zeros_like(truth), [1])
    assert both_empty == {1: 1.0}
    m = mean_dice([{1: 1.0, 2: 0.5}, {1: 0.0, 2: 0.5}], {1: "anterior", 2: "posterior"})
    assert m == {"dice_anterior": 0.5, "dice_posterior": 0.5, "dice": 0.5}


def test_prune_through_concatenations_keeps_shapes(tmp_path):
    from toolkit.models.checkpoint import load_checkpoint, save_checkpoint
    from toolkit.config.pruning import PruneConfig
    from toolkit.prune.prune import count_macs_params, prune_model

    model = tiny_unet()
    shape = (1, 1, 32, 32)
    dense_macs, _ = count_macs_params(model, shape)
    model, hist = prune_model(model, input_shape=shape, cfg=PruneConfig(scope="uniform", target_macs=0.4, round_to=4),
                              never_prune=["head"], progress=False)
    assert hist[-1]["macs"] <= 0.4 * dense_macs
    assert model.head.out_channels == 3
    for up, dec, enc in zip(model.ups, model.decoders, reversed(list(model.encoders))):
        # decoder input = upsampled channels + skip channels (the concatenation stayed consistent)
        assert dec.conv1.in_channels == up.up.out_channels + enc.conv2.out_channels
    y = model(torch.randn(2, 1, 32, 32))
    assert y.shape == (2, 3, 32, 32)
    save_checkpoint(tmp_path / "u.pt", model, "unet", {"in_channels": 1, "num_classes": 3, "base": 8, "depth": 3})
    again, _ = load_checkpoint(tmp_path / "u.pt")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_unet_converts_and_runs_in_onnxruntime_and_litert(tmp_path):
    from toolkit.convert.onnx_to_tflite import onnx_to_tflite
    from toolkit.runtime.tflite_check import require_full_integer
    from toolkit.convert.torch_to_onnx import torch_to_onnx
    from toolkit.runtime.onnx import ONNXRunner
    from toolkit.runtime.tflite import TFLiteRunner
    from toolkit.data.nifti import synthetic_volumes, slices_of

    model = tiny_unet()
    vols = synthetic_volumes(3, seed=0)
    x = np.concatenate([slices_of(v, (32, 32))[0] for v in vols])
    onnx_path = torch_to_onnx(model, (1, 1, 32, 32), tmp_path / "u.onnx")
    out = onnx_to_tflite(onnx_path, tmp_path, x.transpose(0, 2, 3, 1)[:24], (0.0,), (1.0,), int8=True)
    require_full_integer(out.int8, "int8")
    with torch.no_grad():
        ref = model(torch.from_numpy(x[:6])).numpy()
    for runner, tol in ((ONNXRunner(onnx_path, 1), 1e-4), (TFLiteRunner(out.float32, 1), 1e-4)):
        y = np.concatenate([runner(x[i:i + 1]) for i in range(6)])
        assert y.shape == ref.shape and np.abs(y - ref).max() <= tol
    y8 = np.concatenate([TFLiteRunner(out.int8, 1)(x[i:i + 1]) for i in range(6)])
    assert y8.shape == ref.shape and np.corrcoef(y8.ravel(), ref.ravel())[0, 1] > 0.9


def test_malformed_nifti_pairs_are_reported_by_name(tmp_path):
    import nibabel as nib

    from toolkit.data.nifti import load_msd, read_pair

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    eye = np.eye(4)

    def save(folder, name, arr):
        nib.save(nib.Nifti1Image(arr, eye), str(tmp_path / folder / name))

    good = np.random.default_rng(0).random((6, 10, 10)).astype(np.float32)
    save("images", "case_good.nii.gz", good)
    save("labels", "case_good.nii.gz", (good > 0.8).astype(np.uint8))
    save("images", "case_shape.nii.gz", good)
    save("labels", "case_shape.nii.gz", np.zeros((6, 10, 9), np.uint8))
    save("images", "case_values.nii.gz", good)
    save("labels", "case_values.nii.gz", np.full((6, 10, 10), 7, np.uint8))
    (tmp_path / "images" / "case_broken.nii.gz").write_bytes(b"not a nifti file")
    (tmp_path / "labels" / "case_broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(EdgeShrinkError, match="case_shape: image shape"):
        read_pair(tmp_path / "images" / "case_shape.nii.gz", tmp_path / "labels" / "case_shape.nii.gz", 3)
    vs = load_msd(tmp_path, classes=3, held_out=0, progress=False)
    assert [v.name for v in vs.train] == ["case_good"]
    joined = " | ".join(vs.problems)
    assert "case_shape" in joined and "case_values" in joined and "case_broken: unreadable" in joined


def test_case_split_is_fixed_and_disjoint():
    from toolkit.data.nifti import case_split

    names = [f"hippocampus_{i:03d}" for i in range(260)]
    train, held = case_split(names)
    assert len(train) == 208 and len(held) == 52 and not set(train) & set(held)
    assert case_split(list(reversed(names))) == (train, held)
