"""`scd codec`: train a frame autoencoder on a recorded data set, and score a codec's reconstructions.

    scd codec train --data data/crafter --out runs/codec --preset f8c8 --val-data data/crafter-bench
    scd codec eval --data data/crafter-bench --codec runs/codec        # PSNR, SSIM, LPIPS, ms per frame
"""

from __future__ import annotations

import json

from . import COMMANDS
from .options import add_device_option, add_option, at_least, check_out_dir, positive


def add_codec_parser(subparsers) -> None:
    from ..codec import CODEC_PRESETS, CodecTrainConfig, evaluate_codec, train_codec
    from ..codec.autoencoder import DEFAULT_PRESET

    parser = subparsers.add_parser("codec", help=COMMANDS["codec"][0])
    sub = parser.add_subparsers(dest="codec_command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an autoencoder codec (progress bar, atomic checkpoints, exact resume)")
    p.add_argument("--data", required=True, help="training data set directory (from `scd data record`)")
    p.add_argument("--out", required=True, help="run directory: ckpt-<step> codec directories, log.csv, loss.png")
    p.add_argument("--preset", choices=list(CODEC_PRESETS),
                   help=f"autoencoder architecture: latent shape f<factor>c<channels> (default: "
                        f"{DEFAULT_PRESET}, or with --init-from that codec's)")
    p.add_argument("--init-from", metavar="CODEC",
                   help="start from this trained codec's weights (a codec or run directory, or 'crafter': the "
                        "shipped one) with a fresh optimizer and schedule")
    p.add_argument("--val-data", metavar="DIR", help="held-out data set scored (PSNR, SSIM) at every checkpoint")
    add_option(p, "--steps", CodecTrainConfig, "steps", "optimizer steps", type=at_least(1))
    add_option(p, "--batch", CodecTrainConfig, "batch", "frames per step", type=at_least(1))
    add_option(p, "--lr", CodecTrainConfig, "lr", "AdamW learning rate", type=positive())
    add_option(p, "--warmup", CodecTrainConfig, "warmup", "linear learning-rate warm-up steps", type=at_least(0))
    add_option(p, "--lr-min", CodecTrainConfig, "lr_min", "cosine decay of the learning rate to this value at --steps",
               type=at_least(0.0, float))
    add_option(p, "--lpips-weight", CodecTrainConfig, "lpips_weight",
               "weight of the LPIPS (AlexNet) loss; 0 for none (needed below 32x32 pixels)", type=at_least(0.0, float))
    add_option(p, "--kl-weight", CodecTrainConfig, "kl_weight", "weight of the KL term (KL bottlenecks)",
               type=at_least(0.0, float))
    add_option(p, "--ckpt-every", CodecTrainConfig, "ckpt_every", "steps between checkpoints", type=at_least(1))
    add_option(p, "--log-every", CodecTrainConfig, "log_every", "steps between log.csv rows", type=at_least(1))
    add_option(p, "--seed", CodecTrainConfig, "seed", "seed of the weights, the frame order and the noise",
               type=at_least(0))
    add_device_option(p)
    p.add_argument("--time-limit", type=positive(), help="stop (with a checkpoint) after this many seconds; "
                   "SIGTERM or Ctrl-C also stop with a checkpoint after the step under way (twice Ctrl-C: at once)")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if --out holds checkpoints")
    p.set_defaults(func=cmd_codec_train)

    e = sub.add_parser("eval", help="reconstruction PSNR, SSIM, LPIPS and encode/decode ms per frame of a codec")
    e.add_argument("--data", required=True, help="data set directory whose frames are coded (held-out frames)")
    e.add_argument("--codec", default="pixel",
                   help="a codec or `scd codec train` run directory, a diffusers autoencoder folder, 'crafter' "
                        "(the shipped Crafter autoencoder) or 'pixel' (default: pixel, the exact identity)")
    add_option(e, "--frames", evaluate_codec, "frames", "frames spread evenly over the data set", type=at_least(1))
    add_option(e, "--batch", evaluate_codec, "batch", "frames per encode / decode call (the timing's batch)",
               type=at_least(1))
    e.add_argument("--no-lpips", action="store_true", help="skip LPIPS (it needs the AlexNet weights: scd weights)")
    add_device_option(e)
    e.add_argument("--json", metavar="FILE", help="also write the numbers to this file")
    e.set_defaults(func=cmd_codec_eval)


def cmd_codec_train(args) -> int:
    from ..codec import CodecTrainConfig, train_codec
    from ..codec.autoencoder import DEFAULT_PRESET

    check_out_dir(args.out)
    cfg = CodecTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup=min(args.warmup, args.steps),
                           lr_min=args.lr_min,
                           lpips_weight=args.lpips_weight, kl_weight=args.kl_weight, ckpt_every=args.ckpt_every,
                           log_every=args.log_every, seed=args.seed)
    what = f"a {args.preset or DEFAULT_PRESET} codec" if not args.init_from else f"a codec from {args.init_from}"
    print(f"training {what} on {args.data} -> {args.out} on {args.device}")
    trainer = train_codec(args.data, args.out, cfg, args.preset, val_data=args.val_data, resume=not args.no_resume,
                          init_from=args.init_from, time_limit=args.time_limit, device=args.device)
    scores = "" if not trainer.last_val else \
        f"; on --val-data: PSNR {trainer.last_val['psnr']:.2f} dB, SSIM {trainer.last_val['ssim']:.4f}"
    if trainer.step < cfg.steps:  # the time limit, SIGTERM or Ctrl-C: a checkpoint was written at this step
        print(f"stopped at step {trainer.step} of {cfg.steps}{scores}; run the same command again to resume")
    else:
        print(f"done: step {trainer.step}, {trainer.codec.describe()}{scores}; the codec is {args.out} "
              f"(`scd train --codec {args.out}`)")
    return 0


def cmd_codec_eval(args) -> int:
    from ..codec import evaluate_codec, load_codec
    from ..data.store import VideoStore

    store = VideoStore(args.data)
    codec = load_codec(args.codec, pixel_shape=store.frame_shape, device=args.device)
    if not args.no_lpips:
        from ..metrics import _weights

        _weights.require(_weights.LPIPS_ALEX)
    result = evaluate_codec(codec, store, frames=args.frames, batch=args.batch, perceptual=not args.no_lpips)
    lpips = f"  LPIPS {result['lpips']:.4f}" if "lpips" in result else ""
    print(f"{result['codec']}, {result['params'] / 1e6:.2f}M parameters, on {result['frames']} frames of {args.data}:")
    print(f"PSNR {result['psnr']:.2f} dB  SSIM {result['ssim']:.4f}{lpips}  encode {result['encode_ms']:.2f} ms  "
          f"decode {result['decode_ms']:.2f} ms per frame (batches of {args.batch}, {args.device})")
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"codec_path": str(args.codec), "data": str(args.data), **result},
                                              indent=2))
    return 0
