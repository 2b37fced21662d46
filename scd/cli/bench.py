"""`scd bench`: streaming speed and memory of SCD against a Causal DiT of matched size (scd/bench.py)."""

from __future__ import annotations

import json

from . import COMMANDS
from .options import add_device_option


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help=COMMANDS["bench"][0])
    p.add_argument("--scd", default="scd-s", help="SCD preset (default scd-s, ~10M parameters)")
    p.add_argument("--dit", default="dit-s", help="Causal DiT preset (default dit-s, ~10M parameters)")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="bench a trained checkpoint instead of the preset of its architecture (repeatable)")
    p.add_argument("--context", type=int, nargs="+", default=[16], help="context lengths, e.g. 16 128")
    p.add_argument("--steps", type=int, default=20, help="denoising steps S (both models)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=8, help="timed frames per repeat after the first frame")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats before measuring")
    add_device_option(p)
    p.add_argument("--bf16", action="store_true",
                   help="bf16 autocast (and its effect on the frames: PSNR against fp32)")
    p.add_argument("--compile", action="store_true",
                   help="also time each model with the compiled per-frame step (its warm-up repeat compiles)")
    p.add_argument("--profile-frames", type=int, default=2,
                   help="frames per model under torch.profiler for the Python/dispatch share (0: none)")
    p.add_argument("--cfg", type=float, default=None, metavar="SCALE",
                   help="stream with classifier-free guidance at this scale (negative branch: the null action; "
                        "both branches run in every pass)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from ..bench import bench, format_table, load_bench_model
    from ..checkpoint import read_config

    sources = {"scd": args.scd, "causal_dit": args.dit}
    for path in args.checkpoint:
        arch = read_config(path)["model"]["arch"]
        if sources[arch] in args.checkpoint:
            raise ValueError(f"two checkpoints of arch {arch!r} given; bench compares one scd with one causal_dit")
        sources[arch] = path
    models = [load_bench_model(src, args.device, args.seed) for src in sources.values()]
    report = bench(models, args.context, steps=args.steps, batch=args.batch, frames=args.frames,
                   repeats=args.repeats, warmup=args.warmup, device=args.device, bf16=args.bf16,
                   memory=not args.no_memory, seed=args.seed, compile=args.compile,
                   profile_frames=args.profile_frames, guidance=args.cfg)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0
