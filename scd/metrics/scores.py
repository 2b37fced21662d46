"""The scores of generated frames against the real ones: one function for `scd eval` and `scd quality`."""

from __future__ import annotations

import torch

from .image import color_histogram_distance, motion, psnr, sharpness, ssim
from .perceptual import lpips

METRICS = ("psnr", "ssim", "lpips")  # frame metrics
DRIFT_METRICS = ("color_hist", "sharpness", "motion")  # how far a rollout drifts from the real frames
LPIPS_NET = "alex"
# PSNR of a frame identical to the real one (inf) counts as this in the scores, so that means stay finite: two 8-bit
# 64x64 frames that differ at all score below 89 dB. Copying the frame before is exact whenever nothing moved.
PSNR_CAP = 100.0


def frame_scores(pred: torch.Tensor, target: torch.Tensor, before: torch.Tensor,
                 recorded_history: bool = False) -> dict[str, torch.Tensor]:
    """Videos (B, T, 3, H, W) in [-1, 1] (pred clamped to it) and the real frame before them, (B, 3, H, W) ->
    {measure: (B, T)} for every frame: PSNR (at most PSNR_CAP), SSIM, LPIPS-AlexNet, the colour-histogram
    distance (0 = same colours), the sharpness ratio (mean |Laplacian| of the generated frame over the real one's:
    < 1 blurred, > 1 noisy) and the motion gap (the generated frame's mean |change| from the frame before it minus
    the real one's: < 0 the rollout moves less than the real video, > 0 more). recorded_history: each generated
    frame followed the recorded frame before it (teacher forcing), so its motion is measured from that one."""
    pred, target, before = pred.float().clamp(-1, 1), target.float(), before.float()
    b, t = pred.shape[:2]
    real_before = torch.cat([before[:, None], target[:, :-1]], dim=1)  # (B, T, 3, H, W): the frame each follows
    pred_before = real_before if recorded_history else torch.cat([before[:, None], pred[:, :-1]], dim=1)

    def moved(video, previous):  # (B, T) mean |change| of each frame from its own previous one
        return motion(video.flatten(0, 1)[:, None], previous.flatten(0, 1)).reshape(b, t)

    return {"psnr": psnr(pred, target).clamp(max=PSNR_CAP), "ssim": ssim(pred, target),
            "lpips": lpips(pred, target, net=LPIPS_NET),
            "color_hist": color_histogram_distance(pred, target),
            "sharpness": sharpness(pred) / sharpness(target).clamp(min=1e-6),
            "motion": moved(pred, pred_before) - moved(target, real_before)}
