"""The `scd` command.

Core commands (info, train, generate) live here; other areas register theirs through `add_parser(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from .config import SHIPPED_CHECKPOINTS, SHIPPED_CONTEXT

# Modules that each expose `add_parser(subparsers)`; order = order in `scd --help`.
COMMAND_MODULES = [
    "scd.data.cli",
    "scd.play.cli",
    "scd.bench",
    "scd.evaluate",
    "scd.probe",
    "scd.quality",
    "scd.convert",
]


# -- scd info ------------------------------------------------------------------------------------------------
def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_model(model, steps: int) -> dict:
    cfg = model.config
    info = {
        "arch": cfg.arch,
        "params": _count(model),
        "hidden": cfg.hidden,
        "heads": cfg.heads,
        "tokens_per_frame": cfg.tokens_per_frame,
        "frame_shape": list(cfg.frame_shape),
        "steps": steps,
        "block_passes_per_frame": cfg.block_passes_per_frame(steps),
    }
    if cfg.arch == "scd":
        info.update(blocks=f"{cfg.encoder_depth}+{cfg.decoder_depth}", encoder_params=_count(model.encoder),
                    decoder_params=_count(model.decoder), encoder_input=cfg.encoder_input)
    else:
        info.update(blocks=str(cfg.depth))
    return info


def cmd_info(args) -> int:
    import torch

    from .config import PRESETS, get_preset
    from .models import build_model

    names = list(PRESETS) if args.target == "all" else [args.target]
    rows = []
    for name in names:
        if name in PRESETS:
            with torch.device("meta"):  # counts parameters without allocating the big presets
                model = build_model(get_preset(name))
        else:
            from .checkpoint import load_model

            model = load_model(name)
        rows.append({"name": name, **describe_model(model, args.steps)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<10} {'arch':<10} {'blocks':>6} {'hidden':>6} {'params':>9} {'tokens/F':>8} "
          f"{'BP/frame (S=' + str(args.steps) + ')':>18}")
    for r in rows:
        bp = r["block_passes_per_frame"]
        formula = (f"{r['blocks'].split('+')[0]} + {args.steps}x{r['blocks'].split('+')[1]}" if r["arch"] == "scd"
                   else f"{r['blocks']}x{args.steps} + {r['blocks']}")
        if r.get("encoder_input") == "noisy_current":  # a clean caching pass + the pure-noise pass per frame
            formula = "2x" + formula
        print(f"{r['name']:<10} {r['arch']:<10} {r['blocks']:>6} {r['hidden']:>6} {r['params'] / 1e6:>8.1f}M "
              f"{r['tokens_per_frame']:>8} {bp:>8} = {formula}")
    if any(r["arch"] == "causal_dit" for r in rows):
        print("Causal DiT: L x S denoising passes + L for the clean pass that caches the finished frame.")
    return 0


# -- surgeries (options of train, generate and the evaluation commands) ---------------------------------------
def add_surgery_arguments(p: argparse.ArgumentParser, training: bool) -> None:
    """The paper's surgeries on a Causal DiT (models.Surgery) as options."""
    g = p.add_argument_group("surgeries (Causal DiT)")
    g.add_argument("--skip-after-step", type=int, metavar="K",
                   help="skip-layer schedule: the first K denoising steps run every block, later steps only "
                        "--keep-prefix and --keep-suffix blocks (the paper: 5 of 50 steps, layers 8-22 of 30 skipped)")
    g.add_argument("--keep-prefix", type=int, default=0, metavar="P", help="first blocks kept by skipped steps")
    g.add_argument("--keep-suffix", type=int, default=0, metavar="Q", help="last blocks kept by skipped steps")
    g.add_argument("--diagonal-last", type=int, default=0, metavar="N",
                   help="frame-diagonal mask on the last N blocks: they attend only inside their own frame")
    if training:
        g.add_argument("--skip-steps", type=int, default=20, metavar="S",
                       help="the sampling schedule (S steps, --skip-shift) whose step K sets the skip time")
        g.add_argument("--skip-shift", type=float, default=1.0)


