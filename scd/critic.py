"""A critic for adversarial training of a world model's rollouts (objectives.AdversarialRollout): a small
convolutional network that scores a frame in the model's space (pixels or codec latents), read beside the last
recorded frame of its clip's context, as a recorded continuation of that context (high) or a generated one (low).
It judges whether a frame looks like a possible future of the world it started from, not whether it is the one
recorded future, so it can push a rollout away from the blurred, averaged frames that regression to the recorded
frames teaches without asking for a future the history cannot know; reading the context keeps it from rewarding
any realistic-looking frame (a critic of single frames rewarded invented terrain: docs/experiments.md).
Spectral normalisation keeps its scores Lipschitz (a stable hinge game)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class FrameCritic(nn.Module):
    """(frames (..., C, H, W), context frames like them) -> scores (...,). The two stacked on channels, three
    convolutions (the last two halve H and W), then a linear read-out of the (width * 2, H / 4, W / 4) map; H and W
    must be divisible by 4."""

    def __init__(self, frame_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        channels, height, width_px = frame_shape
        if height % 4 or width_px % 4:
            raise ValueError(f"the critic halves frames twice: H and W must be divisible by 4, got {frame_shape}")
        self.frame_shape = tuple(frame_shape)
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(2 * channels, width, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
        )
        self.score = spectral_norm(nn.Linear(2 * width * (height // 4) * (width_px // 4), 1))

    def forward(self, frames: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if tuple(frames.shape[-3:]) != self.frame_shape:
            raise ValueError(f"the critic scores frames of shape {self.frame_shape}, got {tuple(frames.shape[-3:])}")
        if context.shape != frames.shape:
            raise ValueError(f"the critic reads one context frame per frame: frames {tuple(frames.shape)}, context "
                             f"{tuple(context.shape)}")
        lead = frames.shape[:-3]
        pairs = torch.cat([frames, context], dim=-3).reshape(-1, 2 * self.frame_shape[0], *self.frame_shape[1:])
        x = self.features(pairs.float())
        return self.score(x.flatten(1)).reshape(lead)
