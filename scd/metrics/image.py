"""Per-frame pixel metrics: PSNR and SSIM, and three drift measures (colour-histogram distance, sharpness, motion).

All take videos in [-1, 1] of shape (B, T, 3, H, W), map them to [0, 1] and score every frame
separately with data range 1, returning a (B, T) tensor, so that callers can aggregate over
frames, trajectories (best of K) or videos as their protocol says.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ._checks import check_frames, check_pair, check_video, clamp_unit_range

__all__ = ["psnr", "ssim", "color_histogram_distance", "sharpness", "motion"]

SSIM_KERNEL = 11  # Gaussian window size (sigma 1.5), as in Wang et al. 2004 and torchmetrics' default


def _to_unit(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_video(pred, "pred")
    check_video(target, "target")
    check_pair(pred, target)
    dtype = torch.promote_types(pred.dtype, torch.float32)  # bf16/fp16 inputs are scored in fp32
    pred = (clamp_unit_range(pred, "pred").to(dtype) + 1) / 2
    target = (clamp_unit_range(target, "target").to(dtype) + 1) / 2
    return pred, target


@torch.no_grad()
def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of every frame, in dB.

    Args:
        pred, target: videos (B, T, 3, H, W), float in [-1, 1] (clamped to it; values beyond
            +-1.5 raise). Scored on [0, 1] images with data range 1.
    Returns:
        (B, T) float tensor, ``10 * log10(1 / MSE)`` with the MSE over (3, H, W) of each frame;
        ``inf`` where a frame is identical to its target.
    """
    pred, target = _to_unit(pred, target)
    mse = (pred - target).square().mean(dim=(2, 3, 4))
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity of every frame (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03).

    Computed with ``torchmetrics.functional.image.structural_similarity_index_measure`` on [0, 1]
    images with data range 1 (reflection padding, mean over channels and pixels).

    Args:
        pred, target: videos (B, T, 3, H, W), float in [-1, 1], H and W at least 11.
    Returns:
        (B, T) float tensor, at most 1 (exactly 1 for identical frames).
    """
    pred, target = _to_unit(pred, target)
    b, t, c, h, w = pred.shape
    if h < SSIM_KERNEL or w < SSIM_KERNEL:
        raise ValueError(f"ssim needs frames of at least {SSIM_KERNEL}x{SSIM_KERNEL} pixels, got shape {tuple(pred.shape)}")
    values = structural_similarity_index_measure(
        pred.reshape(b * t, c, h, w), target.reshape(b * t, c, h, w), data_range=1.0, reduction="none"
    )
    return values.reshape(b, t)


@torch.no_grad()
def color_histogram_distance(pred: torch.Tensor, target: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Total-variation distance between the joint RGB histograms of each frame pair: how far a frame's colours
    (grass, water, sand, darkness, ...) have drifted from the real frame's, whatever their positions.

    Args:
        pred, target: videos (B, T, 3, H, W), float in [-1, 1].
        bins: levels per channel (bins**3 colour cells).
    Returns:
        (B, T) in [0, 1]: 0 for the same colour distribution, 1 for disjoint colours.
    """
    pred, target = _to_unit(pred, target)

    def histogram(x: torch.Tensor) -> torch.Tensor:  # (B, T, 3, H, W) in [0, 1] -> (B, T, bins**3) summing to 1
        q = (x * bins).long().clamp(0, bins - 1)
        cell = (q[:, :, 0] * bins + q[:, :, 1]) * bins + q[:, :, 2]  # (B, T, H, W)
        flat = cell.flatten(2)
        counts = torch.zeros(*flat.shape[:2], bins**3, dtype=x.dtype, device=x.device)
        counts.scatter_add_(2, flat, torch.ones_like(flat, dtype=x.dtype))
        return counts / flat.shape[2]

    return 0.5 * (histogram(pred) - histogram(target)).abs().sum(dim=2)


@torch.no_grad()
def sharpness(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute Laplacian of each frame's luminance on [0, 1] (a blur measure: lower is blurrier; speckle
    noise raises it). Compare a generated frame with its real one as a ratio: < 1 blurrier, > 1 noisier.

    Args:
        video: (B, T, 3, H, W), float in [-1, 1].
    Returns:
        (B, T) non-negative.
    """
    check_video(video, "video")
    x = (clamp_unit_range(video, "video").to(torch.promote_types(video.dtype, torch.float32)) + 1) / 2
    luma = 0.299 * x[:, :, 0] + 0.587 * x[:, :, 1] + 0.114 * x[:, :, 2]  # (B, T, H, W)
    lap = (4 * luma[..., 1:-1, 1:-1] - luma[..., :-2, 1:-1] - luma[..., 2:, 1:-1]
           - luma[..., 1:-1, :-2] - luma[..., 1:-1, 2:])
    return lap.abs().mean(dim=(2, 3))


@torch.no_grad()
def motion(video: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Mean absolute change of each frame from the one before it, on [0, 1] pixels: how much the picture moves
    (scrolling, walking creatures, day turning to night). Compare a rollout with the real video as a difference:
    < 0 it moves less than the real one (freezes, or drifts back to a remembered view), > 0 more (flicker).

    Args:
        video: (B, T, 3, H, W), float in [-1, 1].
        before: (B, 3, H, W), the frame before video[:, 0] (for a rollout: the last context frame).
    Returns:
        (B, T) in [0, 1].
    """
    check_video(video, "video")
    check_frames(before, "before")
    if before.shape != video[:, 0].shape:
        raise ValueError(f"before must be one frame per video, shape {tuple(video[:, 0].shape)}, "
                         f"got {tuple(before.shape)}")
    dtype = torch.promote_types(video.dtype, torch.float32)
    x = torch.cat([before[:, None], video], dim=1).to(dtype)  # (B, T + 1, 3, H, W)
    x = (clamp_unit_range(x, "video") + 1) / 2
    return (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3, 4))
