"""``scd play``: play a world model in the browser, or measure how fast it streams (see EXAMPLES)."""

from __future__ import annotations

import argparse
import os

from . import COMMANDS
from .options import add_compile_option, add_device_option

EXAMPLES = """examples:
  scd play                                   # shipped Crafter SCD + Causal DiT, http://127.0.0.1:8765/
  scd play --scd runs/my-scd --data data/crafter
  scd play --benchmark 200 --untrained --data data/crafter   # frames/s and latency, SCD vs Causal DiT
  scd play --benchmark 100 --sessions 4      # four players' worlds rendered in one batch per model
  scd play --shared-world                    # every page watches and drives one world (a demo on a screen)
"""


def add_play_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("play", help=COMMANDS["play"][0],
                              description="Play a world model in the browser with the keyboard, or measure "
                                          "how fast it streams.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scd", metavar="CKPT", help="SCD checkpoint or run directory")
    p.add_argument("--dit", metavar="CKPT", help="Causal DiT checkpoint or run directory (to compare)")
    p.add_argument("--untrained", action="store_true",
                   help="random-weight scd-xs and dit-xs instead of checkpoints (speed does not depend on weights)")
    p.add_argument("--data", metavar="DIR|NPZ",
                   help="context frames: a recorded data set directory or a context .npz "
                        "(default: the shipped scd/assets/crafter-context.npz)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    p.add_argument("--steps", type=int, help="denoising steps S per frame (default: each model's own, 2 for the "
                                                 "shipped models)")
    p.add_argument("--temperature", type=float, help="std of each frame's starting noise (default: each model's own "
                   "sample_temperature)")
    p.add_argument("--shift", type=float, help="schedule shift k of the denoising steps (default: each model's own "
                   "sample_shift)")
    p.add_argument("--context", type=int, default=4, help="real frames each session starts from (default 4)")
    p.add_argument("--window", type=int, help="past frames the next frame sees (default: each model's sample_window, "
                                              "else its training clip length - 1, else 7)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of every session")
    p.add_argument("--threads", type=int, default=1, help="torch threads for generation (default 1)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for a GPU and for CPUs with native bf16 instructions, where "
                        "it is ~15%% faster; off elsewhere, where it is emulated and slow)")
    add_compile_option(p)
    add_device_option(p)
    p.add_argument("--out", default="out/play", help="folder for saved session videos (default out/play)")
    p.add_argument("--benchmark", type=int, metavar="N",
                   help="no server: render N frames with each model headless and print frames/s and latency")
    p.add_argument("--sessions", type=int, default=1,
                   help="with --benchmark: sessions (players' worlds) rendered in one batch per model (default 1)")
    p.add_argument("--shared-world", action="store_true",
                   help="every page shows and drives one world (default: each page plays its own world; the "
                        "worlds of one model render in one batched step)")
    p.set_defaults(func=cmd_play)


def print_benchmark(engine, results: dict, threads: int) -> None:
    from ..play.engine import MODEL_LABELS

    first = next(iter(results.values()))
    print(f"scd play --benchmark: {first['frames']} frames per model and session, {first['sessions']} session(s) in "
          f"one batch, window {', '.join(f'{n} {w}' for n, w in engine.windows.items())}, "
          f"context {engine.context_frames}, {threads} torch thread(s), bf16 {'on' if engine.bf16 else 'off'}, "
          f"compile {'on' if engine.compile else 'off'}, {engine.models[next(iter(results))].device}")
    print(f"{'model':<11} {'blocks':>6} {'params':>7} {'S':>3} {'BP/frame':>8} {'frames/s':>8} "
          f"{'latency ms: mean':>16} {'p50':>6} {'p90':>6} {'max':>6}   (frames/s: all sessions together; "
          "latency: one batched step)")
    for name, r in results.items():
        steps = engine.steps_for(name)
        info = engine.models[name].describe(steps)
        print(f"{MODEL_LABELS[name]:<11} {info['blocks']:>6} {info['params'] / 1e6:>6.1f}M {steps:>3} "
              f"{info['block_passes_per_frame']:>8} {r['fps']:>8.1f} {r['mean_ms']:>16.1f} {r['p50_ms']:>6.1f} "
              f"{r['p90_ms']:>6.1f} {r['max_ms']:>6.1f}")
    if {"scd", "dit"} <= set(results):
        print(f"SCD streams {results['scd']['fps'] / results['dit']['fps']:.1f}x as many frames per second "
              "as the Causal DiT")


def cmd_play(args) -> int:
    import torch

    from ..data.context import load_context
    from ..play.engine import MODEL_LABELS, Engine, benchmark, fast_bf16, load_models

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.sessions != 1 and args.benchmark is None:
        raise ValueError("--sessions is for --benchmark: served, every page that connects opens its own session")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    try:
        torch.set_num_threads(args.threads)
        context = load_context(args.data, args.context)
        checkpoints = {name: path for name, path in (("scd", args.scd), ("dit", args.dit)) if path}
        models, action_names, windows = load_models(checkpoints, context, args.untrained, args.device)
        engine = Engine(models, context, action_names=action_names, steps=args.steps, context_frames=args.context,
                        window=windows if args.window is None else args.window, seed=args.seed,
                        bf16=fast_bf16(args.device) if args.bf16 is None else args.bf16, compile=args.compile,
                        temperature=args.temperature, shift=args.shift)
        if args.benchmark is not None:
            print_benchmark(engine, benchmark(engine, args.benchmark, sessions=args.sessions), args.threads)
            return 0
        from ..play.server import PlayServer

        def announce(url: str) -> None:
            names = " and ".join(MODEL_LABELS[n] for n in models)
            worlds = "all pages share one world" if args.shared_world else "each page plays its own world"
            print(f"scd play: {names} on {url} ({worlds}; Ctrl-C to stop); videos go to "
                  f"{os.path.abspath(args.out)}", flush=True)

        PlayServer(engine, args.out, args.host, args.port, on_ready=announce, shared_world=args.shared_world).serve()
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing to clean up yet
        pass
    print("scd play: stopped", flush=True)
    return 0
