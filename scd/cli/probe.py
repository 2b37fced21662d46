"""`scd probe` (hooks on a real rollout, scd/probe.py) and `scd quality` (rollout quality against the ground truth,
scd/quality.py), each optionally under a surgery of a Causal DiT."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from . import COMMANDS
from .options import (add_sampler_options, add_surgery_arguments, at_least, parse_episodes, resolve_sampler_options,
                      surgery_from_args)


# -- scd probe -----------------------------------------------------------------------------------------------
def add_probe_parser(subparsers) -> None:
    p = subparsers.add_parser("probe", help=COMMANDS["probe"][0])
    p.add_argument("--checkpoint", required=True, help="checkpoint or run directory (Causal DiT or SCD)")
    p.add_argument("--data", required=True, help="held-out data set for context frames and the loss")
    p.add_argument("--out", required=True, help="folder for the figures and probe.json")
    p.add_argument("--episodes", help="episodes to draw clips from, e.g. 0-7 (default: all)")
    p.add_argument("--clips", type=at_least(1), default=4, help="rollouts (one clip per episode; default: 4)")
    p.add_argument("--context", type=at_least(1), default=4, help="real frames given (default: 4)")
    p.add_argument("--frames", type=at_least(1), default=8, help="generated frames per rollout (default: 8)")
    add_sampler_options(p)
    p.add_argument("--pca-frame", type=at_least(0), default=0,
                   help="generated frame (of clip 0) shown in the PCA figure (default: 0)")
    p.add_argument("--loss-clips", type=at_least(1), default=16,
                   help="held-out clips for the leave-one-out loss (default: 16)")
    p.add_argument("--loss-clip-len", type=at_least(2), help="frames per loss clip (default: the training clip length)")
    p.add_argument("--loss-draws", type=at_least(1), default=2,
                   help="seeded timestep/noise draws for the loss (default: 2)")
    p.add_argument("--no-leave-one-out", action="store_true")
    p.add_argument("--weights", choices=["ema", "model"], default="ema")
    add_surgery_arguments(p, training=False)
    p.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    from ..checkpoint import load_checkpoint
    from ..probe import (leave_one_out, loss_clips, plot_depth_curves, plot_leave_one_out, plot_pca, plot_similarity,
                         probe_rollout, training_flow)
    from ..quality import heldout_clips
    from ..surgery import operated

    if args.pca_frame >= args.frames:
        raise ValueError(f"--pca-frame {args.pca_frame} is not a generated frame: --frames {args.frames} makes "
                         f"0..{args.frames - 1}")
    model, info = load_checkpoint(args.checkpoint, weights=args.weights)
    resolve_sampler_options(args, model)
    surgery = surgery_from_args(args, args.steps, args.shift)
    if surgery is not None:
        surgery.check(model)
    episodes = parse_episodes(args.episodes)
    frames, actions = heldout_clips(args.data, args.clips, args.context + args.frames, episodes)
    model.codec.check_pixel_shape(tuple(frames.shape[-3:]), f"--data {args.data}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = model.denoising_stack().name
    title = f"{kind} ({Path(args.checkpoint).name})"

    with operated(model, surgery):
        sim, pca, video = probe_rollout(model, frames, actions, args.context, args.steps, args.shift, args.seed,
                                        args.pca_frame)
    labels = model.denoising_stack().labels
    result = {"checkpoint": str(args.checkpoint), "arch": model.config.arch, "probed": kind, "blocks": labels,
              "data": str(args.data), "clips": args.clips, "context": args.context, "seed": args.seed,
              "surgery": None if surgery is None else dataclasses.asdict(surgery), **sim}
    plot_similarity(sim, labels, out / "similarity.png", title)
    plot_depth_curves(sim, labels, out / "depth.png", title)
    if pca:
        frame = model.codec.decode(video[0, args.pca_frame][None].cpu())[0].numpy()
        plot_pca(pca, labels, model.config.grid, out / "pca.png", f"{title}, frame {args.pca_frame}", frame)
    print(f"{title}: {sim['frames']} frames x {sim['rollouts']} rollouts x {sim['steps']} steps probed")
    print(f"{'block':>6} {'cos(s,s`)':>10} {'mse(s,s`)':>10} {'attn. mass':>11}")
    for i, label in enumerate(labels):
        mass = sim["attention_mass"][i] if sim["attention_mass"] is not None else math.nan
        print(f"{label:>6} {sim['mean_offdiag_cosine'][i]:>10.4f} {sim['mean_offdiag_mse'][i]:>10.4f} {mass:>11.4f}")

    if not args.no_leave_one_out:
        clip_len = args.loss_clip_len or info.get("train", {}).get("clip_len", 8)
        loo = leave_one_out(model, loss_clips(args.data, args.loss_clips, clip_len, episodes, model.codec),
                            (frames, actions),
                            args.context, args.steps, args.shift, args.seed, training_flow(info), args.loss_draws)
        result["leave_one_out"] = loo
        plot_leave_one_out(loo, out / "leave_one_out.png", title)
        base = loo["base"]
        print(f"leave-one-out (base: loss {base['loss']:.4f}, PSNR {base['psnr']:.2f}, SSIM {base['ssim']:.4f}, "
              f"LPIPS {base['lpips']:.4f})")
        print(f"{'skipped':>8} {'d loss':>9} {'d PSNR':>8} {'d SSIM':>8} {'d LPIPS':>8}")
        for i, label in enumerate(loo["blocks"]):
            print(f"{label:>8} {loo['delta_loss'][i]:>+9.4f} {loo['delta_psnr'][i]:>+8.2f} "
                  f"{loo['delta_ssim'][i]:>+8.4f} {loo['delta_lpips'][i]:>+8.4f}")
    (out / "probe.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out}/probe.json and figures (similarity.png, depth.png, pca.png"
          f"{', leave_one_out.png' if not args.no_leave_one_out else ''})")
    return 0


# -- scd quality ---------------------------------------------------------------------------------------------
def add_quality_parser(subparsers) -> None:
    p = subparsers.add_parser("quality", help=COMMANDS["quality"][0])
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
    from ..checkpoint import load_model
    from ..quality import heldout_clips, rollout_quality, seconds_per_frame
    from ..surgery import operated

    model = load_model(args.checkpoint, weights=args.weights)
    resolve_sampler_options(args, model)
    surgery = surgery_from_args(args, args.steps, args.shift)
    if surgery is not None:
        surgery.check(model)
    frames, actions = heldout_clips(args.data, args.clips, args.context + args.frames, parse_episodes(args.episodes),
                                    args.start)
    model.codec.check_pixel_shape(tuple(frames.shape[-3:]), f"--data {args.data}")
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
