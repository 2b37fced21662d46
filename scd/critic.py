"""A critic for adversarial training of a world model's rollouts (objectives.AdversarialRollout): a small
convolutional network that scores single frames in the model's space (pixels or codec latents) as real (high) or
generated (low). It judges what a frame looks like, not whether it is the recorded future, so it can push a rollout
away from the blurred, averaged frames that regression to the recorded frames teaches, without asking for a future
the history cannot know. Spectral normalisation keeps its scores Lipschitz (a stable hinge game)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class FrameCritic(nn.Module):
    """frames (..., C, H, W) -> scores (...,). Three convolutions (the last two halve H and W), then a linear
    read-out of the (width * 2, H / 4, W / 4) map; H and W must be divisible by 4."""

    def __init__(self, frame_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        channels, height, width_px = frame_shape
        if height % 4 or width_px % 4:
            raise ValueError(f"the critic halves frames twice: H and W must be divisible by 4, got {frame_shape}")
        self.frame_shape = tuple(frame_shape)
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(channels, width, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
        )
        self.score = spectral_norm(nn.Linear(2 * width * (height // 4) * (width_px // 4), 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if tuple(frames.shape[-3:]) != self.frame_shape:
            raise ValueError(f"the critic scores frames of shape {self.frame_shape}, got {tuple(frames.shape[-3:])}")
        lead = frames.shape[:-3]
        x = self.features(frames.reshape(-1, *self.frame_shape).float())
        return self.score(x.flatten(1)).reshape(lead)
