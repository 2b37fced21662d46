"""Train codec architectures (scd.codec.CODEC_PRESETS) with equal budgets and score them on held-out frames.

    python scripts/codec_table.py --data data/crafter --val-data data/crafter-bench --out runs/codecs \
        --presets f8c8 f8c16 f4c4 f16c32 --steps 2000

Each preset trains into OUT/<preset> (rerunning resumes; a finished run is only scored), then is scored with
scd.codec.evaluate_codec on --eval-frames frames of --val-data. Writes OUT/codecs.md and OUT/codecs.json and
prints the table: latent shape, parameters, PSNR / SSIM / LPIPS of the decoded frames, ms per frame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scd.codec import CODEC_PRESETS, CodecTrainConfig, evaluate_codec, load_codec, train_codec
from scd.fileio import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="training data set (scd data record)")
    parser.add_argument("--val-data", required=True, help="held-out data set to score on (e.g. crafter-bench)")
    parser.add_argument("--out", required=True, help="one run directory per preset goes here")
    parser.add_argument("--presets", nargs="+", default=list(CODEC_PRESETS), choices=list(CODEC_PRESETS))
    defaults = CodecTrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--time-limit", type=float, default=None, help="seconds of training per preset (this call)")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--lpips-weight", type=float, default=defaults.lpips_weight)
    parser.add_argument("--ckpt-every", type=int, default=defaults.ckpt_every)
    parser.add_argument("--eval-frames", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    out = Path(args.out)
    cfg = CodecTrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, lpips_weight=args.lpips_weight,
                           ckpt_every=args.ckpt_every, warmup=min(defaults.warmup, args.steps // 10))
    rows = []
    for name in args.presets:
        print(f"== {name}: {CODEC_PRESETS[name]}")
        trainer = train_codec(args.data, out / name, cfg, name, val_data=args.val_data, time_limit=args.time_limit,
                              device=args.device)
        codec = load_codec(out / name, device=args.device)
        scores = evaluate_codec(codec, args.val_data, frames=args.eval_frames)
        rows.append({"preset": name, "steps": trainer.step, **scores})
        print(json.dumps(rows[-1]))
    table = ["| preset | latent (C, h, w) | values / frame | params | steps | PSNR | SSIM | LPIPS | encode ms | decode ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        c, h, w = r["frame_shape"]
        table.append(f"| {r['preset']} | {c}x{h}x{w} | {c * h * w} | {r['params'] / 1e6:.2f}M | {r['steps']} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['lpips']:.4f} | {r['encode_ms']:.2f} | "
                     f"{r['decode_ms']:.2f} |")
    text = "\n".join(table) + f"\n\nScored on {rows[0]['frames']} frames of {args.val_data}.\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "codecs.md", text)
    atomic_write_text(out / "codecs.json", json.dumps(rows, indent=2))
    print(text)


if __name__ == "__main__":
    main()
