"""Trivial predictors that every world-model table carries beside the models, computed on the same clips: a
model that does not beat them has not learnt the world. Each maps the context frames to a "rollout" of the
horizon's length without looking at the actions."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CopyLastFrame:
    """Repeat the last context frame: perfect while the world stands still (in Crafter, whenever the player
    does not move), and a strong baseline for SSIM and LPIPS."""

    label: str = "copy-last-frame"

    def __call__(self, context: torch.Tensor, horizon: int) -> torch.Tensor:
        """context (C, ...) -> (1, horizon, ...)."""
        return context[-1:].expand(horizon, *context.shape[1:])[None].clone()


@dataclass(frozen=True)
class ContextMean:
    """Repeat the per-pixel mean of the context frames (the best constant prediction under the MSE)."""

    label: str = "context-mean"

    def __call__(self, context: torch.Tensor, horizon: int) -> torch.Tensor:
        return context.mean(dim=0, keepdim=True).expand(horizon, *context.shape[1:])[None].clone()


BASELINES = (CopyLastFrame(), ContextMean())
