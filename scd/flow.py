"""Flow-matching objective (the paper's Algorithm 1, with the training tricks of its supplementary material).

x_t = (1 - t) x + t eps, t in [0, 1] (t = 1 is pure noise); the network predicts the velocity u = eps - x.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

TIMESTEP_DISTRIBUTIONS = ("logit_normal", "uniform")


@dataclass(frozen=True)
class FlowConfig:
    timesteps: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # k in t' = k t / (1 + (k - 1) t); 1 = no shift
    K: int = 1  # noisy draws per context pass (amortized multi-sample decoding, supp. Tab. 2)
    context_noise: float = 0.0  # eta: Gaussian noise on the unit-variance c_i (supp. Tab. 3), SCD only
    action_dropout: float = 0.1  # share of clips trained with the null action, so action guidance is possible
    # noisy_current SCD encoders see the current frame at t ~ U(encoder_t_min, 1) (supp. E.1: the top 20%)
    encoder_t_min: float = 0.8

    def __post_init__(self) -> None:
        problems = []
        if self.timesteps not in TIMESTEP_DISTRIBUTIONS:
            problems.append(f"timesteps must be one of {TIMESTEP_DISTRIBUTIONS}, got {self.timesteps!r}")
        if self.shift <= 0:
            problems.append(f"shift must be > 0, got {self.shift}")
        if self.K < 1:
            problems.append(f"K must be >= 1, got {self.K}")
        if self.context_noise < 0:
            problems.append(f"context_noise must be >= 0, got {self.context_noise}")
        if not 0 <= self.action_dropout <= 1:
            problems.append(f"action_dropout must be in [0, 1], got {self.action_dropout}")
        if not 0 <= self.encoder_t_min <= 1:
            problems.append(f"encoder_t_min must be in [0, 1], got {self.encoder_t_min}")
        if problems:
            raise ValueError("invalid flow config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def shift_time(t: torch.Tensor, k: float) -> torch.Tensor:
    """t' = k t / (1 + (k - 1) t): k > 1 moves time towards the noisy end."""
    return k * t / (1 + (k - 1) * t)


def sample_timesteps(shape, cfg: FlowConfig, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training flow times of the given shape, from the logit-normal or the (shifted) uniform distribution."""
    if cfg.timesteps == "logit_normal":
        t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(shape, generator=generator, device=device))
    else:
        t = torch.rand(shape, generator=generator, device=device)
    return shift_time(t, cfg.shift)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x + t eps, with t broadcast over the trailing (C, H, W) dims."""
    t = t.reshape(*t.shape, 1, 1, 1)
    return (1 - t) * x + t * noise


def drop_actions(actions: torch.Tensor, p: float, null_action: int) -> torch.Tensor:
    """Replace all actions of a random share p of the clips (B, F) by the null action."""
    if p == 0:
        return actions
    dropped = torch.rand(actions.shape[0], device=actions.device) < p
    return torch.where(dropped[:, None], torch.full_like(actions, null_action), actions)


def flow_matching_loss(model, frames: torch.Tensor, actions: torch.Tensor, cfg: FlowConfig,
                       surgery=None) -> torch.Tensor:
    """Mean squared velocity error over every frame of the clips (teacher forcing, Algorithm 1).

    frames: (B, F, C, H, W); actions: (B, F). The context (SCD: c_i for every frame, one encoder pass;
    Causal DiT: the clean frames) is computed once and reused for K noisy draws. `surgery` (models.Surgery,
    Causal DiT only) trains under a skip-layer schedule and/or frame-diagonal last blocks."""
    actions = drop_actions(actions, cfg.action_dropout, model.null_action)
    if model.encoder_reads_noisy_frame:  # supp. E.1: the encoder sees the current frame at a high flow time
        t_enc = cfg.encoder_t_min + (1 - cfg.encoder_t_min) * torch.rand(frames.shape[:2], device=frames.device)
        ctx = model.training_context(frames, actions, interpolate(frames, torch.randn_like(frames), t_enc), t_enc)
    else:
        ctx = model.training_context(frames, actions)
    if cfg.context_noise > 0:
        ctx = model.corrupt_context(ctx, cfg.context_noise)
    if cfg.K > 1:  # the K draws share one context pass: stack them along the batch
        frames, actions, ctx = (x.repeat(cfg.K, *[1] * (x.ndim - 1)) for x in (frames, actions, ctx))
    t = sample_timesteps(frames.shape[:2], cfg, device=frames.device)
    noise = torch.randn_like(frames)
    v = model.velocity(interpolate(frames, noise, t), t, ctx, actions, surgery=surgery)
    return (v.float() - (noise - frames)).pow(2).mean()
