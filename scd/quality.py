"""Quick rollout quality against the ground truth on a few held-out clips, for comparing a model with itself under
a surgery, with its leave-one-out variants (scd probe) or with a model converted from it (scd convert).

    scd quality --checkpoint RUN --data HELDOUT [--clips 8 --context 4 --frames 8 --steps 20] [surgery options]

Each clip gives `context` real frames; the model rolls out the next `frames` frames with the recorded actions
(one trajectory, fixed seed) and every generated frame, clamped to [-1, 1], is compared with the recorded one:
PSNR, SSIM and LPIPS-AlexNet (scd.metrics), averaged over clips and frames. Speed is measured apart, at batch 1.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from .data.store import VideoStore, frames_to_model
from .metrics import lpips, psnr, ssim
from .sampling import generate, rollout


def heldout_clips(data, num_clips: int, length: int, episodes=None, start: int = 0):
    """Frames start..start+length-1 of the first `num_clips` listed episodes that are long enough.

    data: a data set path or VideoStore; episodes: indices to draw from (default: all, in order).
    Returns frames (N, length, C, H, W) in [-1, 1] and actions (N, length) int64."""
    if num_clips < 1:
        raise ValueError(f"clips must be >= 1, got {num_clips}")
    store = data if isinstance(data, VideoStore) else VideoStore(data)
    chosen = range(store.num_episodes) if episodes is None else episodes
    outside = [e for e in chosen if not 0 <= e < store.num_episodes]
    if outside:
        raise ValueError(f"episodes {outside[0]}..{outside[-1]} out of range: {store.path} has "
                         f"{store.num_episodes} episodes (0..{store.num_episodes - 1})")
    frames, actions = [], []
    for e in chosen:
        video, recorded = store.episode(e)
        if len(video) >= start + length:
            frames.append(frames_to_model(video[start : start + length]))
            actions.append(torch.from_numpy(np.array(recorded[start : start + length], dtype=np.int64)))
        if len(frames) == num_clips:
            break
    if len(frames) < num_clips:
        raise ValueError(f"{store.path} has only {len(frames)} episodes with {start + length} frames; "
                         f"{num_clips} clips of {length} frames were asked for")
    return torch.stack(frames), torch.stack(actions)


def parse_episodes(text: str | None) -> list[int] | None:
    """'0-7' or '1,3,5' (or a mix, '0-3,9') -> indices; None stays None."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"--episodes: expected indices like 0-7 or 1,3,5, got {text!r}")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def score(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Mean PSNR / SSIM / LPIPS of videos (B, T, C, H, W) in [-1, 1] (predictions clamped to it), and the
    per-frame means over the batch (lists of T)."""
    pred = pred.float().clamp(-1, 1)
    target = target.float()
    per_frame = {"psnr": psnr(pred, target), "ssim": ssim(pred, target), "lpips": lpips(pred, target)}
    out = {name: float(v.mean()) for name, v in per_frame.items()}
    out["per_frame"] = {name: [round(float(x), 5) for x in v.mean(0)] for name, v in per_frame.items()}
    return out


@torch.no_grad()
def rollout_quality(model, frames, actions, context: int, steps: int = 20, shift: float = 1.0, seed: int = 0) -> dict:
    """Roll out clips frames (N, F, C, H, W) with actions (N, F) from their first `context` frames; score the
    F - context generated frames against the recorded ones (see `score`)."""
    if not 0 < context < frames.shape[1]:
        raise ValueError(f"context must leave frames to generate: 0 < context < {frames.shape[1]}, got {context}")
    device = model.device
    pred = generate(model, frames[:, :context].to(device), actions.to(device), steps=steps, shift=shift, seed=seed)[:, 0]
    return score(pred.cpu(), frames[:, context:])


@torch.no_grad()
def seconds_per_frame(model, frames, actions, context: int, steps: int = 20, shift: float = 1.0) -> dict:
    """Wall-clock seconds per generated frame at batch 1 (the first clip): the first frame (context prefill
    included) and the mean of the frames after it."""
    device = model.device
    times = []
    stream = rollout(model, frames[:1, :context].to(device), actions[:1].to(device), steps=steps, shift=shift,
                     seed=0)
    start = time.perf_counter()
    for _ in stream:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    steady = times[1:] or times
    return {"first_frame_s": times[0], "seconds_per_frame": sum(steady) / len(steady)}


# -- scd quality ---------------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    from .cli_options import add_sampler_options, add_surgery_arguments, at_least

    p = subparsers.add_parser("quality", help="rollout PSNR/SSIM/LPIPS vs ground truth on a few held-out clips "
                                              "(optionally under a surgery) and s/frame")
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory")
    p.add_argument("--data", required=True, help="held-out data set (scd-video-v1)")
    p.add_argument("--episodes", help="episode indices to draw clips from, e.g. 0-7 or 1,3,5 (default: all)")
    p.add_argument("--clips", type=at_least(1), default=8, help="clips (one per episode; default: 8)")
    p.add_argument("--start", type=at_least(0), default=0, help="first frame of each clip in its episode (default: 0)")
    p.add_argument("--context", type=at_least(1), default=4, help="real frames given (default: 4)")
    p.add_argument("--frames", type=at_least(1), default=8, help="frames generated and scored (default: 8)")
    add_sampler_options(p)
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    p.add_argument("--no-speed", action="store_true", help="skip the batch-1 timing")
    p.add_argument("--json", help="also write the numbers to this file")
    add_surgery_arguments(p, training=False)
    p.set_defaults(func=cmd_quality)


def cmd_quality(args) -> int:
    from .checkpoint import load_model
    from .cli_options import surgery_from_args
    from .surgery import operated

    model = load_model(args.checkpoint, weights=args.weights)
    surgery = surgery_from_args(args, args.steps, args.shift)
    if surgery is not None:
        surgery.check(model)
    frames, actions = heldout_clips(args.data, args.clips, args.context + args.frames, parse_episodes(args.episodes),
                                    args.start)
    result = {"checkpoint": str(args.checkpoint), "arch": model.config.arch, "data": str(args.data),
              "clips": args.clips, "context": args.context, "frames": args.frames, "steps": args.steps,
              "seed": args.seed, "surgery": None if surgery is None else dataclasses.asdict(surgery)}
    with operated(model, surgery):
        result.update(rollout_quality(model, frames, actions, args.context, args.steps, args.shift, args.seed))
        if not args.no_speed:
            result.update(seconds_per_frame(model, frames, actions, args.context, args.steps, args.shift))
    speed = "" if args.no_speed else f", {result['seconds_per_frame']:.3f} s/frame at batch 1"
    print(f"{model.config.arch} {args.checkpoint}: PSNR {result['psnr']:.2f}  SSIM {result['ssim']:.4f}  "
          f"LPIPS {result['lpips']:.4f} over {args.clips} clips x {args.frames} frames{speed}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