def surgery_from_args(args, steps: int | None = None, shift: float | None = None):
    """models.Surgery from the options of `add_surgery_arguments`, or None when none is asked for."""
    from .models import Surgery

    steps = args.skip_steps if steps is None else steps
    shift = args.skip_shift if shift is None else shift
    if args.skip_after_step is None:
        if args.keep_prefix or args.keep_suffix:
            raise ValueError("--keep-prefix/--keep-suffix need --skip-after-step")
        return Surgery(diagonal_last=args.diagonal_last) if args.diagonal_last else None
    return Surgery.skip_after(args.skip_after_step, steps, shift, keep_prefix=args.keep_prefix,
                              keep_suffix=args.keep_suffix, diagonal_last=args.diagonal_last)


# -- scd train -----------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .checkpoint import read_config
    from .config import ModelConfig, get_preset
    from .data.store import ClipDataset
    from .flow import FlowConfig
    from .train import TrainConfig, train

    data = ClipDataset(args.data, args.clip_len)
    if args.init_from:
        model_config = ModelConfig.from_dict(read_config(args.init_from)["model"])
    else:
        model_config = get_preset(args.preset).replace(num_actions=data.num_actions, frame_shape=data.frame_shape)
        if args.fusion and model_config.arch == "scd":
            model_config = model_config.replace(fusion=args.fusion)
        inference_noise = args.history_noise / 2 if args.history_noise_inference is None else args.history_noise_inference
        model_config = model_config.replace(prediction=args.prediction, history_noise=inference_noise)
    flow = FlowConfig(timesteps=args.timesteps, shift=args.shift, K=args.K, context_noise=args.eta,
                      action_dropout=args.action_dropout, encoder_t_min=args.encoder_t_min,
                      history_noise=args.history_noise)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, clip_len=args.clip_len, lr=args.lr, warmup=args.warmup,
                      lr_min=args.lr_min, weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema,
                      bf16=args.bf16, ckpt_every=args.ckpt_every, log_every=args.log_every, seed=args.seed, flow=flow,
                      surgery=surgery_from_args(args), rollout_steps=args.rollout_steps,
                      rollout_context=args.rollout_context)
    store = data.store
    data_info = {"path": str(Path(args.data).resolve()), "source": store.meta.source,
                 "action_names": list(store.action_names), "fps": store.meta.fps, "clips": len(data)}
    print(f"training {model_config.arch} ({args.init_from or args.preset}) on {len(data)} clips of "
          f"{args.clip_len} frames from {args.data} -> {args.out}")
    start = time.perf_counter()
    trainer = train(model_config, data, args.out, cfg, resume=not args.no_resume, init_from=args.init_from,
                    data_info=data_info, time_limit=args.time_limit)
    print(f"done: step {trainer.step}, {time.perf_counter() - start:.0f} s; checkpoints and log.csv in {args.out}")
    return 0


# -- scd demo ------------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .data.record import record

    out = Path(args.out)
    data = out / "crafter"
    if not (data / "meta.json").exists():
        record("crafter", data, episodes=16, steps=300, seed=1, overwrite=True)
    run = out / f"run-{args.preset}"
    main(["train", "--preset", args.preset, "--data", str(data), "--out", str(run), "--steps", "100000",
          "--batch", "8", "--clip-len", "8", "--lr", "5e-4", "--warmup", "100", "--bf16", "--K", "2",
          "--eta", "0.05", "--ckpt-every", "200", "--time-limit", str(60 * args.minutes)])
    return main(["generate", "--checkpoint", str(run), "--context", "4", "--frames", "24", "--samples", "2",
                 "--out", str(out / "demo.mp4")])


# -- scd generate --------------------------------------------------------------------------------------------
def parse_actions(text: str, num_actions: int, names: list[str] | None = None) -> list[int]:
    """'1,2,2' or 'move_left,noop' -> ids, checked against the model's action set."""
    ids = []
    for item in text.split(","):
        item = item.strip()
        if item.isdigit():
            ids.append(int(item))
        elif names and item in names:
            ids.append(names.index(item))
        else:
            known = f" (names: {', '.join(names)})" if names else ""
            raise ValueError(f"unknown action {item!r}: give ids 0..{num_actions - 1}{known}")
        if ids[-1] >= num_actions:
            raise ValueError(f"unknown action id {ids[-1]}: the model knows {num_actions} actions")
    return ids


