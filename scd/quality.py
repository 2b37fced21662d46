"""Quick rollout quality against the ground truth on a few held-out clips, for comparing a model with itself under
a surgery, with its leave-one-out variants (scd probe) or with a model converted from it (scd convert).

Each clip gives `context` real frames; the model rolls out the next frames with the recorded actions (one
trajectory, fixed seed) and every generated frame, decoded to pixels by the model's codec and clamped to [-1, 1],
is compared with the recorded one: PSNR, SSIM and LPIPS-AlexNet (scd.metrics.frame_scores), averaged over clips and
frames. Speed is measured apart, at batch 1 (scd.timing).
"""

from __future__ import annotations

import numpy as np
import torch

from .data.store import VideoStore
from .metrics.scores import METRICS, frame_scores
from .sampling import generate, rollout
from .timing import frame_seconds, timed_frames


def heldout_clips(data, num_clips: int, length: int, episodes=None, start: int = 0):
    """Frames start..start+length-1 of the first `num_clips` listed episodes that are long enough.

    data: a data set path or VideoStore; episodes: indices to draw from (default: all, in order).
    Returns the recorded frames, uint8 (N, length, H, W, 3) (a model's codec encodes them), and actions
    (N, length) int64."""
    if num_clips < 1:
        raise ValueError(f"clips must be >= 1, got {num_clips}")
    store = data if isinstance(data, VideoStore) else VideoStore(data)
    chosen = range(store.num_episodes) if episodes is None else episodes
    outside = [e for e in chosen if not 0 <= e < store.num_episodes]
    if outside:
        raise ValueError(f"episodes {outside[0]}..{outside[-1]} out of range: {store.path} has "
                         f"{store.num_episodes} episodes (0..{store.num_episodes - 1})")
    lengths = store.episode_lengths
    long_enough = [e for e in chosen if lengths[e] >= start + length][:num_clips]
    if len(long_enough) < num_clips:
        raise ValueError(f"{store.path} has only {len(long_enough)} episodes with {start + length} frames; "
                         f"{num_clips} clips of {length} frames were asked for")
    episodes = [store.episode(e) for e in long_enough]
    frames = np.stack([np.asarray(f[start : start + length]) for f, _ in episodes])
    actions = np.stack([np.asarray(a[start : start + length], dtype=np.int64) for _, a in episodes])
    return torch.from_numpy(frames), torch.from_numpy(actions)


@torch.no_grad()
def rollout_quality(model, frames, actions, context: int, steps: int = 20, shift: float = 1.0, seed: int = 0) -> dict:
    """Roll out clips, uint8 frames (N, F, H, W, 3) (or frames (N, F, C, H, W) in the model's space) with actions
    (N, F), from their first `context` frames and score the F - context generated frames, decoded to pixels by the
    model's codec, against the recorded ones: mean PSNR / SSIM / LPIPS, and their per-frame means over the clips
    ("per_frame": lists of F - context)."""
    if not 0 < context < frames.shape[1]:
        raise ValueError(f"context must leave frames to generate: 0 < context < {frames.shape[1]}, got {context}")
    device = model.device
    pred = generate(model, frames[:, :context].to(device), actions.to(device), steps=steps, shift=shift, seed=seed)[:, 0]
    codec = model.codec
    scores = frame_scores(codec.decode_pixels(pred).cpu(), codec.as_pixels(frames[:, context:]).cpu(),
                          codec.as_pixels(frames[:, context - 1]).cpu())
    out = {name: float(scores[name].mean()) for name in METRICS}
    out["per_frame"] = {name: [round(float(x), 5) for x in scores[name].mean(0)] for name in METRICS}
    return out


@torch.no_grad()
def seconds_per_frame(model, frames, actions, context: int, steps: int = 20, shift: float = 1.0) -> dict:
    """Wall-clock seconds per generated frame at batch 1 (the first clip): the first frame (context prefill
    included) and the mean of the frames after it."""
    device = model.device
    stream = rollout(model, frames[:1, :context].to(device), actions[:1].to(device), steps=steps, shift=shift, seed=0)
    return frame_seconds([seconds for _, seconds in timed_frames(stream, device)])
