"""Sampling (the paper's Algorithm 2): an Euler flow sampler and the frame-by-frame autoregressive rollout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .flow import shift_time


def flow_schedule(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """(steps + 1,) flow times from 1 (noise) to 0 (data), warped by t' = k t / (1 + (k - 1) t)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def euler_sample(velocity: Callable, noise: torch.Tensor, schedule: torch.Tensor, callback: Callable | None = None):
    """Integrate dx/dt = v(x, t) from t = schedule[0] to schedule[-1] with Euler steps.

    velocity(x (B, ...), t (B,)) -> (B, ...). callback(dict(step, t, x, v)) sees every step (probing hooks)."""
    x = noise
    for step in range(len(schedule) - 1):
        t = schedule[step].expand(x.shape[0])
        v = velocity(x, t)
        if callback is not None:
            callback({"step": step, "t": schedule[step], "x": x, "v": v})
        x = x + (schedule[step + 1] - schedule[step]) * v
    return x


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: v = v_neg + scale (v - v_neg).

    The negative branch drops the action (null action, both models) and/or perturbs the context with noise
    of std `context_noise` (eta_cfg, SCD only: c_i + eta_cfg * zeta; scale 1.5 is the paper's best)."""

    scale: float = 1.5
    null_action: bool = False
    context_noise: float = 0.0

    def __post_init__(self) -> None:
        if not (self.null_action or self.context_noise > 0):
            raise ValueError("guidance needs a negative branch: set null_action=True and/or context_noise > 0")
        if self.context_noise < 0:
            raise ValueError(f"context_noise must be >= 0, got {self.context_noise}")


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()  # CPU noise, so a seed gives the same video on every device
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


@torch.no_grad()
def rollout(
    model,
    context_frames: torch.Tensor,
    actions: torch.Tensor,
    steps: int = 20,
    shift: float = 1.0,
    guidance: Guidance | None = None,
    num_samples: int = 1,
    seed: int | None = 0,
    window: int | None = None,
    callback: Callable | None = None,
) -> Iterator[torch.Tensor]:
    """Generate frames one at a time; yields each new frame as (B, num_samples, C, H, W).

    context_frames: (B, C0, C, H, W) given frames (C0 >= 0); actions: (B, C0 + H) for the context and the H
    frames to generate (actions[:, i] produced frame i). Each of the num_samples trajectories per video draws
    its own noise; `seed` makes the whole rollout deterministic. `window` bounds the history kept in the KV
    cache (default: everything). callback(dict(frame, step, t, x, v)) sees every denoising step."""
    model.check_frames(context_frames, "context_frames")
    b, c0 = context_frames.shape[:2]
    if actions.ndim != 2 or actions.shape[0] != b or actions.shape[1] <= c0:
        raise ValueError(
            f"actions must have shape (B={b}, context {c0} + frames to generate), got {tuple(actions.shape)}"
        )
    model.check_actions(actions, actions.shape)
    horizon = actions.shape[1] - c0
    window = window or actions.shape[1]
    if c0 > window:
        raise ValueError(f"context of {c0} frames exceeds the history window of {window} frames")
    device = model.device
    n = b * num_samples
    ctx_frames = context_frames.to(device).repeat_interleave(num_samples, dim=0)
    acts = actions.to(device).repeat_interleave(num_samples, dim=0)
    gen = _generator(seed)
    schedule = flow_schedule(steps, shift, device=device)
    null = torch.full((n,), model.null_action, device=device, dtype=acts.dtype)

    stream = model.new_stream(n, window)
    if c0 > 0:
        model.prefill(stream, ctx_frames, acts[:, :c0])
    for i in range(horizon):
        a = acts[:, c0 + i]
        noise = torch.randn((n, *model.config.frame_shape), generator=gen).to(device)
        neg_action, neg_ctx = a, None
        if guidance is not None and guidance.null_action:  # uncommitted encoder pass, before the real one
            neg_action = null
            neg_ctx = model.frame_context(stream, null, commit=False)
        ctx = model.frame_context(stream, a)
        if guidance is not None and guidance.context_noise > 0:
            neg_ctx = model.corrupt_context(ctx if neg_ctx is None else neg_ctx, guidance.context_noise, gen)

        def velocity(x, t):
            v = model.frame_velocity(stream, ctx, x, t, a)
            if guidance is None:
                return v
            v_neg = model.frame_velocity(stream, neg_ctx, x, t, neg_action)
            return v_neg + guidance.scale * (v - v_neg)

        step_callback = None if callback is None else (lambda info, i=i: callback({"frame": i, **info}))
        frame = euler_sample(velocity, noise, schedule, step_callback)
        model.commit(stream, frame, a)
        yield frame.view(b, num_samples, *frame.shape[1:])


def generate(model, context_frames, actions, **kwargs) -> torch.Tensor:
    """The whole rollout at once: (B, num_samples, H, C, H, W)."""
    return torch.stack(list(rollout(model, context_frames, actions, **kwargs)), dim=2)