def _episode(data: str | None, info: dict, episode: int, num_actions: int):
    """(frames uint8 (n, H, W, 3), actions (n,)) of one episode of a data set directory or a context file.

    Without --data: the data set the checkpoint was trained on if it is on this machine, else the shipped
    Crafter context file."""
    from .data.context import load_context_npz
    from .data.store import VideoStore

    path = data or info.get("data", {}).get("path")
    if data is None and (path is None or not Path(path).exists()):
        path = str(SHIPPED_CONTEXT)
    if Path(path).is_dir():
        store = VideoStore(path)
        count, actions_known = store.num_episodes, store.num_actions
        get = store.episode
    else:
        ctx = load_context_npz(path)
        count, actions_known = ctx.num_episodes, int(ctx.actions.max()) + 1
        get = lambda e: (ctx.frames[e], ctx.actions[e])  # noqa: E731
    if actions_known > num_actions:
        raise ValueError(f"{path} has {actions_known} actions, the model knows {num_actions}")
    if not 0 <= episode < count:
        raise ValueError(f"--episode {episode} out of range: {path} has {count} episodes")
    return get(episode)


def cmd_generate(args) -> int:
    import numpy as np
    import torch

    from .checkpoint import load_model
    from .data.store import frames_to_model, frames_to_uint8
    from .sampling import Guidance, rollout
    from .video import side_by_side, write_video

    model = load_model(args.checkpoint or SHIPPED_CHECKPOINTS["scd"], device=args.device)
    info = getattr(model, "checkpoint_info", {})
    frames, recorded = _episode(args.data, info, args.episode, model.config.num_actions)
    total = args.context + args.frames
    if args.actions == "recorded":
        if args.start + total > len(frames):
            raise ValueError(f"episode {args.episode} has {len(frames)} frames; --start {args.start} + "
                             f"--context {args.context} + --frames {args.frames} do not fit")
        actions = np.asarray(recorded[args.start : args.start + total])
    else:
        if args.start + args.context > len(frames):
            raise ValueError(f"episode {args.episode} has {len(frames)} frames; the context does not fit")
        given = parse_actions(args.actions, model.config.num_actions, info.get("data", {}).get("action_names"))
        given = (given * (args.frames // len(given) + 1))[: args.frames]  # repeat the pattern to fill the horizon
        actions = np.concatenate([recorded[args.start : args.start + args.context], given])
    context = frames_to_model(frames[args.start : args.start + args.context])[None]
    actions = torch.from_numpy(np.array(actions, dtype=np.int64))[None]
    guidance = None
    if args.cfg_scale != 1.0:
        guidance = Guidance(args.cfg_scale, null_action=args.cfg_null_action, context_noise=args.cfg_context_noise)

    generated, times = [], []
    stream = rollout(model, context, actions, steps=args.steps, shift=args.shift, guidance=guidance,
                     surgery=surgery_from_args(args, args.steps, args.shift),
                     num_samples=args.samples, seed=args.seed,
                     window=args.window or info.get("train", {}).get("clip_len"))
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        start = time.perf_counter()
        for frame in stream:  # (1, samples, C, H, W)
            generated.append(frame[0])
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
    pred = torch.stack(generated, dim=1)  # (samples, H, C, H, W)
    steady = times[1:] or times
    print(f"{model.config.arch}: {len(times)} frames x {args.samples} samples, first frame {times[0]:.3f} s "
          f"(context prefill included), then {sum(steady) / len(steady):.3f} s per frame")

    ctx_u8 = frames_to_uint8(context[0])
    columns = {}
    if args.actions == "recorded":
        columns["ground truth"] = np.asarray(frames[args.start : args.start + total])
    for s in range(args.samples):
        columns[f"{model.config.arch} #{s}" if args.samples > 1 else model.config.arch] = np.concatenate(
            [ctx_u8, frames_to_uint8(pred[s])])
    path = write_video(args.out, side_by_side(columns, scale=args.scale), fps=args.fps)
    print(f"wrote {path} (first {args.context} frames are the given context)")
    return 0


# -- scd export ----------------------------------------------------------------------------------------------
def cmd_export(args) -> int:
    from .checkpoint import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"wrote {path} ({size / 1e6:.1f} MB: EMA weights and config)")
    return 0


# -- parser --------------------------------------------------------------------------------------------------
def _add_core_parsers(sub) -> None:
    p = sub.add_parser("info", help="parameters and block passes per frame of a preset or checkpoint")
    p.add_argument("target", help="a preset name, 'all', or a checkpoint path")
    p.add_argument("--steps", type=int, default=50, help="denoising steps S (default 50, as in Tab. 5)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train SCD or the Causal DiT on a recorded data set")
    p.add_argument("--preset", default="scd-s", help="model preset (see `scd info all`)")
    p.add_argument("--data", required=True, help="data set directory (from `scd data record`)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.csv, loss.png")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--clip-len", type=int, default=8, help="frames per training clip")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr-min", type=float, help="cosine decay of the learning rate to this value at --steps "
                                                "(default: constant after the warm-up)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--K", type=int, default=1, help="noisy draws per context pass")
    p.add_argument("--eta", type=float, default=0.0, help="context noise on c_i (SCD; the paper uses 0.05)")
    p.add_argument("--timesteps", choices=["logit_normal", "uniform"], default="logit_normal")
    p.add_argument("--shift", type=float, default=1.0, help="timestep shift k")
    p.add_argument("--action-dropout", type=float, default=0.1)
    p.add_argument("--fusion", choices=["seq_offset", "seq_same", "channel"], help="SCD context fusion")
    p.add_argument("--prediction", choices=["velocity", "x"], default="velocity",
                   help="network output: the velocity (the paper) or the clean frame (x-prediction)")
    p.add_argument("--history-noise", type=float, default=0.0, metavar="MAX",
                   help="noise augmentation of history frames: each at a flow time ~ U(0, MAX), given to the "
                        "network (0 = clean history)")
    p.add_argument("--history-noise-inference", type=float, metavar="T",
                   help="fixed flow time of history frames at inference (default: MAX / 2)")
    p.add_argument("--rollout-steps", type=int, default=0, metavar="S",
                   help="rollout training: history = the model's own S-step samples (0 = teacher forcing)")
    p.add_argument("--rollout-context", type=int, default=1, help="recorded frames before the rollout history")
    p.add_argument("--init-from", help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--no-resume", action="store_true", help="do not continue from checkpoints in --out")
    p.add_argument("--time-limit", type=float, help="stop (with a checkpoint) after this many seconds")
    p.add_argument("--encoder-t-min", type=float, default=0.8,
                   help="noisy_current SCD encoders (scd convert) see the current frame at t ~ U(this, 1)")
    add_surgery_arguments(p, training=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="record a small Crafter set, train a small SCD for a few minutes, write a video")
    p.add_argument("--out", default="out/demo", help="folder for the data, the run and the video")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    p.add_argument("--preset", default="scd-xs")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="roll out a model from real context frames and write a video")
    p.add_argument("--checkpoint", help="checkpoint or run directory (default: the shipped Crafter SCD)")
    p.add_argument("--data", help="data set directory or context .npz for the context frames (default: the data "
                                   "the model was trained on, else the shipped Crafter context file)")
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first context frame in the episode")
    p.add_argument("--context", type=int, default=4, help="context frames")
    p.add_argument("--frames", type=int, default=32, help="frames to generate")
    p.add_argument("--actions", default="recorded", help="'recorded', or ids/names like '1,1,2' (repeated)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps S")
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--samples", type=int, default=1, help="trajectories")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, help="history frames kept in the KV cache (default: the checkpoint's "
                                                "training clip length, so frame distances stay within what it saw)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="guidance scale (1 = off)")
    p.add_argument("--cfg-context-noise", type=float, default=0.0, help="eta_cfg for context guidance (SCD)")
    p.add_argument("--cfg-null-action", action="store_true", help="negative branch uses the null action")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out/generated.mp4", help=".mp4 or .gif")
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling of the video")
    add_surgery_arguments(p, training=False)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="a lean copy of a checkpoint for shipping: EMA weights + config")
    p.add_argument("checkpoint", help="checkpoint or run directory")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scd", description="Separable Causal Diffusion world models")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_core_parsers(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        print(f"scd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
