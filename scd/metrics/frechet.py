"""Frechet distance between feature sets and Frechet Video Distance (Unterthiner et al. 2018).

For Gaussians fitted to two feature sets, N(mu1, S1) and N(mu2, S2),

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2}).

The trace of the matrix square root is a nuclear norm, computed in float64 without any matrix
square root of S1 S2 (so without the complex round-off residue of ``scipy.linalg.sqrtm``):

- from samples: with centred, scaled feature matrices A (N x D) and B (M x D), S1 = A^T A and
  S2 = B^T B, the eigenvalues of S1 S2 are the squared singular values of A B^T, so
  tr (S1^{1/2} S2 S1^{1/2})^{1/2} = ||A B^T||_* = ||R_A R_B^T||_* with the R factors of thin QR
  decompositions. This stays accurate when the covariances are singular (fewer videos than the
  400 feature dimensions, as in the usual 256-video FVD), where square roots of the covariances
  amplify round-off (an eigh-based version gave -2.4e-3 for two I3D feature vectors against
  themselves; this one gives ~1e-13).
- from given covariances: tr (S1^{1/2} S2 S1^{1/2})^{1/2} = ||S1^{1/2} S2^{1/2}||_* with the
  symmetric PSD square roots (eigh, round-off negative eigenvalues clipped to 0).
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import check_video
from .i3d import i3d_features

__all__ = ["frechet_distance", "fvd", "gaussian_frechet_distance"]


def _as_features(x, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a feature matrix of shape (N, D), got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples to estimate a covariance, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _nuclear_norm(m: np.ndarray) -> float:
    return float(np.linalg.svd(m, compute_uv=False).sum())


def gaussian_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: means, shape (D,). sigma1, sigma2: symmetric PSD covariances, shape (D, D).
    Returns:
        float >= 0 (up to round-off), computed in float64.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"expected means (D,) and covariances (D, D), got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    tr_sqrt = _nuclear_norm(_psd_sqrt(s1) @ _psd_sqrt(s2))
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID/FVD statistic).

    Args:
        feats_a: (N, D) features, N >= 2 (tensor or array, any float dtype).
        feats_b: (M, D) features, M >= 2.
    Returns:
        float: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}), with means and
        unbiased (N - 1) covariances estimated in float64 (the values of ``np.cov``); >= 0 up to round-off.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: feats_a {a.shape}, feats_b {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    # S_a = A^T A and S_b = B^T B.
    fa = (a - mu_a) / np.sqrt(a.shape[0] - 1)
    fb = (b - mu_b) / np.sqrt(b.shape[0] - 1)
    # Singular values of A B^T = those of R_A R_B^T (thin QR): a min(N, D) x min(M, D) problem.
    ra, rb = np.linalg.qr(fa, mode="r"), np.linalg.qr(fb, mode="r")
    tr_sqrt = _nuclear_norm(ra @ rb.T)
    return float(np.square(mu_a - mu_b).sum() + np.square(fa).sum() + np.square(fb).sum() - 2.0 * tr_sqrt)


def fvd(real_videos: torch.Tensor, fake_videos: torch.Tensor, batch_size: int = 8) -> float:
    """Frechet Video Distance with the Kinetics-400 I3D (StyleGAN-V / FAR / SCD convention).

    Args:
        real_videos: (N, T, 3, H, W) float in [-1, 1], N >= 2, T >= 9; resized to 224x224.
        fake_videos: (M, T', 3, H', W') float in [-1, 1], M >= 2, T' >= 9.
        batch_size: videos per I3D forward pass.
    Returns:
        float, the Frechet distance between the two sets of 400-d I3D logits. Reported FVDs use
        hundreds of videos; with few videos the covariance estimate (and the score) is biased.
    """
    check_video(real_videos, "real_videos")
    check_video(fake_videos, "fake_videos")
    for name, v in (("real_videos", real_videos), ("fake_videos", fake_videos)):
        if v.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 videos to estimate a covariance, got shape {tuple(v.shape)}")
    return frechet_distance(i3d_features(real_videos, batch_size), i3d_features(fake_videos, batch_size))
