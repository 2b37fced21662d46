"""Input validation shared by the metrics.

Library convention: videos are float tensors in [-1, 1] of shape (B, T, 3, H, W); frames are
(N, 3, H, W). Metric functions clamp to [-1, 1] (what writing the video to uint8 would do), but
refuse values far outside it, which almost always means the wrong scale ([0, 255], say).
"""

from __future__ import annotations

import torch

# Values beyond +-RANGE_SLACK are taken as a scale mistake rather than sampler overshoot.
RANGE_SLACK = 1.5


def check_video(x: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``x`` is a floating tensor of shape (B, T, 3, H, W)."""
    _check_float(x, name, "(B, T, 3, H, W)")
    if x.ndim != 5 or x.shape[2] != 3:
        raise ValueError(f"{name} must be a video batch of shape (B, T, 3, H, W), got shape {tuple(x.shape)}")


def check_frames(x: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``x`` is a floating tensor of shape (N, 3, H, W)."""
    _check_float(x, name, "(N, 3, H, W)")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be a frame batch of shape (N, 3, H, W), got shape {tuple(x.shape)}")


def check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")


def _check_float(x, name: str, shape: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a float tensor in [-1, 1], got dtype {x.dtype} "
            f"(convert uint8 frames with x.float() / 127.5 - 1)"
        )


def clamp_unit_range(x: torch.Tensor, name: str) -> torch.Tensor:
    """Check that ``x`` is finite and roughly in [-1, 1], and clamp it to exactly [-1, 1]."""
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if not (torch.isfinite(torch.tensor([lo, hi])).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    if lo < -RANGE_SLACK or hi > RANGE_SLACK:
        raise ValueError(
            f"{name} must hold values in [-1, 1], found range [{lo:.3g}, {hi:.3g}]; "
            f"rescale [0, 1] data with 2 * x - 1 and [0, 255] data with x / 127.5 - 1"
        )
    return x.clamp(-1.0, 1.0)
