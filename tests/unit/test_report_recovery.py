"""report.md says when the pruned model itself did not recover, with the fine-tune's trend and the
settings that change it; nothing when it did."""

from __future__ import annotations

from toolkit.pipeline.report.markdown import recovery_lines


def _manifest(pruned_dice: float, why_not: list) -> dict:
    per_epoch = [{"epoch": i + 1, "loss": 1.0, "dice": 0.0 if pruned_dice == 0 else 0.8} for i in range(10)]
    return {"baseline": {"metrics": {"dice": 0.868}},
            "artifacts": [{"name": "pruned-torch-fp32", "metrics": {"dice": pruned_dice}}],
            "pruning": {"history": [{"step": 0}, {"step": 1, "finetune": {"epochs": 10, "per_epoch": per_epoch}}]},
            "deploy": {"selection": {"candidates": [
                {"artifact": "dense-tflite-fp32", "why_not": []},
                {"artifact": "pruned-tflite-fp32", "why_not": why_not},
                {"artifact": "pruned-tflite-int8", "why_not": why_not}]}}}


def test_a_pruned_model_that_did_not_recover_is_named_with_the_fix():
    lines = recovery_lines(_manifest(0.0, ["dice +0.8681 below dense > 0.015"]), "dice")
    text = lines[0]
    assert "did not recover" in text and "10 fine-tune epochs" in text and "0.0000 against dense 0.8680" in text
    assert "0.000 → 0.000 → 0.000 → 0.000 → 0.000 → 0.000" in text  # first and last three epochs
    assert "pruning.finetune_epochs" in text and "--finetune-epochs" in text and "pruning.target_macs" in text


def test_nothing_is_said_when_the_pruned_model_passes_or_fails_for_another_reason():
    assert recovery_lines(_manifest(0.86, []), "dice") == []
    assert recovery_lines(_manifest(0.86, ["not fully delegated: 3 partitions"]), "dice") == []
