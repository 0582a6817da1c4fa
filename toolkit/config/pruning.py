"""Pruning settings as a small frozen, validated record."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import field_validator, model_validator

from toolkit.core.schema import Strict


class PruneConfig(Strict):
    """What to remove and how. Give `target_macs` (fraction of dense MACs to keep) or
    `channel_ratio` (fraction of channels to remove per layer group), not both."""

    importance: Literal["l1", "l2", "bn_scale", "taylor"] = "l2"
    scope: Literal["uniform", "global"] = "global"
    target_macs: Optional[float] = 0.5
    channel_ratio: Optional[float] = None
    steps: int = 1
    finetune_epochs: int = 8
    finetune_lr: float = 1e-3
    distill: float = 0.5
    round_to: int = 8
    max_layer_ratio: float = 0.8
    max_trials: Optional[int] = 600  # pruning work: dry-run trials + pruning sub-steps (None: no limit)

    @field_validator("target_macs", "channel_ratio")
    @classmethod
    def _fraction(cls, v):
        if v is not None and not 0.0 < v < 1.0:
            raise ValueError(f"must be between 0 and 1 (exclusive), got {v}")
        return v

    @field_validator("max_layer_ratio")
    @classmethod
    def _layer_ratio(cls, v):
        if not 0.0 < v < 1.0:
            raise ValueError(f"must be between 0 and 1 (exclusive), got {v}")
        return v

    @field_validator("steps", "round_to", "max_trials")
    @classmethod
    def _positive(cls, v):
        if v is not None and v < 1:
            raise ValueError("must be >= 1")
        return v

    @model_validator(mode="after")
    def _one_target(self):
        if (self.target_macs is None) == (self.channel_ratio is None):
            raise ValueError("give exactly one of target_macs or channel_ratio")
        return self
